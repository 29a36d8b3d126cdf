"""Inception-ResNet-v2 and SE-Inception-ResNet-v2: SE placement, parameter arithmetic,
features, options, conversion. Number-for-number parity with timm's
`inception_resnet_v2` is tests/test_parity.py's `test_matches_reference[inception_resnet_v2]`."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from reference_weights import random_input, random_state_dict, random_variables
from senet_jax.convert import load_pretrained, main, torch_key, torch_to_flax
from senet_jax.layers import SqueezeExcite, reduced_width
from senet_jax.models import create_model, model_spec, normalize_images
from senet_jax.models.inception_resnet import SCALES, InceptionResNetUnit, final_side, torch_module

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'reference', 'inception_resnet_v2.json')
# The smallest network of the family: one unit of each type (and the last Block8).
TINY = dict(repeats=(1, 1, 1), kernels='plain')


def _fixture():
    with open(FIXTURE) as f:
        return json.load(f)


def _shapes(model, side=75, **kwargs):
    x = jnp.zeros((1, side, side, 3))
    return jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, **kwargs))


def _random_variables(model, side=75, x=None):
    """Seeded variables of the model's shapes, drawn with numpy: much faster than
    `model.init`'s generators for the tens of millions of parameters of this family."""
    return random_variables(model, jnp.zeros((1, side, side, 3)) if x is None else x)


def _n_params(variables):
    return sum(v.size for v in jax.tree.leaves(variables['params']))


def _se_params(channels, reduction=16):
    """One SE block with biases: C -> C/r -> C."""
    w = reduced_width(channels, reduction)
    return channels * w + w + w * channels + channels


@pytest.mark.slow
def test_se_parameters_are_the_reference_count_plus_40_se_blocks():
    # No SE-Inception-ResNet-v2 was published and the paper gives no parameter
    # count for it: ours is timm's plain network plus one SE block per
    # Inception-ResNet unit, at the width of the trunk.
    base = _fixture()['num_params']
    assert base == 55_843_464
    per_unit = {'block35': _se_params(320), 'block17': _se_params(1088), 'block8': _se_params(2080)}
    assert per_unit == {'block35': 2 * 320 * 20 + 20 + 320,          # 13,140
                        'block17': 2 * 1088 * 68 + 68 + 1088,        # 149,124
                        'block8': 2 * 2080 * 130 + 130 + 2080}       # 543,010
    units = {'block35': 10, 'block17': 20, 'block8': 9 + 1}      # + the last Block8
    se = sum(units[k] * per_unit[k] for k in units)
    assert se == 8_543_980
    _, variables = _shapes(create_model('se_inception_resnet_v2'))
    assert _n_params(variables) == base + se == 64_387_444
    with_se = [k for k, v in variables['params'].items() if 'se' in v]
    assert len(with_se) == 40 and not any(k.startswith('mixed') for k in with_se)


@pytest.mark.slow
def test_base_has_the_reference_keys_and_parameter_count():
    ref = _fixture()
    _, variables = _shapes(create_model('inception_resnet_v2'))
    assert _n_params(variables) == ref['num_params']
    ours = {torch_key(c, tuple(p), 'timm_irv2')
            for (c, *p) in traverse_util.flatten_dict(dict(variables))}
    assert ours == {k for k, _ in ref['keys'] if not k.endswith('num_batches_tracked')}


def test_torch_module_names():
    assert torch_module(('block17_19', 'branch1_2', 'conv')) == 'repeat_1.19.branch1.2.conv'
    assert torch_module(('block35_0', 'conv2d')) == 'repeat.0.conv2d'
    assert torch_module(('block8_8', 'branch0', 'bn')) == 'repeat_2.8.branch0.bn'
    assert torch_module(('block8', 'conv2d')) == 'block8.conv2d'
    assert torch_module(('mixed_5b', 'branch3_1', 'bn')) == 'mixed_5b.branch3.1.bn'
    assert torch_module(('conv2d_1a', 'conv')) == 'conv2d_1a.conv'
    assert torch_module(('fc',)) == 'classif'


@pytest.mark.parametrize('kind,width,scale,activate', [('block35', 320, 0.17, True),
                                                       ('block8', 2080, 1.0, False)])
@pytest.mark.slow
def test_unit_scales_the_se_output_of_its_up_projection(kind, width, scale, activate):
    se = functools.partial(SqueezeExcite, reduction=16)
    unit = InceptionResNetUnit(kind=kind, scale=scale, activate=activate, se=se, kernels='plain')
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 4, width)), jnp.float32)
    variables = _random_variables(unit, x=x)
    out, state = jax.jit(lambda v, x: unit.apply(v, x, capture_intermediates=True,
                                                 mutable=['intermediates']))(variables, x)
    inter = state['intermediates']
    u, s = inter['conv2d']['__call__'][0], inter['se']['gate'][0]
    # The gates squeeze the unscaled up-projection (Eq. 2-3 of the paper).
    se_params = variables['params']['se']
    dense = lambda z, p: z @ p['kernel'] + p['bias']
    z = jnp.maximum(dense(u.mean((1, 2)), se_params['fc1']), 0)
    np.testing.assert_allclose(s, jax.nn.sigmoid(dense(z, se_params['fc2'])), rtol=1e-5, atol=1e-6)
    want = x + scale * u * s[:, None, None, :]
    np.testing.assert_allclose(out, jnp.maximum(want, 0) if activate else want, rtol=1e-5, atol=1e-5)
    assert u.shape == x.shape and s.shape == (2, width)
    assert variables['params']['se']['fc1']['kernel'].shape == (width, width // 16)


@pytest.mark.slow
def test_se_sits_on_the_residual_branch_before_the_scaling():
    """out = relu(x + scale * s * conv2d(branches)), s the SE gates, for every
    unit type; the last Block8 adds its whole branch and has no ReLU."""
    model = create_model('se_inception_resnet_v2', **TINY)
    x = jnp.asarray(random_input(75, 75).transpose(0, 2, 3, 1))
    variables = _random_variables(model)
    _, state = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True,
                                                mutable=['intermediates']))(variables, x)
    inter = state['intermediates']
    units = [('block35_0', 'mixed_5b', SCALES['block35'], True),
             ('block17_0', 'mixed_6a', SCALES['block17'], True),
             ('block8_0', 'mixed_7a', SCALES['block8'], True),
             ('block8', 'block8_0', 1.0, False)]
    for unit, before, scale, relu in units:
        u = inter[unit]['conv2d']['__call__'][0]
        s = inter[unit]['se']['gate'][0]
        want = inter[before]['__call__'][0] + scale * u * s[:, None, None, :]
        want = jnp.maximum(want, 0) if relu else want
        np.testing.assert_allclose(inter[unit]['__call__'][0], want, rtol=1e-5, atol=1e-5)
        assert s.shape == (1, u.shape[-1])
    gates = [p for p in traverse_util.flatten_dict(inter) if p[-1] == 'gate']
    assert len(gates) == 4 and not any(p[0].startswith('mixed') for p in gates)


@pytest.mark.parametrize('stages,units', [
    ((), []), (('block17',), ['block17_0', 'block17_1']),
    (('block35', 'block8'), ['block35_0', 'block8', 'block8_0'])])
def test_se_stages_place_se_where_asked(stages, units):
    model = create_model('se_inception_resnet_v2', repeats=(1, 2, 1), se_stages=stages)
    _, variables = _shapes(model)
    assert sorted(k for k, v in variables['params'].items() if 'se' in v) == units


def test_reduction_and_gate_are_options():
    model = create_model('se_inception_resnet_v2', reduction=8, gate='tanh', **TINY)
    _, variables = _shapes(model)
    assert variables['params']['block17_0']['se']['fc1']['kernel'].shape == (1088, 136)


@pytest.mark.slow
def test_features_and_min_input_size():
    model = create_model('se_inception_resnet_v2', **TINY)
    assert model.min_input_size() == 75 and final_side(75) == 1 and final_side(74) == 0
    channels = {'stem': 192, 'block35': 320, 'block17': 1088, 'block8': 2080, 'conv2d_7b': 1536}
    # Nominal strides 4, 8, 16, 32, 32; the valid convolutions and pools shave the edges.
    for side, sides in ((299, (71, 35, 17, 8, 8)), (75, (15, 7, 3, 1, 1))):
        features, _ = _shapes(model, side, return_features=True)
        assert {k: v.shape for k, v in features.items()} == {
            k: (1, n, n, c) for (k, c), n in zip(channels.items(), sides)}
    with pytest.raises(ValueError, match='at least 75x75 pixels, got 74x80'):
        model.init(jax.random.key(0), jnp.zeros((1, 74, 80, 3)))


@pytest.mark.slow
def test_cpu_kernels_and_train_mode():
    x = jnp.asarray(random_input(83, 77).transpose(0, 2, 3, 1))
    plain = create_model('se_inception_resnet_v2', **TINY)
    variables = _random_variables(plain)
    cpu = create_model('se_inception_resnet_v2', repeats=(1, 1, 1), kernels='cpu')
    a, b = jax.jit(plain.apply)(variables, x), jax.jit(cpu.apply)(variables, x)
    assert a.dtype == jnp.float32 and a.shape == (1, 1000)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(a).max()))
    logits, new = jax.jit(lambda v, x: plain.apply(v, x, train=True, mutable=['batch_stats']))(
        variables, x)
    assert bool(jnp.isfinite(logits).all())
    # Every BN of the network runs on batch statistics and updates its running ones.
    flat_old = traverse_util.flatten_dict(variables['batch_stats'])
    flat_new = traverse_util.flatten_dict(new['batch_stats'])
    assert flat_new.keys() == flat_old.keys()
    assert not [p for p in flat_old if np.allclose(flat_new[p], flat_old[p])]


@pytest.mark.parametrize('kwargs,message', [
    (dict(se_stages=('block36',)), "se_stages must be a subset of ('block35', 'block17', 'block8') "
                                   "(the Inception-ResNet-A, -B and -C units), got ('block36',)."),
    (dict(se_stages=(2, 3)), 'se_stages must be a subset of'),
    (dict(se_stages='block8'), 'se_stages must be a subset of'),
    (dict(repeats=(10, 20)), 'repeats must be three unit counts'),
    (dict(repeats=(10, -1, 9)), 'repeats must be three unit counts'),
    (dict(reduction=0), 'reduction must be at least 1'),
    (dict(squeeze='median'), 'squeeze must be one of'),
    (dict(layers=(3, 4, 6, 3)), "Unknown option 'layers' for se_inception_resnet_v2"),
])
def test_bad_options_are_refused_in_one_sentence(kwargs, message):
    with pytest.raises(ValueError) as e:
        create_model('se_inception_resnet_v2', **kwargs)
    assert message in str(e.value)


def test_registry_entries():
    base, se = model_spec('inception_resnet_v2'), model_spec('se_inception_resnet_v2')
    assert (base.reference, base.source, base.input_size) == ('inception_resnet_v2', 'timm', 299)
    assert se.reference is None and se.layout == base.layout == 'timm_irv2'
    assert (base.paper.table, base.paper.gflops, se.paper.gflops) == ('Table 2', 11.75, 11.76)
    # timm's IMAGENET_INCEPTION statistics: pixels mapped to [-1, 1].
    images = jnp.asarray([[[[0, 255, 127.5]]]])
    np.testing.assert_allclose(normalize_images(images, input_format=base.input_format),
                               [[[[-1.0, 1.0, 0.0]]]])
    assert se.input_format == base.input_format


@pytest.mark.no_cover   # every line it runs, cheaper tests run too (docs/architecture.md, "Tests")
@pytest.mark.slow
def test_cli_converts_and_load_pretrained_gives_the_same_network(tmp_path):
    sd = random_state_dict(_fixture()['keys'])
    save_file(sd, str(tmp_path / 'w.safetensors'))
    out = tmp_path / 'converted'
    assert main(['--model', 'inception_resnet_v2', '--weights', str(tmp_path / 'w.safetensors'),
                 '--out', str(out)]) == 0
    model, variables = load_pretrained(str(out))
    x = jnp.asarray(random_input(79, 91).transpose(0, 2, 3, 1))
    apply = jax.jit(lambda model, variables: model.apply(variables, x), static_argnums=0)
    direct = apply(create_model('inception_resnet_v2'), torch_to_flax('inception_resnet_v2', sd))
    np.testing.assert_array_equal(apply(model, variables), direct)   # one program, compiled once
    assert float(jnp.abs(direct).max()) > 1.0
