"""The analytic multiply-add count of `python -m senet_jax.models` (senet_jax/models/macs.py)."""
import flax.linen as nn
import pytest

from senet_jax.layers import Conv
from senet_jax.models import create_model, model_spec
from senet_jax.models.__main__ import complexity
from senet_jax.models.macs import count_macs


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = Conv(8, 3, strides=1, name='c1')(x)                  # 3x3, pad 1: 10*10*8 * 3*3*3
        x = Conv(8, 3, strides=2, groups=8, name='dw')(x)        # depthwise: 5*5*8 * 3*3*1
        x = Conv(16, (1, 7), padding=((0, 0), (3, 3)), name='c17')(x)   # 5*5*16 * 7*8
        x = nn.relu(x) * 2.0 + 1.0                               # elementwise: not counted
        return nn.Dense(4, name='fc')(x.mean((1, 2)))            # 16*4


class _One(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return Conv(1, 3)(x)


def test_every_tap_and_dense_multiply_add_is_counted():
    want = 10 * 10 * 8 * 27 + 5 * 5 * 8 * 9 + 5 * 5 * 16 * 7 * 8 + 16 * 4
    assert count_macs(_Tiny(), 10) == want
    # Padding taps count: XLA's cost analysis (the --xla column) leaves them out.
    assert count_macs(_One(), 2) == 2 * 2 * 9 * 3   # 4 outputs, 3x3 taps, 3 channels


@pytest.mark.parametrize('name,gmacs', [
    ('legacy_se_resnet50', 3.86),   # paper Table 2: 3.87 (SE-ResNet-50), Caffe layout
    ('resnet50', 4.09),             # timm's table: 4.1 (torchvision layout: stride on the 3x3)
])
@pytest.mark.slow
def test_resnet50_counts_agree_with_the_published_tables(name, gmacs):
    params, got = complexity(name, model_spec(name).input_size)
    assert round(got, 2) == gmacs
    assert params == {'legacy_se_resnet50': 28_088_024, 'resnet50': 25_557_032}[name]


def test_the_count_is_of_the_plain_program():
    # The models command counts the network as GPUs and TPUs run it (kernels='plain'),
    # whatever form this machine would pick.
    plain = count_macs(create_model('se_resnet_mini', kernels='plain'), 16)
    assert complexity('se_resnet_mini', 16)[1] * 1e9 == pytest.approx(plain, rel=1e-12)
