"""Which checkpoint a resume takes: transient errors, damage, another structure.

In process, on a small pytree (no model): Checkpoints' own rules.
"""

import errno
import os

import flax
import jax
import jax.numpy as jnp
import optax
import pytest

from senet_jax import checkpoint as checkpoint_lib
from senet_jax.errors import UserError


@flax.struct.dataclass
class State:
    params: dict
    step: jax.Array
    opt_state: tuple = ()  # with empty nodes, as optax's states have
    ema: dict | None = None  # a field "added in a later version"


def _state(step, ema=False):
    params = {'w': jnp.full((3, 2), float(step)), 'b': jnp.zeros(2)}
    return State(params=params, step=jnp.int32(step),
                 opt_state=optax.sgd(0.1, momentum=0.9).init(params),
                 ema=jax.tree.map(jnp.copy, params) if ema else None)


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


META = {'model': 'm'}


@pytest.fixture
def saved(tmp_path, monkeypatch):
    """A workdir with checkpoints 1 and 2 of a state without `ema`."""
    monkeypatch.setattr(checkpoint_lib, 'READ_BACKOFF_S', 0.0)
    ckpts = checkpoint_lib.Checkpoints(str(tmp_path), async_save=False)
    for step in (1, 2):
        ckpts.save(step, _state(step), META)
    ckpts.close()
    return str(tmp_path)


def _corrupt(workdir):
    path = os.path.join(workdir, 'corrupt_checkpoints')
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def test_a_transient_read_error_is_retried(saved, monkeypatch):
    ckpts = checkpoint_lib.Checkpoints(saved)
    real, calls = ckpts._read, []

    def flaky(*args):
        calls.append(args[0])
        if len(calls) == 1:
            raise OSError(errno.EIO, 'storage hiccup')
        return real(*args)
    monkeypatch.setattr(ckpts, '_read', flaky)
    state, step = ckpts.restore_latest(_abstract(_state(0)), META)
    assert step == 2 and calls == [2, 2] and float(state.params['w'][0, 0]) == 2
    assert _corrupt(saved) == []


def test_damage_is_set_aside_and_the_previous_one_used(saved):
    for root, _, files in os.walk(os.path.join(saved, 'checkpoints', '2', 'state')):
        for f in files:
            with open(os.path.join(root, f), 'wb') as fh:
                fh.write(b'\0damaged')
    ckpts = checkpoint_lib.Checkpoints(saved)
    _, step = ckpts.restore_latest(_abstract(_state(0)), META)
    assert step == 1
    assert [n for n in _corrupt(saved) if not n.endswith('.txt')][0].startswith('2-')
    assert ckpts.all_steps() == [1]


def test_another_state_structure_stops_naming_the_keys(saved):
    ckpts = checkpoint_lib.Checkpoints(saved)
    with pytest.raises(UserError) as e:
        ckpts.restore_latest(_abstract(_state(0, ema=True)), META)
    message = str(e.value)
    assert 'checkpoint 2' in message and 'another state structure' in message
    assert 'missing from the checkpoint: ema.b, ema.w' in message
    assert '\n' not in message
    # Not damage: nothing set aside, both checkpoints still there.
    assert _corrupt(saved) == [] and ckpts.all_steps() == [1, 2]


def test_a_key_only_in_the_checkpoint_and_a_shape_are_named(tmp_path):
    ckpts = checkpoint_lib.Checkpoints(str(tmp_path), async_save=False)
    ckpts.save(1, _state(1, ema=True), META)
    narrower = _state(0).replace(params={'w': jnp.zeros((3, 1)), 'b': jnp.zeros(2)})
    with pytest.raises(UserError, match=r'only in the checkpoint: ema\.b, ema\.w; '
                       r'other shape: params\.w'):
        ckpts.restore_latest(_abstract(narrower), META)
    ckpts.close()


def test_a_field_older_checkpoints_lack_is_migrated(saved):
    """The migration hook: a field named in may_be_absent restores as None."""
    ckpts = checkpoint_lib.Checkpoints(saved)
    state, step = ckpts.restore_latest(_abstract(_state(0, ema=True)), META,
                                       may_be_absent=('ema',))
    assert step == 2 and state.ema is None
    assert float(state.params['w'][0, 0]) == 2 and _corrupt(saved) == []


@flax.struct.dataclass
class OlderState:
    """State as a version before `ema` wrote it: no such key at all (a field
    that is None is still saved as a key)."""
    params: dict
    step: jax.Array
    opt_state: tuple = ()


def test_a_field_a_version_before_it_never_wrote_is_migrated(tmp_path):
    ckpts = checkpoint_lib.Checkpoints(str(tmp_path), async_save=False)
    old = _state(3)
    ckpts.save(3, OlderState(params=old.params, step=old.step, opt_state=old.opt_state),
               META)
    state, step = ckpts.restore_latest(_abstract(_state(0, ema=True)), META,
                                       may_be_absent=('ema',))
    assert step == 3 and state.ema is None and isinstance(state, State)
    assert float(state.params['w'][0, 0]) == 3 and int(state.step) == 3
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(old.opt_state)
    # And by a run that does not use the field either (its state has it None).
    state, step = ckpts.restore_latest(_abstract(_state(0)), META, may_be_absent=('ema',))
    assert step == 3 and state.ema is None and float(state.params['w'][0, 0]) == 3
    ckpts.close()


def test_a_field_this_run_does_not_use_is_read_and_dropped(tmp_path):
    """The other side of the hook: the checkpoint holds a field (a float16
    loss scale, say) that this run's state has as None."""
    ckpts = checkpoint_lib.Checkpoints(str(tmp_path), async_save=False)
    ckpts.save(1, _state(1, ema=True), META)
    with pytest.raises(UserError, match=r'only in the checkpoint: ema\.b, ema\.w'):
        ckpts.restore_latest(_abstract(_state(0)), META)
    state, step = ckpts.restore_latest(_abstract(_state(0)), META,
                                       may_be_absent=('ema',))
    assert step == 1 and state.ema is None
    assert float(state.params['w'][0, 0]) == 1
    ckpts.close()


def test_a_checkpoint_written_with_standard_save_is_restored(tmp_path):
    """Versions before the replica-parallel threshold saved the state item with
    Orbax's StandardSave (its handler named in the step's metadata): they resume."""
    import orbax.checkpoint as ocp
    with ocp.CheckpointManager(tmp_path / 'checkpoints') as manager:
        manager.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(_state(4)),
                                                meta=ocp.args.JsonSave(META)))
    ckpts = checkpoint_lib.Checkpoints(str(tmp_path), async_save=False)
    state, step = ckpts.restore_latest(_abstract(_state(0)), META)
    assert step == 4 and float(state.params['w'][0, 0]) == 4 and int(state.step) == 4
    ckpts.save(5, _state(5), META)   # and the run goes on with the new handler
    state, step = ckpts.restore_latest(_abstract(_state(0)), META)
    assert step == 5 and float(state.params['w'][0, 0]) == 5
    ckpts.close()
