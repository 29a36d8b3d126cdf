"""configs/ablations: every value builds a config whose model has the expected parameters."""
import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import pytest

from senet_jax.layers import reduced_width
from senet_jax.models import create_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDIES = {
    'reduction': ['2', '4', '8', '16', '32'],
    'squeeze': ['avg', 'max', 'none'],
    'gate': ['sigmoid', 'tanh', 'relu'],
    'stages': ['2', '3', '4', '5', 'all', 'none'],
    'integration': ['standard', 'pre', 'post', 'identity', '3x3'],
}
DEFAULTS = {'reduction': '16', 'squeeze': 'avg', 'gate': 'sigmoid', 'stages': 'all',
            'integration': 'standard'}
# Parameters of the plain networks (no SE anywhere).
RESNET50 = 25_557_032


def load(study):
    """The config module, loaded from its path as ml_collections' config_flags does."""
    path = os.path.join(ROOT, 'configs', 'ablations', f'{study}.py')
    spec = importlib.util.spec_from_file_location(f'ablation_{study}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def num_params(config):
    model = create_model(config.model, num_classes=10 if config.dataset == 'digits' else 1000,
                         **config.model_overrides.to_dict())
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    return sum(x.size for x in jax.tree.leaves(shapes['params']))


def se_params(channels, r, divisor):
    """W1, b1, W2, b2 of one SE block on `channels` channels.

    se_resnet50 rounds C / r to a multiple of 8 as timm does (divisor 8: 64
    channels at r=16 get 8 hidden units, not 4); se_resnet_mini floors it.
    """
    w = reduced_width(channels, r, divisor)
    return 2 * channels * w + w + channels


def blocks(local):
    """(stage, input channels, 3x3 width, output channels) of every residual unit."""
    if local:  # se_resnet_mini: one basic block a stage after a 16-channel stem
        return [(2, 16, 16, 16), (3, 16, 32, 32), (4, 32, 64, 64), (5, 64, 128, 128)]
    out = []
    for stage, depth, planes in zip((2, 3, 4, 5), (3, 4, 6, 3), (64, 128, 256, 512)):
        for b in range(depth):
            c_in = (64 if stage == 2 else planes * 2) if b == 0 else planes * 4
            out.append((stage, c_in, planes, planes * 4))
    return out


def expected(study, value, local):
    """Parameters of the config's model: the plain network plus its SE blocks."""
    base = create_model('se_resnet_mini', num_classes=10, se_stages=()) if local else None
    plain = (sum(x.size for x in jax.tree.leaves(jax.eval_shape(
        lambda: base.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))['params']))
        if local else RESNET50)
    r = 4 if local else 16  # se_resnet_mini's own r; the paper's for se_resnet50
    stages = (2, 3, 4, 5)
    position = 'standard'
    if study == 'reduction':
        r = int(value)
    elif study == 'stages':
        named = {'all': (2, 3, 4, 5), 'none': ()}
        stages = named[value] if value in named else (int(value),)
    elif study == 'integration':
        position = value
    total = plain
    for stage, c_in, width, c_out in blocks(local):
        if stage in stages:
            channels = {'pre': c_in, '3x3': width}.get(position, c_out)
            total += se_params(channels, r, divisor=1 if local else 8)
    return total


# The fast tier builds each study's default; the full suite every value.
@pytest.mark.no_cover   # every line it runs, cheaper tests run too (docs/architecture.md, "Tests")
@pytest.mark.parametrize('study,value', [
    pytest.param(s, v, marks=() if v == DEFAULTS[s] else pytest.mark.slow)
    for s, vs in STUDIES.items() for v in vs])
def test_every_value_builds_its_model(study, value):
    module = load(study)
    paper = module.get_config(value)
    local = module.get_config(f'{value},local')
    assert paper.model == 'se_resnet50' and paper.dataset == 'imagenet2012'
    assert paper.num_epochs == 100 and paper.lr_decay_epochs == 30  # the paper's recipe
    assert local.model == 'se_resnet_mini' and local.dataset == 'digits'
    assert paper.model_overrides == local.model_overrides
    assert paper.ablation.study == study and paper.ablation.value == value
    assert num_params(paper) == expected(study, value, local=False)
    assert num_params(local) == expected(study, value, local=True)


@pytest.mark.slow
def test_paper_parameter_counts():
    """Tables 10, 13 and 15 of the paper, which round parameters up to 0.1M."""
    millions = lambda study, value: math.ceil(num_params(load(study).get_config(value)) / 1e5) / 10
    assert [millions('reduction', r) for r in ('2', '4', '8', '16', '32')] == \
        [45.7, 35.7, 30.7, 28.1, 26.9]
    assert [millions('stages', s) for s in ('none', '2', '3', '4', 'all')] == \
        [25.6, 25.6, 25.7, 26.4, 28.1]
    assert millions('integration', '3x3') == 25.8


def test_defaults_and_errors():
    for study, default in DEFAULTS.items():
        module = load(study)
        assert module.get_config().ablation.value == default
        assert module.get_config('local').ablation.value == default
        with pytest.raises(ValueError, match='unknown value'):
            module.get_config('bogus')
    with pytest.raises(ValueError, match='one value'):
        load('gate').get_config('tanh,relu')


@pytest.mark.slow
@pytest.mark.parametrize('gate', ['tanh', 'relu'])
def test_gate_study_starts_with_a_trainable_branch(gate):
    """A tanh / relu gate is 0 at 0: on a zero-initialised branch it would block every
    gradient, so the model starts such branches at 1 and the study starts all at 1."""
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))

    def branch_grad(zero_init_last):
        model = create_model('se_resnet_mini', num_classes=10, gate=gate,
                             zero_init_last=zero_init_last)
        variables = jax.jit(model.init)(jax.random.key(0), x)
        loss = lambda p: model.apply({**variables, 'params': p}, x).sum()
        grads = jax.jit(jax.grad(loss))(variables['params'])
        return float(jnp.abs(grads['stage4_block0']['conv1']['kernel']).sum())

    assert branch_grad(zero_init_last=True) > 0.0
    assert branch_grad(zero_init_last=False) > 0.0
    config = load('gate').get_config(f'{gate},local')
    assert config.model_overrides.zero_init_last is False


ATTENTIONS = ['none', 'se', 'ese', 'eca', 'ge', 'ge4', 'gc', 'cbam']


@pytest.mark.parametrize('value', [v if v in ('se', 'eca') else pytest.param(v, marks=pytest.mark.slow)
                                   for v in ATTENTIONS])
def test_attention_study_swaps_the_block_and_nothing_else(value):
    """configs/ablations/attention.py: the paper's recipe (or the local one) with the block
    named; the parameters are the plain network's plus that block's at every residual
    unit's output, counted on the block alone."""
    from senet_jax.attention import create_attention
    module = load('attention')
    paper, local = module.get_config(value), module.get_config(f'{value},local')
    assert paper.model == 'se_resnet50' and paper.num_epochs == 100 and local.dataset == 'digits'
    assert paper.model_overrides == local.model_overrides
    assert paper.ablation.study == 'attention' and paper.ablation.value == value
    attention = paper.model_overrides.attention
    if value == 'se':
        assert num_params(paper) == expected('stages', 'all', local=False)
        return
    for config, is_local in ((paper, False), (local, True)):
        block = lambda c: sum(x.size for x in jax.tree.leaves(jax.eval_shape(
            lambda: create_attention(attention, train=True).init(
                jax.random.key(0), jnp.zeros((1, 4, 4, c)))).get('params', {}))) if attention else 0
        plain = expected('stages', 'none', local=is_local)
        assert num_params(config) == plain + sum(block(c_out) for *_, c_out in blocks(is_local))
    with pytest.raises(ValueError, match="unknown value 'cmab'"):
        module.get_config('cmab')
