"""Orbax checkpoints in `<workdir>/checkpoints`: async saves, retention, resume.

Each checkpoint step holds two items:
  state: the TrainState pytree (params, batch_stats, opt_state, step). The step
         is also the data position: the input stream is a pure function of it.
  meta:  JSON identity of the run (model, num_classes, dataset, batch size...),
         checked before resuming so a workdir of another model is refused.

Retention uses Orbax preservation policies: the newest `keep` checkpoints plus
the best by eval top-1 (checkpoints saved with metrics). Orbax writes into a
temporary directory and renames it when complete, so a save killed half-way is
never listed; a finished-but-damaged checkpoint that fails to restore is moved
to `<workdir>/corrupt_checkpoints/` (never deleted) and the next older one used.
"""

import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from senet_jax.errors import UserError

# Identity fields whose change makes old checkpoints unusable for this config.
IDENTITY_FIELDS = ('model', 'num_classes', 'model_overrides', 'dataset',
                   'batch_size')


class Checkpoints:
    """A CheckpointManager plus the resume rules of our trainer."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, 'checkpoints')
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
                        state=ocp.args.StandardRestore(abstract_state)))
                return restored['state'], step
            except Exception as e:  # pylint: disable=broad-except
                self._set_aside(step, e)
        raise UserError(
            f'none of the checkpoints {steps} in {self.directory} could be read; '
            f'they were moved to {self._corrupt_dir()}; fix them or use a new '
            'workdir')

    def _corrupt_dir(self):
        return os.path.join(self.workdir, 'corrupt_checkpoints')

    def _set_aside(self, step: int, error: Exception):
        """Moves a damaged checkpoint out of the manager's directory (no delete)."""
        target = os.path.join(self._corrupt_dir(), f'{step}-{int(time.time())}')
        logging.warning('checkpoint %d in %s cannot be restored (%s: %s); moving '
                        'it to %s and trying the previous one', step,
                        self.directory, type(error).__name__,
                        str(error).splitlines()[0][:200] if str(error) else '',
                        target)
        # Every process must have failed to read before one of them moves it.
        multihost_utils.sync_global_devices(f'corrupt_checkpoint_{step}_read')
        if jax.process_index() == 0:
            os.makedirs(self._corrupt_dir(), exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), target)
        multihost_utils.sync_global_devices(f'corrupt_checkpoint_{step}_moved')
        self.manager.reload()


def check_identity(saved: dict, current: dict, directory: str):
    for key in IDENTITY_FIELDS:
        if key in saved and saved[key] != current.get(key):
            raise UserError(
                f'the checkpoints in {directory} belong to a run with {key}='
                f'{saved[key]!r}, but this config has {key}={current.get(key)!r}; '
                'use a new --workdir (or the original config)')
