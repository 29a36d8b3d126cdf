"""Orbax checkpoints in `<workdir>/checkpoints`: async saves, retention, resume.

Each checkpoint step holds two items:
  state: the TrainState pytree (params, batch_stats, opt_state, step, and the
         float16 loss scale). The step is also the data position: the input
         stream is a pure function of it.
  meta:  JSON identity of the run (model, num_classes, dataset, batch size...),
         checked before resuming so a workdir of another model is refused.

Retention uses Orbax preservation policies: the newest `keep` checkpoints plus
the best by eval top-1 (checkpoints saved with metrics). Orbax writes into a
temporary directory and renames it when complete, so a save killed half-way is
never listed (on GCS, where renames are copies, Orbax marks a finished step
with a commit_success.txt instead); a finished-but-damaged checkpoint that
fails to restore is moved to `<workdir>/corrupt_checkpoints/` (never deleted)
and the next older one used.

Every path may be local or a `gs://` URL: they go through etils.epath, which
Orbax itself uses, and never through os.path.
"""

import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from senet_jax.errors import UserError

# Identity fields whose change makes old checkpoints unusable for this config.
IDENTITY_FIELDS = ('model', 'num_classes', 'model_overrides', 'dataset',
                   'batch_size')


def is_remote(path) -> bool:
    """True for a URL such as gs://bucket/dir (anything with a scheme)."""
    return '://' in str(path)


def user_path(path) -> epath.Path:
    """A path the user gave, local or gs://, as an absolute epath.Path.

    (epath's resolve() and os.path.abspath would turn gs://b/r into
    <cwd>/gs:/b/r, so URLs are kept as they are.)
    """
    path = epath.Path(path)
    return path if is_remote(path) else path.expanduser().absolute()


def prepare_workdir(workdir) -> epath.Path:
    """The workdir, created, after one small write that shows it is writable.

    On gs:// this is what finds a missing bucket or missing credentials at
    start-up rather than at the first save. Raises UserError in one sentence.
    """
    path = user_path(workdir)
    probe = path / f'.write_test_process_{jax.process_index()}'
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text('')
        probe.unlink()
    except Exception as e:  # pylint: disable=broad-except
        # (tf.io.gfile, gcsfs and the os each raise their own error types.)
        detail = ' '.join(str(e).split())[:300] or type(e).__name__
        hint = ('; check that the bucket exists and that Application Default '
                'Credentials may write to it' if is_remote(path) else '')
        raise UserError(f'cannot write to the workdir {path} ({detail}){hint}') from None
    return path


class Checkpoints:
    """A CheckpointManager plus the resume rules of our trainer."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        self.workdir = user_path(workdir)
        self.directory = self.workdir / 'checkpoints'
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(n=keep),
            ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m['eval_top1'], reverse=False, n=1,
                keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=async_save,
            create=True)
        self._options = options
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict,
             metrics: dict | None = None) -> bool:
        """Starts an async save of `step`; False if that step is already saved."""
        if step in self.manager.all_steps():
            return False
        return self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)),
            metrics=metrics, force=True)

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

    def restore_latest(self, abstract_state: Any, meta: dict):
        """(state, step) of the newest restorable checkpoint, or None if none exist.

        `abstract_state` carries the target shardings (jax.ShapeDtypeStruct with
        .sharding), so arrays land directly on the current mesh, whatever mesh
        saved them. Raises UserError for a workdir of an incompatible config or
        one whose checkpoints are all unreadable.
        """
        steps = self.all_steps()
        if not steps:
            return None
        for step in reversed(steps):
            try:
                saved_meta = self.read_meta(step)
            except Exception as e:  # pylint: disable=broad-except
                self._set_aside(step, e)
                continue
            check_identity(saved_meta, meta, self.directory)
            try:
                restored = self.manager.restore(
                    step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(
                            self._as_saved(step, abstract_state))))
                return restored['state'], step
            except Exception as e:  # pylint: disable=broad-except
                self._set_aside(step, e)
        raise UserError(
            f'none of the checkpoints {steps} in {self.directory} could be read; '
            f'they were moved to {self._corrupt_dir()}; fix them or use a new '
            'workdir')

    def _as_saved(self, step: int, abstract_state: Any) -> Any:
        """`abstract_state` without its `loss_scale` where checkpoint `step`
        holds none (saved before the float16 loss scale was checkpointed, or by
        a run in another dtype): the restored state's loss_scale is then None."""
        if getattr(abstract_state, 'loss_scale', None) is None:
            return abstract_state
        # (read by a handler of its own: a manager that has not saved yet has
        # no handler for 'state' and reports no metadata)
        saved = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / 'state')
        if 'loss_scale' in saved and saved['loss_scale'] is not None:
            return abstract_state
        return abstract_state.replace(loss_scale=None)

    def _corrupt_dir(self) -> epath.Path:
        return self.workdir / 'corrupt_checkpoints'

    def _set_aside(self, step: int, error: Exception):
        """Moves a damaged checkpoint out of the manager's directory (no delete)."""
        target = self._corrupt_dir() / f'{step}-{int(time.time())}'
        reason = (f'{type(error).__name__}: '
                  f'{str(error).splitlines()[0][:200] if str(error) else ""}')
        logging.warning('checkpoint %d in %s cannot be restored (%s); moving it '
                        'to %s and trying the previous one', step,
                        self.directory, reason, target)
        # Every process must have failed to read before one of them moves it.
        multihost_utils.sync_global_devices(f'corrupt_checkpoint_{step}_read')
        if jax.process_index() == 0:
            self._corrupt_dir().mkdir(parents=True, exist_ok=True)
            # The reason, beside it. On GCS, where a folder exists only once
            # an object is in it, this file also makes the rename's target
            # folder exist.
            target.with_name(target.name + '.reason.txt').write_text(reason + '\n')
            (self.directory / str(step)).rename(target)
        multihost_utils.sync_global_devices(f'corrupt_checkpoint_{step}_moved')
        self.manager.reload()


def check_identity(saved: dict, current: dict, directory: str):
    for key in IDENTITY_FIELDS:
        if key in saved and saved[key] != current.get(key):
            raise UserError(
                f'the checkpoints in {directory} belong to a run with {key}='
                f'{saved[key]!r}, but this config has {key}={current.get(key)!r}; '
                'use a new --workdir (or the original config)')
