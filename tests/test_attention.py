"""The attention blocks of senet_jax.attention against timm 1.0.31's modules, and the registry.

The fixture (tests/fixtures/attention.json, from `python tests/make_reference.py attention`)
holds, per case of `reference_weights.ATTENTION_CASES`, timm's float64 output and the
gradient of <output, probe> for the input and every parameter, each as a norm and a
projection; the seeded weights, input and probes are rebuilt here with numpy alone.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from reference_weights import (ATTENTION_CASES, ATTENTION_RESNET50, norm_and_projection, random_input,
                               random_state_dict, seeded_normal)
from senet_jax import attention
from senet_jax.attention import (ATTENTIONS, SelectiveKernel, create_attention, eca_kernel_size,
                                 parse_attention, torch_name)
from senet_jax.convert import _to_flax, torch_to_flax
from senet_jax.models import create_model

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'attention.json')
with open(FIXTURE) as f:
    REFERENCE = {case['id']: case for case in json.load(f)['cases']}
with open(os.path.join(os.path.dirname(__file__), 'fixtures', 'attention_resnet50.json')) as f:
    RESNET50 = json.load(f)

_LEAF = {('params', 'kernel'): 'weight', ('params', 'bias'): 'bias', ('params', 'scale'): 'weight',
         ('batch_stats', 'mean'): 'running_mean', ('batch_stats', 'var'): 'running_var'}


def _torch_key(path):
    """timm's state_dict key of one of our variables, (collection, *module path, leaf)."""
    collection, *modules, leaf = path
    return '.'.join([torch_name(m) for m in modules] + [_LEAF[(collection, leaf)]])


def _variables(shapes, weights):
    """Our variables of the given shapes from timm's state_dict, through convert.py's layout rule."""
    flat = traverse_util.flatten_dict(shapes)
    assert sorted(_torch_key(p) for p in flat) == sorted(weights)   # one to one
    return traverse_util.unflatten_dict({
        p: jnp.asarray(_to_flax(np.asarray(weights[_torch_key(p)], np.float64), p[-1], len(s.shape)))
        for p, s in flat.items()})


def _block(spec):
    name, options = (spec, {}) if isinstance(spec, str) else spec
    if name == 'sk':
        return SelectiveKernel(**options, param_dtype=jnp.float64)
    return create_attention(spec, param_dtype=jnp.float64)


def _nhwc(a):
    return jnp.asarray(a.transpose(0, 2, 3, 1))


# One case per block form in the fast tier; the rest (other widths and sizes) in the full suite.
FAST = {'se_c24', 'ese_c24', 'eca_c256', 'ge_e2', 'ge_params_e4', 'gc_c20', 'cbam_c40',
        'sk_c32_s2'}


@pytest.mark.parametrize('case_id', [c[0] if c[0] in FAST else pytest.param(c[0], marks=pytest.mark.slow)
                                     for c in ATTENTION_CASES])
def test_block_matches_timm(case_id):
    ref = REFERENCE[case_id]
    shape, out_shape, keys = tuple(ref['shape']), tuple(ref['out_shape']), ref['keys']
    spec = ref['spec'] if isinstance(ref['spec'], str) else tuple(ref['spec'])
    with jax.enable_x64(True):
        block = _block(spec)
        x = _nhwc(seeded_normal(case_id + '/x', shape))
        probe = _nhwc(seeded_normal(case_id + '/out', out_shape))
        shapes = jax.eval_shape(block.init, jax.random.PRNGKey(0), x)
        variables = _variables(shapes, random_state_dict(keys))

        def loss(params, x):
            out = block.apply({**variables, 'params': params}, x)
            return jnp.vdot(out, probe), out

        (_, out), (g_params, g_x) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
            variables.get('params', {}), x)
        np.testing.assert_allclose(norm_and_projection(out, probe), ref['out'], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(norm_and_projection(g_x, _nhwc(seeded_normal(case_id + '/dx', shape))),
                                   ref['grads']['input'], rtol=1e-6, atol=1e-9)
        probes = random_state_dict(keys, seed=1)
        checked = 0
        for path, grad in traverse_util.flatten_dict({'params': g_params}).items():
            key = _torch_key(path)
            p = _to_flax(np.asarray(probes[key], np.float64), path[-1], grad.ndim)
            np.testing.assert_allclose(norm_and_projection(grad, p), ref['grads'][key],
                                       rtol=1e-6, atol=1e-9, err_msg=key)
            checked += 1
        assert checked == len(ref['grads']) - 1   # every parameter, and the input


def test_eca_kernel_size_follows_the_paper():
    # k = |log2(C) + 1| / 2, to the next odd number, at least 3 (timm's rule).
    assert [eca_kernel_size(c) for c in (16, 64, 256, 512, 1024, 2048)] == [3, 3, 5, 5, 5, 7]


def _bfloat16_blocks():
    blocks = {name: create_attention(name, dtype=jnp.bfloat16, train=True) for name in ATTENTIONS}
    blocks['sk'] = SelectiveKernel(features=8, strides=2, dtype=jnp.bfloat16, train=True)
    return blocks


def test_every_block_traces_in_bfloat16_and_sows_its_gate():
    """Every registered block and SelectiveKernel, traced in bfloat16 in training mode
    (shapes and dtypes only: compiling them costs seconds, the slow test below runs them)."""
    x = jax.ShapeDtypeStruct((2, 5, 7, 16), jnp.bfloat16)
    for name, block in _bfloat16_blocks().items():
        variables = jax.eval_shape(block.init, jax.random.PRNGKey(1), x)
        y, state = jax.eval_shape(lambda v, x: block.apply(v, x, mutable=['intermediates', 'batch_stats']),
                                  variables, x)
        assert y.dtype == jnp.bfloat16, name
        assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables)), name   # fp32 parameters
        if name == 'sk':
            assert y.shape == (2, 3, 4, 8) and state['intermediates']['path_weights'][0].shape == (2, 2, 8)
        else:
            assert y.shape == x.shape and state['intermediates']['gate'][0].shape == (2, 16), name
    with pytest.raises(ValueError, match='^Selective Kernel with split_input needs input channels divisible'):
        jax.eval_shape(SelectiveKernel(kernel_sizes=(3, 5, 7)).init, jax.random.PRNGKey(0), x)


@pytest.mark.slow
def test_every_block_runs_in_bfloat16():
    """Every registered block and SelectiveKernel in bfloat16, in training mode, in one program."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7, 16), jnp.bfloat16)
    blocks = _bfloat16_blocks()

    def run(x):
        return {name: block.apply(block.init(jax.random.PRNGKey(1), x), x,
                                  mutable=['intermediates', 'batch_stats'])
                for name, block in blocks.items()}
    results = jax.jit(run)(x)
    for name, (y, state) in results.items():
        assert y.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(y.astype(jnp.float32)))), name
        if name == 'sk':
            assert y.shape == (2, 3, 4, 8)
            weights = state['intermediates']['path_weights'][0].astype(jnp.float32)
            assert weights.shape == (2, 2, 8) and np.allclose(weights.sum(1), 1, atol=1e-2)   # softmax over paths
        else:
            assert y.shape == x.shape and state['intermediates']['gate'][0].shape == (2, 16), name


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


@pytest.mark.parametrize('attn', ['eca', ('ge', {'extent': 2})])
def test_analysis_reads_the_gates_of_any_block(attn):
    """se_blocks finds every block in call order, and gates_and_logits reads (N, C) gates
    (a spatial gate averaged over space), as for SE."""
    from senet_jax import analysis
    model = create_model('se_resnet_mini', num_classes=3, attention=attn)
    x = jnp.zeros((2, 16, 16, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    blocks = analysis.se_blocks(variables, model)
    assert blocks == [f'stage{s}_block0' for s in (2, 3, 4, 5)]
    _, gates = jax.eval_shape(lambda v, x: analysis.gates_and_logits(model, v, x), variables, x)
    assert {b: g.shape for b, g in gates.items()} == dict(zip(blocks, [(2, 16), (2, 32), (2, 64), (2, 128)]))


# One SE model of each family, at one unit per stage.
_FAMILY_MODELS = ('se_resnet_mini', 'se_resnet110_cifar', 'se_bn_inception', 'se_inception_resnet_v2',
                  'se_vgg16_bn', 'se_mobilenet_v1', 'se_shufflenet_v1_g3')


@pytest.mark.no_cover   # every line it runs, cheaper tests run too (docs/architecture.md, "Tests")
@pytest.mark.slow
@pytest.mark.parametrize('name', _FAMILY_MODELS)
def test_every_family_takes_every_block(name):
    """Every family puts any registered block exactly where it puts SE (the same module
    paths sow a gate, and hold that block's own parameters), and none with
    attention=None; traced, not compiled."""
    from reference_weights import shallowest
    from senet_jax.models import min_input_size
    side = max(min_input_size(create_model(name, **shallowest(name))), 32)
    x = jnp.zeros((2, side, side, 3))

    def placed(attn):
        """The paths that sow a gate, and the parameter names of the block at each."""
        model = create_model(name, num_classes=5, attention=attn, **shallowest(name))
        def run(x):
            variables = model.init(jax.random.key(0), x)
            return variables['params'], model.apply(
                variables, x, train=True, mutable=['batch_stats', 'intermediates'],
                rngs={'dropout': jax.random.key(1)})
        params, (logits, state) = jax.eval_shape(run, x)
        assert logits.shape == (2, 5)
        flat = traverse_util.flatten_dict(state.get('intermediates', {}))
        paths = sorted(p[:-1] for p in flat if p[-1] == 'gate')

        def names(path):
            node = params
            for key in path:
                node = node.get(key, {})
            return sorted(node)
        return paths, {tuple(names(p)) for p in paths}

    def own_params(attn):
        block = create_attention(attn, train=True)
        return {tuple(sorted(jax.eval_shape(block.init, jax.random.key(0),
                                            jnp.zeros((1, 8, 8, 32))).get('params', {})))}

    where, _ = placed('se')
    assert where and placed(None)[0] == []
    for attn in sorted(ATTENTIONS):
        paths, names = placed(attn)
        assert paths == where, attn
        if attn != 'se':   # the families' SE keeps its own names (fc1/fc2, or the references')
            assert names == own_params(attn), attn


def test_pruning_by_gate_refuses_where_there_is_no_per_channel_gate():
    """Pruning zeroes the BN before a residual block's gate: any block with one gate per
    channel on the residual family; one sentence for another family or a spatial gather."""
    from senet_jax import analysis
    analysis.check_prunable(create_model('se_resnet_mini', attention='eca'))
    analysis.check_prunable(create_model('se_resnet_mini', attention='cbam'))
    analysis.check_prunable(create_model('se_resnet_mini', attention='ge'))   # extent 0: global
    with pytest.raises(ValueError, match=r'^pruning by gate needs one gate per channel; Gather-Excite '
                                         r'with extent 4 gates each position separately\.$'):
        analysis.pruning_table(create_model('se_resnet_mini', attention=('ge', {'extent': 4})),
                               None, [], fractions=(0.5,))
    with pytest.raises(ValueError, match=r'^pruning by gate .* only the residual family .*; VGG has none\.$'):
        analysis.check_prunable(create_model('se_vgg16_bn', attention='eca'))
