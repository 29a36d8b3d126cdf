"""Runs train.py and records at which training step the host waited for a device.

    python tests/sync_probe.py OUT.json <train.py flags>

Every device-to-host read of a jax.Array (np.asarray, float(), device_get all
go through ArrayImpl._value), every block_until_ready and every host
collective of multihost_utils is counted against the number of training steps
dispatched so far; OUT.json maps that step to the count.
"""

import collections
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main():
    out, argv = sys.argv[1], [os.path.join(REPO, 'train.py')] + sys.argv[2:]
    from jax._src import array as array_lib  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    from senet_jax import trainer  # pylint: disable=g-import-not-at-top
    dispatched = [0]
    syncs = collections.Counter()

    def counted(fn):
        def wrapper(*args, **kwargs):
            syncs[dispatched[0]] += 1
            return fn(*args, **kwargs)
        return wrapper

    value = array_lib.ArrayImpl._value
    array_lib.ArrayImpl._value = property(counted(value.fget))
    array_lib.ArrayImpl.block_until_ready = counted(
        array_lib.ArrayImpl.block_until_ready)
    for name in ('process_allgather', 'sync_global_devices',
                 'broadcast_one_to_all'):
        setattr(multihost_utils, name, counted(getattr(multihost_utils, name)))
    compile_steps = trainer.compile_steps

    def counting_compile_steps(*args, **kwargs):
        steps = compile_steps(*args, **kwargs)

        def train(*a):
            dispatched[0] += 1
            return steps.train(*a)
        return steps._replace(train=train)
    trainer.compile_steps = counting_compile_steps

    import train  # pylint: disable=g-import-not-at-top
    from absl import app  # pylint: disable=g-import-not-at-top
    try:
        app.run(train.main, argv=argv, flags_parser=train.parse_flags)
    finally:
        with open(out, 'w') as f:
            json.dump({str(k): v for k, v in sorted(syncs.items())}, f)


if __name__ == '__main__':
    main()
