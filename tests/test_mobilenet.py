"""MobileNet v1 and SE-MobileNet (paper Table 3): parameter arithmetic, SE placement,
features, options, multiply-adds, and conversion from pytorchcv's `mobilenet_w1`.
Parity of logits at 224 and 209x197 is tests/test_parity.py (slow)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from reference_weights import random_input, random_state_dict
from senet_jax import load_pretrained
from senet_jax.convert import main as convert_main
from senet_jax.convert import torch_key, torch_to_flax
from senet_jax.models import create_model
from senet_jax.models.macs import count_macs
from senet_jax.models.mobilenet import MobileNetV1

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'reference', 'mobilenet_v1.json')
# The pointwise output channels of the 13 depthwise-separable blocks (MobileNet Table 1).
BLOCK_WIDTHS = [64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]


def _reference():
    with open(FIXTURE) as f:
        return json.load(f)


def _shapes(model, size=64):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def _n_params(model):
    return sum(x.size for x in jax.tree.leaves(_shapes(model)['params']))


def _gates(model, size=64):
    """{SE module path: its gates' shape}, from shapes alone."""
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    _, state = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=['intermediates']),
                              _shapes(model, size), x)
    flat = traverse_util.flatten_dict(state.get('intermediates', {}))
    return {'/'.join(path[:-1]): v[0].shape for path, v in flat.items()}


@pytest.mark.slow
def test_se_mobilenet_params_round_to_table3():
    # Base: pytorchcv's mobilenet_w1 (timm's mobilenetv1_100 has the same count).
    # SE per block of C channels at r = 16: W1 (C x C/16) and W2 (C/16 x C) with biases.
    base = _reference()['num_params']
    assert base == 4_231_976 == _n_params(create_model('mobilenet_v1'))
    per_block = {c: 2 * c * (c // 16) + c // 16 + c for c in set(BLOCK_WIDTHS)}
    assert per_block == {64: 580, 128: 2_184, 256: 8_464, 512: 33_312, 1024: 132_160}
    se = sum(per_block[c] for c in BLOCK_WIDTHS)
    assert se == 580 + 2 * 2_184 + 2 * 8_464 + 6 * 33_312 + 2 * 132_160 == 486_068
    total = _n_params(create_model('se_mobilenet_v1'))
    assert total == base + se == 4_718_044
    # Table 3: 4.2M -> 4.7M, to the nearest 0.1M (rounding up would give 4.3M -> 4.8M).
    assert (round(base / 1e6, 1), round(total / 1e6, 1)) == (4.2, 4.7)
    # Without SE biases it would be 4,711,720, also 4.7M; r = 8 would be 5.2M.
    assert round(_n_params(create_model('se_mobilenet_v1', reduction=8)) / 1e6, 1) == 5.2


@pytest.mark.slow
def test_se_sits_on_the_pointwise_output_of_each_of_the_13_blocks():
    gates = _gates(create_model('se_mobilenet_v1'))
    names = [f'stage{s}_unit{u}/se' for s, n in zip(range(1, 6), (1, 2, 2, 6, 2))
             for u in range(1, n + 1)]
    assert {k: v[-1] for k, v in gates.items()} == dict(zip(names, BLOCK_WIDTHS))
    assert sorted(_gates(create_model('se_mobilenet_v1', se_stages=(5,)))) == names[-2:]
    assert _gates(create_model('mobilenet_v1')) == {}


def test_depthwise_convs_have_one_filter_per_channel():
    params = _shapes(create_model('mobilenet_v1'))['params']
    assert params['stage4_unit3']['dw_conv']['kernel'].shape == (3, 3, 1, 512)
    assert params['stage4_unit3']['pw_conv']['kernel'].shape == (1, 1, 512, 512)


@pytest.mark.slow
def test_return_features_gives_the_stage_outputs():
    model = create_model('se_mobilenet_v1')
    x = jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32)
    feats = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True), _shapes(model), x)
    # strides 2, 2, 4, 8, 16, 32
    assert {k: v.shape for k, v in feats.items()} == {
        'stem': (2, 32, 48, 32), 'stage1': (2, 32, 48, 64), 'stage2': (2, 16, 24, 128),
        'stage3': (2, 8, 12, 256), 'stage4': (2, 4, 6, 512), 'stage5': (2, 2, 3, 1024)}


@pytest.mark.slow
def test_any_input_from_the_total_stride_up_runs():
    # pytorchcv's fixed 7x7 final pool takes only 193..224 px; the global pool takes any size.
    model = create_model('se_mobilenet_v1', num_classes=7)
    variables = _shapes(model)
    for h, w in ((model.min_input_size(), 40), (225, 331)):
        x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
        assert jax.eval_shape(model.apply, variables, x).shape == (1, 7)


@pytest.mark.parametrize('overrides,message', [
    (dict(se_stages=(0, 5)), 'se_stages must be a subset of (1, 2, 3, 4, 5) (the stages'),
    (dict(se_stages='12'), 'se_stages must be a subset'),
    (dict(reduction=0.5), 'reduction must be at least 1'),
    (dict(squeeze='mean'), "squeeze must be one of ('avg', 'max', 'none')"),
    (dict(num_classes=0), 'num_classes must be at least 1'),
])
def test_bad_options_are_refused_in_one_sentence(overrides, message):
    with pytest.raises(ValueError) as e:
        MobileNetV1(**overrides)
    assert message in str(e.value) and '\n' not in str(e.value)


def test_every_variable_maps_to_a_key_of_pytorchcvs_state_dict():
    keys = {k for k, _ in _reference()['keys'] if not k.endswith('num_batches_tracked')}
    flat = traverse_util.flatten_dict(dict(_shapes(create_model('mobilenet_v1'))))
    assert sorted(torch_key(c, tuple(p), 'pytorchcv_mobilenet') for c, *p in flat) == sorted(keys)


@pytest.mark.slow
def test_multiply_adds_match_table3():
    # 569 M for the plain network, as the paper (and the MobileNet paper) give it. SE adds
    # 0.47 M (its projections); the paper's 572 also counts the channel-wise scaling.
    plain = count_macs(create_model('mobilenet_v1', kernels='plain'), 224)
    se = count_macs(create_model('se_mobilenet_v1', kernels='plain'), 224)
    assert round(plain / 1e6) == 569
    assert se - plain == sum(2 * c * (c // 16) for c in BLOCK_WIDTHS)
    # Counting the scaling too (one multiply per SE output value, 2.7 M) gives the paper's 572.
    sides = [112, 56, 56, 28, 28, 14, 14, 14, 14, 14, 14, 7, 7]
    scale = sum(side * side * c for side, c in zip(sides, BLOCK_WIDTHS))
    assert scale == 2_709_504 and round((se + scale) / 1e6) == 572


@pytest.mark.slow
def test_pytorchcv_weights_convert_with_the_cli_and_load_pretrained_gives_the_same_logits(tmp_path):
    sd = random_state_dict(_reference()['keys'])
    weights = tmp_path / 'mobilenet_w1.safetensors'
    save_file(sd, str(weights))
    out = tmp_path / 'converted'
    assert convert_main(['--model', 'mobilenet_v1', '--weights', str(weights), '--out', str(out)]) == 0
    model, variables = load_pretrained(str(out))
    x = jnp.asarray(random_input(64, 48).transpose(0, 2, 3, 1))
    direct = create_model('mobilenet_v1').apply(torch_to_flax('mobilenet_v1', sd), x)
    np.testing.assert_array_equal(model.apply(variables, x), direct)
    model10, variables10 = load_pretrained(str(out), num_classes=10)
    assert model10.apply(variables10, x).shape == (1, 10)
