"""BN-Inception and SE-BN-Inception: the official release's SE placement and
size, the reduction pools, stage features, options, input format and weights
in Cadene's and the Caffe release's names.

Number-for-number parity of bn_inception with Cadene's `bninception` is
tests/test_parity.py's (fixture tests/fixtures/reference/bn_inception.json).
"""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from reference_weights import random_input, random_state_dict
from senet_jax import load_pretrained
from senet_jax.convert import ConversionError, main, torch_to_flax
from senet_jax.layers import max_pool, max_pool_ceil
from senet_jax.models import create_model, model_spec, normalize_images
from senet_jax.models.bn_inception import reduction_pool

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'reference', 'bn_inception.json')
# hujie-frank/SENet models/SE-BN-Inception.prototxt, 1000 classes: every learnable
# blob but the BatchNorm layers' statistics.
PROTOTXT_PARAMS = 11_931_622
CADENE_PARAMS = 11_295_240    # pretrainedmodels' bninception
# The width C of each module's concatenation, the input of its SE block (prototxt).
CONCAT = {'3a': 256, '3b': 320, '3c': 576, '4a': 576, '4b': 576, '4c': 608, '4d': 608,
          '4e': 1056, '5a': 1024, '5b': 1024}


def _cadene_keys():
    with open(FIXTURE) as f:
        return json.load(f)['keys']


def _variables(model, size=32):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def _count(variables):
    return sum(x.size for x in jax.tree.leaves(variables['params']))


def test_se_bn_inception_has_the_prototxt_parameter_count():
    # Cadene's port is the release's base network plus a bias on every convolution.
    conv_biases = sum(math.prod(shape) for key, shape in _cadene_keys()
                      if key.endswith('.bias') and '_bn.' not in key and not key.startswith('last_linear'))
    base = CADENE_PARAMS - conv_biases
    # Per module: W1 (C x C/16) and its bias, W2 (C/16 x C) and its bias, C/16 = floor(C / 16).
    se = sum(2 * c * (c // 16) + c // 16 + c for c in CONCAT.values())
    assert (conv_biases, base, se) == (10_016, 11_285_224, 646_398)
    assert base + se == PROTOTXT_PARAMS
    assert _count(_variables(create_model('se_bn_inception'))) == PROTOTXT_PARAMS
    assert _count(_variables(create_model('bn_inception', conv_bias=False))) == base
    assert _count(_variables(create_model('bn_inception'))) == CADENE_PARAMS


def test_one_se_block_after_the_concatenation_of_each_of_the_ten_modules():
    model = create_model('se_bn_inception')
    variables = _variables(model)
    _, state = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=['intermediates']),
                              variables, jnp.zeros((2, 32, 32, 3)))
    gates = state['intermediates']
    assert sorted(gates) == [f'inception_{m}' for m in CONCAT]
    for m, c in CONCAT.items():
        assert gates[f'inception_{m}']['se']['gate'][0].shape == (2, c)   # one gate per concat channel
        se = variables['params'][f'inception_{m}']['se']
        assert se['fc1']['kernel'].shape == (c, c // 16) and se['fc1']['bias'].shape == (c // 16,)
        assert se['fc2']['kernel'].shape == (c // 16, c) and se['fc2']['bias'].shape == (c,)
    # The release's convolutions have no bias: only BN, SE and the classifier have one.
    biased = {path[:-1] for path in traverse_util.flatten_dict(variables['params']) if path[-1] == 'bias'}
    assert all(p[-1].endswith('_bn') or 'se' in p or p == ('fc',) for p in biased)


@pytest.mark.parametrize('name,se_stages,modules', [
    ('se_bn_inception', (4,), ['4a', '4b', '4c', '4d', '4e']),
    ('se_bn_inception', (3, 5), ['3a', '3b', '3c', '5a', '5b']),
    ('bn_inception', (), []),
])
def test_se_stages_choose_the_modules(name, se_stages, modules):
    model = create_model(name, se_stages=se_stages)
    _, state = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=['intermediates']),
                              _variables(model), jnp.zeros((1, 32, 32, 3)))
    assert sorted(state.get('intermediates', {})) == [f'inception_{m}' for m in modules]


@pytest.mark.parametrize('size', [1, 2, 5, 6, 13, 14])
def test_reduction_pool_matches_the_strided_convolution_and_ceil_mode(size):
    x = jnp.asarray(np.random.default_rng(size).normal(size=(1, size, size + 1, 2)), jnp.float32)
    y = np.asarray(reduction_pool(x, max_pool))
    assert y.shape[1:3] == (-(-size // 2), -(-(size + 1) // 2))   # a 3x3/2 conv with padding 1
    xs = np.asarray(x)
    for i in range(y.shape[1]):   # each window: rows 2i..2i+2, columns 2j..2j+2, clipped to x
        for j in range(y.shape[2]):
            np.testing.assert_array_equal(y[0, i, j], xs[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max((0, 1)))
    if size % 2 == 0:   # where the references run: Caffe's and PyTorch's ceil mode
        square = x[:, :, :size]
        np.testing.assert_array_equal(reduction_pool(square, max_pool), max_pool_ceil(square, 3, 2))


@pytest.mark.parametrize('size,sides', [(224, (112, 56, 28, 14, 7)), (161, (81, 40, 20, 10, 5)),
                                        (7, (4, 2, 1, 1, 1))])
@pytest.mark.slow
def test_features_are_the_last_output_at_each_stride(size, sides):
    model = create_model('se_bn_inception')
    features = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True),
                              _variables(model), jnp.zeros((2, size, size, 3)))
    want = dict(zip(('conv1', 'conv2', 'inception_3b', 'inception_4d', 'inception_5b'),
                    zip(sides, (64, 192, 320, 608, 1024))))
    assert {k: v.shape for k, v in features.items()} == {k: (2, s, s, c) for k, (s, c) in want.items()}
    assert model.min_input_size() == 7


@pytest.mark.slow
def test_below_the_minimum_input_a_map_is_empty():
    model = create_model('bn_inception')
    side = model.min_input_size() - 1
    features = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True),
                              _variables(model), jnp.zeros((1, side, side, 3)))
    assert features['inception_3b'].shape[1] == 0


@pytest.mark.parametrize('overrides,message', [
    (dict(se_stages=(2, 3)), 'se_stages must be a subset of (3, 4, 5) (the Inception modules '
                             '3a-3c, 4a-4e, 5a-5b), got (2, 3).'),
    (dict(se_stages='3'), "se_stages must be a subset of (3, 4, 5)"),
    (dict(reduction=0), 'reduction must be at least 1 (the ratio r), got 0.'),
    (dict(gate='sigmod'), "Did you mean 'sigmoid'?"),
    (dict(squeeze='median'), "squeeze must be one of ('avg', 'max', 'none')"),
    (dict(drop_rate=1.0), 'drop_rate must be in [0, 1)'),
    (dict(kernels='gpu'), 'kernels must be one of'),
    (dict(layers=(3, 4)), "Unknown option 'layers' for se_bn_inception."),
])
def test_bad_options_are_refused_in_one_sentence(overrides, message):
    with pytest.raises(ValueError) as e:
        create_model('se_bn_inception', **overrides)
    msg = str(e.value)
    assert message in msg and '\n' not in msg and msg.endswith(('.', '?', ']'))


def test_normalize_images_gives_caffe_bgr_minus_the_mean_pixel():
    fmt = model_spec('se_bn_inception').input_format
    assert model_spec('bn_inception').input_format == fmt
    rgb = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    x = np.asarray(normalize_images(jnp.asarray(rgb), input_format=fmt))
    rgb = rgb.astype(np.float32)
    np.testing.assert_array_equal(x, np.stack([rgb[..., 2] - 104, rgb[..., 1] - 117, rgb[..., 0] - 123], -1))


# --- weights ------------------------------------------------------------------

# Cadene's port renamed three of each module's layers of the Caffe release.
_CAFFE_NAME = {'double_3x3_reduce': 'double3x3_reduce', 'double_3x3_1': 'double3x3a',
               'double_3x3_2': 'double3x3b'}


def caffe_keys():
    """The official release's blobs as a caffemodel exported to a state_dict
    names them: the Caffe layer name with '/' written '_' (the shapes are
    Cadene's, less its convolution biases), each BatchNorm with its Scale
    layer's weight and bias, the SE projections and the classifier."""
    keys = []
    for key, shape in _cadene_keys():
        module, leaf = key.rsplit('.', 1)
        if module == 'last_linear':
            keys.append((f'classifier.{leaf}', shape))
            continue
        if leaf == 'bias' and not module.endswith('_bn'):
            continue
        for cadene, caffe in _CAFFE_NAME.items():
            module = module.replace(f'_{cadene}', f'_{caffe}')
        keys.append((f'{module}.{leaf}', shape))
    for m, c in CONCAT.items():
        keys += [(f'inception_{m}_1x1_down.weight', [c // 16, c, 1, 1]), (f'inception_{m}_1x1_down.bias', [c // 16]),
                 (f'inception_{m}_1x1_up.weight', [c, c // 16, 1, 1]), (f'inception_{m}_1x1_up.bias', [c])]
    return keys


def _convert_and_load(tmp_path, name, state_dict):
    weights = str(tmp_path / 'weights.safetensors')
    save_file(state_dict, weights)
    assert main(['--model', name, '--weights', weights, '--out', str(tmp_path / 'out')]) == 0
    return load_pretrained(str(tmp_path / 'out'))


@pytest.mark.slow
@pytest.mark.parametrize('name,keys', [('bn_inception', _cadene_keys), ('se_bn_inception', caffe_keys)])
def test_conversion_round_trip_through_the_cli(tmp_path, name, keys):
    sd = random_state_dict(keys())
    model, variables = _convert_and_load(tmp_path, name, sd)
    want = create_model(name)
    x = jnp.asarray(random_input(64, 48).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(np.asarray(model.apply(variables, x)),
                                  np.asarray(want.apply(torch_to_flax(name, sd), x)))
    # A few keys, followed to their place by hand.
    params, stats = variables['params'], variables['batch_stats']
    caffe = name == 'se_bn_inception'
    double = 'inception_3a_double3x3a.weight' if caffe else 'inception_3a_double_3x3_1.weight'
    np.testing.assert_array_equal(params['inception_3a']['double_3x3_1']['kernel'],
                                  sd[double].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(stats['inception_5b']['pool_proj_bn']['var'],
                                  sd['inception_5b_pool_proj_bn.running_var'])
    fc = 'classifier' if caffe else 'last_linear'
    np.testing.assert_array_equal(params['fc']['kernel'], sd[f'{fc}.weight'].T)
    if caffe:
        np.testing.assert_array_equal(params['inception_4e']['se']['fc1']['kernel'],
                                      sd['inception_4e_1x1_down.weight'][:, :, 0, 0].T)
    else:
        np.testing.assert_array_equal(params['conv1_7x7_s2']['bias'], sd['conv1_7x7_s2.bias'])


def test_one_layout_is_refused_for_the_other():
    with pytest.raises(ConversionError, match="no classifier 'classifier.bias'"):
        torch_to_flax('se_bn_inception', random_state_dict(_cadene_keys()))
    with pytest.raises(ConversionError, match="no classifier 'last_linear.bias'"):
        torch_to_flax('bn_inception', random_state_dict(caffe_keys()))
