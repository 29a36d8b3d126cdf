"""The CIFAR networks of Tables 4-5 (models/cifar.py): parameter arithmetic, SE placement,
features, options, errors and weight conversion. Logit parity: tests/test_parity.py."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from reference_weights import random_input, random_state_dict, random_variables, torch_state_dict
from senet_jax import load_pretrained
from senet_jax.analysis import se_blocks
from senet_jax.convert import main, torch_to_flax
from senet_jax.models import create_model, model_spec
from senet_jax.models.cifar import PreActUnit

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'reference')
X32 = jnp.zeros((1, 32, 32, 3))
SLOW = pytest.mark.slow   # tracing the 54 units of ResNet-110/164 takes a few seconds


def _fixture(name):
    with open(os.path.join(FIXTURES, f'{name}.json')) as f:
        return json.load(f)


def _shapes(model, x=X32):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x))


def _variables(model, x):
    """Seeded variables from their shapes alone (numpy): compiling an init's random
    number generation costs XLA:CPU a minute on a busy machine."""
    rng = np.random.default_rng(0)
    fill = lambda path, s: (np.ones(s.shape, np.float32) if path[-1].key == 'var'
                            else rng.normal(0, 0.3, s.shape).astype(np.float32))
    return jax.tree_util.tree_map_with_path(fill, _shapes(model, x))


def n_params(name, **overrides):
    return sum(v.size for v in jax.tree.leaves(_shapes(create_model(name, **overrides))['params']))


def se_params(channels, r=16):
    """One SE block on C channels (floor(C / r) wide, biases on both projections):
    C * (C // r) + C // r  +  (C // r) * C + C."""
    w = channels // r
    return channels * w + w + w * channels + channels


@SLOW
def test_se_resnet_counts_are_base_plus_one_se_block_a_unit():
    # The formula, against pytorchcv's two published SE networks (fixture counts):
    # ResNet-110: 18 basic units a stage on 16 / 32 / 64 channels;
    # 18 * (49 + 162 + 580) = 14,238 = 1,744,952 - 1,730,714.
    assert 18 * (se_params(16) + se_params(32) + se_params(64)) == 14_238
    assert (_fixture('resnet110_cifar')['num_params'] + 14_238
            == _fixture('se_resnet110_cifar')['num_params'] == n_params('se_resnet110_cifar'))
    # ResNet-164: 18 bottleneck units a stage ending in 64 / 128 / 256 channels.
    se164 = 18 * (se_params(64) + se_params(128) + se_params(256))
    assert (_fixture('resnet164_cifar')['num_params'] + se164
            == _fixture('se_resnet164_cifar')['num_params'] == n_params('se_resnet164_cifar'))


def test_se_wrn16_8_count_is_the_base_plus_the_formula():
    """No SE-WRN-16-8 was published (the paper's Tables 4-5 give errors only): its count
    is the reference WRN-16-8's plus one SE block on each of the 6 units' 128 / 256 / 512
    output channels: 2 * (2,184 + 8,464 + 33,312) = 87,920."""
    assert [se_params(c) for c in (128, 256, 512)] == [2_184, 8_464, 33_312]
    base = _fixture('wrn16_8_cifar')['num_params']
    assert base == 10_961_370 == n_params('wrn16_8_cifar')
    assert n_params('se_wrn16_8_cifar') == base + 87_920 == 11_049_290


@pytest.mark.parametrize('name,gates', [pytest.param('se_resnet110_cifar', 54, marks=SLOW),
                                        pytest.param('se_resnet164_cifar', 54, marks=SLOW),
                                        ('se_wrn16_8_cifar', 6), ('wrn16_8_cifar', 0)])
def test_one_se_gate_per_unit(name, gates):
    model = create_model(name)
    variables = _shapes(model)
    _, state = jax.eval_shape(lambda v: model.apply(v, X32, mutable=['intermediates']), variables)
    sown = traverse_util.flatten_dict(state.get('intermediates', {}))
    assert len(sown) == gates
    assert all(path[-2] == 'se' for path in sown)


def test_se_width_is_floor_c_over_r_as_pytorchcv():
    params = _shapes(create_model('se_resnet110_cifar', units=(1, 1, 1)))['params']
    widths = [params[f'stage{s}_block0']['se']['fc1']['kernel'].shape for s in (1, 2, 3)]
    assert widths == [(16, 1), (32, 2), (64, 4)]   # not rounded up to multiples of 8 as timm's


def test_analysis_finds_the_se_blocks_in_depth_order():
    variables = _shapes(create_model('se_wrn16_8_cifar'))
    assert se_blocks(variables) == [f'stage{s}_block{b}' for s in (1, 2, 3) for b in (0, 1)]


def test_se_stages_picks_the_stages():
    model = create_model('se_wrn16_8_cifar', se_stages=(3,))
    variables = _shapes(model)
    se_units = sorted(k for k, v in variables['params'].items() if 'se' in v)
    assert se_units == ['stage3_block0', 'stage3_block1']
    assert n_params('se_wrn16_8_cifar', se_stages=(3,)) == 10_961_370 + 2 * se_params(512)


@pytest.mark.slow
def test_preact_unit_se_scales_the_branch_before_the_addition():
    """A gate shut (SE's second projection biased to -inf): the unit's output is its input,
    so SE multiplies the whole branch and nothing after the addition."""
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 8))
    model = create_model('se_wrn16_8_cifar', reduction=4)   # for its SE partial
    unit = PreActUnit(features=8, se=model.attention_block(train=False), kernels='plain')
    variables = _variables(unit, x)
    shut = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.full_like(v, -1e4) if 'fc2' in str(p) and 'bias' in str(p) else v, variables)
    apply = jax.jit(unit.apply)
    np.testing.assert_allclose(apply(shut, x), x, atol=1e-6)
    assert np.abs(apply(variables, x) - x).max() > 1e-2


def test_return_features_are_the_stage_outputs():
    for name, widths in (('resnet110_cifar', (16, 16, 32, 64)), ('se_resnet164_cifar', (16, 64, 128, 256)),
                         ('se_wrn16_8_cifar', (16, 128, 256, 512))):
        model = create_model(name, units=(1, 1, 1))
        variables = _shapes(model)
        feats = jax.eval_shape(lambda v: model.apply(v, X32, return_features=True), variables)
        assert {k: v.shape for k, v in feats.items()} == {
            'stem': (1, 32, 32, widths[0]), 'stage1': (1, 32, 32, widths[1]),
            'stage2': (1, 16, 16, widths[2]), 'stage3': (1, 8, 8, widths[3])}


def test_defaults_are_cifar10_at_32():
    for name in ('resnet110_cifar', 'se_resnet110_cifar', 'resnet164_cifar', 'se_resnet164_cifar',
                 'wrn16_8_cifar', 'se_wrn16_8_cifar'):
        spec = model_spec(name)
        assert (spec.input_size, spec.num_classes, spec.input_format.mean[0]) == (32, 10, 125.3)
        model = create_model(name)
        assert model.num_classes == 10 and model.min_input_size() == 4


@pytest.mark.parametrize('overrides,words', [
    (dict(se_stages=(4,)), 'se_stages must be a subset of (1, 2, 3)'),
    (dict(block='wide'), "block must be one of ('basic', 'bottleneck', 'preact')"),
    (dict(units=(1, 1)), 'units must have one entry per stage (3)'),
    (dict(channels=16), 'channels must have one entry per stage (3)'),
    (dict(reduction=0), 'reduction must be at least 1'),
    (dict(gate='softmax'), 'gate must be one of'),
])
def test_bad_options_are_one_sentence(overrides, words):
    with pytest.raises(ValueError, match='^[^\n]*$') as e:
        create_model('se_resnet110_cifar', **overrides)
    assert words in str(e.value)


@pytest.mark.parametrize('name,channels', [pytest.param('se_resnet110_cifar', 64, marks=SLOW),
                                           pytest.param('se_resnet164_cifar', 256, marks=SLOW),
                                           ('se_wrn16_8_cifar', 512)])
@pytest.mark.slow
def test_every_se_option_overrides(name, channels):
    """Each option reaches every SE block of the network, and the network still runs."""
    for overrides, fc1 in ((dict(reduction=4), channels // 4), (dict(squeeze='max'), channels // 16),
                           (dict(gate='tanh'), channels // 16), (dict(squeeze='none'), channels // 16)):
        model = create_model(name, units=(1, 1, 1), num_classes=100, **overrides)
        variables = _shapes(model)
        assert variables['params']['stage3_block0']['se']['fc1']['kernel'].shape == (channels, fc1)
        logits = jax.eval_shape(lambda v: model.apply(v, X32), variables)
        assert logits.shape == (1, 100)
    # One real training-mode pass of a small network with a non-default gate.
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    model = create_model(name, units=(1, 1, 1), channels=(4, 8, 16), gate='tanh', squeeze='max',
                         reduction=2, kernels='plain')
    logits, _ = jax.jit(lambda v: model.apply(v, x, train=True, mutable=['batch_stats']))(
        _variables(model, x))
    assert logits.shape == (2, 10) and bool(jnp.isfinite(logits).all())


def test_cifar100_heads_convert():
    ref = _fixture('wrn16_8_cifar')
    keys = [(k, [100, *s[1:]] if k.startswith('output.') else s) for k, s in ref['keys']]
    variables = torch_to_flax('wrn16_8_cifar', random_state_dict(keys))
    assert variables['params']['fc']['kernel'].shape == (512, 100)


@pytest.mark.slow
def test_cli_converts_and_load_pretrained_gives_the_same_network(tmp_path):
    name = 'se_resnet110_cifar'
    # The full network (the parity fixture holds the reduced one's keys), a CIFAR-100 head.
    sd = torch_state_dict(random_variables(create_model(name, num_classes=100), X32),
                          model_spec(name).layout)
    save_file(sd, str(tmp_path / 'w.safetensors'))
    assert main(['--model', name, '--weights', str(tmp_path / 'w.safetensors'),
                 '--out', str(tmp_path / 'out')]) == 0
    model, variables = load_pretrained(str(tmp_path / 'out'))
    assert model.num_classes == 100
    x = jnp.asarray(random_input(32, 32).transpose(0, 2, 3, 1))
    direct = create_model(name, num_classes=100).apply(torch_to_flax(name, sd), x)
    got = model.apply(variables, x)
    assert got.shape == (1, 100)
    np.testing.assert_array_equal(got, direct)
