"""The EMA of the weights (config.ema_decay): its update, evaluation, checkpoints
and resumes. A tiny model on fake data for a few steps (test_trainer_units'
tiny_config); decay 0.5 so that every step shows in the average."""

import logging

import jax
import numpy as np
import pytest

import test_train_utils as tu
from senet_jax import trainer
from senet_jax.errors import Preempted, UserError
from senet_jax.steps import ema_decay_of
from test_trainer_units import tiny_config

DECAY = 0.5


@pytest.mark.parametrize('decay', [-0.1, 1.0, 1.5])
def test_ema_decay_outside_0_1_is_one_sentence(decay):
    with pytest.raises(UserError, match=r'^ema_decay must be in \[0, 1\) \(0 = no EMA\), '
                                        rf'got {decay}$'):
        trainer.validate_config(tiny_config(ema_decay=decay))


def test_ema_off_by_default_keeps_the_state_tree():
    """ema_decay=0 (the default): TrainState.ema is None, so the state, its
    checkpoints and the train step are those of a run without the field."""
    config = tiny_config()
    assert ema_decay_of(config) == 0.0
    model = trainer.create_model_from_config(config, num_classes=10, dtype='float32')
    tx = trainer.create_optimizer(config, lambda step: 0.1)
    state = jax.eval_shape(lambda rng: trainer.create_train_state(rng, config, model, tx),
                           jax.random.key(0))
    assert state.ema is None
    config.ema_decay = DECAY
    state = jax.eval_shape(lambda rng: trainer.create_train_state(rng, config, model, tx),
                           jax.random.key(0))
    assert jax.tree.structure(state.ema) == jax.tree.structure(
        {'params': state.params, 'batch_stats': state.batch_stats})


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.mark.slow
def test_ema_after_k_steps_is_the_closed_form(tmp_path):
    """ema_k = d^k w_0 + (1 - d) sum_{i=1..k} d^(k-i) w_i over the params and
    the BatchNorm statistics, w_i the weights after step i."""
    # (the resume test's config: its compiled step, from the cache)
    run = trainer.setup(tiny_config(num_train_steps=4, ema_decay=DECAY), str(tmp_path))
    state = run.steps.init(run.init_rng)
    weights = [_host({'params': state.params, 'batch_stats': state.batch_stats})]
    np.testing.assert_equal(_host(state.ema), weights[0])   # it starts as the weights
    batches = run.pipeline.train_batches(0)
    k = 3
    for _ in range(k):
        state, metrics = run.steps.train(
            state, trainer.sharding_lib.shard_batch(next(batches), run.mesh),
            run.dropout_rng)
        assert bool(metrics['finite'])
        weights.append(_host({'params': state.params, 'batch_stats': state.batch_stats}))
    expected = jax.tree.map(
        lambda *w: DECAY ** k * w[0] + sum((1 - DECAY) * DECAY ** (k - i) * w[i]
                                           for i in range(1, k + 1)), *weights)
    got = _host(state.ema)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The EMA is not the model: three steps of decay 0.5 keep w_0 at 1/8.
    assert not np.allclose(jax.tree.leaves(got['params'])[0],
                           jax.tree.leaves(weights[-1]['params'])[0])
    # A step that is not applied (non-finite) leaves the EMA as it was.
    bad = state.replace(params=jax.tree.map(lambda x: x * np.float32('nan'), state.params))
    after, metrics = run.steps.train(
        bad, trainer.sharding_lib.shard_batch(next(batches), run.mesh), run.dropout_rng)
    assert not bool(metrics['finite'])
    np.testing.assert_equal(_host(after.ema), got)


def _stop_at(monkeypatch, stop_step):
    real = trainer.Preemption.reached
    monkeypatch.setattr(trainer.Preemption, 'reached',
                        lambda self, step: step == stop_step or real(self, step))


@pytest.mark.no_cover   # every line it runs, cheaper tests run too (docs/architecture.md, "Tests")
@pytest.mark.slow
def test_resumed_ema_equals_the_uninterrupted_runs_and_is_evaluated(tmp_path, monkeypatch):
    config = tiny_config(num_train_steps=4, ema_decay=DECAY)
    whole, stopped = str(tmp_path / 'whole'), str(tmp_path / 'stopped')
    result = trainer.train_and_evaluate(config, whole)
    # Each eval reports the model's metrics and the EMA's, ema_-prefixed.
    evals = [m for m in tu.metrics(whole) if 'eval_top1' in m]
    assert [m['step'] for m in evals] == [2, 4]
    for m in evals:
        assert {'ema_eval_loss', 'ema_eval_top1', 'ema_eval_top5'} <= set(m)
        assert np.isfinite(m['ema_eval_loss']) and 0 <= m['ema_eval_top1'] <= 1
    assert result['ema_eval_top1'] == evals[-1]['ema_eval_top1']

    with monkeypatch.context() as m:
        _stop_at(m, 1)
        with pytest.raises(Preempted):
            trainer.train_and_evaluate(config, stopped)
    assert tu.checkpoint_steps(stopped) == [1]
    trainer.train_and_evaluate(config, stopped)
    a, b = tu.load_params(whole, 4), tu.load_params(stopped, 4)
    assert a['ema'] is not None
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)   # the EMA exactly, params too


@pytest.mark.slow
def test_checkpoint_without_ema_resumes_with_the_ema_started_from_it(tmp_path, monkeypatch,
                                                                    caplog):
    """A workdir written without EMA (ema_decay=0, or a version without the
    field) resumed with ema_decay > 0: not damage; the EMA starts from the
    restored weights, logged. Written by a version without the field, the
    config has no ema_decay to compare, so no allow_config_change is needed."""
    workdir = str(tmp_path)
    old = tiny_config(num_train_steps=4)
    del old['ema_decay']
    with monkeypatch.context() as m:
        _stop_at(m, 1)
        with pytest.raises(Preempted):
            trainer.train_and_evaluate(old, workdir)
    assert tu.load_params(workdir, 1)['ema'] is None
    with caplog.at_level(logging.INFO):
        result = trainer.train_and_evaluate(tiny_config(num_train_steps=4, ema_decay=DECAY),
                                            workdir)
    assert 'checkpoint 1 holds no EMA of the weights; the EMA (ema_decay=0.5) starts ' \
           'from its weights' in caplog.text
    assert 'ema_eval_top1' in result and tu.load_params(workdir, 4)['ema'] is not None
