"""Runs train.py with slower steps (0.3 s more each), so that a signal lands
mid-run; with `slow_save`, the save after a Ctrl-C takes a minute, so that a
second Ctrl-C lands in it.

    python tests/interrupt_probe.py MODE MARKER <train.py flags>

MODE is `plain` or `slow_save`; MARKER is a file created when the slow save
begins.
"""

import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main():
    mode, marker = sys.argv[1], sys.argv[2]
    argv = [os.path.join(REPO, 'train.py')] + sys.argv[3:]
    from senet_jax import checkpoint, trainer  # pylint: disable=g-import-not-at-top
    interrupts = []
    interrupt, reached = trainer.Preemption._interrupt, trainer.Preemption.reached

    def counted_interrupt(self, *args):
        interrupts.append(1)
        return interrupt(self, *args)

    def slow_reached(self, step):
        time.sleep(0.3)
        return reached(self, step)
    trainer.Preemption._interrupt = counted_interrupt
    trainer.Preemption.reached = slow_reached
    if mode == 'slow_save':
        save = checkpoint.Checkpoints.save

        def slow_save(self, *args, **kwargs):
            if interrupts:
                open(marker, 'w').close()
                time.sleep(60)
            return save(self, *args, **kwargs)
        checkpoint.Checkpoints.save = slow_save

    import train  # pylint: disable=g-import-not-at-top
    from absl import app  # pylint: disable=g-import-not-at-top
    app.run(train.main, argv=argv, flags_parser=train.parse_flags)


if __name__ == '__main__':
    main()
