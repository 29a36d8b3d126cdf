"""VGG-16 with batch normalisation, and SE-VGG-16 (Table 2 of the paper).

The plain network is timm 1.0's `vgg16_bn` number for number: thirteen 3x3
convolutions with biases, each followed by BN and ReLU, in five blocks of
(2, 2, 3, 3, 3) ending in a 2x2/2 max pool (floor mode); then fc6, a 7x7
convolution 512 -> 4096 with bias (the first fully connected layer of the
VGG paper, as a convolution), ReLU, dropout, fc7, a 1x1 convolution 4096 -> 4096
with bias, ReLU; global average pooling, dropout and the classifier 'fc'. When
the last feature map is smaller than 7x7 it is first average-pooled up to at
least 7x7 (PyTorch's adaptive average pooling, as timm does), so fc6 always
has a full window; on larger maps fc6 gives several positions and the global
pool averages them.

Where SE sits: after the ReLU of every one of the 13 convolutions. Sec. 3.3
of the paper integrates SE blocks into non-residual networks "after the
non-linearity following each convolution"; no official definition of SE-VGG-16
exists. r = 16, SE width floor(C / r), biases on both projections (as in
the official SE-BN-Inception). The fully connected layers fc6 and fc7 get no
SE: they are the classifier, not convolutions of the feature hierarchy.
`se_stages` names the conv blocks that carry SE, 1..5 (conv1_x .. conv5_x of
the VGG paper); () is the plain baseline.

Multiply-adds at 224 (senet_jax.models.macs): 15.470 G plain, as the paper's
15.47; SE's projections add 0.23 M. The paper's 15.48 for SE-VGG-16 also
counts SE's channel-wise scaling, one multiply per value of the 13 SE outputs
(13.5 M): 15.470 + 0.0002 + 0.0135 = 15.484.

Dropout: timm's `drop_rate` (default 0.0) acts after fc6's ReLU and before
the classifier; `drop_rate` here does the same in both places.
"""
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from senet_jax import cpu_kernels
from senet_jax.layers import classify, conv_and_norm
from senet_jax.models.base import ZooModule
from senet_jax.models.spec import PaperFigures, spec

Dtype = Any

BLOCKS = (1, 2, 3, 4, 5)                  # conv1_x .. conv5_x
WIDTHS = (64, 128, 256, 512, 512)         # channels of each block
DEPTHS = (2, 2, 3, 3, 3)                  # convolutions per block: VGG-16, configuration D
FC6_KERNEL = 7                            # fc6 sees a 7x7 window of the last map


def adaptive_avg_pool(x, out_h: int, out_w: int):
    """PyTorch's `adaptive_avg_pool2d` of NHWC x to (out_h, out_w): output i
    averages inputs floor(i * n / out) .. ceil((i + 1) * n / out) - 1 on each
    axis. Written as slices and means, so it counts no multiply-adds."""
    for axis, out in ((1, out_h), (2, out_w)):
        n = x.shape[axis]
        if n == out:
            continue
        bins = [(i * n // out, -(-(i + 1) * n // out)) for i in range(out)]
        x = jnp.concatenate([jnp.mean(jnp.take(x, jnp.arange(a, b), axis=axis), axis=axis,
                                      keepdims=True) for a, b in bins], axis=axis)
    return x


class VGG(ZooModule):
    """VGG-16-BN for image classification, NHWC, with optional SE after every conv's ReLU.

    `__call__(x, train=False)` returns float32 logits. With `return_features=True`
    it returns the block outputs instead: 'conv1' .. 'conv5' (after the block's
    last ReLU and SE, before its max pool; strides 1, 2, 4, 8, 16) and 'pool5'
    (the last max pool, stride 32, the input of fc6), as timm's feature taps.
    """
    mlp_width: int = 4096          # channels of fc6 and fc7
    # Squeeze-and-Excitation, in the paper's words (the block: ZooModule's `attention`).
    se_stages: Sequence[int] = BLOCKS
    SE_STAGES = (BLOCKS, ' (the conv blocks conv1_x..conv5_x)')

    def __post_init__(self):
        if not isinstance(self.mlp_width, int) or self.mlp_width < 1:
            raise ValueError(f'mlp_width must be a positive integer, got {self.mlp_width!r}.')
        super().__post_init__()

    def min_input_size(self) -> int:
        """The smallest input side for which the last max pool still leaves a 1x1 map."""
        return 2 ** len(BLOCKS)

    def _features(self, x, train: bool, kernels):
        conv, norm = conv_and_norm(train, self.dtype, self.param_dtype, kernels)
        features = {}
        se = self.attention_block(train)
        for block, depth, width in zip(BLOCKS, DEPTHS, WIDTHS):
            for i in range(1, depth + 1):
                x = conv(width, 3, use_bias=True, name=f'conv{block}_{i}')(x)
                x = nn.relu(norm(name=f'bn{block}_{i}')(x))
                if se is not None and block in self.se_stages:
                    x = se(name=f'se{block}_{i}')(x)
            features[f'conv{block}'] = x
            x = kernels.max_pool(x, 2, 2, ((0, 0), (0, 0)))
        features['pool5'] = x
        return features

    def _pre_logits(self, x, train: bool, kernels):
        """fc6 (7x7 conv) and fc7 (1x1 conv), each with bias and ReLU; dropout between."""
        conv, _ = conv_and_norm(train, self.dtype, self.param_dtype, kernels)
        h, w = x.shape[1:3]
        if h < FC6_KERNEL or w < FC6_KERNEL:
            x = adaptive_avg_pool(x, max(h, FC6_KERNEL), max(w, FC6_KERNEL))
        x = nn.relu(conv(self.mlp_width, FC6_KERNEL, padding=0, use_bias=True, name='fc6')(x))
        x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
        return nn.relu(conv(self.mlp_width, 1, use_bias=True, name='fc7')(x))

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        kernels = cpu_kernels.choose(self.kernels)
        x = x.astype(self.dtype or x.dtype)
        features = self._features(x, train, kernels)
        if return_features:
            return features
        x = self._pre_logits(features['pool5'], train, kernels)
        return classify(x, self.num_classes, self.drop_rate, train, self.dtype, self.param_dtype)


def _feature_index(block: int, i: int) -> int:
    """Index of conv{block}_{i} in timm's `features` Sequential: each conv is
    (conv, BN, ReLU) and each block ends in a max pool."""
    return sum(3 * d + 1 for d in DEPTHS[:block - 1]) + 3 * (i - 1)


def torch_module(path: Tuple[str, ...], layout: str) -> str:
    """timm's module name for a Flax module path of `VGG` (layout 'timm_vgg')."""
    del layout
    head, rest = path[0], list(path[1:])
    fixed = {'fc6': 'pre_logits.fc1', 'fc7': 'pre_logits.fc2', 'fc': 'head.fc'}
    if head in fixed:
        return fixed[head]
    kind, numbers = head[:-3], head[-3:]          # 'conv' / 'bn' / 'se' and 'b_i'
    block, i = map(int, numbers.split('_'))
    index = _feature_index(block, i)
    if kind == 'conv':
        return f'features.{index}'
    if kind == 'bn':
        return f'features.{index + 1}'
    return '.'.join([f'features.{index + 2}.se', *rest])   # SE (no reference): after the ReLU


def se_params(reduction: float = 16) -> int:
    """Parameters the 13 SE blocks add: per conv of C channels, W1 (C x C/r) and W2
    (C/r x C) with biases, C/r = floor(C / r)."""
    total = 0
    for depth, c in zip(DEPTHS, WIDTHS):
        r = int(c // reduction)
        total += depth * (2 * c * r + r + c)
    return total


SPECS = {
    # Paper Table 2: VGG-16 (re-implemented with BN) 15.47 GFLOPs -> SE-VGG-16 15.48 at 224.
    'vgg16_bn': spec(VGG, 'vgg16_bn', 'timm_vgg', attention=None,
                     paper=PaperFigures('Table 2', 15.47), odd_size=(289, 131)),
    # No published SE-VGG-16: the parameter count is the base plus `se_params` (tests).
    'se_vgg16_bn': spec(VGG, None, 'timm_vgg', paper=PaperFigures('Table 2', 15.48),
                        odd_size=(289, 131)),
}
