"""ShuffleNet v1 1x (g = 3) and SE-ShuffleNet: the paper's parameter counts with the
arithmetic shown, SE placement, feature maps, the channel shuffle, options, conversion.

Parity with pytorchcv's shufflenet_g3_w1 (logits at 224 and 211x197) is
tests/test_parity.py::test_matches_reference[shufflenet_v1_g3].
"""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from reference_weights import random_input, random_state_dict, random_variables
from senet_jax import load_pretrained
from senet_jax.analysis import se_blocks
from senet_jax.convert import main as convert_main
from senet_jax.convert import torch_to_flax
from senet_jax.layers import reduced_width
from senet_jax.models import create_model, model_spec
from senet_jax.models.macs import count_macs
from senet_jax.models.shufflenet import channel_shuffle

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'reference', 'shufflenet_v1_g3.json')
WIDTHS, REPEATS, STEM = (240, 480, 960), (4, 8, 4), 24


def n_params(name, **overrides):
    model = create_model(name, **overrides)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    return sum(x.size for x in jax.tree.leaves(shapes['params']))


def branch_widths(concat_se=False):
    """The channels each unit's SE block sees: its branch, which in a strided first unit is
    the unit's width less its input (the rest is the pooled shortcut), or with `concat_se`
    the whole concatenated output."""
    widths, width_in = [], STEM
    for width, repeats in zip(WIDTHS, REPEATS):
        widths += [width if concat_se else width - width_in] + [width] * (repeats - 1)
        width_in = width
    return widths


def se_params(channels, r=16, bias=True):
    """W1 (C -> C/r) and W2 (C/r -> C), with their biases (Eq. 3 of the SENet paper)."""
    hidden = reduced_width(channels, r)
    return 2 * channels * hidden + (hidden + channels if bias else 0)


def table3_millions(n):
    """Table 3's convention, to 0.1M truncated: ShuffleNet 1x g=3 has 1,865,728 parameters
    (pytorchcv; Megvii's 1,864,728) and is listed as 1.8M, where rounding gives 1.9M
    (MobileNet's 4,231,976 -> 4.2M and SE-MobileNet's 4,718,044 -> 4.7M agree with both)."""
    return math.floor(n / 1e5) / 10


@pytest.mark.slow
def test_base_matches_pytorchcv_and_megvii_differs_by_the_classifier_bias():
    with open(FIXTURE) as f:
        reference = json.load(f)['num_params']
    n = n_params('shufflenet_v1_g3')
    assert n == reference == 1_865_728
    assert n - 1000 == 1_864_728   # Megvii's ShuffleNetV1: nn.Linear(960, 1000, bias=False)
    assert table3_millions(n) == 1.8 and round(n / 1e6, 1) == 1.9


@pytest.mark.slow
def test_se_shufflenet_reaches_table3_params():
    """1.8M -> 2.4M: SE (r = 16, biases) on the branch of each of the 16 units."""
    base = n_params('shufflenet_v1_g3')
    widths = branch_widths()
    assert widths == [216, 240, 240, 240] + [240] + [480] * 7 + [480] + [960] * 3
    se = sum(se_params(c) for c in widths)
    assert se == 618_805
    assert n_params('se_shufflenet_v1_g3') == base + se == 2_484_533
    assert table3_millions(base + se) == 2.4 and round(se / 1e6, 1) == 0.6
    # Had the strided units gated the concatenated output (pooled shortcut included),
    # SE would add 0.73M and the total read 2.5M: not the paper's network.
    concat = sum(se_params(c) for c in branch_widths(concat_se=True))
    assert round(concat / 1e6, 1) == 0.7 and table3_millions(base + concat) == 2.5
    # Nor a smaller ratio: r = 8 adds 1.23M, 3.0M in all.
    assert table3_millions(base + sum(se_params(c, 8) for c in widths)) == 3.0


@pytest.mark.parametrize('reduction,bias', [(8, True), (4, False)])
@pytest.mark.slow
def test_se_count_follows_the_formula_for_other_options(reduction, bias):
    want = n_params('shufflenet_v1_g3') + sum(se_params(c, reduction, bias) for c in branch_widths())
    assert n_params('se_shufflenet_v1_g3', reduction=reduction, se_bias=bias) == want


@pytest.mark.slow
def test_se_multiply_adds_are_its_weights_once():
    """The SE projections act on a 1x1 descriptor: each weight is one multiply-add per
    image, so 0.62M parameters cost 0.62M MACs (the paper's 140 -> 142 MFLOPs adds
    the elementwise scale, 1.6M multiplies, that this count leaves out)."""
    plain, se = (count_macs(create_model(n, kernels='plain'), 224)
                 for n in ('shufflenet_v1_g3', 'se_shufflenet_v1_g3'))
    assert se - plain == sum(se_params(c, bias=False) for c in branch_widths())
    assert round(plain / 1e6) == 137


@pytest.mark.slow
def test_features_have_the_paper_strides():
    model = create_model('se_shufflenet_v1_g3')
    for h, w in ((224, 224), (211, 197)):
        x = jnp.zeros((1, h, w, 3))
        feats = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x,
                                                              return_features=True)[0])
        shapes = {k: v.shape for k, v in feats.items()}
        side = lambda s: (-(-h // s), -(-w // s))   # every stride-2 layer pads 1: ceil(n / 2)
        assert shapes == {'conv1': (1, *side(2), 24), 'stage2': (1, *side(8), 240),
                          'stage3': (1, *side(16), 480), 'stage4': (1, *side(32), 960)}


def _gates(model, size=32):
    x = jnp.zeros((2, size, size, 3))
    state = jax.eval_shape(lambda: model.init(jax.random.key(0), x, mutable=True))
    gates = state.get('intermediates', {})
    blocks = se_blocks(state)   # senet_jax.analysis reads them in depth order
    assert sorted(blocks) == sorted(gates)
    return [gates[b]['se']['gate'][0].shape[-1] for b in blocks]


@pytest.mark.slow
def test_one_se_gate_per_unit_on_its_branch():
    assert _gates(create_model('se_shufflenet_v1_g3')) == branch_widths()
    assert _gates(create_model('se_shufflenet_v1_g3', se_stages=(3,))) == [240] + [480] * 7
    assert _gates(create_model('shufflenet_v1_g3')) == []


@pytest.mark.slow
def test_channel_shuffle_is_the_papers_transpose():
    """Fig. 1(c): channels as (g, n), transposed to (n, g); output j * g + i is input i * n + j,
    so each group of the next grouped conv reads about n / g channels of every previous
    group (stage 2: 60 channels, g = 3, n = 20: 7, 7 and 6)."""
    g, n = 3, 20
    x = jnp.arange(g * n, dtype=jnp.float32).reshape(1, 1, 1, g * n)
    out = np.asarray(channel_shuffle(x, g))[0, 0, 0].astype(int)
    assert all(out[j * g + i] == i * n + j for i in range(g) for j in range(n))
    for group in out.reshape(g, n):
        assert sorted(np.bincount(group // n, minlength=g).tolist()) == [6, 7, 7]


# XLA:CPU's backend at optimization level 0 gives this program NaN gradients (measured:
# jax 0.10.2; finite op by op and at the default level), so it compiles as users' programs do.
@pytest.mark.optimized
@pytest.mark.slow
def test_se_options_train_with_finite_gradients():
    # One strided and one plain unit in Stage3 keep the compilation short.
    model = create_model('se_shufflenet_v1_g3', num_classes=5, squeeze='max', gate='tanh',
                         reduction=8, drop_rate=0.2, stage_repeats=(1, 2, 1))
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = random_variables(model, x)

    def loss(params):
        out, _ = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'],
                             rngs={'dropout': jax.random.key(2)})
        return jnp.mean(out ** 2)
    grads = jax.jit(jax.grad(loss))(variables['params'])
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert all(float(jnp.abs(grads[u]['se']['fc1']['kernel']).max()) > 0
               for u in ('stage3_block0', 'stage3_block1'))


@pytest.mark.parametrize('overrides,words', [
    (dict(se_stages=(5,)), r'se_stages must be a subset of \(2, 3, 4\)'),
    (dict(squeeze='mean'), 'squeeze must be one of'),
    (dict(groups=7), 'does not fit 7 groups'),
    (dict(stage_widths=(240, 480, 960, 1920)), 'one entry per stage'),
    (dict(gate='softmax'), 'gate must be one of'),
    (dict(reduction=0), 'reduction must be at least 1'),
])
def test_bad_options_are_refused_in_one_sentence(overrides, words):
    with pytest.raises(ValueError, match=words) as e:
        model = create_model('se_shufflenet_v1_g3', **overrides)
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert '\n' not in str(e.value)


def test_se_networks_without_reference_refuse_conversion():
    assert model_spec('se_shufflenet_v1_g3').reference is None
    with pytest.raises(ValueError, match='no PyTorch reference'):
        torch_to_flax('se_shufflenet_v1_g3', {})


@pytest.mark.slow
def test_cli_converts_pytorchcv_weights_and_load_pretrained_gives_the_same_logits(tmp_path):
    with open(FIXTURE) as f:
        sd = random_state_dict(json.load(f)['keys'])
    weights, out = tmp_path / 'shufflenet.safetensors', tmp_path / 'converted'
    save_file(sd, str(weights))
    assert convert_main(['--model', 'shufflenet_v1_g3', '--weights', str(weights), '--out', str(out)]) == 0
    model, variables = load_pretrained(str(out))
    x = jnp.asarray(random_input(64, 48).transpose(0, 2, 3, 1))
    direct = create_model('shufflenet_v1_g3').apply(torch_to_flax('shufflenet_v1_g3', sd), x)
    np.testing.assert_array_equal(model.apply(variables, x), direct)
    assert variables['params']['stage2_block0']['expand_conv3']['kernel'].shape == (1, 1, 20, 216)
