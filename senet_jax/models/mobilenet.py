"""MobileNet (v1, width 1.0) and SE-MobileNet (Table 3 of the paper).

The plain network is pytorchcv's `mobilenet_w1` number for number (4,231,976
parameters, the same count as timm's `mobilenetv1_100`). pytorchcv was chosen
over timm because it is the MobileNet of the MobileNet paper, which the SE
paper re-implements: plain ReLU after every BN (timm's uses ReLU6, from the
TF-slim release) and the ImageNet mean / std input (timm's weights expect
Inception's 0.5 / 0.5). Layout: a 3x3/2 stem conv (32 channels), then 13
depthwise-separable blocks (a 3x3 depthwise conv, BN, ReLU; a 1x1 pointwise
conv, BN, ReLU), grouped as pytorchcv groups them into five stages of
(1, 2, 2, 6, 2) blocks with (64, 128, 256, 512, 1024) channels; the first
block of stages 2-5 has stride 2. All convolutions are bias-free, BN eps 1e-5.
Then global average pooling, dropout and the classifier 'fc'. (pytorchcv pools
with a fixed 7x7 window, so it only runs on 193..224 px inputs, where the last
map is 7x7 and the two pools agree; this one takes any size.)

Where SE sits: on each depthwise-separable block's output, after the pointwise
conv's BN and ReLU, before the next block. The paper (Sec. 6, Table 3) gives
no finer placement for MobileNet, which has no residual branch; this is the
non-residual rule of Sec. 3.3 (SE after the non-linearity) applied once per
block, at its pointwise output, as the issue asks. r = 16, SE width
floor(C / r), biases on both projections: 13 blocks add 486,068 parameters,
4,231,976 -> 4,718,044, the paper's 4.2M -> 4.7M (see `se_params`).
`se_stages` names the stages whose blocks carry SE, 1..5; () is the plain
baseline.

Multiply-adds at 224 (senet_jax.models.macs): 568.7 M plain, the paper's 569;
SE's projections add 0.48 M. The paper's 572 for SE-MobileNet also counts SE's
channel-wise scaling, one multiply per value of the 13 SE outputs (2.7 M):
568.7 + 0.5 + 2.7 = 571.9.

timm's `mobilenetv1_100` (timm 1.0.31, `efficientnet._gen_mobilenet_v1`) is the same
network but for one thing: ReLU6 after every BN (`activation='relu6'`). Its stem,
blocks (`dsa`: no residual), bias-free convs, symmetric padding, BN eps 1e-5, plain
pooled head without a head conv and its 4,231,976 parameters are pytorchcv's. It
is the zoo's `mobilenetv1_100`, converted from timm's module names (layout
'timm_mobilenet'); its weights want Inception's 0.5 / 0.5 input (see pretrained.py).
"""
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from senet_jax import cpu_kernels
from senet_jax.layers import classify, conv_and_norm
from senet_jax.models.base import ZooModule
from senet_jax.models.spec import PaperFigures, spec

Dtype = Any

STAGES = (1, 2, 3, 4, 5)
# The pointwise output channels of each block, per stage (MobileNet Table 1, width 1.0).
CHANNELS = ((64,), (128, 128), (256, 256), (512,) * 6, (1024, 1024))
STEM_WIDTH = 32
# The non-linearity after every BN: the MobileNet paper's ReLU, or TF-slim's (and timm's) ReLU6.
ACTIVATIONS = {'relu': nn.relu, 'relu6': nn.relu6}


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv + BN + ReLU, 1x1 pointwise conv + BN + ReLU, then SE if given."""
    features: int
    stride: int = 1
    se: Optional[Any] = None      # a SqueezeExcite partial, or None
    activation: str = 'relu'
    kernels: str = 'auto'
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        kernels = cpu_kernels.choose(self.kernels)
        conv, norm = conv_and_norm(train, self.dtype, self.param_dtype, kernels)
        channels = x.shape[-1]
        x = conv(channels, 3, self.stride, groups=channels, name='dw_conv')(x)
        act = ACTIVATIONS[self.activation]
        x = act(norm(name='dw_bn')(x))
        x = conv(self.features, 1, name='pw_conv')(x)
        x = act(norm(name='pw_bn')(x))
        return x if self.se is None else self.se(name='se')(x)


class MobileNetV1(ZooModule):
    """MobileNet v1 (width 1.0) for image classification, NHWC, with optional SE per block.

    `__call__(x, train=False)` returns float32 logits. With `return_features=True`
    it returns the stage outputs instead: 'stem' and 'stage1' .. 'stage5'
    (strides 2, 2, 4, 8, 16, 32).
    """
    # Squeeze-and-Excitation, in the paper's words (the block: ZooModule's `attention`).
    se_stages: Sequence[int] = STAGES
    activation: str = 'relu'       # 'relu6' for timm's mobilenetv1_100
    SE_STAGES = (STAGES, ' (the stages whose blocks carry SE)')

    def min_input_size(self) -> int:
        """The network's total stride. Any side runs (each stride-2 conv rounds up), but below
        32 the last stages would convolve padding more than image."""
        return 32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        kernels = cpu_kernels.choose(self.kernels)
        conv, norm = conv_and_norm(train, self.dtype, self.param_dtype, kernels)
        x = x.astype(self.dtype or x.dtype)
        act = ACTIVATIONS[self.activation]
        x = act(norm(name='stem_bn')(conv(STEM_WIDTH, 3, 2, name='stem_conv')(x)))
        features = {'stem': x}
        for stage, widths in zip(STAGES, CHANNELS):
            se = self.attention_block(train) if stage in self.se_stages else None
            for unit, width in enumerate(widths, start=1):
                stride = 2 if unit == 1 and stage > 1 else 1
                x = DepthwiseSeparable(width, stride, se, self.activation, kernels=self.kernels,
                                       dtype=self.dtype, param_dtype=self.param_dtype,
                                       name=f'stage{stage}_unit{unit}')(x, train)
            features[f'stage{stage}'] = x
        if return_features:
            return features
        return classify(x, self.num_classes, self.drop_rate, train, self.dtype, self.param_dtype)


def torch_module(path: Tuple[str, ...], layout: str) -> str:
    """The reference's module name for a Flax module path of `MobileNetV1`: pytorchcv's
    `mobilenet_w1` (layout 'pytorchcv_mobilenet') or timm's `mobilenetv1_100` ('timm_mobilenet')."""
    timm = layout == 'timm_mobilenet'
    head, rest = path[0], list(path[1:])
    if head == 'fc':
        return 'classifier' if timm else 'output'
    if head.startswith('stem_'):
        if timm:
            return {'stem_conv': 'conv_stem', 'stem_bn': 'bn1'}[head]
        return f"features.init_block.{head[len('stem_'):]}"
    stage, unit = head[len('stage'):].split('_unit')
    if timm:   # blocks.<stage - 1>.<unit - 1>.{conv_dw, bn1, conv_pw, bn2}
        names = {'dw_conv': 'conv_dw', 'dw_bn': 'bn1', 'pw_conv': 'conv_pw', 'pw_bn': 'bn2'}
        block = f'blocks.{int(stage) - 1}.{int(unit) - 1}'
    else:
        names = {'dw_conv': 'dw_conv.conv', 'dw_bn': 'dw_conv.bn',
                 'pw_conv': 'pw_conv.conv', 'pw_bn': 'pw_conv.bn'}
        block = f'features.stage{stage}.unit{unit}'
    return '.'.join([block] + [names.get(p, p) for p in rest])


def se_params(reduction: float = 16) -> int:
    """Parameters the SE blocks add: per block of C output channels, W1 (C x C/r)
    and W2 (C/r x C) with biases, C/r = floor(C / r)."""
    total = 0
    for widths in CHANNELS:
        for c in widths:
            r = int(c // reduction)
            total += 2 * c * r + r + c
    return total


SPECS = {
    # Paper Table 3: 1.0 MobileNet-224, 569 MFLOPs and 4.2M parameters -> SE 572 and 4.7M.
    # pytorchcv's fixed 7x7 final pool needs a 7x7 last map: the odd size is 209 x 197.
    'mobilenet_v1': spec(MobileNetV1, 'mobilenet_w1', 'pytorchcv_mobilenet', source='pytorchcv',
                         attention=None, paper=PaperFigures('Table 3', 0.569, 4.2),
                         odd_size=(209, 197)),
    'se_mobilenet_v1': spec(MobileNetV1, None, 'pytorchcv_mobilenet', source='pytorchcv',
                            paper=PaperFigures('Table 3', 0.572, 4.7), odd_size=(209, 197)),
    # timm's: ReLU6, timm's module names; its global pool takes any size.
    'mobilenetv1_100': spec(MobileNetV1, 'mobilenetv1_100', 'timm_mobilenet', attention=None,
                            activation='relu6'),
}
