"""The ResNet-D options of the residual family (deep stems, pooled shortcuts,
anti-aliasing, SENet-154's 3x3 shortcut): their timm key names and the pooling.

The numbers themselves are checked against timm in test_parity.py; these are
cheap: tiny widths, one block per stage, shapes only.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from senet_jax.convert import torch_key, torch_to_flax
from senet_jax.layers import avg_pool_2x2
from senet_jax.models import create_model, model_spec

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'reference')
TINY = dict(layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_width=16)


@pytest.mark.parametrize('name,piece', [
    ('se_resnext26d_32x4d', 'deep stem, avg_down shortcut: conv1.0/1/3/4/6, bn1, downsample.1/2'),
    ('se_resnext26t_32x4d', 'tiered deep stem'),
    ('se_resnextaa101d_32x8d', "aa: parameter-free pools, timm's keys unchanged"),
    ('gluon_senet154', 'deep stem, 3x3 conv shortcut (downsample.0/1), half-width first 1x1'),
])
def test_timm_state_dict_round_trip(name, piece):
    """Our variables -> timm's keys (the same names as the reference's, whose fixture
    holds them) -> torch_to_flax, strict, gives back every value."""
    spec = model_spec(name)
    tiny = {**TINY, 'widths': (32, 64, 128, 256)} if name == 'gluon_senet154' else TINY  # 64 groups
    model = create_model(name, num_classes=10, **tiny)
    size = spec.input_size
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
    rng = np.random.default_rng(0)
    flat = {k: rng.normal(size=v.shape).astype(np.float32)
            for k, v in traverse_util.flatten_dict(dict(variables)).items()}
    state_dict = {}
    for (collection, *path), value in flat.items():
        if path[-1] == 'kernel':
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
            if 'se' in path:   # timm's SE convs are 1x1 Conv2d
                value = value[:, :, None, None]
        state_dict[torch_key(collection, tuple(path), spec.layout)] = value
    with open(os.path.join(FIXTURES, f'{name}.json')) as f:
        reference_keys = {k for k, _ in json.load(f)['keys'] if not k.endswith('num_batches_tracked')}
    assert set(state_dict) == reference_keys, piece
    back = traverse_util.flatten_dict(torch_to_flax(name, state_dict, **tiny))
    assert back.keys() == flat.keys()
    for k, v in flat.items():
        np.testing.assert_array_equal(back[k], v)


def _torch_avg_pool_2x2(x, ceil_mode):
    """PyTorch's AvgPool2d(2, ceil_mode, count_include_pad=False) on NHWC, by loops."""
    n, h, w, c = x.shape
    oh, ow = ((h + 1) // 2, (w + 1) // 2) if ceil_mode else (h // 2, w // 2)
    out = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize('ceil_mode', [False, True])
@pytest.mark.parametrize('shape', [(5, 7), (6, 3)])
def test_avg_pool_2x2_is_pytorchs(shape, ceil_mode):
    x = np.random.default_rng(1).normal(size=(2, *shape, 3)).astype(np.float32)
    got = np.asarray(avg_pool_2x2(jnp.asarray(x), ceil_mode=ceil_mode))
    np.testing.assert_allclose(got, _torch_avg_pool_2x2(x, ceil_mode), rtol=1e-6, atol=1e-6)


def test_deep_stem_widths():
    """stem_width is the stem's output; the deep stems' inner convs are half of it
    ('deep_tiered': 3/8 first), timm's stem_width 32 -> 32, 32, 64 and 24, 32, 64."""
    for stem, first in (('deep', 32), ('deep_tiered', 24)):
        model = create_model('se_resnext26d_32x4d', stem=stem, layers=(1, 1, 1, 1))
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
        widths = [shapes['params'][f'stem_conv{i}']['kernel'].shape[-1] for i in (1, 2, 3)]
        assert widths == [first, 32, 64]


def test_aa_at_an_odd_feature_map_is_one_sentence():
    model = create_model('se_resnextaa101d_32x8d', **TINY)
    with pytest.raises(ValueError, match=r'needs even feature maps .* got 5x5.*multiple of 32'):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 40, 40, 3))))


# Issue 21's list: every SE network of a ResNet variant with timm 1.0.31 weights.
TIMM_SE_NETWORKS = {
    'legacy_seresnet18': 'legacy_se_resnet18', 'legacy_seresnet34': 'legacy_se_resnet34',
    'legacy_seresnet50': 'legacy_se_resnet50', 'legacy_seresnet101': 'legacy_se_resnet101',
    'legacy_seresnet152': 'legacy_se_resnet152', 'legacy_seresnext26_32x4d': 'legacy_se_resnext26_32x4d',
    'legacy_seresnext50_32x4d': 'legacy_se_resnext50_32x4d',
    'legacy_seresnext101_32x4d': 'legacy_se_resnext101_32x4d', 'legacy_senet154': 'senet154',
    'senet154': 'gluon_senet154', 'seresnet50': 'se_resnet50', 'seresnet152d': 'se_resnet152d',
    'seresnext26d_32x4d': 'se_resnext26d_32x4d', 'seresnext26t_32x4d': 'se_resnext26t_32x4d',
    'seresnext50_32x4d': 'se_resnext50_32x4d', 'seresnext101_32x4d': 'se_resnext101_32x4d',
    'seresnext101_32x8d': 'se_resnext101_32x8d', 'seresnext101_64x4d': 'se_resnext101_64x4d',
    'seresnext101d_32x8d': 'se_resnext101d_32x8d', 'seresnextaa101d_32x8d': 'se_resnextaa101d_32x8d',
    'seresnextaa201d_32x8d': 'se_resnextaa201d_32x8d',
}


def test_every_timm_se_resnet_with_weights_is_in_the_zoo():
    for reference, name in TIMM_SE_NETWORKS.items():
        spec = model_spec(name)
        assert (spec.source, spec.reference) == ('timm', reference), name
