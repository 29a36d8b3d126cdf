"""The CIFAR residual networks of the paper's Tables 4 and 5: ResNet-110, ResNet-164, WRN-16-8.

One class, `CifarResNet`: a 3x3 stem of 16 channels, three stages at 32x32,
16x16 and 8x8 (stride 2 on the first unit of stages 2 and 3), global average
pooling and a linear classifier (He et al. 2016, Sec. 4.2; Zagoruyko and
Komodakis 2016 for the wide network). No stem pool. The units:

- 'basic' (ResNet-110, 18 units a stage, 16/32/64 channels) and 'bottleneck'
  (ResNet-164, 18 units, 1x1-3x3-1x1 with 64/128/256 output channels, stride
  on the 3x3): post-activation units, `models.resnet.ResidualBlock` itself;
  a 1x1 conv + BN projection where the shape changes.
- 'preact' (WRN-16-8, 2 units a stage, 128/256/512 channels): BN-ReLU-conv3x3
  twice; where the shape changes the 1x1 projection (no BN) reads the
  pre-activated input, as the first conv does; a final BN-ReLU before the pool.

SE (`se_stages`, stages numbered 1..3): one block per unit, on the residual
branch before the addition with the identity (paper Fig. 3, Sec. 4; Sec. 6.4
shows this 'standard' position is the best or as good as the others). In the
post-activation units that is after the branch's last BN, as the reference
SE-ResNets have it (pytorchcv `seresnet110_cifar10`, `seresnet164bn_cifar10`).
The pre-activation unit's branch ends with its second 3x3 conv (no BN after
it), so the SE block scales that conv's output, before the addition. No
SE-WRN was published; this is where the paper's rule puts it, and where
pytorchcv's SE-PreResNet unit puts it too. The SE width is floor(C / r),
at least 1 (pytorchcv's SEBlock: `channels // reduction`), with biases on both
projections, a ReLU between them and a sigmoid gate.

The bases match pytorchcv 0.0.74 (`resnet110_cifar10`, `resnet164bn_cifar10`,
and its WRN builder at depth 16, width 8) number for number. Those references
pool with a fixed 8x8 window, which is the global average only when the last
map is 8x8 (inputs of 29 to 32 pixels); ours pools globally at every size, as
the papers describe.
"""
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from senet_jax import cpu_kernels
from senet_jax.layers import classify, conv_and_norm, drop_path_rates, drop_path_scale
from senet_jax.models.base import ZooModule
from senet_jax.models.resnet import ResidualBlock
from senet_jax.models.spec import CIFAR, spec

Dtype = Any

CIFAR_STAGES = (1, 2, 3)     # 32x32, 16x16 and 8x8 maps for a 32x32 input
BLOCKS = ('basic', 'bottleneck', 'preact')


class PreActUnit(nn.Module):
    """A pre-activation unit (He et al., "Identity Mappings", Fig. 4e), wide
    in WRN: BN-ReLU-conv3x3 (stride), BN-ReLU-conv3x3, SE, + shortcut.

    The projection shortcut, where the shape changes, is a bias-free 1x1 conv
    of the pre-activated input (BN-ReLU of x), as in the WRN reference."""
    features: int
    stride: int = 1
    se: Optional[Any] = None      # a SqueezeExcite partial, or None
    drop_path_rate: float = 0.0   # stochastic depth, as models.resnet.ResidualBlock
    kernels: str = 'auto'
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = conv_and_norm(train, self.dtype, self.param_dtype,
                                   cpu_kernels.choose(self.kernels))
        pre = nn.relu(norm(name='bn1')(x))
        y = conv(self.features, 3, self.stride, name='conv1')(pre)
        y = nn.relu(norm(name='bn2')(y))
        y = conv(self.features, 3, name='conv2')(y)
        if self.se is not None:
            y = self.se(name='se')(y)
        if train and self.drop_path_rate > 0:
            keep = drop_path_scale(self.make_rng('dropout'), x.shape[0], self.drop_path_rate)
            y = y * keep[:, None, None, None].astype(y.dtype)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = conv(self.features, 1, self.stride, name='downsample_conv')(pre)
        return y + shortcut


class CifarResNet(ZooModule):
    """Residual network for 32x32 images (CIFAR-10/100), NHWC.

    `__call__(x, train=False)` returns float32 logits (float64 for a float64
    model). With `return_features=True` it returns a dict of the stem and stage
    outputs: 'stem', 'stage1', 'stage2', 'stage3' at strides 1, 1, 2, 4 (32, 32,
    16 and 8 pixels for a 32x32 input). For 'preact' networks 'stage3' is the
    sum of its last unit, before the final BN-ReLU.
    """
    units: Sequence[int] = (18, 18, 18)       # residual units per stage (ResNet-110's)
    block: str = 'basic'                      # 'basic' | 'bottleneck' | 'preact'
    channels: Sequence[int] = (16, 32, 64)    # output channels of each stage (bottleneck: 4x these)
    num_classes: int = 10
    stem_width: int = 16
    # Squeeze-and-Excitation, in the paper's words (the block: ZooModule's `attention`);
    # se_stages numbers the stages 1..3. SE width floor(C / r), as the reference.
    se_stages: Sequence[int] = CIFAR_STAGES
    drop_path_rate: float = 0.0               # stochastic depth of the last unit (models/resnet.py)
    zero_init_last: bool = True               # post-activation units: last BN scale starts at 0
    SE_STAGES = (CIFAR_STAGES, ' (the three CIFAR stages)')

    def __post_init__(self):
        if self.block not in BLOCKS:
            raise ValueError(f'block must be one of {BLOCKS}, got {self.block!r}.')
        for option in ('units', 'channels'):
            value = getattr(self, option)
            if isinstance(value, (int, str)) or len(value) != len(CIFAR_STAGES):
                raise ValueError(f'{option} must have one entry per stage ({len(CIFAR_STAGES)}), '
                                 f'got {value!r}.')
        super().__post_init__()

    def min_input_size(self) -> int:
        """The total stride: every stage keeps at least a 1x1 map from this size up."""
        return 4

    def _unit(self, planes: int, stride: int, se, drop_path_rate: float, name: str):
        common = dict(stride=stride, se=se, drop_path_rate=drop_path_rate, kernels=self.kernels,
                      dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        if self.block == 'preact':
            return PreActUnit(features=planes, **common)
        bottleneck = self.block == 'bottleneck'
        return ResidualBlock(features=planes * 4 if bottleneck else planes, width=planes,
                             bottleneck=bottleneck, zero_init_last=self.zero_init_last, **common)

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        conv, norm = conv_and_norm(train, self.dtype, self.param_dtype,
                                   cpu_kernels.choose(self.kernels))
        preact = self.block == 'preact'
        x = x.astype(self.dtype or x.dtype)
        x = conv(self.stem_width, 3, name='stem_conv')(x)
        if not preact:   # the pre-activation units normalise their own input
            x = nn.relu(norm(name='stem_bn')(x))
        features = {'stem': x}
        unit_rates = iter(drop_path_rates(self.units, self.drop_path_rate))
        for i, (stage, depth, planes) in enumerate(zip(CIFAR_STAGES, self.units, self.channels)):
            se = self.attention_block(train) if stage in self.se_stages else None
            for b in range(depth):   # named as models/resnet.py's blocks (analysis reads them)
                stride = 2 if (b == 0 and i > 0) else 1
                x = self._unit(planes, stride, se, next(unit_rates),
                               f'stage{stage}_block{b}')(x, train)
            features[f'stage{stage}'] = x
        if return_features:
            return features
        if preact:
            x = nn.relu(norm(name='final_bn')(x))

        return classify(x, self.num_classes, self.drop_rate, train, self.dtype, self.param_dtype)


# ---------------------------------------------------------------------------
# The reference's names (pytorchcv 0.0.74): features.init_block, features.stage{s}.unit{u}
# with body.conv{k}.{conv,bn}, identity_conv, se.conv{1,2}; features.post_activ; output.

_UNIT_PARTS = {'se': 'se', 'fc1': 'conv1', 'fc2': 'conv2', 'downsample_bn': 'identity_conv.bn'}


def torch_module(path: Tuple[str, ...], layout: str) -> str:
    """The reference's module name for a Flax module path of `CifarResNet`.

    layout 'cifar' (post-activation units: conv-BN blocks) or 'cifar_preact'
    (WRN: a plain stem conv and plain 1x1 projections)."""
    preact = layout == 'cifar_preact'
    head, rest = path[0], path[1:]
    if head == 'fc':
        return 'output'
    if head == 'final_bn':
        return 'features.post_activ.bn'
    if head == 'stem_conv':
        return 'features.init_block' if preact else 'features.init_block.conv'
    if head == 'stem_bn':
        return 'features.init_block.bn'
    stage, block = head[len('stage'):].split('_block')
    parts = [f'features.stage{stage}.unit{int(block) + 1}']
    for p in rest:
        if p.startswith(('conv', 'bn')):      # conv{k} / bn{k} of the k-th conv block of the body
            kind, k = ('conv', p[4:]) if p.startswith('conv') else ('bn', p[2:])
            parts.append(f'body.conv{k}.{kind}')
        elif p == 'downsample_conv':
            parts.append('identity_conv' if preact else 'identity_conv.conv')
        else:
            parts.append(_UNIT_PARTS[p])
    return '.'.join(parts)


# ---------------------------------------------------------------------------
# The zoo entries. Tables 4 and 5 give errors only (no FLOPs or parameters), so no
# paper figures. The odd size keeps the last map 8x8, the only size at which the
# references' fixed 8x8 pool is a global one, and puts odd maps under the strided convs.

SPECS = {}
_CIFAR = dict(input_size=32, input_format=CIFAR, num_classes=10, odd_size=(31, 29),
              source='pytorchcv')


def _register(name, reference, layout, **kwargs):
    SPECS[name] = spec(CifarResNet, reference, layout, **_CIFAR, **kwargs)


_NETWORKS = {   # name: (reference plain, reference SE, layout, module arguments)
    'resnet110': ('resnet110_cifar10', 'seresnet110_cifar10', 'cifar',
                  dict(units=(18, 18, 18), block='basic')),
    'resnet164': ('resnet164bn_cifar10', 'seresnet164bn_cifar10', 'cifar',
                  dict(units=(18, 18, 18), block='bottleneck')),
    # pytorchcv registers no WRN-16-8: its WRN builder at depth 16, width 8 (the
    # fixture generator builds it by this name). No SE-WRN was published.
    'wrn16_8': ('wrn16_8_cifar10', None, 'cifar_preact',
                dict(units=(2, 2, 2), block='preact', channels=(128, 256, 512))),
}
for _base, (_plain, _se, _layout, _kwargs) in _NETWORKS.items():
    _register(f'{_base}_cifar', _plain, _layout, attention=None, **_kwargs)
    _register(f'se_{_base}_cifar', _se, _layout, **_kwargs)
