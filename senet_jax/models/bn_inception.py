"""BN-Inception (Ioffe & Szegedy 2015, Fig. 5) and SE-BN-Inception.

One class for both: `se_stages` says which Inception modules carry an SE block
(3 = inception_3a..3c, 4 = 4a..4e, 5 = 5a..5b; empty for the plain base).

SE placement, on the evidence of the official release (hujie-frank/SENet,
`models/SE-BN-Inception.prototxt`; paper Fig. 2, "SE-Inception module"): one
SE block after the concatenation of every one of the 10 Inception modules,
global average squeeze, two 1x1 projections with biases, floor(C / 16) wide
(256->16, 320->20, 576->36, 608->38, 1056->66, 1024->64), a sigmoid gate, the
scaled concatenation feeding the next module. The release's convolutions have
no bias; each is followed by BN (Caffe BatchNorm + Scale) and ReLU.

The plain base matches Cadene's `pretrainedmodels` `bninception` number for
number; that port keeps a bias on every convolution, hence `conv_bias`. The
two networks share every layer shape (the prototxt's 69 base convolutions
have the same widths, kernels, strides and padding as Cadene's).

Pooling, as both references compute it:
- stem pools and the stride-2 pool branch of 3c and 4e: 3x3/2 max pooling
  without padding, rounding the output size up (Caffe; PyTorch ceil_mode);
- the pool branch of every other module: 3x3/1 average pooling with padding 1,
  dividing by 9 everywhere (Caffe's AVE pooling counts the padding, as
  PyTorch's count_include_pad=True does), except 5b's, a 3x3/1 max pool;
- a 7x7 average pool before the classifier, here a global average: the same
  at any input of 223..230 pixels, where the last map is 7x7, and the only
  sizes the references accept.
At other sizes the references fail: the 3x3/2 convolutions of 3c and 4e give
ceil(h / 2) rows and their pool branch floor(h / 2) when h is odd, and the
concatenation breaks. Here the pool branch is padded at the bottom and the
right until it has ceil(h / 2) rows too, so any input of at least 7 pixels
works, and wherever the references run this is their result.

Input: Caffe's convention, BGR in [0, 255] minus the mean pixel 104/117/123
(spec.CAFFE_BGR, the prototxt's `mean_value`), for both networks, so that the
Table 2 pair sees the same pixels. Cadene's settings give 128 for the red
mean: with its weights that is a constant offset of 5 on one input channel.

Parameter names follow the Caffe layer names ('/' written '_'), so that
`torch_module` maps them to Cadene's keys and to a state_dict exported from the
official caffemodel.
"""
import functools
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from senet_jax import cpu_kernels
from senet_jax.layers import classify, conv_and_norm, max_pool_ceil
from senet_jax.models.base import ZooModule
from senet_jax.models.spec import CAFFE_BGR, PaperFigures, spec

Dtype = Any

STAGES = (3, 4, 5)   # inception_3x, inception_4x, inception_5x


class ModuleWidths(NamedTuple):
    """One row of Fig. 5 of Ioffe & Szegedy: the widths of an Inception module's branches."""
    name: str            # '3a' .. '5b'
    n1x1: int            # 0: no 1x1 branch (the stride-2 modules 3c, 4e)
    n3x3_reduce: int
    n3x3: int
    double_reduce: int
    double: int
    pool: str            # 'avg' | 'max'
    pool_proj: int       # 0: the pooled input passes through (stride-2 modules)
    stride: int = 1


MODULES = (
    ModuleWidths('3a', 64, 64, 64, 64, 96, 'avg', 32),
    ModuleWidths('3b', 64, 64, 96, 64, 96, 'avg', 64),
    ModuleWidths('3c', 0, 128, 160, 64, 96, 'max', 0, stride=2),
    ModuleWidths('4a', 224, 64, 96, 96, 128, 'avg', 128),
    ModuleWidths('4b', 192, 96, 128, 96, 128, 'avg', 128),
    ModuleWidths('4c', 160, 128, 160, 128, 160, 'avg', 128),
    ModuleWidths('4d', 96, 128, 192, 160, 192, 'avg', 128),
    ModuleWidths('4e', 0, 128, 192, 192, 256, 'max', 0, stride=2),
    ModuleWidths('5a', 352, 192, 320, 160, 224, 'avg', 128),
    ModuleWidths('5b', 352, 192, 320, 192, 224, 'max', 128),
)


def reduction_pool(x, pool):
    """3x3/2 max pooling to ceil(h / 2) x ceil(w / 2), the size of a 3x3/2
    convolution with padding 1: -inf padding at the bottom and the right only,
    one row for an even side (Caffe's and PyTorch's ceil mode), two for an odd
    one (where the references' concatenation fails)."""
    pads = tuple((0, 1 + size % 2) for size in x.shape[1:3])
    return pool(x, 3, 2, pads)


def conv_unit(conv, norm, bias: bool, name: str, features: int, kernel: int, stride: int, x):
    """Convolution, BN ('<name>_bn') and ReLU: every layer of BN-Inception."""
    x = conv(features, kernel, stride, use_bias=bias, name=name)(x)
    return nn.relu(norm(name=f'{name}_bn')(x))


class InceptionModule(nn.Module):
    """The four-branch (or, with stride 2, three-branch) module of Fig. 5 of
    Ioffe & Szegedy, its branches concatenated in Caffe's order, then SE."""
    widths: ModuleWidths
    conv_bias: bool = False
    se: Optional[Any] = None      # a SqueezeExcite partial, or None
    kernels: str = 'auto'
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        kernels = cpu_kernels.choose(self.kernels)
        unit = functools.partial(conv_unit, *conv_and_norm(train, self.dtype, self.param_dtype, kernels),
                                 self.conv_bias)
        w = self.widths
        branches = []
        if w.n1x1:
            branches.append(unit('1x1', w.n1x1, 1, 1, x))
        y = unit('3x3_reduce', w.n3x3_reduce, 1, 1, x)
        branches.append(unit('3x3', w.n3x3, 3, w.stride, y))
        y = unit('double_3x3_reduce', w.double_reduce, 1, 1, x)
        y = unit('double_3x3_1', w.double, 3, 1, y)
        branches.append(unit('double_3x3_2', w.double, 3, w.stride, y))
        if w.stride == 2:
            branches.append(reduction_pool(x, kernels.max_pool))
        else:
            same = ((1, 1), (1, 1))
            pooled = (nn.avg_pool(x, (3, 3), (1, 1), same, count_include_pad=True) if w.pool == 'avg'
                      else kernels.max_pool(x, 3, 1, same))
            branches.append(unit('pool_proj', w.pool_proj, 1, 1, pooled))
        out = jnp.concatenate(branches, axis=-1)
        return out if self.se is None else self.se(name='se')(out)


class BNInception(ZooModule):
    """BN-Inception / SE-BN-Inception for image classification, NHWC.

    `__call__(x, train=False)` returns float32 logits (float64 for a float64
    model). With `return_features=True` it returns the last output at each
    stride: 'conv1' (stride 2, 64 channels), 'conv2' (4, 192), 'inception_3b'
    (8, 320), 'inception_4d' (16, 608), 'inception_5b' (32, 1024).
    """
    conv_bias: bool = False       # a bias on every convolution (Cadene's port)
    # Squeeze-and-Excitation, in the paper's words (the block: ZooModule's `attention`;
    # the prototxt's SE: width floor(C / 16), biases). Neither reference has dropout.
    se_stages: Sequence[int] = STAGES
    SE_STAGES = (STAGES, ' (the Inception modules 3a-3c, 4a-4e, 5a-5b)')

    def min_input_size(self) -> int:
        """The smallest input side for which every map is at least 1x1: the
        7x7/2 convolution gives 4 rows, the first pool 2, the second 1."""
        return 7


    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        kernels = cpu_kernels.choose(self.kernels)
        unit = functools.partial(conv_unit, *conv_and_norm(train, self.dtype, self.param_dtype, kernels),
                                 self.conv_bias)
        x = x.astype(self.dtype or x.dtype)
        features = {}
        x = unit('conv1_7x7_s2', 64, 7, 2, x)
        features['conv1'] = x
        x = max_pool_ceil(x, 3, 2, pool=kernels.max_pool)
        x = unit('conv2_3x3_reduce', 64, 1, 1, x)
        x = unit('conv2_3x3', 192, 3, 1, x)
        features['conv2'] = x
        x = max_pool_ceil(x, 3, 2, pool=kernels.max_pool)
        block = self.attention_block(train)
        for w in MODULES:
            x = InceptionModule(w, conv_bias=self.conv_bias, se=block if int(w.name[0]) in self.se_stages else None,
                                kernels=self.kernels, dtype=self.dtype,
                                param_dtype=self.param_dtype, name=f'inception_{w.name}')(x, train)
            features[f'inception_{w.name}'] = x
        if return_features:
            return {k: features[k] for k in ('conv1', 'conv2', 'inception_3b', 'inception_4d',
                                             'inception_5b')}

        return classify(x, self.num_classes, self.drop_rate, train, self.dtype, self.param_dtype)


# ---------------------------------------------------------------------------
# State_dict names.

# Our branch names are Cadene's; the official Caffe release spells three differently.
_CAFFE_BRANCH = {'double_3x3_reduce': 'double3x3_reduce', 'double_3x3_1': 'double3x3a',
                 'double_3x3_2': 'double3x3b'}
_SE = {'fc1': '1x1_down', 'fc2': '1x1_up'}   # the prototxt's SE projections


def torch_module(path: Tuple[str, ...], layout: str) -> str:
    """The reference's module name for a Flax module path of this family.

    'cadene_bninception': Cadene's `bninception` keys, the Caffe layer names
    with '/' written '_' ('inception_3a_1x1', 'inception_3a_1x1_bn'), the
    classifier 'last_linear'. 'caffe_se_bn_inception': the official release's
    layer names written the same way ('inception_3a_double3x3a_bn'), its SE
    projections 'inception_3a_1x1_down' / '_1x1_up', the classifier 'classifier';
    each BN holds its Scale layer's weight and bias.
    """
    caffe = layout == 'caffe_se_bn_inception'
    if path == ('fc',):
        return 'classifier' if caffe else 'last_linear'
    parts = list(path)
    if len(parts) == 3 and parts[1] == 'se':   # ('inception_3a', 'se', 'fc1')
        return f'{parts[0]}_{_SE[parts[2]]}'
    if caffe and len(parts) == 2:
        branch, bn = (parts[1][:-3], '_bn') if parts[1].endswith('_bn') else (parts[1], '')
        parts[1] = _CAFFE_BRANCH.get(branch, branch) + bn
    return '_'.join(parts)


# ---------------------------------------------------------------------------
# The zoo entries of this family. Paper Table 2: GFLOPs (multiply-adds) at 224.

SPECS = {
    # The references run at 223..230 pixels only (see above); at 223 and 227 the
    # stem pools round up.
    'bn_inception': spec(BNInception, 'bninception', 'cadene_bninception', source='cadene',
                         input_format=CAFFE_BGR, paper=PaperFigures('Table 2', 2.03),
                         odd_size=(223, 227), attention=None, conv_bias=True),
    # No PyTorch network to match; its parameter count is the prototxt's (tests).
    'se_bn_inception': spec(BNInception, None, 'caffe_se_bn_inception', input_format=CAFFE_BGR,
                            paper=PaperFigures('Table 2', 2.04)),
}
