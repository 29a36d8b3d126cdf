"""One residual-network family: ResNet, ResNeXt, SE-ResNet, SE-ResNeXt and SENet-154.

SE is an option of the block (Sec. 4 and 6.4 of the paper), not a separate
class per variant: `se_stages` says which stages carry it (paper numbering,
2..5 = conv2_x..conv5_x; empty for the plain baselines) and `se_position` where
it sits in the residual unit; `attention` names the block (SE, or one of its
successors in senet_jax.attention; None for the plain baselines). Both reference
layouts are options too:

- torchvision / timm `seresnet*`: stride on the 3x3 conv, 3x3/2 stem pool with
  padding 1, SE width rounded to multiples of 8.
- official Caffe / timm `legacy_*`: stride on the first 1x1 conv of SE-ResNet
  bottlenecks, ceil-mode stem pool without padding, SE width floor(C/r), and a
  ReLU before the SE in basic blocks. SENet-154 adds a three-conv stem, 3x3
  downsampling projections and a half-width first 1x1 conv.

The ResNet-D options of timm's `resnet.py` (He et al., "Bag of Tricks", 2019)
are options here too: the three-conv stems (`stem='deep'`, `'deep_tiered'`),
the average-pooled projection shortcut (`avg_down`), and timm's average-pool
anti-aliasing (`aa`, with `stem_pool='avg'`).

SKNet (Li et al., CVPR 2019; timm's `sknet.py`) is an option too:
`selective_kernel` makes each block's 3x3 conv (a basic block's first conv, as
timm's `SelectiveKernelBasic`) an `attention.SelectiveKernel`, with its BN and ReLU
inside, in every stage.

Every convolution uses explicit symmetric padding (k // 2), as PyTorch does,
never 'SAME', so odd input sizes give exactly the reference's feature maps.
"""
import dataclasses
import functools
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from senet_jax import cpu_kernels
from senet_jax.attention import SelectiveKernel
from senet_jax.layers import (SqueezeExcite, avg_pool_2x2, classify, conv_and_norm, drop_path_rates,
                              drop_path_scale, max_pool_ceil)
from senet_jax.models.base import ZooModule
from senet_jax.models.spec import PaperFigures, spec
from senet_jax.options import SE_POSITIONS, STAGES, did_you_mean, validate_fields  # noqa: F401 (re-exported)

Dtype = Any


class ResidualBlock(nn.Module):
    """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual unit, with optional SE.

    se_position (Fig. 5, Tables 14 and 15 of the paper):
      'standard': on the residual branch, after its last BN, before the addition;
      'pre':      on the residual branch, before its first conv;
      'post':     after the addition and its ReLU;
      'identity': on the identity (shortcut) path, in parallel to the branch;
      '3x3':      after the 3x3 conv (and its BN + ReLU) of a bottleneck; after
                  the first conv of a basic block.
    """
    features: int                 # output channels
    width: int                    # channels of the 3x3 conv (bottleneck) / of the block (basic)
    bottleneck: bool = True
    stride: int = 1
    groups: int = 1
    reduce_first: int = 1         # the first 1x1 conv has width // reduce_first channels
    stride_on_1x1: bool = False   # Caffe SE-ResNet: stride on the first 1x1 conv
    act_before_se: bool = False   # Caffe basic block: ReLU after the last BN, before SE
    downsample_kernel: int = 1    # kernel of the strided projection shortcut (3 in SENet-154)
    avg_down: bool = False        # ResNet-D shortcut: 2x2/2 average pool (ceil mode), then a 1x1/1 conv
    aa: bool = False              # the strided conv runs at stride 1, a 2x2/2 average pool follows its ReLU
    se: Optional[Any] = None      # a partial building the attention block (SqueezeExcite or
                                  # attention.create_attention), or None for none
    se_position: str = 'standard'
    # SelectiveKernel options (a dict, {} for its defaults) to make the 3x3 conv (basic
    # block: the first conv) a Selective Kernel conv with its BN and ReLU; None: a plain conv.
    selective_kernel: Optional[Any] = None
    zero_init_last: bool = True   # last BN scale starts at 0 (Goyal et al.), as timm
    # The standard avg-squeeze SE block: its last BN, scale, addition and ReLU in
    # one elementwise pass (see _fused_se_output). False spells the steps out one
    # by one; the results agree to rounding.
    fuse_se: bool = True
    # Stochastic depth: in training, each example's residual branch is dropped with this
    # probability (and scaled by 1 / (1 - rate) where kept), by the 'dropout' rng.
    drop_path_rate: float = 0.0
    kernels: str = 'auto'         # see ResNet
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        kernels = cpu_kernels.choose(self.kernels)
        conv, norm = conv_and_norm(train, self.dtype, self.param_dtype, kernels)
        # A tanh or relu gate is 0 at 0, so on a zero-initialised branch it would
        # block every gradient to that branch forever: start such branches at 1.
        dead_gate = (self.se is not None and self.se_position == 'standard'
                     and self.se.keywords.get('gate', 'sigmoid') != 'sigmoid')
        zero_init = self.zero_init_last and not dead_gate
        last_scale = nn.initializers.zeros if zero_init else nn.initializers.ones
        se = (lambda pos: self.se(name='se') if self.se is not None and pos == self.se_position
              else (lambda v: v))
        act_before_se = self.act_before_se and not self.bottleneck
        fused = (self.fuse_se and self.se is not None and self.se.func is SqueezeExcite
                 and self.se_position == 'standard'
                 and self.se.keywords.get('squeeze', 'avg') == 'avg' and not act_before_se)
        last_bn = 'bn3' if self.bottleneck else 'bn2'   # the branch's last BN
        last_norm = lambda y: norm(scale_init=last_scale, name=last_bn)(y, return_affine=fused)

        aa = self.aa and self.stride != 1
        if aa and (x.shape[1] % 2 or x.shape[2] % 2):
            raise ValueError(f'Anti-aliased downsampling (aa) needs even feature maps where it '
                             f'downsamples, got {x.shape[1]}x{x.shape[2]} (as in timm, whose '
                             'shortcut would not fit either): use an input side that is a multiple of 32.')
        stride = 1 if aa else self.stride
        sk = None if self.selective_kernel is None else functools.partial(
            SelectiveKernel, **self.selective_kernel, train=train, dtype=self.dtype,
            param_dtype=self.param_dtype)
        # timm's aa_layer=nn.AvgPool2d: a 2x2/2 average pool (floor mode) after the strided conv's ReLU.
        strided = (lambda v: avg_pool_2x2(v)) if aa else (lambda v: v)

        y = se('pre')(x)
        if self.bottleneck:
            s1, s3 = (stride, 1) if self.stride_on_1x1 else (1, stride)
            y = conv(self.width // self.reduce_first, 1, s1, name='conv1')(y)
            y = nn.relu(norm(name='bn1')(y))
            y = strided(y) if self.stride_on_1x1 else y
            if sk is not None:   # timm's SelectiveKernelBottleneck: conv2 is the SK conv
                y = sk(features=self.width, strides=s3, groups=self.groups, name='conv2')(y)
            else:
                y = conv(self.width, 3, s3, self.groups, name='conv2')(y)
                y = nn.relu(norm(name='bn2')(y))
            y = y if self.stride_on_1x1 else strided(y)
            y = se('3x3')(y)
            y = conv(self.features, 1, name='conv3')(y)
        else:
            if sk is not None:   # timm's SelectiveKernelBasic: conv1 is the SK conv
                y = sk(features=self.width, strides=stride, name='conv1')(y)
            else:
                y = conv(self.width, 3, stride, name='conv1')(y)
                y = nn.relu(norm(name='bn1')(y))
            y = strided(y)
            y = se('3x3')(y)
            y = conv(self.features, 3, 1, self.groups, name='conv2')(y)
        if fused:
            a, b, m = last_norm(y)
            s = self.se(name='se')(None, squeezed=(a * m + b).astype(y.dtype))
        else:
            y = last_norm(y)
            if act_before_se:
                y = nn.relu(y)
            y = se('standard')(y)

        if train and self.drop_path_rate > 0:   # on the branch, after its SE, as timm
            keep = drop_path_scale(self.make_rng('dropout'), x.shape[0], self.drop_path_rate)
            if fused:
                s = s * keep[:, None].astype(s.dtype)
            else:
                y = y * keep[:, None, None, None].astype(y.dtype)

        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            if self.avg_down:
                pooled = avg_pool_2x2(x, ceil_mode=True) if self.stride != 1 else x
                shortcut = conv(self.features, 1, 1, name='downsample_conv')(pooled)
            else:
                k = self.downsample_kernel if self.stride != 1 else 1
                shortcut = conv(self.features, k, self.stride, name='downsample_conv')(x)
            shortcut = norm(name='downsample_bn')(shortcut)
        shortcut = se('identity')(shortcut)
        if fused:
            out = _fused_se_output(y, a, b, s, shortcut)
        else:
            out = nn.relu(y + shortcut)
        # Written out once on CPU: the next block reads it in several places.
        return kernels.materialize(se('post')(out), self.variables['params'][last_bn]['scale'])


def _fused_se_output(u, a, b, s, shortcut):
    """relu(BN(u) * s + shortcut) with BN(u) = u * a + b, as (u * (a s) + b s) + shortcut.

    The normalised branch is never written out: the squeeze came from the BN's
    own per-example sums, and the gradient of this one expression has the
    passes of a plain block (sums of g and g * u per example and channel, then
    one elementwise pass), where spelling the steps out costs the SE block a
    saved activation and two more passes over it.
    """
    scale = (a * s.astype(a.dtype))[:, None, None, :]
    shift = (b * s.astype(b.dtype))[:, None, None, :]
    return nn.relu(u * scale + shift + shortcut).astype(u.dtype)


class ResNet(ZooModule):
    """Residual network for image classification, NHWC.

    `__call__(x, train=False)` returns float32 logits (float64 for a float64
    model). With `return_features=True` it returns the stage outputs instead, a
    dict with 'stem' and 'conv2_x' .. 'conv5_x' (strides 4, 4, 8, 16, 32 for the
    ImageNet stems), for detection and segmentation backbones.
    """
    layers: Sequence[int] = (3, 4, 6, 3)
    bottleneck: bool = True
    widths: Sequence[int] = (64, 128, 256, 512)   # 'planes' of each stage
    cardinality: int = 1                          # groups of the 3x3 conv (ResNeXt C)
    base_width: int = 64                          # ResNeXt d: 3x3 width = planes * d / 64 * C
    reduce_first: int = 1
    # '7x7' | 'deep' (three 3x3: stem_width/2, stem_width/2, stem_width) | 'deep_tiered'
    # (3/8, 1/2, 1 of stem_width) | 'small' (one 3x3/1). stem_width is the stem's output,
    # twice timm's `stem_width` for its deep stems.
    stem: str = '7x7'
    stem_width: int = 64
    stem_pool: Optional[str] = 'pad'              # 'pad' (3x3/2 max, pad 1) | 'ceil' (Caffe) | 'avg' (2x2/2) | None
    stride_on_1x1: bool = False
    act_before_se: bool = False
    downsample_kernel: int = 1
    avg_down: bool = False                        # ResNet-D projection shortcut (see ResidualBlock)
    aa: bool = False                              # anti-aliased downsampling, timm's aa_layer=nn.AvgPool2d
    # Squeeze-and-Excitation, in the paper's words: `attention` (ZooModule) names the
    # block that se_stages and se_position place.
    se_stages: Sequence[int] = STAGES
    se_position: str = 'standard'
    fuse_se: bool = True   # see ResidualBlock; False keeps each step's output for capture_intermediates
    # Stochastic depth (training only): the last block's rate, rising linearly from 0 at
    # the first block over the whole network, as timm's drop_path_rate.
    drop_path_rate: float = 0.0
    zero_init_last: bool = True
    # SKNet: options of attention.SelectiveKernel (a dict; {} for its defaults) that make
    # every block's 3x3 conv a Selective Kernel conv (see ResidualBlock); None: plain convs.
    selective_kernel: Optional[Any] = None

    def __post_init__(self):
        _check_selective_kernel(self)
        super().__post_init__()

    def min_input_size(self) -> int:
        """The smallest input side for which every stage still has a feature map of at least 1x1."""
        stem_stride = (1 if self.stem == 'small' else 2) * (1 if self.stem_pool is None else 2)
        return stem_stride * 8

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        kernels = cpu_kernels.choose(self.kernels)
        conv, norm = conv_and_norm(train, self.dtype, self.param_dtype, kernels)
        x = x.astype(self.dtype or x.dtype)
        features = {}

        if self.stem == '7x7':
            x = conv(self.stem_width, 7, 2, name='stem_conv1')(x)
            x = nn.relu(norm(name='stem_bn1')(x))
        elif self.stem in ('deep', 'deep_tiered'):
            inner = self.stem_width // 2
            first = 3 * (inner // 4) if self.stem == 'deep_tiered' else inner
            for i, (w, s) in enumerate([(first, 2), (inner, 1), (self.stem_width, 1)], start=1):
                x = conv(w, 3, s, name=f'stem_conv{i}')(x)
                x = nn.relu(norm(name=f'stem_bn{i}')(x))
        else:   # 'small'
            x = conv(self.stem_width, 3, name='stem_conv1')(x)
            x = nn.relu(norm(name='stem_bn1')(x))
        features['stem'] = x
        if self.stem_pool == 'pad':
            x = kernels.max_pool(x, 3, 2, ((1, 1), (1, 1)))
        elif self.stem_pool == 'ceil':
            x = max_pool_ceil(x, 3, 2, pool=kernels.max_pool)
        elif self.stem_pool == 'avg':
            x = avg_pool_2x2(x)

        expansion = 4 if self.bottleneck else 1
        block_rates = iter(drop_path_rates(self.layers, self.drop_path_rate))
        for i, (stage, depth, planes) in enumerate(zip(STAGES, self.layers, self.widths)):
            se = self.attention_block(train) if stage in self.se_stages else None
            width = (planes * self.base_width // 64) * self.cardinality if self.bottleneck else planes
            for b in range(depth):
                x = ResidualBlock(
                    features=planes * expansion, width=width, bottleneck=self.bottleneck,
                    stride=2 if (b == 0 and i > 0) else 1, groups=self.cardinality,
                    reduce_first=self.reduce_first, stride_on_1x1=self.stride_on_1x1,
                    act_before_se=self.act_before_se, downsample_kernel=self.downsample_kernel,
                    avg_down=self.avg_down, aa=self.aa, se=se, se_position=self.se_position,
                    selective_kernel=self.selective_kernel, zero_init_last=self.zero_init_last,
                    fuse_se=self.fuse_se, drop_path_rate=next(block_rates),
                    kernels=self.kernels, dtype=self.dtype, param_dtype=self.param_dtype,
                    name=f'stage{stage}_block{b}')(x, train)
            features[f'conv{stage}_x'] = x
        if return_features:
            return features

        return classify(x, self.num_classes, self.drop_rate, train, self.dtype, self.param_dtype)


# What a residual block sets on its Selective Kernel conv itself.
_SK_SET_BY_BLOCK = ('features', 'strides', 'groups', 'train', 'dtype', 'param_dtype', 'parent', 'name')


def _check_selective_kernel(net):
    """Refuse, in one sentence, SK options the block cannot take."""
    options = net.selective_kernel
    if options is None:
        return
    if not isinstance(options, Mapping):
        raise ValueError(f'selective_kernel must be None or a dict of SelectiveKernel options, got {options!r}.')
    allowed = sorted({f.name for f in dataclasses.fields(SelectiveKernel)} - set(_SK_SET_BY_BLOCK))
    for option in options:
        if option not in allowed:
            raise ValueError(f'selective_kernel has no option {option!r}; its options are {tuple(allowed)}.'
                             + did_you_mean(option, allowed))
    if net.aa or net.stride_on_1x1:
        raise ValueError('selective_kernel cannot be combined with aa or stride_on_1x1: the SK conv '
                         'takes the stride itself, as in timm.')


# ---------------------------------------------------------------------------
# The zoo entries of this family: reference names are timm 1.0's.

_DEPTHS = {18: (2, 2, 2, 2), 26: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3),
           101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 201: (3, 24, 36, 4)}
_BOTTLENECK = {18: False, 34: False, 50: True, 101: True, 152: True}
# The Caffe layout: ceil-mode stem pool, SE width floor(C/r).
_LEGACY = dict(stem_pool='ceil', se_divisor=1)

SPECS = {}


def _register(name, reference, layout, **kwargs):
    SPECS[name] = spec(ResNet, reference, layout, **kwargs)


# Paper Table 2 (GFLOPs, plain -> SE, 224 x 224, the Caffe layout); Sec. 3.3 gives the
# ResNet-50 parameters. Shown beside ours by `python -m senet_jax.models`.
_TABLE2 = {'resnet50': (3.86, 3.87, 25.6, 28.1), 'resnet101': (7.58, 7.60, None, None),
           'resnet152': (11.30, 11.32, None, None), 'resnext50_32x4d': (4.24, 4.25, None, None),
           'resnext101_32x4d': (7.99, 8.00, None, None)}


def _paper(base, se):
    if base not in _TABLE2:
        return None
    plain_gflops, se_gflops, plain_params, se_params = _TABLE2[base]
    return (PaperFigures('Table 2', se_gflops, se_params) if se
            else PaperFigures('Table 2', plain_gflops, plain_params))


for _d in (18, 34, 50, 101, 152):
    _base = dict(layers=_DEPTHS[_d], bottleneck=_BOTTLENECK[_d])
    _p = f'resnet{_d}'
    _register(_p, _p, 'timm', attention=None, paper=_paper(_p, False), **_base)
    _register(f'se_resnet{_d}', f'seresnet{_d}', 'timm', se_divisor=8, paper=_paper(_p, True), **_base)
    _register(f'legacy_se_resnet{_d}', f'legacy_seresnet{_d}', 'legacy', **_LEGACY, **_base,
              paper=_paper(_p, True),
              # Caffe SE-ResNet: stride on the bottleneck's 1x1; ReLU before SE in basic blocks.
              stride_on_1x1=_BOTTLENECK[_d], act_before_se=not _BOTTLENECK[_d])
for _d in (50, 101):
    _base = dict(layers=_DEPTHS[_d], cardinality=32, base_width=4)
    _p = f'resnext{_d}_32x4d'
    _register(_p, _p, 'timm', attention=None, paper=_paper(_p, False), **_base)
    _register(f'se_resnext{_d}_32x4d', f'seresnext{_d}_32x4d', 'timm', se_divisor=8,
              paper=_paper(_p, True), **_base)
for _d in (26, 50, 101):
    _register(f'legacy_se_resnext{_d}_32x4d', f'legacy_seresnext{_d}_32x4d', 'legacy',
              paper=_paper(f'resnext{_d}_32x4d', True), **_LEGACY, layers=_DEPTHS[_d],
              cardinality=32, base_width=4)
# The wider ResNeXt-101s (cardinality x width of a group).
for _c, _w in ((32, 8), (64, 4)):
    _base = dict(layers=_DEPTHS[101], cardinality=_c, base_width=_w)
    _p = f'resnext101_{_c}x{_w}d'
    _register(_p, _p, 'timm', attention=None, **_base)
    _register(f'se_{_p}', f'se{_p}', 'timm', se_divisor=8, **_base)
# ResNet-D (timm's 'd' and 't' suffixes): a deep stem of three 3x3 convs (timm stem_width 32,
# so 64 out; 't': tiered 24, 32, 64) and average-pooled projection shortcuts. 'aa' adds
# timm's average-pool anti-aliasing: a 2x2 average pool for the stem pool and after each
# strided 3x3 conv. input_size is that of timm's default weight.
_D = dict(stem='deep', stem_width=64, avg_down=True)
_SE = dict(se_divisor=8)
_register('resnet50d', 'resnet50d', 'timm_d', attention=None, layers=_DEPTHS[50], **_D)
_register('resnet152d', 'resnet152d', 'timm_d', attention=None, layers=_DEPTHS[152], input_size=256, **_D)
_register('se_resnet152d', 'seresnet152d', 'timm_d', layers=_DEPTHS[152], input_size=256, **_D, **_SE)
# ECA-Net ResNets (timm's ecaresnet*): the ResNet-D layouts with ECA where SE sits.
_ECA = dict(attention='eca', avg_down=True, stem_width=64)
_register('eca_resnet26t', 'ecaresnet26t', 'timm_d', layers=(2, 2, 2, 2), stem='deep_tiered', input_size=256,
          **_ECA)
_register('eca_resnet50d', 'ecaresnet50d', 'timm_d', layers=_DEPTHS[50], stem='deep', **_ECA)
_register('eca_resnet50t', 'ecaresnet50t', 'timm_d', layers=_DEPTHS[50], stem='deep_tiered', input_size=256,
          **_ECA)
_register('eca_resnet101d', 'ecaresnet101d', 'timm_d', layers=_DEPTHS[101], stem='deep', **_ECA)
_register('eca_resnet269d', 'ecaresnet269d', 'timm_d', layers=(3, 30, 48, 8), stem='deep', input_size=320,
          **_ECA)
# timm's stem_width=32 is unused by its 7x7 stem (64 channels).
_register('eca_resnetlight', 'ecaresnetlight', 'timm_avg_down', layers=(1, 1, 11, 3), attention='eca',
          avg_down=True)
# SK ResNets (timm's sknet.py): 7x7 stem, Selective Kernel 3x3 convs (timm's sk_kwargs:
# rd_ratio 1/r, rd_divisor, split_input), no attention block, last BN scales start at 1.
_SK = dict(attention=None, zero_init_last=False)
_SK_SPLIT = {'reduction': 8, 'divisor': 16, 'split_input': True}
_register('sk_resnet18', 'skresnet18', 'timm_sk', layers=_DEPTHS[18], bottleneck=False,
          selective_kernel=_SK_SPLIT, **_SK)
_register('sk_resnet34', 'skresnet34', 'timm_sk', layers=_DEPTHS[34], bottleneck=False,
          selective_kernel=_SK_SPLIT, **_SK)
_register('sk_resnext50_32x4d', 'skresnext50_32x4d', 'timm_sk', layers=_DEPTHS[50], cardinality=32,
          base_width=4, selective_kernel={'reduction': 16, 'divisor': 32, 'split_input': False}, **_SK)
_X = dict(cardinality=32, base_width=4)
_register('se_resnext26d_32x4d', 'seresnext26d_32x4d', 'timm_d', layers=_DEPTHS[26], **_X, **_D, **_SE)
_register('se_resnext26t_32x4d', 'seresnext26t_32x4d', 'timm_d', layers=_DEPTHS[26], **_X, **_SE,
          **{**_D, 'stem': 'deep_tiered'})
_X = dict(cardinality=32, base_width=8)
_AA = dict(aa=True, stem_pool='avg', odd_size=(161, 193))   # aa needs even maps where it downsamples
_register('se_resnext101d_32x8d', 'seresnext101d_32x8d', 'timm_d', layers=_DEPTHS[101], **_X, **_D, **_SE)
_register('se_resnextaa101d_32x8d', 'seresnextaa101d_32x8d', 'timm_d', layers=_DEPTHS[101],
          input_size=288, **_X, **_D, **_SE, **_AA)
_register('se_resnextaa201d_32x8d', 'seresnextaa201d_32x8d', 'timm_d', layers=_DEPTHS[201],
          input_size=384, **_X, **_SE, **_AA, **{**_D, 'stem_width': 128})
# SENet-154 (Sec. 5 / Appendix of the paper): 64x4d SE-ResNeXt-152 with a three-conv stem,
# a half-width first 1x1 conv, 3x3 projection shortcuts, and dropout 0.2 before the classifier.
_register('senet154', 'legacy_senet154', 'legacy', **_LEGACY, layers=_DEPTHS[152],
          cardinality=64, base_width=4, reduce_first=2, stem='deep', stem_width=128,
          downsample_kernel=3, drop_rate=0.2)
# timm's `senet154` (the GluonCV port, weight senet154.gluon_in1k; timm <= 0.6 called it
# gluon_senet154): SENet-154 in the torchvision layout (stride on the 3x3, padded stem pool,
# SE width rounded to 8), no dropout. The name `senet154` stays the paper's Caffe network.
_register('gluon_senet154', 'senet154', 'timm_deep', **_SE, layers=_DEPTHS[152], cardinality=64,
          base_width=4, reduce_first=2, stem='deep', stem_width=128, downsample_kernel=3)
# A small SE-ResNet for tiny images (the digits quickstart, tests): one basic block a
# stage, a 3x3 stride-1 stem, no stem pool, total stride 8.
_MINI = dict(layers=(1, 1, 1, 1), bottleneck=False, widths=(16, 32, 64, 128), stem='small',
             stem_width=16, stem_pool=None)
_register('se_resnet_mini', None, 'timm', input_size=16, reduction=4, se_divisor=1, **_MINI)
_register('resnet_mini', None, 'timm', input_size=16, attention=None, **_MINI)   # its plain baseline
