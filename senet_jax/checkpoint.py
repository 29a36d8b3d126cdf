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
fails to restore on every process is moved to `<workdir>/corrupt_checkpoints/`
(never deleted) and the next older one used; one whose state has another
structure (another version of the trainer) is not damage and stops the run. A
save that fails to write (full disk, I/O error) stops the run in one line; its
partial directory is removed.

Every path may be local or a `gs://` URL: they go through etils.epath, which
Orbax itself uses, and never through os.path.
"""

import os
import time
from typing import Any, Iterable

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from senet_jax import errors
from senet_jax import sharding as sharding_lib
from senet_jax.errors import UserError

# A read that fails is tried again (a storage hiccup while many hosts read at
# once), READ_ATTEMPTS times in all, waiting READ_BACKOFF_S, then twice that.
READ_ATTEMPTS = 3
READ_BACKOFF_S = 1.0
# Tries at removing a failed save's partial directory (0.2 s apart).
REMOVE_ATTEMPTS = 10
# What each process found in one checkpoint, before all agree.
_OK, _UNREADABLE, _REFUSED = 0, 1, 2

# Orbax saves an array that is replicated over several devices in slices, one per
# replica, so that every host writes a part ("replica-parallel"). Each slice is a
# jitted program per array shape and device, compiled at a process's first save:
# on 8 CPU devices, 200 compiles for the quickstart's 30-step train.py run (29.2 s
# user, against 21.3 s without). Only slices of at least this size are worth
# their compile; a smaller array is written whole by one replica.
REPLICA_PARALLEL_MIN_SLICE_BYTES = 1 << 20

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
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={'state': _state_handler(),
                           'meta': ocp.JsonCheckpointHandler()})
        # Reads go through a checkpointer of this process alone: Orbax's own
        # restore ends in a barrier of all processes, where a process that read
        # fine would wait (minutes) for one that failed, before any agreement.
        me = jax.process_index()
        self._reader = ocp.Checkpointer(
            ocp.CompositeCheckpointHandler(),
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                primary_host=me, active_processes={me}))
        self._saving = None  # the step of the newest save started
        self._failed = None  # the WriteFailed already raised, if any
        if jax.process_index() == 0:
            self._remove_partial()  # of a run that failed or was killed

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict,
             metrics: dict | None = None) -> bool:
        """Starts an async save of `step`; False if that step is already saved.

        A failed write (full disk, quota, I/O error, permission) raises
        WriteFailed, one line, after removing the partial checkpoint; an
        earlier async save's failure surfaces here or at `wait`.
        """
        self._check(self._saving)
        if step in self.manager.all_steps():
            return False
        self._saving = step
        try:
            return self.manager.save(
                step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                              meta=ocp.args.JsonSave(meta)),
                metrics=metrics, force=True)
        except Exception as e:  # pylint: disable=broad-except
            self._save_failed(step, e)

    def wait(self):
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # pylint: disable=broad-except
            self._save_failed(self._saving, e)

    def close(self):
        try:
            self.manager.close()
        except Exception:  # pylint: disable=broad-except
            if self._failed is None:
                raise  # (after a failed save, its error has been reported)
        if self._failed is not None and jax.process_index() == 0:
            self._remove_partial()  # what the failed save's other items wrote since

    def _check(self, step):
        try:
            self.manager.check_for_errors()
        except Exception as e:  # pylint: disable=broad-except
            self._save_failed(step, e)

    def _save_failed(self, step, error: Exception):
        """A failed save: the partial checkpoint removed, WriteFailed raised
        naming what is kept. Errors that are no failed write are re-raised."""
        if errors.write_error_kind(error) is None:
            raise error
        if self._failed is not None:
            raise self._failed from None  # reported once, the same line
        if jax.process_index() == 0:
            self._remove_partial(step)
        self.manager.reload()
        latest = self.latest_step()
        kept = (f'checkpoint {latest} is complete and kept' if latest is not None
                else 'no earlier checkpoint exists')
        self._failed = errors.WriteFailed(
            'checkpoint', self.directory / str(step), error, kept=kept,
            needed_bytes=self._size(latest))
        raise self._failed from None

    def _remove_partial(self, step=None):
        """Removes the partial directory of `step` (None: of any step).

        Orbax writes a step into `<step>.orbax-checkpoint-tmp*` and renames it
        when complete (on GCS: marks it with commit_success.txt). When one item
        of a save fails, the others' writes may still be landing: what they
        write after this is removed by close() or the next start.
        """
        if not self.directory.exists():
            return
        for attempt in range(REMOVE_ATTEMPTS):
            try:
                for path in self.directory.iterdir():
                    name, _, rest = path.name.partition('.')
                    mine = name.isdigit() and (step is None or name == str(step))
                    partial = mine and 'orbax-checkpoint-tmp' in rest
                    uncommitted = (mine and not rest and step is not None and
                                   is_remote(path) and
                                   not (path / 'commit_success.txt').exists())
                    if partial or uncommitted:
                        logging.warning('removing the partial checkpoint %s', path)
                        path.rmtree()
                return
            except OSError as e:  # a write of another item had not ended yet
                if attempt == REMOVE_ATTEMPTS - 1:
                    logging.warning('could not remove the partial checkpoint %s '
                                    '(%s); it is never taken for a complete one',
                                    step, e)
                time.sleep(0.2)

    def _size(self, step) -> int | None:
        """Bytes of a complete checkpoint (local only): what the next one needs."""
        if step is None or is_remote(self.directory):
            return None
        return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in
                   os.walk(str(self.directory / str(step))) for f in files)

    def read_meta(self, step: int) -> dict:
        return self._reader.restore(
            self.directory / str(step),
            args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

    def restore_latest(self, abstract_state: Any, meta: dict,
                       may_be_absent: Iterable[str] = (), check=None):
        """(state, step) of the newest restorable checkpoint, or None if none exist.

        `abstract_state` carries the target shardings (jax.ShapeDtypeStruct with
        .sharding), so arrays land directly on the current mesh, whatever mesh
        saved them. `check(saved_meta, meta, directory)` decides whether a
        checkpoint belongs to this run (default: `check_identity`; the
        trainer's is workdir.check_resume). `may_be_absent` names fields of
        the state (attributes with a `.replace`) that a checkpoint may lack
        (an older version's) or hold where this state has None (a float16 loss
        scale resumed under float32): they restore as None, for the caller to
        fill.

        Every process reads (transient errors retried, READ_ATTEMPTS times) and
        then all agree: read by all -> resume; by none -> damaged, set aside,
        the previous one tried; by some only -> all stop, nothing moved. A
        checkpoint of another run or another state structure stops all with
        one line (it is not damage). Raises UserError.
        """
        check = check or check_identity
        steps = self.all_steps()
        if not steps:
            return None
        for step in reversed(steps):
            outcome, result = self._read_with_retries(
                step, abstract_state, meta, tuple(may_be_absent), check)
            outcomes = sharding_lib.all_processes(outcome)
            if all(o == _OK for o in outcomes):
                return result, step
            if _REFUSED in outcomes:
                if outcome == _REFUSED:
                    raise result
                raise UserError(f'process {outcomes.index(_REFUSED)} refused '
                                f'checkpoint {step} in {self.directory}; its '
                                'log says why')
            if _OK in outcomes:
                failed = [p for p, o in enumerate(outcomes) if o != _OK]
                mine = (f' ({_reason(result)})' if outcome != _OK else '')
                raise UserError(
                    f'process(es) {failed} could not read checkpoint {step} in '
                    f'{self.directory} after {READ_ATTEMPTS} attempts{mine}, the '
                    'others could; nothing was moved; check that every host '
                    'reaches the same storage and rerun')
            self._set_aside(step, result)
        raise UserError(
            f'none of the checkpoints {steps} in {self.directory} could be read; '
            f'they were moved to {self._corrupt_dir()}; fix them or use a new '
            'workdir')

    def _read_with_retries(self, step, abstract_state, meta, may_be_absent,
                           check):
        """(_OK, state), (_REFUSED, UserError) or (_UNREADABLE, last error)."""
        delay = READ_BACKOFF_S
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return _OK, self._read(step, abstract_state, meta, may_be_absent,
                                       check)
            except UserError as e:
                return _REFUSED, e
            except Exception as e:  # pylint: disable=broad-except
                if attempt == READ_ATTEMPTS:
                    return _UNREADABLE, e
                logging.warning('reading checkpoint %d failed (attempt %d of %d: '
                                '%s); retrying in %.1f s', step, attempt,
                                READ_ATTEMPTS, _reason(e), delay)
                time.sleep(delay)
                delay *= 2

    def _read(self, step, abstract_state, meta, may_be_absent, check=None):
        """One attempt at reading `step`: its state, or raises (UserError for a
        checkpoint that is readable but not this run's)."""
        path = self.directory / str(step)
        (check or check_identity)(self.read_meta(step), meta, self.directory)
        saved = ocp.PyTreeCheckpointHandler().metadata(path / 'state').tree
        target = abstract_state
        absent, unused, problem = structure_difference(saved, abstract_state,
                                                       may_be_absent)
        if problem:
            raise UserError(
                f'checkpoint {step} in {self.directory} holds another state '
                f'structure than this version of the trainer ({problem}); it was '
                'written by another version: resume with that version, or use a '
                'new --workdir')
        if absent:
            logging.info('checkpoint %d has no %s (an older version); they start '
                         'fresh', step, ', '.join(absent))
            target = target.replace(**{name: None for name in absent})
        if unused:  # read as the checkpoint holds them, then let go
            sharding = getattr(jax.tree.leaves(abstract_state)[0], 'sharding', None)
            target = target.replace(**{name: jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                saved[name]) for name in unused})
        # A field the checkpoint lacks altogether (written before the field
        # existed; a None field is saved as a key), None in `target` by now
        # whether this run uses it or not, is left out of what Orbax reads,
        # whose tree must match the checkpoint's, and put back as None.
        lacked = [name for name in may_be_absent if name not in saved]
        item = target
        if lacked:
            item = ocp.tree.serialize_tree(target, keep_empty_nodes=True)
            for name in lacked:
                item.pop(name)
        state = self._reader.restore(
            path, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(item)))['state']
        if lacked:
            state = ocp.tree.deserialize_tree(
                {**state, **{name: None for name in lacked}}, target,
                keep_empty_nodes=True)
        return state.replace(**{name: None for name in unused}) if unused else state

    def _corrupt_dir(self) -> epath.Path:
        return self.workdir / 'corrupt_checkpoints'

    def _set_aside(self, step: int, error: Exception):
        """Moves a damaged checkpoint out of the manager's directory (no delete).
        Called by every process, once all agreed that none can read it."""
        target = self._corrupt_dir() / f'{step}-{int(time.time())}'
        reason = _reason(error)
        logging.warning('checkpoint %d in %s cannot be restored (%s); moving it '
                        'to %s and trying the previous one', step,
                        self.directory, reason, target)
        if jax.process_index() == 0:
            self._corrupt_dir().mkdir(parents=True, exist_ok=True)
            # The reason, beside it. On GCS, where a folder exists only once
            # an object is in it, this file also makes the rename's target
            # folder exist.
            target.with_name(target.name + '.reason.txt').write_text(reason + '\n')
            (self.directory / str(step)).rename(target)
        multihost_utils.sync_global_devices(f'corrupt_checkpoint_{step}_moved')
        self.manager.reload()


def _state_handler() -> ocp.PyTreeCheckpointHandler:
    """What StandardSave writes with, but with replica-parallel saving only for
    slices of REPLICA_PARALLEL_MIN_SLICE_BYTES or more.

    The files are the same as StandardSave's, so StandardRestore reads them.
    """
    default = ocp.type_handlers.get_type_handler(jax.Array)
    arrays = ocp.type_handlers.ArrayHandler(
        min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_SLICE_BYTES,
        # The per-array metadata (write shapes) that the default handler keeps;
        # Orbax itself finds it under this name.
        array_metadata_store=getattr(default, '_array_metadata_store', None))
    registry = ocp.type_handlers.create_type_handler_registry(*[
        (ty, arrays if ty is jax.Array else ocp.type_handlers.get_type_handler(ty))
        for ty in ocp.type_handlers.supported_types()])
    return ocp.PyTreeCheckpointHandler(
        save_concurrent_gb=96, restore_concurrent_gb=96,  # StandardSave's
        type_handler_registry=registry)


def _reason(error: Exception) -> str:
    first = str(error).splitlines()[0][:200] if str(error) else ''
    return f'{type(error).__name__}: {first}'


def _flat_keys(tree) -> dict:
    """{'params.fc.kernel': shape, ...} of the arrays of a state or of a
    checkpoint's metadata, in Orbax's own naming (so both sides are named
    alike); empty nodes (a None field, an empty optimizer state) hold none."""
    flat = ocp.tree.to_flat_dict(ocp.tree.serialize_tree(tree, keep_empty_nodes=True))
    return {'.'.join(str(k) for k in key): tuple(value.shape)
            for key, value in flat.items() if hasattr(value, 'shape')}


def structure_difference(saved, abstract_state, may_be_absent=()):
    """(absent, unused, problem) between a checkpoint's tree metadata and the
    state this trainer restores into.

    A top-level field in `may_be_absent` is no problem when the checkpoint
    lacks it entirely (`absent`: an older version's checkpoint, restored
    without it) or when this state has none of it (`unused`: say a float16
    loss scale, resumed under float32; read and dropped). Any other key
    missing or extra, or a shape that differs, is named in `problem`.
    """
    have, want = _flat_keys(saved), _flat_keys(abstract_state)

    def fields(keys):
        return {k.split('.')[0] for k in keys}
    absent = [name for name in may_be_absent
              if name in fields(want) and name not in fields(have)]
    unused = [name for name in may_be_absent
              if name in fields(have) and name not in fields(want)]
    want = {k: v for k, v in want.items() if k.split('.')[0] not in absent}
    have = {k: v for k, v in have.items() if k.split('.')[0] not in unused}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    shapes = sorted(k for k in set(have) & set(want) if have[k] != want[k])
    parts = []
    for label, keys in (('missing from the checkpoint', missing),
                        ('only in the checkpoint', extra),
                        ('other shape', shapes)):
        if keys:
            shown = ', '.join(keys[:6]) + (f' and {len(keys) - 6} more'
                                           if len(keys) > 6 else '')
            parts.append(f'{label}: {shown}')
    return absent, unused, '; '.join(parts) or None


def check_identity(saved: dict, current: dict, directory: str):
    for key in IDENTITY_FIELDS:
        if key in saved and saved[key] != current.get(key):
            raise UserError(
                f'the checkpoints in {directory} belong to a run with {key}='
                f'{saved[key]!r}, but this config has {key}={current.get(key)!r}; '
                'use a new --workdir (or the original config)')
