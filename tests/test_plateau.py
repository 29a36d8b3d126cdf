"""lr_schedule='plateau' (optax.contrib.reduce_on_plateau fed the validation
loss) and the piecewise 'step' boundaries of the CIFAR recipes."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import test_train_utils as tu
from configs import common
from senet_jax import steps, trainer
from senet_jax.errors import UserError


def _config(**kw):
    c = common.base_config()
    c.update(dict(learning_rate=0.1, base_batch_size=0, lr_schedule='plateau',
                  momentum=0.0, weight_decay=0.0, plateau_patience=2), **kw)
    return c


def expected_scales(losses, patience, factor=0.1, rtol=1e-4):
    """The rule written out: x factor when `patience` evaluations in a row do
    not beat the best loss by rtol (relative); the count restarts after a cut."""
    best, bad, scale, out = float('inf'), 0, 1.0, []
    for loss in losses:
        if loss < (1 - rtol) * best:
            best, bad = loss, 0
        else:
            bad += 1
        if bad == patience:
            scale, bad = scale * factor, 0
        out.append(scale)
    return out


class _State:
    """Enough of a TrainState for observe_validation_loss."""

    def __init__(self, opt_state):
        self.opt_state = opt_state

    def replace(self, opt_state):
        return _State(opt_state)


@pytest.mark.slow
def test_validation_losses_cut_the_updates():
    c = _config()
    params = {'w': jnp.ones(3)}
    tx = steps.create_optimizer(c, steps.create_learning_rate_fn(c, 10, 100))
    state = _State(tx.init(params))
    grads = {'w': jnp.ones(3)}
    losses = [2.0, 1.5, 1.5, 1.6, 1.2, 1.3, 1.3, 1.3, 1.3]
    scales = []
    for loss in losses:
        state = steps.observe_validation_loss(state, loss, config=c)
        scales.append(float(steps.plateau_scale(state.opt_state)))
        updates, _ = tx.update(grads, state.opt_state, params)
        # SGD's update (-lr * g) multiplied by the scale: the rate is cut.
        np.testing.assert_allclose(updates['w'], -0.1 * scales[-1], rtol=1e-6)
    np.testing.assert_allclose(scales, expected_scales(losses, patience=2), rtol=1e-6)
    assert scales[-1] == pytest.approx(1e-3)
    # Training steps alone never change the scale: only evaluations do.
    opt_state = state.opt_state
    for _ in range(5):
        _, opt_state = tx.update(grads, opt_state, params)
    assert float(steps.plateau_scale(opt_state)) == pytest.approx(scales[-1])


def test_other_schedules_have_no_plateau_state():
    c = _config(lr_schedule='step')
    tx = steps.create_optimizer(c, optax.constant_schedule(0.1))
    assert steps.plateau_scale(tx.init({'w': jnp.ones(3)})) == 1.0


@pytest.mark.parametrize('field,value', [('plateau_factor', 1.0), ('plateau_patience', 0),
                                          ('plateau_cooldown', -1), ('plateau_min_scale', 2.0)])
def test_bad_plateau_fields_are_one_sentence(field, value):
    with pytest.raises(UserError, match='need 0 < plateau_factor < 1'):
        steps.create_optimizer(_config(**{field: value}), optax.constant_schedule(0.1))


def test_step_boundaries_in_steps_and_epochs():
    c = _config(lr_schedule='step', lr_decay_factor=0.1,
                lr_boundaries_steps=(32_000, 48_000))
    fn = steps.create_learning_rate_fn(c, steps_per_epoch=390, total_steps=64_000)
    assert [float(fn(s)) for s in (0, 31_999, 32_000, 47_999, 48_000, 63_999)] == \
        pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    c = _config(lr_schedule='step', lr_decay_factor=0.2,
                lr_boundaries_epochs=(60, 120, 160))
    fn = steps.create_learning_rate_fn(c, steps_per_epoch=390, total_steps=78_000)
    assert [float(fn(s)) for s in (23_399, 23_400, 46_800, 62_400, 77_999)] == \
        pytest.approx([0.1, 0.02, 0.004, 0.0008, 0.0008])
    with pytest.raises(UserError, match='not both'):
        steps.create_learning_rate_fn(_config(lr_schedule='step', lr_boundaries_steps=(5,),
                                              lr_boundaries_epochs=(1,)), 10, 100)
    with pytest.raises(UserError, match='positive and increasing'):
        steps.create_learning_rate_fn(_config(lr_schedule='step',
                                              lr_boundaries_epochs=(120, 60)), 10, 100)


def _run_config(num_train_steps):
    c = common.small_run_config(num_epochs=1.0)
    c.update(dataset='fake', num_classes=10, fake_num_examples=64, batch_size=8,
             lr_schedule='plateau', learning_rate=0.1, warmup_epochs=0.0,
             plateau_patience=1, num_train_steps=num_train_steps, log_every_steps=1,
             eval_every_steps=1, checkpoint_every_steps=1)
    return c


@pytest.mark.no_cover   # every line it runs, cheaper tests run too (docs/architecture.md, "Tests")
@pytest.mark.slow
def test_trainer_feeds_eval_loss_logs_the_cut_rate_and_resumes_with_it(tmp_path, monkeypatch):
    """Scripted validation losses (so the cuts are known): the logged rate
    follows them, and a run resumed from a checkpoint keeps the cut rate."""
    fed = []

    def scripted_evaluate(eval_fn, state, pipeline, mesh, max_batches=0):
        fed.append(2.0)  # never better than the first: a plateau from eval 2 on
        return {'eval_loss': fed[-1], 'eval_top1': 0.1, 'eval_top5': 0.5,
                'eval_examples': 8}
    monkeypatch.setattr(trainer, 'evaluate', scripted_evaluate)
    workdir = str(tmp_path / 'run')
    trainer.train_and_evaluate(_run_config(3), workdir)   # steps 1-3, then stop
    trainer.train_and_evaluate(_run_config(5), workdir)   # resumes at step 3
    lrs = [m['learning_rate'] for m in tu.metrics(workdir) if 'learning_rate' in m]
    # The rate of step s is set by the evaluations after steps 1..s-1.
    want = [0.1 * s for s in [1.0] + expected_scales(fed, patience=1)[:4]]
    assert want == pytest.approx([0.1, 0.1, 0.01, 0.001, 0.0001])
    assert lrs == pytest.approx(want, rel=1e-5)


@pytest.mark.slow
def test_real_validation_losses_drive_the_rate(tmp_path):
    """No scripting: the cuts follow the eval losses the run itself logged."""
    workdir = str(tmp_path / 'run')
    trainer.train_and_evaluate(_run_config(6), workdir)
    lines = tu.metrics(workdir)
    losses = [m['eval_loss'] for m in lines if 'eval_loss' in m]
    lrs = [m['learning_rate'] for m in lines if 'learning_rate' in m]
    want = [0.1 * s for s in [1.0] + expected_scales(losses, patience=1)[:5]]
    assert lrs == pytest.approx(want, rel=1e-5)
