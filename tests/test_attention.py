"""The attention blocks of senet_jax.attention against timm 1.0.31's modules, and the registry.

The fixture (tests/fixtures/attention.json, from `python tests/make_reference.py attention`)
holds, per case of `reference_weights.ATTENTION_CASES`, timm's float64 output and the
gradient of <output, probe> for the input and every parameter, each as a norm and a
projection; the seeded weights, input and probes are rebuilt here with numpy alone.
"""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from reference_weights import (ATTENTION_CASES, ATTENTION_RESNET50, norm_and_projection, random_input,
                               random_state_dict, seeded_normal)
from senet_jax import attention
from senet_jax.attention import ATTENTIONS, create_attention, eca_kernel_size, parse_attention
from senet_jax.convert import torch_to_flax
from senet_jax.models import create_model

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'attention.json')
with open(FIXTURE) as f:
    REFERENCE = {case['id']: case for case in json.load(f)['cases']}
with open(os.path.join(os.path.dirname(__file__), 'fixtures', 'attention_resnet50.json')) as f:
    RESNET50 = json.load(f)

# timm's module names where ours differ (flattened into the block).
_RENAMES = [(r'^gather\.conv(\d)\.', r'gather_conv\1.'), (r'^gather\.norm(\d)\.', r'gather_norm\1.'),
            (r'^spatial\.conv\.conv\.', 'spatial_conv.'), (r'^spatial\.conv\.bn\.', 'spatial_bn.')]


def _ours(key, value):
    """(collection, path, array) of a timm state_dict entry in our layout."""
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    *path, leaf = key.split('.')
    if leaf == 'running_mean':
        return 'batch_stats', (*path, 'mean'), value
    if leaf == 'running_var':
        return 'batch_stats', (*path, 'var'), value
    if leaf == 'bias':
        return 'params', (*path, 'bias'), value
    if value.ndim == 1:                              # a norm's weight
        return 'params', (*path, 'scale'), value
    if value.ndim == 3:                              # Conv1d (1, 1, k) -> (k, 1, 1)
        return 'params', (*path, 'kernel'), value.transpose(2, 1, 0)
    if value.shape[2:] == (1, 1):
        return 'params', (*path, 'kernel'), value[:, :, 0, 0].T   # a 1x1 conv as a Dense
    return 'params', (*path, 'kernel'), value.transpose(2, 3, 1, 0)   # OIHW -> HWIO


def _variables(keys, weights):
    flat = {}
    for k, _ in keys:
        collection, path, value = _ours(k, np.asarray(weights[k], np.float64))
        flat[(collection, *path)] = jnp.asarray(value)
    return traverse_util.unflatten_dict(flat)


def _nhwc(a):
    return jnp.asarray(a.transpose(0, 2, 3, 1))


# One case per block form in the fast tier; the rest (other widths and sizes) in the full suite.
FAST = {'se_c24', 'ese_c24', 'eca_c256', 'ge_e2', 'ge_mlp_global', 'ge_params_e4', 'gc_c20', 'cbam_c40'}


@pytest.mark.parametrize('case_id', [c[0] if c[0] in FAST else pytest.param(c[0], marks=pytest.mark.slow)
                                     for c in ATTENTION_CASES])
def test_block_matches_timm(case_id):
    ref = REFERENCE[case_id]
    shape, keys = tuple(ref['shape']), ref['keys']
    spec = ref['spec'] if isinstance(ref['spec'], str) else tuple(ref['spec'])
    with jax.enable_x64(True):
        block = create_attention(spec, param_dtype=jnp.float64)
        x = _nhwc(seeded_normal(case_id + '/x', shape))
        probe = _nhwc(seeded_normal(case_id + '/out', shape))
        variables = _variables(keys, random_state_dict(keys))
        shapes = jax.tree_util.tree_map(jnp.shape, jax.eval_shape(block.init, jax.random.PRNGKey(0), x))
        assert shapes == jax.tree_util.tree_map(jnp.shape, variables)   # every parameter mapped

        def loss(params, x):
            out = block.apply({**variables, 'params': params}, x)
            return jnp.vdot(out, probe), out

        (_, out), (g_params, g_x) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
            variables.get('params', {}), x)
        np.testing.assert_allclose(norm_and_projection(out, probe), ref['out'], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(norm_and_projection(g_x, _nhwc(seeded_normal(case_id + '/dx', shape))),
                                   ref['grads']['input'], rtol=1e-6, atol=1e-9)
        probes = random_state_dict(keys, seed=1)
        g_flat = traverse_util.flatten_dict(g_params)
        checked = 0
        for k, _ in keys:
            collection, path, p = _ours(k, np.asarray(probes[k], np.float64))
            if collection == 'params':
                np.testing.assert_allclose(norm_and_projection(g_flat[path], p), ref['grads'][k],
                                           rtol=1e-6, atol=1e-9, err_msg=k)
                checked += 1
        assert checked == len(g_flat)


def test_eca_kernel_size_follows_the_paper():
    # k = |log2(C) + 1| / 2, to the next odd number, at least 3 (timm's rule).
    assert [eca_kernel_size(c) for c in (16, 64, 256, 512, 1024, 2048)] == [3, 3, 5, 5, 5, 7]


@pytest.mark.parametrize('name', sorted(ATTENTIONS))
def test_every_block_runs_in_bfloat16_and_sows_its_gate(name):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7, 16), jnp.bfloat16)
    block = create_attention(name, dtype=jnp.bfloat16, train=True)
    init_and_apply = lambda x: block.apply(block.init(jax.random.PRNGKey(1), x), x,
                                           mutable=['intermediates', 'batch_stats'])
    y, state = jax.jit(init_and_apply)(x)
    assert y.shape == x.shape and y.dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(y.astype(jnp.float32))))
    assert state['intermediates']['gate'][0].shape == (2, 16)


def test_unknown_name_and_option_are_refused_in_one_sentence():
    with pytest.raises(ValueError, match=r"^attention must be one of .*got 'eac'\. Did you mean 'eca'\?$"):
        create_attention('eac')
    with pytest.raises(ValueError, match=r"^attention 'ge' has no option 'extend'.* Did you mean 'extent'\?$"):
        create_attention(('ge', {'extend': 2}))
    with pytest.raises(ValueError, match=r'^attention must be None, a name or'):
        parse_attention(3)
    with pytest.raises(ValueError, match='^Gather-Excite extent must be 0'):
        create_attention(('ge', {'extent': 3}))
    with pytest.raises(ValueError, match='^Gather-Excite with extra_params needs'):
        create_attention(('ge', {'extra_params': True}))
    assert create_attention(None) is None


def test_common_options_reach_only_the_blocks_that_have_them():
    se = create_attention(('se', {'reduction': 8}), train=True, dtype=jnp.bfloat16, name='se')
    assert (se.reduction, se.dtype, se.name) == (8, jnp.bfloat16, 'se')
    assert create_attention('cbam', train=True).train
    assert isinstance(se, attention.SqueezeExcite)


@pytest.mark.slow
@pytest.mark.parametrize('attn', sorted(ATTENTION_RESNET50))
def test_resnet50_with_each_block_matches_timm(attn):
    """Our resnet50 with `attention=X` against timm's resnet50 with block_args=dict(attn_layer=X),
    at one block per stage, in float64: the converter maps every key, the parameter counts agree,
    the logits agree to 1e-9 of their largest."""
    ref = RESNET50['models'][attn]
    spec = ATTENTION_RESNET50[attn]
    spec = spec if isinstance(spec, str) else tuple(spec)
    layers = tuple(RESNET50['overrides']['layers'])
    variables = torch_to_flax('resnet50', random_state_dict(ref['keys']), layers=layers, attention=spec)
    assert sum(v.size for v in jax.tree.leaves(variables['params'])) == ref['num_params']
    h, w = RESNET50['size']
    with jax.enable_x64(True):
        model = create_model('resnet50', layers=layers, attention=spec, num_classes=10,
                             dtype=jnp.float64, param_dtype=jnp.float64)
        variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), variables)
        x = jnp.asarray(random_input(h, w).transpose(0, 2, 3, 1), jnp.float64)
        got = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))[0]
    want = np.asarray(ref['logits'])
    assert np.abs(got - want).max() <= 1e-9 * np.abs(want).max()


def test_resnet_takes_a_block_by_name_in_place_of_se():
    """`attention=X` puts block X where SE sits, named 'se' as timm names it; 'se' keeps the
    family's SE options and variable names; None (the plain baselines) puts none."""
    shapes = lambda name, **kw: jax.eval_shape(lambda: create_model(name, **kw).init(
        jax.random.key(0), jnp.zeros((1, 16, 16, 3))))['params']
    se = shapes('se_resnet_mini')
    assert set(se['stage2_block0']['se']) == {'fc1', 'fc2'}
    assert jax.tree.map(jnp.shape, shapes('se_resnet_mini', attention='se')) == jax.tree.map(jnp.shape, se)
    assert set(shapes('se_resnet_mini', attention='eca')['stage2_block0']['se']) == {'conv'}
    assert 'se' not in shapes('resnet_mini')['stage2_block0']
    assert set(shapes('resnet_mini', attention='gc')['stage3_block0']['se']) == {'conv_attn', 'mlp_scale'}
    with pytest.raises(ValueError, match=r"^attention must be one of .*got 'cbma'\. Did you mean 'cbam'"):
        create_model('se_resnet_mini', attention='cbma')
