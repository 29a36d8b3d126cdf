"""Runs train.py with a checkpoint read or write that fails on one process.

    python tests/restore_probe.py PROCESS FAILURES <train.py flags>

On process PROCESS, the first FAILURES reads of a checkpoint raise an I/O
error ('always': every read), as a storage hiccup would while many hosts
read at once; FAILURES 'save': its first checkpoint write finds the disk full.
"""

import errno
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main():
    process, failures = int(sys.argv[1]), sys.argv[2]
    argv = [os.path.join(REPO, 'train.py')] + sys.argv[3:]
    from senet_jax import checkpoint  # pylint: disable=g-import-not-at-top
    real, calls = checkpoint.Checkpoints._read, [0]

    def read(self, *args):
        import jax  # pylint: disable=g-import-not-at-top
        if jax.process_index() == process:
            calls[0] += 1
            if failures == 'always' or calls[0] <= int(failures):
                raise OSError(errno.EIO, 'injected read error')
        return real(self, *args)
    checkpoint.Checkpoints._read = read
    real_save = checkpoint.Checkpoints.save

    def save(self, step, *args, **kwargs):
        import jax  # pylint: disable=g-import-not-at-top
        if failures == 'save' and jax.process_index() == process:
            self._save_failed(step, OSError(errno.ENOSPC, 'injected: no space left'))
        return real_save(self, step, *args, **kwargs)
    checkpoint.Checkpoints.save = save

    import train  # pylint: disable=g-import-not-at-top
    from absl import app  # pylint: disable=g-import-not-at-top
    app.run(train.main, argv=argv, flags_parser=train.parse_flags)


if __name__ == '__main__':
    main()
