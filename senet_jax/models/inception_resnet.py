"""Inception-ResNet-v2 and SE-Inception-ResNet-v2 (paper Table 2), one module class.

The plain network is Szegedy et al.'s Inception-ResNet-v2 ("Inception-v4,
Inception-ResNet and the Impact of Residual Connections on Learning", 2016)
exactly as timm 1.0 builds `inception_resnet_v2` (the TF-slim network ported
with its weights): parameter for parameter and padding for padding. Every
convolution unit is conv (no bias), BN (eps 1e-3) and ReLU; timm's convolutions
are valid (no padding) unless a padding is given, and where one is given it is
k // 2 on each side. The units:

- stem: conv2d_1a 3x3/2 valid, conv2d_2a 3x3 valid, conv2d_2b 3x3, max pool
  3x3/2 valid, conv2d_3b 1x1, conv2d_4a 3x3 valid, max pool 3x3/2 valid;
- mixed_5b (Inception-A-like; its pool branch is a 3x3/1 average pool with
  padding 1 that leaves the padding out of the count), then 10 Block35
  (Inception-ResNet-A, 35x35 grid at 299, branch scale 0.17);
- mixed_6a (Reduction-A), then 20 Block17 (Inception-ResNet-B, 17x17, 0.10);
- mixed_7a (Reduction-B), then 9 Block8 (Inception-ResNet-C, 8x8, 0.20) and a
  last Block8 with scale 1.0 and no ReLU after the addition;
- conv2d_7b 1x1 to 1536 channels, global average pooling, dropout, classifier.

An Inception-ResNet unit computes relu(x + scale * conv2d(concat(branches))),
where conv2d is a 1x1 convolution with a bias back to the width of x.

Where SE sits. No official SE-Inception-ResNet-v2 definition was released. The
paper (Sec. 3.3, "Instantiations", Fig. 3) takes the SE block's transformation
to be the non-identity branch of a residual module, squeeze and excitation
acting before the summation with the identity, and builds Inception-ResNet
variants "following similar schemes" (results in Sec. 5.1, Table 2).
Here it sits after the unit's 1x1 up-projection (with its bias), before the
branch scaling and the addition: it recalibrates exactly the residual the unit
adds, at the width of the trunk (320, 1088, 2080 channels; reduced widths
20, 68, 130 at r = 16).
- The reduction blocks (mixed_6a, mixed_7a) and mixed_5b get no SE: they have
  no identity branch, so they are not Inception-ResNet modules in the paper's
  sense. (The paper's 11.75 -> 11.76 GFLOPs cannot decide it: SE after them
  would add only 0.7 M multiply-adds.)
- The last Block8 (scale 1.0, no ReLU) does get SE: it is a Block8 with an
  identity branch like the other nine (TF-slim builds it with the same block
  function, only without the activation), so "every Inception-ResNet module"
  includes it. Its SE costs 543,010 parameters and 0.5 M multiply-adds; the
  paper's figures cannot tell the two choices apart.
- `se_stages` names the unit types that carry SE, by the reference's names:
  'block35', 'block17', 'block8' (Inception-ResNet-A, -B, -C); () for the plain
  network. The SE widths are floor(C / r), with biases on both projections, as
  in the official SE networks.
"""
import functools
import re
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from senet_jax import cpu_kernels
from senet_jax.layers import classify, conv_and_norm
from senet_jax.models.base import ZooModule
from senet_jax.models.spec import InputFormat, PaperFigures, spec

Dtype = Any

# The Inception-ResNet unit types, by the reference's names, and their branch scales.
SE_UNITS = ('block35', 'block17', 'block8')
SCALES = {'block35': 0.17, 'block17': 0.10, 'block8': 0.20}
# timm's IMAGENET_INCEPTION statistics (the TF-slim preprocessing): RGB in [0, 1],
# mean 0.5 and std 0.5, i.e. pixels mapped to [-1, 1].
INCEPTION = InputFormat((127.5, 127.5, 127.5), (127.5, 127.5, 127.5))
BN_EPSILON = 1e-3    # TF-slim's, kept by timm
VALID = 0            # no padding (timm's default for this network's convolutions)
NO_PAD = ((0, 0), (0, 0))


class ConvBN(nn.Module):
    """Convolution (no bias), BN (eps 1e-3) and ReLU: the reference's conv unit."""
    features: int
    kernel_size: Any = 1
    strides: int = 1
    padding: Any = None    # None: k // 2 on each side; VALID: none
    train: bool = False
    kernels: str = 'auto'
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv, norm = conv_and_norm(self.train, self.dtype, self.param_dtype,
                                   cpu_kernels.choose(self.kernels), epsilon=BN_EPSILON)
        x = conv(self.features, self.kernel_size, self.strides, padding=self.padding, name='conv')(x)
        return nn.relu(norm(name='bn')(x))


def _chain(cb, x, name, *convs):
    """A sequence of conv units named name_0, name_1, ... (the reference's nn.Sequential);
    each conv is (features, kernel=1, stride=1, padding=None)."""
    for i, c in enumerate(convs):
        features, kernel, stride, padding = (*c, *(1, 1, None)[len(c) - 1:])
        x = cb(features, kernel, stride, padding, name=f'{name}_{i}')(x)
    return x


# --- The branches of each unit (channel widths are the reference's) ----------

def _mixed_5b(cb, x, kernels):
    pooled = nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)
    return [cb(96, name='branch0')(x),
            _chain(cb, x, 'branch1', (48,), (64, 5)),
            _chain(cb, x, 'branch2', (64,), (96, 3), (96, 3)),
            cb(64, name='branch3_1')(pooled)]    # the reference's branch3.0 is the pool


def _mixed_6a(cb, x, kernels):
    """Reduction-A: 35x35 -> 17x17."""
    return [cb(384, 3, 2, VALID, name='branch0')(x),
            _chain(cb, x, 'branch1', (256,), (256, 3), (384, 3, 2, VALID)),
            kernels.max_pool(x, 3, 2, NO_PAD)]


def _mixed_7a(cb, x, kernels):
    """Reduction-B: 17x17 -> 8x8."""
    return [_chain(cb, x, 'branch0', (256,), (384, 3, 2, VALID)),
            _chain(cb, x, 'branch1', (256,), (288, 3, 2, VALID)),
            _chain(cb, x, 'branch2', (256,), (288, 3), (320, 3, 2, VALID)),
            kernels.max_pool(x, 3, 2, NO_PAD)]


def _block35(cb, x):
    """Inception-ResNet-A's branches (128 channels)."""
    return [cb(32, name='branch0')(x),
            _chain(cb, x, 'branch1', (32,), (32, 3)),
            _chain(cb, x, 'branch2', (32,), (48, 3), (64, 3))]


def _block17(cb, x):
    """Inception-ResNet-B's branches (384 channels): a 1x7 then a 7x1 convolution."""
    return [cb(192, name='branch0')(x),
            _chain(cb, x, 'branch1', (128,), (160, (1, 7)), (192, (7, 1)))]


def _block8(cb, x):
    """Inception-ResNet-C's branches (448 channels): a 1x3 then a 3x1 convolution."""
    return [cb(192, name='branch0')(x),
            _chain(cb, x, 'branch1', (192,), (224, (1, 3)), (256, (3, 1)))]


_BRANCHES = {'block35': _block35, 'block17': _block17, 'block8': _block8}
_MIXED = {'5b': _mixed_5b, '6a': _mixed_6a, '7a': _mixed_7a}


class _Unit(nn.Module):
    """What every unit shares: how its layers compute and in which dtypes."""
    kernels: str = 'auto'
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    def conv_bn(self, train: bool):
        return functools.partial(ConvBN, train=train, kernels=self.kernels, dtype=self.dtype,
                                 param_dtype=self.param_dtype)


class Mixed(_Unit):
    """mixed_5b, mixed_6a (Reduction-A) or mixed_7a (Reduction-B): branches concatenated."""
    kind: str = '5b'

    @nn.compact
    def __call__(self, x, train: bool = False):
        branches = _MIXED[self.kind](self.conv_bn(train), x, cpu_kernels.choose(self.kernels))
        return jnp.concatenate(branches, axis=-1)


class InceptionResNetUnit(_Unit):
    """x + scale * SE(conv2d(concat(branches(x)))), then ReLU unless `activate` is False.

    kind: 'block35', 'block17' or 'block8' (Inception-ResNet-A, -B, -C).
    se: a SqueezeExcite partial, or None; it sits on the non-identity branch,
    after the 1x1 up-projection and before the scaling (see the module docstring).
    """
    kind: str = 'block35'
    scale: float = 1.0
    activate: bool = True
    se: Optional[Any] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        branches = _BRANCHES[self.kind](self.conv_bn(train), x)
        conv, _ = conv_and_norm(train, self.dtype, self.param_dtype, cpu_kernels.choose(self.kernels))
        u = conv(x.shape[-1], 1, use_bias=True, name='conv2d')(jnp.concatenate(branches, axis=-1))
        if self.se is not None:
            u = self.se(name='se')(u)
        out = u * self.scale + x
        return nn.relu(out) if self.activate else out


def _valid_side(side: int, kernel: int = 3, stride: int = 2) -> int:
    return (side - kernel) // stride + 1 if side >= kernel else 0


def final_side(side: int) -> int:
    """The side of the last feature map for an input side (0: too small). Only the
    valid 3x3 convolutions and pools change it: conv2d_1a, conv2d_2a, maxpool_3a,
    conv2d_4a, maxpool_5a, mixed_6a, mixed_7a."""
    for stride in (2, 1, 2, 1, 2, 2, 2):
        side = _valid_side(side, 3, stride)
    return side


class InceptionResNetV2(ZooModule):
    """Inception-ResNet-v2 for image classification, NHWC (299 x 299 inputs in [-1, 1]).

    `__call__(x, train=False)` returns float32 logits (float64 for a float64
    model). With `return_features=True` it returns the stage outputs instead, a
    dict with 'stem' (conv2d_4a, 192 channels), 'block35' (after the
    Inception-ResNet-A units, 320), 'block17' (after -B, 1088), 'block8' (after
    -C including the last one, 2080) and 'conv2d_7b' (1536): nominal strides 4,
    8, 16, 32, 32. The valid convolutions and pools shave the edges, so a
    299 x 299 input gives 71, 35, 17, 8 and 8 pixels a side.
    """
    repeats: Sequence[int] = (10, 20, 9)   # Block35, Block17, Block8 units before the last Block8
    # Squeeze-and-Excitation, in the paper's words (the block: ZooModule's `attention`);
    # se_stages: unit types that carry it.
    se_stages: Sequence[str] = SE_UNITS
    SE_STAGES = (SE_UNITS, ' (the Inception-ResNet-A, -B and -C units)')

    def __post_init__(self):
        r = self.repeats
        if (isinstance(r, (int, str)) or len(r) != 3
                or not all(isinstance(n, int) and n >= 0 for n in r)):
            raise ValueError('repeats must be three unit counts (block35, block17, block8) '
                             f'of at least 0, got {r!r}.')
        super().__post_init__()

    def min_input_size(self) -> int:
        """The smallest input side for which the last feature map is still 1x1 (75)."""
        side = 1
        while final_side(side) < 1:
            side += 1
        return side

    def _se(self, kind, train: bool):
        return self.attention_block(train) if kind in self.se_stages else None

    def _stem(self, x, cb, kernels):
        x = cb(32, 3, 2, VALID, name='conv2d_1a')(x)
        x = cb(32, 3, 1, VALID, name='conv2d_2a')(x)
        x = cb(64, 3, name='conv2d_2b')(x)
        x = kernels.max_pool(x, 3, 2, NO_PAD)                 # maxpool_3a
        x = cb(80, 1, name='conv2d_3b')(x)
        return cb(192, 3, 1, VALID, name='conv2d_4a')(x)

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        smallest = self.min_input_size()
        if min(x.shape[1:3]) < smallest:
            raise ValueError(f'Inception-ResNet-v2 takes inputs of at least {smallest}x{smallest} '
                             f'pixels, got {x.shape[1]}x{x.shape[2]}.')
        kernels = cpu_kernels.choose(self.kernels)
        common = dict(kernels=self.kernels, dtype=self.dtype, param_dtype=self.param_dtype)
        cb = functools.partial(ConvBN, train=train, **common)
        x = x.astype(self.dtype or x.dtype)
        features = {'stem': self._stem(x, cb, kernels)}
        x = kernels.max_pool(features['stem'], 3, 2, NO_PAD)   # maxpool_5a
        for kind, depth, mixed in zip(SE_UNITS, self.repeats, ('5b', '6a', '7a')):
            x = Mixed(kind=mixed, **common, name=f'mixed_{mixed}')(x, train)
            for i in range(depth):
                x = InceptionResNetUnit(kind=kind, scale=SCALES[kind], se=self._se(kind, train), **common,
                                        name=f'{kind}_{i}')(x, train)
            features[kind] = x
        # The last Block8: the whole branch added (scale 1), no ReLU before conv2d_7b.
        x = InceptionResNetUnit(kind='block8', scale=1.0, activate=False, se=self._se('block8', train),
                                **common, name='block8')(x, train)
        features['block8'] = x
        x = features['conv2d_7b'] = cb(1536, 1, name='conv2d_7b')(x)
        if return_features:
            return features

        return classify(x, self.num_classes, self.drop_rate, train, self.dtype, self.param_dtype)


# --- The reference's names: timm's `inception_resnet_v2` state_dict ------------

_REPEAT = {'block35': 'repeat', 'block17': 'repeat_1', 'block8': 'repeat_2'}


def torch_module(path, layout: str = 'timm_irv2') -> str:
    """The timm module name of a Flax module path of this file (convert.TORCH_MODULE):
    block35_3 -> repeat.3, block17_i -> repeat_1.i, block8_i -> repeat_2.i, the
    last block8 and the stem by their own names, branch1_2 -> branch1.2, fc -> classif."""
    head, rest = path[0], path[1:]
    if head == 'fc':
        return 'classif'
    unit = re.fullmatch(r'(block35|block17|block8)_(\d+)', head)
    parts = [f'{_REPEAT[unit.group(1)]}.{unit.group(2)}' if unit else head]
    parts += [re.sub(r'^(branch\d)_(\d)$', r'\1.\2', p) for p in rest]
    return '.'.join(parts)


# ---------------------------------------------------------------------------
# The zoo entries: paper Table 2 (GFLOPs at 299 x 299, counted on the authors' networks).

SPECS = {
    'inception_resnet_v2': spec(
        InceptionResNetV2, 'inception_resnet_v2', 'timm_irv2', attention=None, input_size=299,
        input_format=INCEPTION, odd_size=(170, 201), paper=PaperFigures('Table 2', 11.75)),
    'se_inception_resnet_v2': spec(
        InceptionResNetV2, None, 'timm_irv2', input_size=299, input_format=INCEPTION,
        odd_size=(170, 201), paper=PaperFigures('Table 2', 11.76)),
}
