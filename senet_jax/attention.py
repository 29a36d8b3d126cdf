"""SE and its successors: the channel-attention blocks, by name.

`create_attention(spec, **common)` builds a block from a name (`'eca'`) or a name
with options (`('ge', {'extent': 4})`); `ATTENTIONS` maps each name to its Flax
module. Each block takes NHWC features and returns features of the same shape,
and sows its per-channel gate under 'gate' in 'intermediates' (as
`layers.SqueezeExcite` does), so analysis reads every block's gates alike.

Each block computes what timm's module of the same name computes (timm/layers/,
named in each docstring), with parameters named after timm's so that its
weights map one to one. timm's widths round C/r to the nearest multiple of a
divisor (`_timm_width`), where the project's SqueezeExcite floors by default.
"""
import dataclasses
import math
import re
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from senet_jax.layers import BatchNorm, Conv, Dense, SqueezeExcite
from senet_jax.options import did_you_mean

Dtype = Any


def _timm_width(channels: int, reduction: float, divisor: int) -> int:
    """timm's `make_divisible(channels / reduction, divisor, round_limit=0)`."""
    return max(divisor, int(channels / reduction + divisor / 2) // divisor * divisor)


def _at_least_float32(dtype):
    """The compute dtype of the few flax layers here that are not `layers.Conv` /
    `layers.Dense` (ECA's 1-D conv, GC's LayerNorm): at least float32, so their
    parameter gradients, like every other, are summed across devices in float32.
    They act on (N, C) descriptors, so the cost is nil. None: the inputs' dtype."""
    return None if dtype is None else jnp.promote_types(dtype, jnp.float32)


def _mean_hw(x):
    return jnp.mean(x, axis=(1, 2), dtype=jnp.promote_types(x.dtype, jnp.float32)).astype(x.dtype)


def _batch_norm(train: bool, dtype, param_dtype, name: str):
    """A BatchNorm with PyTorch's conventions (as `layers.conv_and_norm`'s)."""
    return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, unbiased_var=True,
                     dtype=dtype, param_dtype=param_dtype, name=name)


class _ConvMlp(nn.Module):
    """timm's ConvMlp on a channel-last map: fc1, an optional norm, ReLU, fc2."""
    hidden: int
    features: int
    use_bias: bool = True
    layer_norm: bool = False      # GlobalContext's LayerNorm2d (eps 1e-6) after fc1
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        dense = lambda f, name: Dense(f, use_bias=self.use_bias, dtype=self.dtype,
                                         param_dtype=self.param_dtype, name=name)
        x = dense(self.hidden, 'fc1')(x)
        if self.layer_norm:
            x = nn.LayerNorm(epsilon=1e-6, dtype=_at_least_float32(self.dtype), param_dtype=self.param_dtype, name='norm')(x)
        return dense(self.features, 'fc2')(nn.relu(x))


class EffectiveSqueezeExcite(nn.Module):
    """Effective SE (Lee and Park, CenterMask, CVPR 2020; timm's EffectiveSEModule):
    SE with one C -> C projection `fc` (with bias) and a hard sigmoid gate."""
    add_maxpool: bool = False     # squeeze with the mean of average and max pooling
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, u):
        z = _mean_hw(u)
        if self.add_maxpool:
            z = 0.5 * z + 0.5 * jnp.max(u, axis=(1, 2))
        s = jax.nn.hard_sigmoid(Dense(u.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype,
                                         name='fc')(z))
        self.sow('intermediates', 'gate', s)
        return u * s[:, None, None, :].astype(u.dtype)


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """ECA-Net's adaptive kernel size k = |log2(C) + b| / gamma, made odd (Eq. 12), at least 3 as timm."""
    t = int(abs(math.log(channels, 2) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


class EfficientChannelAttention(nn.Module):
    """ECA (Wang et al., ECA-Net, CVPR 2020; timm's EcaModule): the gates are a
    1-D convolution `conv` (no bias, zero padding) across the channel descriptor,
    its size k chosen from C (`eca_kernel_size`) unless `kernel_size` is given."""
    kernel_size: Optional[int] = None
    gamma: float = 2
    beta: float = 1
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, u):
        k = self.kernel_size or eca_kernel_size(u.shape[-1], self.gamma, self.beta)
        if k % 2 == 0:
            raise ValueError(f'ECA needs an odd kernel_size, got {k}.')
        z = _mean_hw(u)[:, :, None]            # (N, C, 1): channels as the 1-D axis
        s = nn.Conv(1, (k,), padding=[(k // 2, k // 2)], use_bias=False,
                    dtype=_at_least_float32(self.dtype),
                    param_dtype=self.param_dtype, name='conv')(z)
        s = nn.sigmoid(s[:, :, 0])
        self.sow('intermediates', 'gate', s)
        return u * s[:, None, None, :].astype(u.dtype)


def _avg_pool_exclude_pad(x, window: int, stride: int, pad: int):
    """PyTorch's `avg_pool2d(x, window, stride, pad, count_include_pad=False)` over NHWC."""
    dims, strides = (1, window, window, 1), (1, stride, stride, 1)
    padding = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    sums = jax.lax.reduce_window(x, 0., jax.lax.add, dims, strides, padding)
    # How many inputs each window holds: fixed by the shapes, so counted in numpy.
    counts = [np.convolve(np.pad(np.ones(n), pad), np.ones(window), 'valid')[::stride]
              for n in x.shape[1:3]]
    return sums / jnp.asarray(np.outer(*counts)[:, :, None], x.dtype)


def _nearest_index(out_size: int, in_size: int):
    """Source rows of PyTorch's `interpolate(mode='nearest')`: floor(i * in / out), the
    scale in float32 as PyTorch computes it."""
    scale = np.float32(in_size) / np.float32(out_size)
    return np.minimum(np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64), in_size - 1)


class GatherExcite(nn.Module):
    """Gather-Excite (Hu, Shen, Albanie, Sun and Vedaldi, NeurIPS 2018; timm's GatherExcite).

    The gather pools each channel over a neighbourhood of `extent` (0: the whole
    map, as SE); GE-θ− (`extra_params=False`) averages (a (2e-1)-window, stride e,
    padding excluded), GE-θ (`extra_params=True`, extent 2, 4, 8, ...) runs log2(e)
    strided 3x3 depthwise convolutions `gather/conv{i}` with BN `gather/norm{i}` and
    a ReLU between. `use_mlp` (timm's default) adds SE's excitation `mlp` (fc1,
    ReLU, fc2, with biases) on the gathered map: GE-θ+ with `extra_params`. The
    gates (sigmoid) are resized to the input by nearest neighbour and scale it.
    """
    extent: int = 0
    extra_params: bool = False
    use_mlp: bool = True
    reduction: float = 16
    divisor: int = 1
    add_maxpool: bool = False     # GE-θ− only: the mean of average and max pooling
    train: bool = False
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        e = self.extent
        if e < 0 or (e and e % 2):
            raise ValueError(f'Gather-Excite extent must be 0 (global) or even, got {e}.')
        if self.extra_params and (e == 0 or e & (e - 1)):
            raise ValueError(f'Gather-Excite with extra_params needs an extent that is a power of 2 '
                             f'(one strided depthwise conv per halving), got {e}; the global gather '
                             'with parameters is not offered.')
        super().__post_init__()

    @nn.compact
    def __call__(self, u):
        n, h, w, c = u.shape
        e = self.extent
        if self.extra_params:
            g = u
            steps = int(math.log2(e))
            for i in range(1, steps + 1):
                g = Conv(c, 3, 2, groups=c, dtype=self.dtype, param_dtype=self.param_dtype,
                         name=f'gather_conv{i}')(g)
                g = _batch_norm(self.train, self.dtype, self.param_dtype, f'gather_norm{i}')(g)
                if i < steps:
                    g = nn.relu(g)
        elif e == 0:
            g = _mean_hw(u)[:, None, None, :]
            if self.add_maxpool:
                g = 0.5 * g + 0.5 * jnp.max(u, axis=(1, 2), keepdims=True)
        else:
            g = _avg_pool_exclude_pad(u, 2 * e - 1, e, e - 1)
            if self.add_maxpool:
                g = 0.5 * g + 0.5 * nn.max_pool(u, (2 * e - 1,) * 2, (e, e), ((e - 1, e - 1),) * 2)
        if self.use_mlp:
            g = _ConvMlp(_timm_width(c, self.reduction, self.divisor), c, dtype=self.dtype,
                         param_dtype=self.param_dtype, name='mlp')(g)
        s = nn.sigmoid(g)
        self.sow('intermediates', 'gate', s[:, 0, 0] if s.shape[1:3] == (1, 1) else s)
        if s.shape[1:3] != (1, 1):
            s = s[:, _nearest_index(h, s.shape[1])][:, :, _nearest_index(w, s.shape[2])]
        return u * s.astype(u.dtype)


class GlobalContext(nn.Module):
    """Global Context block (Cao et al., GCNet, ICCVW 2019; timm's GlobalContext,
    fuse by scaling): softmax attention pooling over positions (`conv_attn`, one
    1x1 projection with bias), then `mlp_scale` (fc1, LayerNorm, ReLU, fc2) and a
    sigmoid gate on the channels."""
    reduction: float = 8
    divisor: int = 1
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, u):
        n, h, w, c = u.shape
        logits = Dense(1, dtype=self.dtype, param_dtype=self.param_dtype, name='conv_attn')(u)
        attn = jax.nn.softmax(logits.reshape(n, h * w).astype(jnp.promote_types(u.dtype, jnp.float32)), axis=-1)
        context = jnp.einsum('npc,np->nc', u.reshape(n, h * w, c), attn.astype(u.dtype))
        s = nn.sigmoid(_ConvMlp(_timm_width(c, self.reduction, self.divisor), c, layer_norm=True,
                                dtype=self.dtype, param_dtype=self.param_dtype, name='mlp_scale')(context))
        self.sow('intermediates', 'gate', s)
        return u * s[:, None, None, :].astype(u.dtype)


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018; timm's CbamModule).

    Channel attention (`channel`: one bias-free MLP fc1, ReLU, fc2 shared by the
    average- and the max-pooled descriptor, their sum gated), then spatial
    attention (`spatial`: the channel mean and max, a 7x7 conv and BN, gated).
    The channel gates are sown as 'gate' (N, C), the spatial ones as
    'spatial_gate' (N, H, W, 1).
    """
    reduction: float = 16
    divisor: int = 1
    spatial_kernel_size: int = 7
    train: bool = False
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, u):
        c = u.shape[-1]
        mlp = _ConvMlp(_timm_width(c, self.reduction, self.divisor), c, use_bias=False,
                       dtype=self.dtype, param_dtype=self.param_dtype, name='channel')
        s = nn.sigmoid(mlp(_mean_hw(u)) + mlp(jnp.max(u, axis=(1, 2))))
        self.sow('intermediates', 'gate', s)
        u = u * s[:, None, None, :].astype(u.dtype)
        a = jnp.concatenate([jnp.mean(u, axis=-1, keepdims=True), jnp.max(u, axis=-1, keepdims=True)], -1)
        a = Conv(1, self.spatial_kernel_size, dtype=self.dtype, param_dtype=self.param_dtype,
                 name='spatial_conv')(a)
        t = nn.sigmoid(_batch_norm(self.train, self.dtype, self.param_dtype, 'spatial_bn')(a))
        self.sow('intermediates', 'spatial_gate', t)
        return u * t.astype(u.dtype)


def _timm_make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """timm's `make_divisible` with its default round_limit: never more than 10% below v."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < round_limit * v else new


class SelectiveKernel(nn.Module):
    """Selective Kernel convolution (Li, Wang, Hu and Yang, SKNet, CVPR 2019; timm's
    SelectiveKernel). Not an attention block that scales features: it replaces a
    convolution (in timm's skresnets, the 3x3 of each block), so it is not in
    `ATTENTIONS`.

    One path per kernel size (conv, BN, ReLU; timm's default 3 and 5, the 5x5 as a
    3x3 dilated by 2 with `keep_3x3`), each on its share of the input channels with
    `split_input`; the paths' sum is squeezed and projected (`attn_fc_reduce`, BN,
    ReLU, `attn_fc_select`, no biases) to one weight per path and channel, a softmax
    over the paths, which weighs their sum. The weights, (N, paths, C), are sown as
    'path_weights'.
    """
    features: Optional[int] = None   # output channels; None: the input's
    kernel_sizes: Any = (3, 5)
    strides: int = 1
    dilation: int = 1
    groups: int = 1
    reduction: float = 16
    divisor: int = 8
    keep_3x3: bool = True
    split_input: bool = True
    train: bool = False
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c_in = x.shape[-1]
        features = self.features or c_in
        kernels = tuple(self.kernel_sizes)
        dilations = [self.dilation * (k - 1) // 2 for k in kernels] if self.keep_3x3 \
            else [self.dilation] * len(kernels)
        kernels = [3] * len(kernels) if self.keep_3x3 else kernels
        paths = len(kernels)
        if self.split_input and c_in % paths:
            raise ValueError(f'Selective Kernel with split_input needs input channels divisible by '
                             f'its {paths} paths, got {c_in}.')
        inputs = jnp.split(x, paths, axis=-1) if self.split_input else [x] * paths
        groups = min(features, self.groups)
        ys = []
        for i, (k, d, xi) in enumerate(zip(kernels, dilations, inputs)):
            p = ((self.strides - 1) + d * (k - 1)) // 2   # timm's get_padding
            y = nn.Conv(features, (k, k), self.strides, padding=[(p, p), (p, p)], kernel_dilation=d,
                        feature_group_count=groups, use_bias=False, dtype=self.dtype,
                        param_dtype=self.param_dtype, name=f'path{i}_conv')(xi)
            ys.append(nn.relu(_batch_norm(self.train, self.dtype, self.param_dtype, f'path{i}_bn')(y)))
        y = jnp.stack(ys, axis=1)                          # (N, paths, H, W, C)
        z = _mean_hw(jnp.sum(y, axis=1))
        z = Dense(_timm_make_divisible(features / self.reduction, self.divisor), use_bias=False,
                     dtype=self.dtype, param_dtype=self.param_dtype, name='attn_fc_reduce')(z)
        z = nn.relu(_batch_norm(self.train, self.dtype, self.param_dtype, 'attn_bn')(z))
        z = Dense(features * paths, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                     name='attn_fc_select')(z)
        a = jax.nn.softmax(z.reshape(z.shape[0], paths, features), axis=1)
        self.sow('intermediates', 'path_weights', a)
        return jnp.sum(y * a[:, :, None, None, :].astype(y.dtype), axis=1)


# name -> block; SqueezeExcite is the project's SE block, unchanged.
ATTENTIONS = {
    'se': SqueezeExcite,
    'ese': EffectiveSqueezeExcite,
    'eca': EfficientChannelAttention,
    'ge': GatherExcite,
    'gc': GlobalContext,
    'cbam': CBAM,
}


# Our module names that differ from timm's: flat here, nested there.
_TORCH_NAMES = ((r'^gather_(conv|norm)(\d+)$', r'gather.\1\2'), (r'^spatial_conv$', 'spatial.conv.conv'),
                (r'^spatial_bn$', 'spatial.conv.bn'), (r'^path(\d+)_(conv|bn)$', r'paths.\1.\2'),
                (r'^attn_(fc_reduce|bn|fc_select)$', r'attn.\1'))


def torch_name(module: str) -> str:
    """timm's name (dotted) for one of our blocks' submodule names; others are timm's already."""
    for pattern, repl in _TORCH_NAMES:
        module = re.sub(pattern, repl, module)
    return module


def parse_attention(spec):
    """(name, options) of an attention spec: None, a name, or (name, {option: value})."""
    if spec is None:
        return None, {}
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[1], Mapping):
        name, options = spec
    else:
        raise ValueError(f"attention must be None, a name or (name, {{option: value}}), got {spec!r}.")
    if name not in ATTENTIONS:
        raise ValueError(f'attention must be one of {tuple(ATTENTIONS)}, got {name!r}.'
                         + did_you_mean(name, ATTENTIONS))
    fields = {f.name for f in dataclasses.fields(ATTENTIONS[name])} - {'parent', 'name'}
    for option in options:
        if option not in fields:
            raise ValueError(f"attention {name!r} has no option {option!r}; its options are "
                             f'{tuple(sorted(fields))}.' + did_you_mean(option, fields))
    return name, dict(options)


def create_attention(spec, **common) -> Optional[nn.Module]:
    """The block of `spec` (see `parse_attention`), or None for None.

    `common` holds what a network gives every block (`dtype`, `param_dtype`,
    `train`, `name`, ...): each block takes those it has and ignores the rest;
    the spec's own options win over them.
    """
    name, options = parse_attention(spec)
    if name is None:
        return None
    cls = ATTENTIONS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in common.items() if k in fields}
    kwargs.update(options)
    return cls(**kwargs)
