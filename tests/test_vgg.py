"""VGG-16-BN and SE-VGG-16 (paper Table 2): parameter arithmetic, SE placement,
features, options, the head's pooling, and conversion from timm's `vgg16_bn`.

The full network has 138M parameters and 15.5 GMACs at 224, so the fast tests
use shapes only or 32x32 inputs with a narrow head (`mlp_width`); parity with
timm at 224 and 289x131, through the conversion of timm's weights, is
tests/test_parity.py (slow). The CLI and load_pretrained take every layout the
same way (tests/test_convert.py's round trip); a VGG one would write 550 MB.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from senet_jax.convert import torch_key
from senet_jax.models import create_model
from senet_jax.models.macs import count_macs
from senet_jax.models.vgg import adaptive_avg_pool

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'reference', 'vgg16_bn.json')
# VGG-16 (configuration D): the output channels of its 13 convolutions.
CONV_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


def _reference():
    with open(FIXTURE) as f:
        return json.load(f)


def _shapes(model, size=32):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def _n_params(model):
    return sum(x.size for x in jax.tree.leaves(_shapes(model)['params']))


def _gates(model, size=32):
    """{SE module: its gates' shape}, from shapes alone (nothing is computed)."""
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    _, state = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=['intermediates']),
                              _shapes(model, size), x)
    return {k: v['gate'][0].shape for k, v in state.get('intermediates', {}).items()}


@pytest.mark.slow
def test_se_vgg16_params_are_timms_vgg16_bn_plus_13_se_blocks():
    # The paper gives no parameter count for SE-VGG-16 (Table 2 lists GFLOPs
    # only): base = timm's vgg16_bn, plus per conv of C channels W1 (C x C/16),
    # W2 (C/16 x C) and their biases.
    base = _reference()['num_params']
    assert base == 138_365_992 == _n_params(create_model('vgg16_bn'))
    se = sum(2 * c * (c // 16) + c // 16 + c for c in CONV_WIDTHS)
    assert se == 2 * 580 + 2 * 2_184 + 3 * 8_464 + 6 * 33_312 == 230_792
    assert _n_params(create_model('se_vgg16_bn')) == base + se == 138_596_784
    assert _n_params(create_model('se_vgg16_bn', reduction=8)) == base + sum(
        2 * c * (c // 8) + c // 8 + c for c in CONV_WIDTHS)


@pytest.mark.slow
def test_se_follows_every_one_of_the_13_convolutions():
    gates = _gates(create_model('se_vgg16_bn', mlp_width=8))
    assert len(gates) == 13
    widths = {name: shape[-1] for name, shape in gates.items()}
    names = [f'se{b}_{i}' for b, d in zip(range(1, 6), (2, 2, 3, 3, 3)) for i in range(1, d + 1)]
    assert widths == dict(zip(names, CONV_WIDTHS))
    assert sorted(_gates(create_model('se_vgg16_bn', mlp_width=8, se_stages=(4, 5)))) == names[7:]
    assert _gates(create_model('vgg16_bn', mlp_width=8)) == {}


@pytest.mark.slow
def test_return_features_gives_each_block_before_its_pool():
    model = create_model('se_vgg16_bn', mlp_width=8)
    x = jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32)
    feats = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True), _shapes(model), x)
    # strides 1, 2, 4, 8, 16, and 32 for pool5 (the input of fc6)
    assert {k: v.shape for k, v in feats.items()} == {
        'conv1': (2, 64, 96, 64), 'conv2': (2, 32, 48, 128), 'conv3': (2, 16, 24, 256),
        'conv4': (2, 8, 12, 512), 'conv5': (2, 4, 6, 512), 'pool5': (2, 2, 3, 512)}
    assert create_model('vgg16_bn').min_input_size() == 32


@pytest.mark.slow
def test_adaptive_pool_takes_pytorchs_bins():
    # Values from torch.nn.functional.adaptive_avg_pool2d: 5 -> 7 rows, 9 -> 7 columns.
    x = jnp.arange(5.0).reshape(1, 5, 1, 1)
    np.testing.assert_allclose(adaptive_avg_pool(x, 7, 1)[0, :, 0, 0],
                               [0.0, 0.5, 1.5, 2.0, 2.5, 3.5, 4.0])
    x = jnp.arange(9.0).reshape(1, 1, 9, 1)
    np.testing.assert_allclose(adaptive_avg_pool(x, 1, 7)[0, 0, :, 0],
                               [0.5, 1.5, 2.5, 4.0, 5.5, 6.5, 7.5])


@pytest.mark.slow
def test_small_maps_are_pooled_up_to_fc6s_window_and_large_ones_averaged_after_it():
    # pool5 maps 1x1, 5x4 and 9x1; fc6 (7x7, no padding) sees them pooled up to
    # 7x7, 7x7 and 9x7, so it gives 1x1, 1x1 and 3x1 positions (averaged by the head).
    model = create_model('vgg16_bn', mlp_width=8, num_classes=3)
    variables = _shapes(model)
    fc6 = lambda v, x: model.apply(v, x, capture_intermediates=lambda m, _: m.name == 'fc6',
                                   mutable=['intermediates'])
    for (h, w), positions in (((32, 32), (1, 1)), ((161, 131), (1, 1)), ((289, 40), (3, 1))):
        x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
        logits, state = jax.eval_shape(fc6, variables, x)
        assert logits.shape == (1, 3)
        assert state['intermediates']['fc6']['__call__'][0].shape == (1, *positions, 8)


@pytest.mark.parametrize('overrides,message', [
    (dict(se_stages=(0, 5)), 'se_stages must be a subset of (1, 2, 3, 4, 5) (the conv blocks'),
    (dict(se_stages=3), 'se_stages must be a subset'),
    (dict(mlp_width=0), 'mlp_width must be a positive integer, got 0.'),
    (dict(reduction=0), 'reduction must be at least 1'),
    (dict(gate='sigmod'), "Did you mean 'sigmoid'?"),
    (dict(drop_rate=1.5), 'drop_rate must be in [0, 1)'),
])
def test_bad_options_are_refused_in_one_sentence(overrides, message):
    from senet_jax.models.vgg import VGG
    with pytest.raises(ValueError) as e:
        VGG(**overrides)
    assert message in str(e.value) and '\n' not in str(e.value)


def test_every_variable_maps_to_a_key_of_timms_state_dict():
    keys = {k for k, _ in _reference()['keys'] if not k.endswith('num_batches_tracked')}
    flat = traverse_util.flatten_dict(dict(_shapes(create_model('vgg16_bn'))))
    assert sorted(torch_key(c, tuple(p), 'timm_vgg') for c, *p in flat) == sorted(keys)


@pytest.mark.slow
def test_multiply_adds_match_table2():
    # Every conv tap (padding included) and dense multiply-add: 15.47 G, the paper's
    # VGG-16 figure. SE adds 0.23 M (its two projections); the paper's +0.01 G for
    # SE-VGG-16 also counts the channel-wise scaling (about 13 M multiplies).
    plain = count_macs(create_model('vgg16_bn', kernels='plain'), 224)
    se = count_macs(create_model('se_vgg16_bn', kernels='plain'), 224)
    assert round(plain / 1e9, 2) == 15.47
    assert se - plain == sum(2 * c * (c // 16) for c in CONV_WIDTHS)
    # Counting the scaling too (one multiply per SE output value, 13.5 M) gives the paper's 15.48.
    sides = [224, 224, 112, 112, 56, 56, 56, 28, 28, 28, 14, 14, 14]
    scale = sum(side * side * c for side, c in zip(sides, CONV_WIDTHS))
    assert scale == 13_547_520 and round((se + scale) / 1e9, 2) == 15.48
