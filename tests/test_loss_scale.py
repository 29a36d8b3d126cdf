"""float16's dynamic loss scale: compiled once, checkpointed, restored.

The scale lives in TrainState.loss_scale (steps.initial_loss_scale) and is
saved with the rest of the state; checkpoints without one (older ones, or of
runs in another dtype) still restore.
"""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import test_train_utils as tu
from senet_jax import checkpoint as checkpoint_lib
from senet_jax import trainer
from senet_jax.steps import initial_loss_scale
from test_trainer_units import _train_batch, tiny_config


def test_initial_loss_scale_is_strongly_typed():
    scale = initial_loss_scale()
    for leaf, dtype in ((scale.scale, np.float32), (scale.fin_steps, np.int32)):
        assert not getattr(jax.numpy.asarray(leaf), 'weak_type', False)
        assert jax.numpy.asarray(leaf).dtype == dtype
    assert float(scale.scale) == 2.0 ** 16


@pytest.fixture(scope='module')
def run16(tmp_path_factory):
    return trainer.setup(tiny_config(dtype='float16'), str(tmp_path_factory.mktemp('run16')))


@pytest.mark.slow
def test_float16_steps_compile_once_skip_an_overflow_and_keep_float32_state(run16):
    state = run16.steps.init(run16.init_rng)
    assert float(state.loss_scale.scale) == 2.0 ** 16
    start = jax.device_get(state.params)
    for step in range(3):
        state, metrics = run16.steps.train(state, _train_batch(run16, step), run16.dropout_rng)
        assert bool(metrics['finite']) and np.isfinite(float(metrics['loss']))
    assert run16.steps.train._cache_size() == 1
    for leaf in jax.tree.leaves((state.params, state.batch_stats)):
        assert leaf.dtype == np.float32
    assert not np.allclose(jax.device_get(state.params)['fc']['kernel'], start['fc']['kernel'])
    # A scale that overflows float16: the step is skipped (not an error) and
    # the scale halves; params stay as they were.
    huge = state.replace(loss_scale=state.loss_scale.replace(scale=np.float32(3e38)))
    params = jax.device_get(huge.params)
    after, metrics = run16.steps.train(huge, _train_batch(run16), run16.dropout_rng)
    assert bool(metrics['finite']) and float(after.loss_scale.scale) == np.float32(3e38) / 2
    tu.assert_trees_close(after.params, params, atol=0)


@pytest.mark.slow
def test_checkpoints_with_and_without_a_loss_scale_restore(run16, tmp_path):
    state = run16.steps.init(run16.init_rng)
    scaled = state.replace(step=state.step + 1, loss_scale=state.loss_scale.replace(
        scale=np.float32(1024), fin_steps=np.int32(7)))
    old = tmp_path / 'old'   # as saved before the loss scale was checkpointed
    with_old = checkpoint_lib.Checkpoints(str(old), async_save=False)
    with_old.save(1, state.replace(step=state.step + 1, loss_scale=None), run16.identity)
    restored = trainer.restore_or_init(run16, with_old)
    assert int(restored.step) == 1
    assert float(restored.loss_scale.scale) == 2.0 ** 16          # a fresh one
    assert restored.loss_scale.scale.dtype == np.float32 and not restored.loss_scale.scale.weak_type
    tu.assert_trees_close(restored.params, state.params, atol=0)
    with_old.close()

    new = checkpoint_lib.Checkpoints(str(tmp_path / 'new'), async_save=False)
    new.save(1, scaled, run16.identity)
    restored = trainer.restore_or_init(run16, new)
    assert float(restored.loss_scale.scale) == 1024 and int(restored.loss_scale.fin_steps) == 7
    # The same checkpoint resumed in float32 (the dtype is not the run's identity).
    run32 = trainer.setup(tiny_config(), str(tmp_path / 'run32'))
    assert trainer.restore_or_init(run32, new).loss_scale is None
    new.close()
    # float16 after float32: the float32 run's checkpoint has no scale.
    plain = checkpoint_lib.Checkpoints(str(old), async_save=False)
    assert float(trainer.restore_or_init(run16, plain).loss_scale.scale) == 2.0 ** 16
    plain.close()


def _loss_scale(workdir, step):
    path = f'{workdir}/checkpoints/{step}/state'
    with ocp.PyTreeCheckpointer() as ckptr:
        return jax.tree.map(np.asarray, ckptr.restore(path)['loss_scale'])
