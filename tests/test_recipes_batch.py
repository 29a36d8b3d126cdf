"""The ResNet Strikes Back pieces of the trainer (issue 23, part 'batch') against timm:
LAMB, binary cross-entropy, Mixup/CutMix on the device, stochastic depth, their config
checks, and a short digits run with all of them that resumes to the same losses.

The timm results are in fixtures/recipes_batch.json (`python tests/make_reference.py
recipes_batch`, with timm); the suite needs no torch.
"""
import functools
import json
import math
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import test_train_utils as tu
from senet_jax import SqueezeExcite, create_model, steps, trainer
from senet_jax.errors import UserError
from senet_jax.layers import drop_path_rates, drop_path_scale
from senet_jax.mixing import Mixing, MixParams, cutmix_box, mix
from senet_jax.models.resnet import ResidualBlock

with open(os.path.join(os.path.dirname(__file__), 'fixtures', 'recipes_batch.json')) as _f:
    TIMM = json.load(_f)


# ---------------------------------------------------------------------------
# LAMB.


def _tree(flat):
    """{'conv/kernel': v, ...} -> {'conv': {'kernel': v}, ...}"""
    tree = {}
    for key, value in flat.items():
        outer, inner = key.split('/')
        tree.setdefault(outer, {})[inner] = np.asarray(value, np.float32)
    return tree


def numpy_lamb(params, grads, lr, weight_decay, b1, b2, eps, decayed, max_grad_norm=1.0):
    """LAMB written out (timm's Lamb, NvLAMB): the gradient clipped to a global norm,
    Adam's moments with bias correction, decay added to the update of the decayed
    leaves, whose update is then scaled by the trust ratio ||w|| / ||update||.
    Flat dicts of float64 arrays; returns the parameters after each step."""
    w = {k: np.float64(v) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    history = []
    for t, g in enumerate(grads, start=1):
        g = {k: np.float64(x) for k, x in g.items()}
        norm = math.sqrt(sum(np.sum(x ** 2) for x in g.values()))
        g = {k: x / max(norm / max_grad_norm, 1.0) for k, x in g.items()}
        for k in w:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            u = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
            if k in decayed:
                u = u + weight_decay * w[k]
                w_norm, u_norm = np.linalg.norm(w[k]), np.linalg.norm(u)
                u = u * (w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0)
            w[k] = w[k] - lr * u
        history.append(dict(w))
    return history


def test_lamb_matches_numpy_and_timm():
    case = TIMM['lamb']
    b1, b2 = case['betas']
    tx = steps.lamb(optax.constant_schedule(case['lr']), case['weight_decay'], b1, b2, case['eps'])
    params = _tree(case['init'])
    state = tx.init(params)

    @jax.jit   # one small compile instead of hundreds of ops dispatched one by one
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state
    ours = []
    for g in case['grads']:
        params, state = step(params, state, _tree(g))
        ours.append(params)
    expected = numpy_lamb({k: np.asarray(v) for k, v in case['init'].items()},
                          [{k: np.asarray(v) for k, v in g.items()} for g in case['grads']],
                          case['lr'], case['weight_decay'], b1, b2, case['eps'],
                          decayed={'conv/kernel'})
    assert math.sqrt(sum(np.sum(np.square(x)) for x in case['grads'][0].values())) > 1  # clipped
    for step, (got, want, timm) in enumerate(zip(ours, expected, case['after'])):
        for key in want:
            outer, inner = key.split('/')
            np.testing.assert_allclose(got[outer][inner], want[key], rtol=1e-5, atol=2e-6,
                                       err_msg=f'step {step + 1} {key} vs numpy')
            np.testing.assert_allclose(got[outer][inner], timm[key], rtol=1e-5, atol=2e-6,
                                       err_msg=f'step {step + 1} {key} vs timm')


def test_optimizer_field_selects_lamb_and_sgd_keeps_its_state():
    config = ml_collections.ConfigDict(dict(
        optimizer='lamb', weight_decay=0.02, momentum=0.9, nesterov=False, lamb_b1=0.9,
        lamb_b2=0.999, lamb_eps=1e-6, lr_schedule='cosine'))
    params = _tree(TIMM['lamb']['init'])
    lamb_state = steps.create_optimizer(config, optax.constant_schedule(0.1)).init(params)
    assert any(isinstance(s, optax.ScaleByAdamState) for s in jax.tree.leaves(
        lamb_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState)))
    # The paper's SGD: the optimizer state of older checkpoints, unchanged.
    config.optimizer = 'sgd'
    schedule = optax.constant_schedule(0.1)
    sgd_state = steps.create_optimizer(config, schedule).init(params)
    old = optax.chain(optax.add_decayed_weights(1e-4, mask=steps.weight_decay_mask),
                      optax.sgd(schedule, momentum=0.9)).init(params)
    assert jax.tree.structure(sgd_state) == jax.tree.structure(old)


# ---------------------------------------------------------------------------
# Binary cross-entropy.


@pytest.mark.parametrize('name', [c['name'] for c in TIMM['bce']['cases']])
def test_bce_matches_timm(name):
    case = next(c for c in TIMM['bce']['cases'] if c['name'] == name)
    logits = jnp.asarray(TIMM['bce']['logits'], jnp.float32)
    target = np.asarray(case['target'])
    if target.ndim == 1:   # labels: smoothed one-hot, as timm's own smoothing
        targets = steps.soft_targets(target, logits.shape[-1], case['kwargs']['smoothing'])
    else:                  # dense (mixed) targets come smoothed already
        targets = jnp.asarray(target, jnp.float32)
    loss = steps.binary_cross_entropy_loss(logits, targets, case['kwargs'].get('target_threshold'))
    np.testing.assert_allclose(float(loss.mean()), case['loss'], rtol=1e-6)


# ---------------------------------------------------------------------------
# Mixup and CutMix.


@pytest.mark.parametrize('case', TIMM['cutmix_box'], ids=lambda c: f"{c['shape']}-{c['lam']}-{c['centre']}")
def test_cutmix_box_matches_timm(case):
    (h, w), (cy, cx) = case['shape'], case['centre']
    box, lam = cutmix_box(jnp.float32(case['lam']), cy, cx, h, w)
    assert [int(v) for v in box] == case['box']
    np.testing.assert_allclose(float(lam), case['corrected_lam'], rtol=1e-6)


def _timm_params(case, n, height, width):
    """MixParams for a fixture case: its lambdas and methods for the batch, each pair
    or each image, the CutMix boxes from its centres, in the order timm drew them."""
    centres = iter(case['centres'])
    lams, cutmix, boxes = [], [], []
    for lam, use_cutmix in zip(case['lam'], case['cutmix']):
        box = [0, 0, 0, 0]
        if use_cutmix and lam != 1:
            cy, cx = next(centres)
            box, lam = cutmix_box(jnp.float32(lam), cy, cx, height, width)
            box, lam = [int(v) for v in box], float(lam)
        lams.append(lam)
        cutmix.append(use_cutmix)
        boxes.append(box)
    if case['mode'] == 'batch':
        lams, cutmix, boxes = lams * n, cutmix * n, boxes * n
    elif case['mode'] == 'pair':
        lams, cutmix, boxes = lams + lams[::-1], cutmix + cutmix[::-1], boxes + boxes[::-1]
    return MixParams(jnp.asarray(lams, jnp.float32), jnp.asarray(cutmix), jnp.asarray(boxes, jnp.int32))


@pytest.mark.parametrize('index', range(len(TIMM['mixup']['cases'])),
                         ids=[f"{c['mode']}-{c['lam']}" for c in TIMM['mixup']['cases']])
def test_mix_matches_timm(index):
    fixture, case = TIMM['mixup'], TIMM['mixup']['cases'][index]
    x = np.asarray(fixture['x'], np.float32).transpose(0, 2, 3, 1)   # NCHW -> NHWC
    n, height, width = x.shape[:3]
    targets = steps.soft_targets(np.asarray(fixture['labels']), fixture['num_classes'],
                                 fixture['smoothing'])
    mixed, mixed_targets = mix(jnp.asarray(x), targets, _timm_params(case, n, height, width))
    np.testing.assert_allclose(np.asarray(mixed).transpose(0, 3, 1, 2), case['mixed'], atol=1e-6)
    np.testing.assert_allclose(mixed_targets, case['target'], atol=1e-6)


@pytest.mark.slow   # Beta's sampler compiles for each shape: two here (1 and 16 draws)
def test_draw_follows_the_mode_and_probabilities():
    key = jax.random.key(0)
    batch = Mixing(mixup_alpha=0.8, cutmix_alpha=1.0).draw(key, 8, 16, 16)
    assert len(set(np.asarray(batch.lam).tolist())) == 1 and batch.box.shape == (8, 4)
    pair = Mixing(0.8, 1.0, mode='pair').draw(key, 32, 16, 16)
    for field in pair:
        np.testing.assert_array_equal(field, field[::-1])
    elem = Mixing(0.8, 1.0, mode='elem').draw(key, 16, 16, 16)
    lam, cut = np.asarray(elem.lam), np.asarray(elem.use_cutmix)
    assert ((0 <= lam) & (lam <= 1)).all() and 0 < cut.mean() < 1
    # CutMix's lam is the complement of the pasted area.
    yl, yh, xl, xh = np.asarray(elem.box).T
    np.testing.assert_allclose(lam[cut], (1 - (yh - yl) * (xh - xl) / 256)[cut], rtol=1e-6)
    never = Mixing(0.8, 1.0, prob=0.0, mode='elem').draw(key, 16, 16, 16)
    assert (np.asarray(never.lam) == 1).all() and not np.asarray(never.use_cutmix).any()
    assert np.asarray(Mixing(0.0, 1.0, mode='elem').draw(key, 16, 16, 16).use_cutmix).all()
    assert not np.asarray(Mixing(0.5, 0.0, mode='elem').draw(key, 16, 16, 16).use_cutmix).any()
    switched = Mixing(0.5, 1.0, switch_prob=1.0, mode='elem').draw(key, 16, 16, 16)
    assert np.asarray(switched.use_cutmix).all()
    again = Mixing(0.8, 1.0, mode='elem').draw(key, 16, 16, 16)   # the key decides
    jax.tree.map(np.testing.assert_array_equal, elem, again)


# ---------------------------------------------------------------------------
# Stochastic depth.


def test_drop_path_rates_are_timms_for_resnet50():
    case = TIMM['drop_path']
    np.testing.assert_allclose(drop_path_rates((3, 4, 6, 3), case['drop_path_rate']),
                               case['rates'], rtol=1e-12)


def test_drop_path_scale_is_a_per_example_mask_scaled_by_keep():
    key, rate = jax.random.key(3), 0.25
    scale = np.asarray(drop_path_scale(key, 4000, rate))
    kept = np.asarray(jax.random.bernoulli(key, 1 - rate, (4000,)))
    np.testing.assert_allclose(scale, np.where(kept, 1 / (1 - rate), 0.0), rtol=1e-7)
    assert abs(kept.mean() - (1 - rate)) < 0.03   # each example kept with 1 - rate


@pytest.mark.slow
def test_resnet_blocks_get_timms_rates():
    """resnet50's blocks are built with timm's per-block rates (traced, not run)."""
    seen = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, ResidualBlock) and context.method_name == '__call__':
            seen.append(context.module.drop_path_rate)
        return next_fun(*args, **kwargs)

    model = create_model('resnet50', drop_path_rate=TIMM['drop_path']['drop_path_rate'], num_classes=10)
    with nn.intercept_methods(record):
        jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                       jnp.zeros((1, 32, 32, 3)))
    np.testing.assert_allclose(seen, TIMM['drop_path']['rates'], rtol=1e-12)


def _block_apply(block, x, seed=0, **kw):
    variables = block.init(jax.random.key(1), x, train=False)
    return block.apply(variables, x, train=True, mutable=['batch_stats'],
                       rngs={'dropout': jax.random.key(seed)}, **kw)


@pytest.mark.slow
def test_drop_path_drops_or_scales_each_branch():
    """relu(branch * d + shortcut), with d in {0, 1/keep} per example: the branch's
    last BN output read back, the addition redone in numpy."""
    x = jax.random.normal(jax.random.key(0), (16, 8, 8, 16))
    block = ResidualBlock(features=16, width=16, bottleneck=False, zero_init_last=False,
                          drop_path_rate=0.5, kernels='plain')
    out, state = _block_apply(block, x, capture_intermediates=True)
    branch = np.asarray(state['intermediates']['bn2']['__call__'][0])
    out, x = np.asarray(out), np.asarray(x)
    factors = []
    for i in range(len(x)):
        fits = [d for d in (0.0, 2.0) if np.allclose(out[i], np.maximum(branch[i] * d + x[i], 0),
                                                      atol=1e-5)]
        assert len(fits) == 1, i
        factors.append(fits[0])
    assert set(factors) == {0.0, 2.0}
    # The same rng drops the same examples in the fused SE block as in the spelled-out one.
    se = functools.partial(SqueezeExcite, reduction=4)
    fused = ResidualBlock(features=16, width=16, bottleneck=False, se=se, drop_path_rate=0.5,
                          zero_init_last=False, kernels='plain')
    a, _ = _block_apply(fused, jnp.asarray(x), seed=5)
    b, _ = _block_apply(fused.clone(fuse_se=False), jnp.asarray(x), seed=5)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _program(model, x, **kw):
    """The traced computation of `model.apply` (no compile, nothing run)."""
    variables = jax.eval_shape(model.init, jax.random.key(1), x)
    return str(jax.make_jaxpr(functools.partial(model.apply, **kw))(variables, x))


@pytest.mark.parametrize('name', ['se_resnet_mini', 'se_resnet110_cifar', 'wrn16_8_cifar'])
@pytest.mark.slow   # traced only, but six traces of a network take a second or two
def test_drop_path_leaves_eval_and_rate_zero_unchanged(name):
    """Eval with drop path is the same program as without, with the same variables;
    training at rate 0 draws nothing (no 'dropout' rng needed) and is unchanged."""
    small = dict(units=(1, 1, 1)) if 'cifar' in name else {}
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    plain = create_model(name, num_classes=10, kernels='plain', **small)
    dropped = plain.clone(drop_path_rate=0.3)
    assert _program(dropped, x) == _program(plain, x)
    assert (jax.tree.structure(jax.eval_shape(dropped.init, jax.random.key(1), x))
            == jax.tree.structure(jax.eval_shape(plain.init, jax.random.key(1), x)))
    train = dict(train=True, mutable=['batch_stats'])
    assert _program(plain.clone(drop_path_rate=0.0), x, **train) == _program(plain, x, **train)
    assert _program(dropped, x, **train, rngs={'dropout': jax.random.key(0)}) != _program(
        plain, x, **train)


# ---------------------------------------------------------------------------
# The config and the trainer.


def test_defaults_are_off():
    from configs import common
    c = common.base_config()
    assert (c.optimizer, c.loss, c.bce_target_threshold, c.mixup_alpha, c.cutmix_alpha,
            c.model_overrides.drop_path_rate) == ('sgd', 'softmax', None, 0.0, 0.0, None)
    assert not trainer.mixing_from_config(c).active


@pytest.mark.parametrize('override, message', [
    (dict(optimizer='adamw'), "optimizer must be 'sgd' or 'lamb', got 'adamw'"),
    (dict(optimizer='lamb', lamb_b2=1.0), 'need 0 <= lamb_b1 < 1, 0 <= lamb_b2 < 1'),
    (dict(loss='focal'), "loss must be 'softmax' or 'bce', got 'focal'"),
    (dict(loss='bce', bce_target_threshold=1.5), 'bce_target_threshold must be in [0, 1)'),
    (dict(mixup_alpha=-0.2), 'mixup_alpha and cutmix_alpha must be >= 0'),
    (dict(cutmix_alpha=1.0, mixup_prob=1.2), 'mixup_prob must be in [0, 1], got 1.2'),
    (dict(cutmix_alpha=1.0, mixup_switch_prob=-0.1), 'mixup_switch_prob must be in [0, 1]'),
    (dict(mixup_alpha=0.2, mixup_mode='pairs'), "mixup_mode must be 'batch', 'pair' or 'elem'"),
    (dict(mixup_alpha=0.2, batch_size=63), 'batch_size must be even, got 63'),
    (dict(model_overrides=dict(drop_path_rate=1.0)), 'drop_path_rate must be in [0, 1), got 1.0'),
])
def test_bad_recipe_values_are_user_errors(override, message):
    from configs import quickstart
    config = quickstart.get_config()
    config.update(override)
    with pytest.raises(UserError) as e:
        trainer.validate_config(config)
    assert message in str(e.value) and '\n' not in str(e.value)


# configs/rsb.py's A3 on the digits quickstart, with what A3 leaves out added (A1/A2's
# repeated augmentation and drop path, an EMA), Mixup/CutMix drawn per element, and
# float16 compute, whose dynamic loss scale the checkpoint carries.
RECIPE = dict(num_train_steps=20, checkpoint_every_steps=5, eval_every_steps=20,
              log_every_steps=5, batch_size=32, repeated_augmentation=2, ema_decay=0.9,
              mixup_mode='elem', dtype='float16')
DROP_PATH = 0.1


@pytest.mark.slow
def test_recipe_resumed_from_a_checkpoint_ends_identical(tmp_path):
    """LAMB, BCE, Mixup + CutMix, RandAugment, repeated augmentation, drop path,
    EMA and float16's loss scale: a run resumed from its step-10 checkpoint ends
    with the uninterrupted run's weights, EMA, loss scale and evals, bit for bit
    (the mixing, augmentation and drop-path draws are functions of (seed, step);
    the scale is checkpointed, and a fresh one would differ by then).

    Both runs are in process: the resumed one starts from a copy of the
    uninterrupted workdir cut back to step 10, as a run killed after that
    checkpoint leaves it. Killing train.py itself is test_trainer's
    test_sigkill_then_rerun_matches_uninterrupted (and test_gcs's, on a bucket)."""
    from configs import rsb
    from test_loss_scale import _loss_scale
    config = rsb.get_config('a3,digits')
    config.update(RECIPE)
    config.model_overrides.drop_path_rate = DROP_PATH
    reference = tmp_path / 'reference'
    trainer.train_and_evaluate(config, str(reference))
    lines = [m for m in tu.metrics(reference) if 'train_loss' in m]
    assert [m['step'] for m in lines] == [5, 10, 15, 20]
    assert all(math.isfinite(m['train_loss']) for m in lines)
    assert tu.checkpoint_steps(reference) == [10, 15, 20]   # the newest 3 are kept
    workdir = tmp_path / 'resumed'
    shutil.copytree(reference, workdir)
    for step in (15, 20):
        shutil.rmtree(workdir / 'checkpoints' / str(step))
    logged = (workdir / 'metrics.jsonl').read_text().splitlines(keepends=True)
    (workdir / 'metrics.jsonl').write_text(
        ''.join(line for line in logged if json.loads(line)['step'] <= 10))
    saved = _loss_scale(workdir, 10)
    assert (float(saved['scale']), int(saved['fin_steps'])) != (2.0 ** 16, 0)
    trainer.train_and_evaluate(config, str(workdir))
    assert [m['step'] for m in tu.metrics(workdir) if 'train_loss' in m] == [5, 10, 15, 20]
    want, got = tu.last_eval(reference), tu.last_eval(workdir)
    assert {'eval_loss', 'ema_eval_loss', 'ema_eval_top1'} <= set(want)
    assert {k: got[k] for k in want if 'eval' in k} == {k: want[k] for k in want if 'eval' in k}
    tu.assert_trees_close(tu.load_params(workdir), tu.load_params(reference), atol=0)
    for a, b in zip(jax.tree.leaves(_loss_scale(workdir, 20)),
                    jax.tree.leaves(_loss_scale(reference, 20))):
        np.testing.assert_array_equal(a, b)
