"""ShuffleNet v1 (Zhang et al., CVPR 2018) and SE-ShuffleNet (SENet paper, Table 3).

The plain network is ShuffleNet 1x with g = 3 groups, matched number for number
to pytorchcv's `shufflenet_g3_w1` (1,865,728 parameters). Its units follow the
ShuffleNet paper's Fig. 2: a grouped 1x1 conv (BN, ReLU), the channel shuffle,
a 3x3 depthwise conv (BN, no ReLU), a grouped 1x1 conv (BN), then the addition
with the identity (ReLU after it); a strided unit (the first of each stage)
concatenates its branch with a 3x3/2 average pool of its input instead (the
pool counts its zero padding, PyTorch's default). The first unit of stage 2
has no groups on its first 1x1 conv (its input has only 24 channels).

Megvii's own ShuffleNet-Series `ShuffleNetV1` (1,864,728 parameters) builds
the same layers but (a) its classifier has no bias: the 1,000 parameters of
difference; (b) it shuffles after the depthwise conv and its BN rather than
before, and with the inverse permutation (channels read as (C/g, g) rather
than (g, C/g)); both are per-channel layers, so this is the same family of
functions with permuted weights, but not the same state_dict; (c) its strided
units put the pooled shortcut first in the concatenation. pytorchcv keeps the
paper's order in all three, so it is the reference here.

SE (SENet paper, Sec. 5 and Table 3) sits on the residual branch of every
unit, after its last BN, before the addition, as in SE-ResNet. In a strided
unit the SE block gates the branch alone, before the concatenation, and the
pooled shortcut passes through ungated, as the identity does in the other
units. The paper's counts agree (tests/test_shufflenet.py): with r = 16 and
biases, SE adds 618,805 parameters, 2,484,533 in all, listed as 2.4M by Table
3's truncation to 0.1M (which also lists the base's 1,865,728 as 1.8M); SE on
the whole concatenated output would add 0.73M, 2.5M in all. `se_stages` names
the stages that carry SE, in the ShuffleNet paper's numbering (Table 1:
Stage2, Stage3, Stage4).

The SE projections act on a 1x1 descriptor, so each of their weights is one
multiply-add per image: 0.61M MACs, against 74 per weight in the convolutions
(the paper's 2M, 140 -> 142 MFLOPs, fits these plus the 1.6M multiplies of the
channel scaling). And in a grouped unit SE is not small: its C^2/8 weights are
three quarters of the two grouped 1x1 convs' C^2/6 (g = 3), where in a
ResNet-50 bottleneck they are about an eighth of the unit's.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from senet_jax import cpu_kernels
from senet_jax.layers import classify, conv_and_norm
from senet_jax.models.base import ZooModule
from senet_jax.models.spec import PaperFigures, spec

Dtype = Any

STAGES = (2, 3, 4)   # Stage2 .. Stage4 of the ShuffleNet paper's Table 1


def channel_shuffle(x, groups: int):
    """The channel shuffle of the ShuffleNet paper (Fig. 1c) on NHWC x: the
    channels read as (groups, C / groups), transposed, flattened; so the next
    grouped conv sees channels from every group of the previous one."""
    *lead, channels = x.shape
    x = x.reshape(*lead, groups, channels // groups)
    return jnp.swapaxes(x, -1, -2).reshape(*lead, channels)


def avg_pool_3x3_s2(x):
    """3x3/2 average pool with padding 1, the zero padding counted (PyTorch's
    `AvgPool2d(3, 2, 1)`, count_include_pad=True): the strided units' shortcut."""
    return nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), count_include_pad=True)


class ShuffleUnit(nn.Module):
    """One ShuffleNet unit (ShuffleNet paper, Fig. 2b; Fig. 2c when `downsample`),
    with an optional SE block on its branch (see the module docstring)."""
    features: int                 # output channels of the unit (branch + shortcut when strided)
    groups: int
    downsample: bool = False
    group_first: bool = True      # groups on the first 1x1 conv (not in stage 2's first unit)
    se: Optional[Any] = None      # a SqueezeExcite partial, or None for no SE
    kernels: str = 'auto'
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = conv_and_norm(train, self.dtype, self.param_dtype, cpu_kernels.choose(self.kernels))
        mid = self.features // 4   # the bottleneck width: a quarter of the unit's output
        branch = self.features - x.shape[-1] if self.downsample else self.features
        y = conv(mid, 1, groups=self.groups if self.group_first else 1, name='compress_conv1')(x)
        y = nn.relu(norm(name='compress_bn1')(y))
        y = channel_shuffle(y, self.groups)
        y = conv(mid, 3, 2 if self.downsample else 1, groups=mid, name='dw_conv2')(y)
        y = norm(name='dw_bn2')(y)   # no ReLU after the depthwise conv (Sec. 3.2)
        y = conv(branch, 1, groups=self.groups, name='expand_conv3')(y)
        y = norm(name='expand_bn3')(y)
        if self.se is not None:
            y = self.se(name='se')(y)
        if self.downsample:
            return nn.relu(jnp.concatenate([y, avg_pool_3x3_s2(x).astype(y.dtype)], axis=-1))
        return nn.relu(y + x)


class ShuffleNet(ZooModule):
    """ShuffleNet v1 for image classification, NHWC; SE-ShuffleNet with `se_stages`.

    `__call__(x, train=False)` returns float32 logits (float64 for a float64
    model). With `return_features=True` it returns the stage outputs instead, a
    dict with 'conv1' (stride 2, before the max pool) and 'stage2', 'stage3',
    'stage4' (strides 8, 16, 32). The classifier follows a global average pool,
    which at the 7x7 map of a 224 input (any side from 193 to 224) is the
    reference's 7x7 average pool; other sizes work too.
    """
    groups: int = 3                                   # g of the grouped 1x1 convs
    stage_widths: Sequence[int] = (240, 480, 960)     # output channels of Stage2..4 (1x, g = 3)
    stage_repeats: Sequence[int] = (4, 8, 4)          # units per stage
    stem_width: int = 24
    # Squeeze-and-Excitation, in the SENet paper's words (the block: ZooModule's `attention`).
    se_stages: Sequence[int] = STAGES
    SE_STAGES = (STAGES, ' (Stage2..Stage4 of ShuffleNet)')

    def __post_init__(self):
        _check_widths(self.groups, self.stem_width, self.stage_widths, self.stage_repeats)
        super().__post_init__()

    def min_input_size(self) -> int:
        """The total stride: the smallest side that keeps a full 1x1 map in Stage4."""
        return 32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        kernels = cpu_kernels.choose(self.kernels)
        conv, norm = conv_and_norm(train, self.dtype, self.param_dtype, kernels)
        x = x.astype(self.dtype or x.dtype)
        x = conv(self.stem_width, 3, 2, name='conv1')(x)
        x = nn.relu(norm(name='conv1_bn')(x))
        features = {'conv1': x}
        x = kernels.max_pool(x, 3, 2, ((1, 1), (1, 1)))
        for stage, width, repeats in zip(STAGES, self.stage_widths, self.stage_repeats):
            se = self.attention_block(train) if stage in self.se_stages else None
            for b in range(repeats):   # named as the ResNet blocks, for senet_jax.analysis
                x = ShuffleUnit(features=width, groups=self.groups, downsample=b == 0,
                                group_first=not (stage == 2 and b == 0), se=se,
                                kernels=self.kernels, dtype=self.dtype, param_dtype=self.param_dtype,
                                name=f'stage{stage}_block{b}')(x, train)
            features[f'stage{stage}'] = x
        if return_features:
            return features

        return classify(x, self.num_classes, self.drop_rate, train, self.dtype, self.param_dtype)


def _check_widths(groups, stem_width, widths, repeats):
    """ValueError, one sentence, unless every grouped conv and shuffle divides evenly."""
    if len(widths) != len(STAGES) or len(repeats) != len(STAGES) or min(repeats) < 1:
        raise ValueError(f'stage_widths and stage_repeats need one entry per stage {STAGES} '
                         f'(repeats at least 1), got {tuple(widths)} and {tuple(repeats)}.')
    inputs = (stem_width, *widths[:-1])
    for stage, width, width_in in zip(STAGES, widths, inputs):
        # The bottleneck (width / 4), the first unit's branch (width - input) and, after
        # stage 2, the input of the grouped first 1x1 conv must all split into the groups.
        need = (width // 4, width - width_in) + ((width_in,) if stage > 2 else ())
        if groups < 1 or width % 4 or width <= width_in or any(n % groups for n in need):
            raise ValueError(f'Stage{stage} of width {width} after {width_in} channels does not fit '
                             f'{groups} groups (the width must be a multiple of 4, grow, and '
                             'split its bottleneck and branch evenly into the groups).')


# ---------------------------------------------------------------------------
# Flax module path -> pytorchcv module name (senet_jax.convert's table).

def torch_module(path, layout: str) -> str:
    """pytorchcv `shufflenet_g*` name of a Flax module path, e.g. ('stage2_block0',
    'dw_conv2') -> 'features.stage1.unit1.dw_conv2' (its stages and units count from 1)."""
    head, rest = path[0], list(path[1:])
    if head == 'fc':
        return 'output'
    if head in ('conv1', 'conv1_bn'):
        return {'conv1': 'features.init_block.conv', 'conv1_bn': 'features.init_block.bn'}[head]
    stage, block = head[len('stage'):].split('_block')
    return '.'.join([f'features.stage{int(stage) - 1}', f'unit{int(block) + 1}', *rest])


# ---------------------------------------------------------------------------
# The zoo entries. Paper Table 3: ShuffleNet 1x (g = 3), 140 -> 142 MFLOPs, 1.8M -> 2.4M.

SPECS = {
    'shufflenet_v1_g3': spec(ShuffleNet, 'shufflenet_g3_w1', 'pytorchcv_shufflenet',
                             source='pytorchcv', attention=None, odd_size=(211, 197),
                             paper=PaperFigures('Table 3', 0.140, 1.8)),
    'se_shufflenet_v1_g3': spec(ShuffleNet, None, 'pytorchcv_shufflenet', source='pytorchcv',
                                odd_size=(211, 197), paper=PaperFigures('Table 3', 0.142, 2.4)),
}
