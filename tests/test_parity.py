"""Number-for-number parity with the reference PyTorch networks (timm 1.0).

The fixtures hold each reference's state_dict layout, parameter count and
float64 eval logits for seeded weights (tests/make_reference.py); the weights
are rebuilt here with numpy, converted, and run through our Flax model.
"""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from reference_weights import (REDUCED, TRAIN_DEPTH, TRAIN_NAMES, norm_and_projection, random_input,
                               random_state_dict, train_batch)
from senet_jax.convert import torch_key, torch_to_flax
from senet_jax.models import create_model, list_models, model_spec

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'reference')
NAMES = [n for n in list_models() if model_spec(n).reference]
# Logits on one depth per layout and block type; the other depths run no other code
# (only the block counts differ), so for them the conversion (every key and shape,
# strictly) and the parameter count are checked, not the logits again.
OTHER_DEPTHS = ('resnet34', 'se_resnet34', 'legacy_se_resnet34',
                'resnet101', 'se_resnet101', 'legacy_se_resnet101',
                'resnet152', 'se_resnet152', 'legacy_se_resnet152',
                'resnext101_32x4d', 'se_resnext101_32x4d', 'legacy_se_resnext101_32x4d', 'sk_resnet34')
LOGIT_NAMES = [n for n in NAMES if n not in OTHER_DEPTHS]


def _fixture(name):
    with open(os.path.join(FIXTURES, f'{name}.json')) as f:
        return json.load(f)


def test_every_reference_model_has_a_fixture():
    assert sorted(f[:-5] for f in os.listdir(FIXTURES)) == sorted(NAMES)


def _count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


def test_each_other_depth_differs_from_a_checked_one_only_in_its_block_counts():
    def options(name):
        model = create_model(name)
        return (model_spec(name).layout, type(model).__name__,
                tuple((f.name, repr(getattr(model, f.name))) for f in dataclasses.fields(model)
                      if f.name not in ('layers', 'parent', 'name')))
    checked = {options(n) for n in LOGIT_NAMES}
    assert set(OTHER_DEPTHS) <= set(NAMES)
    assert all(options(n) in checked for n in OTHER_DEPTHS)


@pytest.mark.slow
@pytest.mark.parametrize('name', OTHER_DEPTHS)
def test_other_depths_convert_with_the_reference_parameter_count(name):
    ref = _fixture(name)
    assert ref['reference'] == model_spec(name).reference
    zeros = {key: np.zeros(shape, np.float32) for key, shape in ref['keys']}
    variables = torch_to_flax(name, zeros)   # strict: every key, every shape
    assert _count(variables['params']) == ref['num_params']


# no_cover: run without coverage's tracer, which slows JAX's tracing by about 40%; the
# model and conversion lines they run are run by the zoo's cheaper tests too
# (docs/architecture.md, "Tests").
@pytest.mark.slow
@pytest.mark.no_cover
@pytest.mark.parametrize('name', LOGIT_NAMES)
def test_matches_reference(name):
    """Parameter count and eval logits; the REDUCED models at one block per stage."""
    ref = _fixture(name)
    assert ref['reference'] == model_spec(name).reference
    assert ref.get('overrides', {}) == REDUCED.get(name, {})
    overrides = {k: tuple(v) for k, v in ref.get('overrides', {}).items()}
    variables = torch_to_flax(name, random_state_dict(ref['keys']), **overrides)
    model = create_model(name, **overrides)
    assert _count(variables['params']) == ref['num_params_tested' if overrides else 'num_params']
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    for size, want in ref['logits'].items():   # the native size and an odd one
        h, w = map(int, size.split('x'))
        x = jnp.asarray(random_input(h, w).transpose(0, 2, 3, 1))
        got = np.asarray(apply(variables, x))[0]
        want = np.asarray(want)
        rel = np.abs(got - want).max() / np.abs(want).max()
        assert rel < 1e-4, f'{name} at {h}x{w}: max relative difference {rel:.2e}'


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(REDUCED))
def test_full_depth_parameter_count(name):
    """The REDUCED models at full depth: the reference's parameter count, from shapes alone."""
    model = create_model(name)
    size = model.min_input_size()
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
    assert _count(shapes['params']) == _fixture(name)['num_params']


@pytest.mark.optimized
@pytest.mark.slow
@pytest.mark.no_cover
@pytest.mark.parametrize('name', TRAIN_NAMES)
def test_training_step_matches_reference(name):
    """Training mode against PyTorch autograd, both in float64: loss, logits, the
    gradient of every parameter and the batch statistics behind every BatchNorm
    buffer's update (PyTorch's unbiased variance), all to 1e-9 (measured: at
    most 5e-12, the fixtures' 12 digits). float64 keeps rounding out of the way:
    in float32 a train-mode BN on a few values per channel turns the last bits
    of the forward pass into differences of 1e-3 in some gradients."""
    with open(os.path.join(FIXTURES + '_train', f'{name}.json')) as f:
        ref = json.load(f)
    assert ref['reference'] == model_spec(name).reference
    assert ref['overrides'] == TRAIN_DEPTH
    layout = model_spec(name).layout
    images, labels = train_batch()
    with jax.enable_x64(True):
        as64 = lambda tree: jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), tree)
        depth = {k: tuple(v) for k, v in TRAIN_DEPTH.items()}
        variables = as64(torch_to_flax(name, random_state_dict(ref['keys']), **depth))
        probe = torch_to_flax(name, random_state_dict(ref['keys'], seed=1), **depth)
        # Dropout off, as in the fixture (senet154 has 0.2).
        model = create_model(name, dtype=jnp.float64, param_dtype=jnp.float64, drop_rate=0.0, **depth)
        x = jnp.asarray(images.transpose(0, 2, 3, 1), jnp.float64)

        def loss_fn(params):
            logits, new = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                                      train=True, mutable=['batch_stats'])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, (logits, new['batch_stats'])
        step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
        (loss, (logits, stats)), grads = step(variables['params'])
        # BN momentum: ours 0.9 keeps the running value, PyTorch's 0.1 weighs the batch.
        batch = jax.tree.map(lambda new, old: (new - 0.9 * old) / 0.1, stats, variables['batch_stats'])
        loss, logits, grads, batch = jax.device_get((loss, logits, grads, batch))
    assert float(loss) == pytest.approx(ref['loss'], rel=1e-9)
    want = np.asarray(ref['logits'])
    assert np.abs(logits - want).max() < 1e-9 * np.abs(want).max()
    checked = 0
    for collection, tree, wanted in (('params', grads, ref['grads']), ('batch_stats', batch, ref['batch_stats'])):
        flat_probe = traverse_util.flatten_dict(probe[collection])
        for path, value in traverse_util.flatten_dict(tree).items():
            key = torch_key(collection, path, layout)
            norm, projection = norm_and_projection(value, flat_probe[path])
            want_norm, want_projection = wanted[key]
            scale = want_norm * np.linalg.norm(flat_probe[path])
            assert abs(norm - want_norm) <= 1e-9 * want_norm, f'{key}: norm {norm} vs {want_norm}'
            assert abs(projection - want_projection) <= 1e-9 * scale, \
                f'{key}: projection {projection} vs {want_projection}'
            checked += 1
    assert checked == len(ref['grads']) + len(ref['batch_stats'])
