"""The SE block and the model family: paper parameter counts, every option, dtypes, errors."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reference_weights import random_variables
from senet_jax import ResNet, SqueezeExcite, create_model, list_models, reduced_width
from senet_jax.models import SE_POSITIONS, min_input_size, model_spec


def n_params(name, **overrides):
    model = create_model(name, **overrides)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    return sum(x.size for x in jax.tree.leaves(shapes['params']))


def paper_millions(n):
    """The paper's tables round parameter counts up to 0.1M (e.g. 26.35M is listed as 26.4M)."""
    return math.ceil(n / 1e5) / 10


@pytest.mark.parametrize('reduction,millions', [(2, 45.7), (4, 35.7), (8, 30.7), (16, 28.1), (32, 26.9)])
@pytest.mark.slow
def test_table10_reduction_ratio_params(reduction, millions):
    assert paper_millions(n_params('se_resnet50', reduction=reduction)) == millions


@pytest.mark.parametrize('stage,millions', [(2, 25.6), (3, 25.7), (4, 26.4)])
@pytest.mark.slow
def test_table13_se_in_one_stage_params(stage, millions):
    assert paper_millions(n_params('se_resnet50', se_stages=(stage,))) == millions


@pytest.mark.slow
def test_table15_se_after_3x3_params():
    assert paper_millions(n_params('se_resnet50', se_position='3x3')) == 25.8


@pytest.mark.slow
def test_baseline_and_se_resnet50_params():
    assert paper_millions(n_params('resnet50')) == 25.6
    assert paper_millions(n_params('se_resnet50')) == 28.1
    assert n_params('se_resnet50', se_stages=()) == n_params('resnet50')


def test_reduced_width_rounding_of_both_layouts():
    assert reduced_width(64, 16) == 4                # official / legacy: floor(C / r)
    assert reduced_width(64, 16, divisor=8) == 8     # timm seresnet: nearest multiple of 8, min 8
    assert reduced_width(256, 16, divisor=8) == reduced_width(256, 16) == 16
    assert reduced_width(100, 16, divisor=8) == 8 and reduced_width(100, 16) == 6
    with pytest.raises(ValueError):
        reduced_width(64, 0)


# A small bottleneck network (one block per stage) keeps the option sweep fast.
TINY = dict(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), reduction=4)
# One residual block (conv2_x's): where the options act is inside a block.
ONE_BLOCK = dict(TINY, layers=(1, 0, 0, 0))


def _forward_and_grad(model, x):
    # Compiled: op by op, a deep network's gradient takes longer than its compilation.
    variables = jax.jit(model.init)({'params': jax.random.key(0)}, x)

    def loss(params):
        out, _ = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
        return jnp.mean(out ** 2), out

    (value, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])
    return out, grads


@pytest.mark.slow
# Each squeeze and each gate once (they are independent steps of the block: the
# squeeze makes z, the gate maps the excitation); the default pair is everywhere else.
@pytest.mark.parametrize('squeeze,gate', [('avg', 'tanh'), ('max', 'relu'), ('none', 'sigmoid')])
def test_squeeze_and_gate_options_give_finite_outputs_and_gradients(squeeze, gate):
    model = create_model('se_resnet50', num_classes=5, squeeze=squeeze, gate=gate,
                         zero_init_last=False, **ONE_BLOCK)
    out, grads = _forward_and_grad(model, jax.random.normal(jax.random.key(1), (2, 32, 32, 3)))
    assert out.shape == (2, 5) and bool(jnp.all(jnp.isfinite(out)))
    se_grads = [g for path, g in jax.tree_util.tree_leaves_with_path(grads) if 'se' in jax.tree_util.keystr(path)]
    assert se_grads and all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert any(float(jnp.abs(g).max()) > 0 for g in se_grads)


@pytest.mark.no_cover   # every line it runs, cheaper tests run too (docs/architecture.md, "Tests")
@pytest.mark.slow
@pytest.mark.parametrize('position', SE_POSITIONS)
@pytest.mark.parametrize('name', ['se_resnet50', 'se_resnet18'])
def test_every_se_position_builds_and_trains(position, name):
    model = create_model(name, num_classes=3, se_position=position, zero_init_last=False, **ONE_BLOCK)
    out, grads = _forward_and_grad(model, jax.random.normal(jax.random.key(2), (2, 32, 32, 3)))
    assert bool(jnp.all(jnp.isfinite(out))) and all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize('stages', [(), (2,), (3,), (4,), (5,), (2, 3, 4, 5)])
def test_se_stages_place_se_where_asked(stages):
    model = create_model('se_resnet50', num_classes=3, se_stages=stages, **TINY)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with_se = sorted(int(k[len('stage'):].split('_')[0]) for k, v in variables['params'].items()
                     if k.startswith('stage') and 'se' in v)
    assert with_se == sorted(stages)


@pytest.mark.slow
def test_gates_are_sown_for_analysis():
    model = create_model('se_resnet_mini', num_classes=10)
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    variables = random_variables(model, x)
    _, state = jax.jit(lambda v, x: model.apply(v, x, mutable=['intermediates']))(variables, x)
    gates = {k: v['se']['gate'][0] for k, v in state['intermediates'].items()}
    assert sorted(gates) == ['stage2_block0', 'stage3_block0', 'stage4_block0', 'stage5_block0']
    assert gates['stage5_block0'].shape == (3, 128)
    assert all(bool(jnp.all((g > 0) & (g < 1))) for g in gates.values())  # sigmoid gates


@pytest.mark.slow
def test_no_squeeze_gates_vary_over_space():
    se = SqueezeExcite(reduction=4, squeeze='none')
    u = jax.random.normal(jax.random.key(0), (2, 5, 7, 16))
    variables = se.init(jax.random.key(1), u)
    out, state = se.apply(variables, u, mutable=['intermediates'])
    gate = state['intermediates']['gate'][0]
    assert gate.shape == (2, 5, 7, 16) and out.shape == u.shape
    np.testing.assert_allclose(out, u * gate, rtol=1e-6)


@pytest.mark.slow
def test_squeeze_excite_matches_the_paper_equations():
    u = jax.random.normal(jax.random.key(0), (2, 4, 4, 32))
    se = SqueezeExcite(reduction=8)
    v = se.init(jax.random.key(1), u)
    p = v['params']
    z = u.mean(axis=(1, 2))
    s = jax.nn.sigmoid(jax.nn.relu(z @ p['fc1']['kernel'] + p['fc1']['bias']) @ p['fc2']['kernel'] + p['fc2']['bias'])
    assert p['fc1']['kernel'].shape == (32, 4)
    np.testing.assert_allclose(se.apply(v, u), u * s[:, None, None, :], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32():
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    f32 = create_model('se_resnet50', num_classes=10, zero_init_last=False, **TINY)
    bf16 = create_model('se_resnet50', num_classes=10, zero_init_last=False, dtype=jnp.bfloat16, **TINY)
    variables = random_variables(f32, x)
    a, b = (jax.jit(m.apply)(variables, x) for m in (f32, bf16))
    assert b.dtype == jnp.float32   # logits come back in float32 for the loss
    assert jax.tree.leaves(variables['params'])[0].dtype == jnp.float32
    assert float(jnp.abs(a - b).max() / jnp.abs(a).max()) < 3e-2


@pytest.mark.slow
def test_backbone_features_have_the_stage_strides():
    model = create_model('se_resnet50')
    x = jnp.zeros((1, 224, 224, 3))
    shapes = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, return_features=True)[0])
    assert {k: v.shape for k, v in shapes.items()} == {
        'stem': (1, 112, 112, 64), 'conv2_x': (1, 56, 56, 256), 'conv3_x': (1, 28, 28, 512),
        'conv4_x': (1, 14, 14, 1024), 'conv5_x': (1, 7, 7, 2048)}


@pytest.mark.slow
def test_any_input_size_and_min_size():
    model = create_model('legacy_se_resnet18', num_classes=7)
    assert min_input_size(model) == 32
    assert min_input_size(create_model('se_resnet_mini')) == 8
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, 97, 33, 3)))[0])
    assert out.shape == (2, 7)


@pytest.mark.slow
def test_models_command_measures_each_model_at_its_input_size(capsys):
    from senet_jax.models.__main__ import main
    assert model_spec('se_resnet50').input_size == 224 and model_spec('se_resnet_mini').input_size == 16
    assert main(['se_resnet_mini']) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:3] == ['se_resnet_mini', '16', '0.45']
    assert main(['se_resnet_mini', '--image-size', '32']) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[1] == '32'
    assert main(['se_resnet5']) == 1
    assert "Did you mean 'se_resnet50'" in capsys.readouterr().err


def test_zoo_covers_the_issue_table():
    names = set(list_models())
    for d in (18, 34, 50, 101, 152):
        assert {f'se_resnet{d}', f'legacy_se_resnet{d}', f'resnet{d}'} <= names
    for d in (50, 101):
        assert {f'se_resnext{d}_32x4d', f'legacy_se_resnext{d}_32x4d', f'resnext{d}_32x4d'} <= names
    assert 'senet154' in names


@pytest.mark.parametrize('kwargs,message', [
    (dict(name='se_resnet5'), "Unknown model 'se_resnet5'. Did you mean 'se_resnet50'"),
    (dict(name='se_resnet50', reduciton=8), "Unknown option 'reduciton' for se_resnet50. "
                                            "Did you mean 'reduction', "),
    (dict(name='se_resnet50', xyz=4), "Unknown option 'xyz' for se_resnet50. The options are"),
    (dict(name='se_resnet50', reduction=0), 'reduction must be at least 1 (the ratio r), got 0.'),
    (dict(name='se_resnet50', reduction='8'), "reduction must be at least 1 (the ratio r), got '8'."),
    (dict(name='se_resnet50', se_position='middle'), "se_position must be one of"),
    (dict(name='se_resnet50', squeeze='median'), "squeeze must be one of ('avg', 'max', 'none')"),
    (dict(name='se_resnet50', gate='sigmod'), "got 'sigmod'. Did you mean 'sigmoid'?"),
    (dict(name='se_resnet50', se_stages=(1, 2)), 'se_stages must be a subset of (2, 3, 4, 5)'),
    (dict(name='se_resnet50', se_stages='45'), 'se_stages must be a subset'),
    (dict(name='se_resnet50', stem='huge'), 'stem must be one of'),
    (dict(name='se_resnet50', layers=(3, 4, 6)), 'layers must be one block count per stage'),
    (dict(name='se_resnet50', num_classes=0), 'num_classes must be at least 1'),
    (dict(name='senet154', drop_rate=1.0), 'drop_rate must be in [0, 1)'),
    # SK is an option of the residual family only; there it replaces the 3x3 conv.
    (dict(name='se_mobilenet_v1', selective_kernel={}), 'se_mobilenet_v1 does not take selective_kernel: SKNet replaces'),
    (dict(name='sk_resnet18', selective_kernel={'reduce': 8}),
     "selective_kernel has no option 'reduce'; its options are"),
    (dict(name='sk_resnet18', selective_kernel=8), 'selective_kernel must be None or a dict'),
    (dict(name='se_resnextaa101d_32x8d', selective_kernel={}),
     'selective_kernel cannot be combined with aa or stride_on_1x1'),
])
def test_bad_options_are_refused_in_one_sentence(kwargs, message):
    with pytest.raises(ValueError) as e:
        create_model(**kwargs)
    assert message in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('module', [
    lambda: SqueezeExcite(gate='softmax'),
    lambda: SqueezeExcite(squeeze='median'),
    lambda: SqueezeExcite(reduction=0),
    lambda: ResNet(layers=(1, 1, 1, 1), se_position='middle'),
])
def test_modules_built_by_hand_are_refused_by_the_same_rules(module):
    # The same sentence as create_model's, when the module is built, not when it is first called.
    with pytest.raises(ValueError, match=r'must be (one of|at least 1)'):
        module()


@pytest.mark.slow
@pytest.mark.parametrize('gate', ['tanh', 'relu'])
def test_gates_that_are_zero_at_zero_still_let_the_branch_learn(gate):
    # With the last BN scale at 0 the SE input is 0 and a tanh/relu gate would be 0 too,
    # cutting the branch off from every gradient; such blocks start their last BN at 1.
    model = create_model('se_resnet50', num_classes=3, gate=gate, **ONE_BLOCK)
    out, grads = _forward_and_grad(model, jax.random.normal(jax.random.key(3), (2, 32, 32, 3)))
    assert float(jnp.abs(grads['stage2_block0']['conv1']['kernel']).max()) > 0
    variables = jax.jit(create_model('se_resnet50', num_classes=3, **TINY).init)(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert float(jnp.abs(variables['params']['stage2_block0']['bn3']['scale']).max()) == 0  # sigmoid: zero-init kept


def test_a_nested_config_override_reaches_the_model_as_a_dict():
    import ml_collections
    from senet_jax.models import set_overrides
    overrides = set_overrides(ml_collections.ConfigDict({'selective_kernel': {'reduction': 4}}))
    assert overrides == {'selective_kernel': {'reduction': 4}}
    assert type(overrides['selective_kernel']) is dict


@pytest.mark.slow
def test_config_overrides_and_input_normalisation_helpers():
    from senet_jax.models import IMAGENET_MEAN, normalize_images, set_overrides
    overrides = set_overrides({'reduction': None, 'gate': 'tanh', 'se_stages': [4, 5]})
    assert overrides == {'gate': 'tanh', 'se_stages': [4, 5]}
    assert create_model('se_resnet50', **overrides).se_stages == (4, 5)   # JSON lists: tuples
    assert set_overrides(None) == {}
    mean_colour = jnp.asarray(np.round(np.asarray(IMAGENET_MEAN) * 255), jnp.uint8)[None, None, None]
    out = normalize_images(mean_colour, jnp.bfloat16)
    assert out.dtype == jnp.bfloat16 and float(jnp.abs(out.astype(jnp.float32)).max()) < 0.01


@pytest.mark.no_cover   # every line it runs, cheaper tests run too (docs/architecture.md, "Tests")
@pytest.mark.slow
@pytest.mark.parametrize('bottleneck', [True, False])
def test_fused_se_block_equals_the_steps_spelled_out(bottleneck):
    """The fused BN + SE + addition + ReLU: same outputs, statistics, gates and gradients."""
    from senet_jax.models.resnet import ResidualBlock
    se = functools.partial(SqueezeExcite, reduction=4)
    kw = dict(features=32, width=8 if bottleneck else 32, bottleneck=bottleneck, stride=2, se=se,
              zero_init_last=False)
    fused, plain = ResidualBlock(**kw), ResidualBlock(**kw, fuse_se=False)
    x = jax.random.normal(jax.random.key(0), (3, 9, 9, 16))
    v = plain.init(jax.random.key(1), x)
    # Non-trivial BN parameters and running statistics, so that every term shows.
    v = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(2), p.shape), v)
    v['batch_stats'] = jax.tree.map(jnp.abs, v['batch_stats'])

    def run(block, params, x, train):
        out, new = block.apply({**v, 'params': params}, x, train=train,
                               mutable=['batch_stats', 'intermediates'])
        return out, new

    for train in (True, False):
        (got, gnew), (want, wnew) = (run(b, v['params'], x, train) for b in (fused, plain))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        for a, b in zip(jax.tree.leaves(gnew), jax.tree.leaves(wnew)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    loss = lambda block: lambda p, x: jnp.sum(jnp.sin(run(block, p, x, True)[0]))
    (gp, gx), (wp, wx) = (jax.grad(loss(b), argnums=(0, 1))(v['params'], x) for b in (fused, plain))
    np.testing.assert_allclose(gx, wx, rtol=1e-4, atol=1e-5)
    assert jax.tree.structure(gp) == jax.tree.structure(wp)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(gp), jax.tree.leaves(wp)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_fuse_se_is_a_model_option():
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    fused, plain = (create_model('se_resnet_mini', num_classes=10, fuse_se=f) for f in (True, False))
    v = random_variables(plain, x)
    got, want = (jax.jit(lambda v, x, m=m: m.apply(v, x, train=True, mutable=['batch_stats'])[0])(v, x)
                 for m in (fused, plain))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # Spelled out, the last BN's output can be captured as it is.
    _, state = plain.apply(v, x, capture_intermediates=True, mutable=['intermediates'])
    assert state['intermediates']['stage2_block0']['bn2']['__call__'][0].shape == (2, 16, 16, 16)
