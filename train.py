"""Train or evaluate an SE network: `python train.py --config=... --workdir=...`.

  python train.py --config=configs/quickstart.py --workdir=/tmp/quickstart
  python train.py --config=configs/se_resnet50.py:cosine --workdir=/tmp/r50 \
      --config.data_dir=/data/tfds --config.batch_size=256

Multi-host: on TPU pods and under SLURM, jax.distributed is set up
automatically; elsewhere pass --coordinator_address=host:port
--num_processes=N --process_id=i on every process. One process per GPU, as
PyTorch DDP runs (each decodes its own slice of the data):

  for i in 0 1 2 3 4 5 6 7; do python train.py ... --coordinator_address=localhost:12345 \
      --num_processes=8 --process_id=$i --local_device_ids=$i & done
"""

import glob
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Checkpoints, metrics.jsonl and '
                    'TensorBoard events go here; rerunning resumes.')
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0, for multi-process runs.')
flags.DEFINE_integer('num_processes', None, 'Number of processes.')
flags.DEFINE_integer('process_id', None, 'Index of this process.')
flags.DEFINE_list('local_device_ids', None, 'The GPUs this process uses (e.g. '
                  '"3" for one process per GPU); default: all of them.')
flags.DEFINE_float('peer_timeout_s', 60.0, 'Several processes: seconds a silent '
                   'process is waited for before every other one stops naming it '
                   '(each posts a beat every 5 s).', lower_bound=10.0)
config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])

# Exit status after Ctrl-C at once (128 + SIGINT); after a SIGTERM or a first
# Ctrl-C, Preempted.exit_status (143 or 130): the run is not finished.
EXIT_INTERRUPTED = 130


def _cluster_detected() -> bool:
    """A cluster where jax.distributed.initialize() finds its peers itself.

    Checked from the environment and the PCI bus only (no network), so a plain
    machine starts at once.
    """
    env = os.environ
    slurm = 'SLURM_JOB_ID' in env and int(env.get('SLURM_NTASKS', '1')) > 1
    open_mpi = 'OMPI_MCA_orte_hnp_uri' in env
    gke_tpu = 'TPU_WORKER_HOSTNAMES' in env or 'TPU_PROCESS_ADDRESSES' in env
    return slurm or open_mpi or gke_tpu or _tpu_attached()


def _tpu_attached() -> bool:
    """A Cloud TPU VM: a TPU chip on the PCI bus, as JAX itself detects it.

    Google's vendor id alone is not enough: a GCE GPU VM's network card (gVNIC)
    carries it too, and would be taken for a TPU pod.
    """
    try:
        from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except (ImportError, AttributeError, OSError):
        # Moved in a later jax: any Google device, so a pod never trains as
        # separate single hosts (a GPU VM then gets initialize()'s own error).
        return any(_read(v) == '0x1ae0'
                   for v in glob.glob('/sys/bus/pci/devices/*/vendor'))


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ''


class _QuietOrbax:
    """Drops Orbax's per-save INFO chatter from the console; warnings stay."""

    def filter(self, record):
        return record.levelno > 20 or '/orbax/' not in record.pathname


def local_device_ids():
    """--local_device_ids as ints, or None; a bad value is a UserError."""
    from senet_jax.errors import UserError  # pylint: disable=g-import-not-at-top
    if FLAGS.local_device_ids is None:
        return None
    try:
        ids = [int(i) for i in FLAGS.local_device_ids]
    except ValueError:
        ids = []
    if not ids or min(ids) < 0 or len(set(ids)) < len(ids):
        raise UserError('--local_device_ids must be distinct device numbers such '
                        f'as 0 or 0,1, got {",".join(FLAGS.local_device_ids)!r}')
    return ids


def init_distributed():
    import jax  # pylint: disable=g-import-not-at-top
    ids = local_device_ids()
    if FLAGS.coordinator_address or FLAGS.num_processes:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes,
                                   process_id=FLAGS.process_id,
                                   local_device_ids=ids)
    elif _cluster_detected():
        jax.distributed.initialize(local_device_ids=ids)
    elif ids is not None:
        from senet_jax.errors import UserError  # pylint: disable=g-import-not-at-top
        raise UserError('--local_device_ids is for one of several processes: give '
                        '--coordinator_address, --num_processes and --process_id too')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    from senet_jax.errors import Preempted, UserError  # pylint: disable=g-import-not-at-top
    logging.get_absl_handler().addFilter(_QuietOrbax())
    try:
        config = FLAGS.config
        config.get('model')  # config_flags reports a bad config file on first use
    except (OSError, SyntaxError, ImportError, AttributeError) as e:
        last = str(e).strip().splitlines()[-1].strip()
        print(f'error: cannot load the --config file: {last}', file=sys.stderr)
        sys.exit(1)
    watch = None
    try:
        init_distributed()
        import jax  # pylint: disable=g-import-not-at-top
        if jax.process_count() > 1:
            from senet_jax.sharding import PeerWatch  # pylint: disable=g-import-not-at-top
            watch = PeerWatch(timeout_s=FLAGS.peer_timeout_s, on_lost=lambda message: print(
                f'error: {message}', file=sys.stderr, flush=True))
        from senet_jax import trainer  # pylint: disable=g-import-not-at-top
        logging.info('JAX process %d/%d, %d local / %d global devices%s',
                     jax.process_index(), jax.process_count(),
                     jax.local_device_count(), jax.device_count(),
                     f' (local_device_ids {FLAGS.local_device_ids})'
                     if FLAGS.local_device_ids else '')
        trainer.train_and_evaluate(config, FLAGS.workdir)
        if watch:
            watch.done()
    except UserError as e:
        print(f'error: {e}', file=sys.stderr, flush=True)
        if watch:
            # The others may wait for this process at a barrier (a save that
            # failed here only): they stop too, naming it. Exit without
            # jax.distributed's shutdown barrier, which they never reach.
            watch.stopped(f'error: {e}')
            os._exit(1)  # pylint: disable=protected-access
        sys.exit(1)
    except Preempted as e:  # SIGTERM, or a first Ctrl-C (Interrupted): saved
        if watch:
            watch.done()
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_status)
    except KeyboardInterrupt:
        # A Ctrl-C before training began, or a second one during the save: at
        # once, without waiting for the save in flight (Orbax never lists a
        # half-written checkpoint).
        print('stopped by Ctrl-C at once; the checkpoints saved before are kept '
              '(a half-written one is never used); rerun to go on',
              file=sys.stderr, flush=True)
        os._exit(EXIT_INTERRUPTED)  # pylint: disable=protected-access
    except Exception as e:  # pylint: disable=broad-except
        # A collective that failed because a peer died or stopped: name the
        # peer instead. XLA's runtime errors say their status first
        # ('UNKNOWN: Gloo AllGather failed: ... Connection closed by peer').
        if watch and (type(e).__name__ in ('JaxRuntimeError', 'XlaRuntimeError')
                      or re.match(r'[A-Z_]+: ', str(e))):
            watch.settle()
        raise


def parse_flags(argv):
    """absl's parsing, but a bad flag, config file or --config.<field> override
    ends in one `error:` line (ml_collections raises plain Python errors)."""
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError,
            OSError, SyntaxError, ImportError) as e:
        print(f'error: {_one_line(e)}', file=sys.stderr)
        sys.exit(1)


def _one_line(e: Exception) -> str:
    text = str(e).strip()
    if isinstance(e, SyntaxError):
        return (f'cannot load the --config file: {e.msg} ({e.filename}, line '
                f'{e.lineno})')
    if 'Traceback' in text or isinstance(e, (OSError, ImportError)):
        # The config file itself failed; its last line says why.
        return 'cannot load the --config file: ' + text.splitlines()[-1].strip()
    while len(text) > 1 and text[0] == text[-1] and text[0] in '\'"':
        text = text[1:-1]  # the repr(s) inside a KeyError
    if text.isidentifier():  # a bare KeyError: an override naming no field
        return (f"the config has no field '{text}' (a --config.<field> override "
                'must name a field of the --config file)')
    return ' '.join(text.replace('\\n', ' ').replace("\\'", "'").split())


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
