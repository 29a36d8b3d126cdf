"""The Squeeze-and-Excitation block and the small pieces the networks share.

Written plainly, as Flax and XLA compute them on every backend: a GPU or TPU
runs exactly this. senet_jax.cpu_kernels holds faster forms of some of these
pieces for XLA:CPU (same variables and values, gradients written by hand), and
the models choose between the two per platform.

Notation follows Hu et al., "Squeeze-and-Excitation Networks" (TPAMI 2019), Sec. 3:
squeeze F_sq (global pooling to a channel descriptor z), excitation F_ex (two
projections W1 (C -> C/r) and W2 (C/r -> C) with a ReLU between and a gate
after), scale F_scale (channel-wise product of the gates s and the features U).
"""
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from senet_jax.options import GATES, SQUEEZES, validate_fields  # noqa: F401 (the block's vocabulary)

Dtype = Any


def reduced_width(channels: int, reduction: float, divisor: int = 1,
                  min_width: Optional[int] = None) -> int:
    """Width C/r of the excitation bottleneck.

    divisor=1 is the paper's and the official (Caffe / Cadene / timm `legacy_*`)
    rounding: floor(C / r), at least `min_width` (default 1). divisor > 1 rounds
    C / r to the nearest multiple of `divisor`, at least `min_width` (default
    `divisor`), as timm's `make_divisible(..., round_limit=0)` does for its
    `seresnet*` models (divisor 8). The two differ for 64 channels at r=16: 4 vs 8.
    """
    if reduction <= 0:
        raise ValueError(f'reduction must be positive, got {reduction}.')
    if divisor == 1:
        return max(min_width or 1, int(channels // reduction))
    v = channels / reduction
    return max(min_width or divisor, int(v + divisor / 2) // divisor * divisor)


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation block (Fig. 1 of the paper).

    Attributes:
      reduction: the ratio r of Sec. 6.1 (Table 10).
      squeeze: 'avg' (global average pooling, the paper's choice), 'max', or
        'none' (Table 16's NoSqueeze: the projections act on every position, so
        the gates vary over space).
      gate: the excitation's final non-linearity, 'sigmoid' | 'tanh' | 'relu' (Table 12).
      divisor, min_width: rounding of the reduced width; see `reduced_width`.
      use_bias: biases on the two projections.

    The gate values s are sown into the 'intermediates' collection under
    'gate', shape (N, C) (or (N, H, W, C) for squeeze='none'), so analysis can
    read them with `mutable=['intermediates']` without changing the model.
    """
    reduction: float = 16
    squeeze: str = 'avg'
    gate: str = 'sigmoid'
    divisor: int = 1
    min_width: Optional[int] = None
    use_bias: bool = True
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        validate_fields(self)   # a bad option fails here, in one sentence (senet_jax.options)
        super().__post_init__()

    @nn.compact
    def __call__(self, u, squeezed=None):
        """u * s; or, given `squeezed` (the descriptor z of an avg squeeze the
        caller computed already, shape (N, C)), the gates s alone."""
        channels = (u if squeezed is None else squeezed).shape[-1]
        width = reduced_width(channels, self.reduction, self.divisor, self.min_width)

        # Squeeze: global information embedding, z in R^C (Eq. 2).
        if squeezed is not None:
            if self.squeeze != 'avg':
                raise ValueError(f"a squeezed descriptor stands for squeeze='avg', not '{self.squeeze}'.")
            z = squeezed
        elif self.squeeze == 'avg':
            z = jnp.mean(u, axis=(1, 2), dtype=jnp.promote_types(u.dtype, jnp.float32)).astype(u.dtype)
        elif self.squeeze == 'max':
            z = jnp.max(u, axis=(1, 2))
        else:
            z = u
        # Excitation: s = gate(W2 relu(W1 z)) (Eq. 3). 1x1 convolutions on a
        # pooled map are dense layers on the channel axis.
        dense = lambda features, name: Dense(
            features, use_bias=self.use_bias, dtype=self.dtype,
            param_dtype=self.param_dtype, name=name)
        s = nn.relu(dense(width, 'fc1')(z))
        s = dense(channels, 'fc2')(s)
        s = {'sigmoid': nn.sigmoid, 'tanh': jnp.tanh, 'relu': nn.relu}[self.gate](s)
        self.sow('intermediates', 'gate', s)
        if squeezed is not None:
            return s
        # Scale: channel-wise multiplication (Eq. 4).
        if self.squeeze != 'none':
            s = s[:, None, None, :]
        return u * s.astype(u.dtype)


def conv(x, kernel, stride: int = 1, groups: int = 1):
    """XLA's convolution of NHWC x with an HWIO kernel, with explicit symmetric
    padding k // 2 (never 'SAME', so that odd sizes give PyTorch's maps)."""
    p = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((p, p), (p, p)),
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                        feature_group_count=groups)


class Conv(nn.Module):
    """A k x k convolution of NHWC inputs with PyTorch's padding k // 2 (bias-free by default).

    `nn.Conv(features, (kh, kw), strides, padding, feature_group_count=groups,
    use_bias=use_bias)`: the same parameters ('kernel', shape (kh, kw, in // groups,
    out), and 'bias'), initialisers and results. `kernel_size` is an int or
    (kh, kw) (Inception's 1x7 and 7x1); `padding` None means kh // 2, kw // 2 on
    both sides (never 'SAME', so odd sizes give PyTorch's maps), or an int, or
    ((top, bottom), (left, right)). `convolve(x, kernel, stride, groups)`
    computes the square, default-padded case: XLA's convolution (`conv`), or
    another with the same values (senet_jax.cpu_kernels.conv); every other case
    is XLA's convolution. `weight_grad(x, g, window, stride, padding, groups)`
    gives the kernel's float32 gradient where the compute dtype is narrower
    than the parameters (`with_float32_grads`; None: `conv_weight_grad`).
    """
    features: int
    kernel_size: Any = 3
    strides: int = 1
    groups: int = 1
    padding: Any = None
    use_bias: bool = False
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    convolve: Callable = conv
    weight_grad: Callable = None   # None: conv_weight_grad

    @nn.compact
    def __call__(self, x):
        kh, kw = ((self.kernel_size, self.kernel_size) if isinstance(self.kernel_size, int)
                  else tuple(self.kernel_size))
        groups = self.groups
        if x.shape[-1] % groups or self.features % groups:
            raise ValueError(f'{groups} groups do not divide {x.shape[-1]} input and '
                             f'{self.features} output channels.')
        kernel = self.param('kernel', self.kernel_init, (kh, kw, x.shape[-1] // groups, self.features),
                            self.param_dtype)
        bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        pad = self.padding
        if pad is None:
            pad = ((kh // 2, kh // 2), (kw // 2, kw // 2))
        elif isinstance(pad, int):
            pad = ((pad, pad), (pad, pad))
        square = kh == kw and self.padding is None

        def apply(x, kernel, bias):
            if square:
                y = self.convolve(x, kernel, self.strides, groups)
            else:
                y = jax.lax.conv_general_dilated(x, kernel, (self.strides, self.strides), pad,
                                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                                 feature_group_count=groups)
            return y if bias is None else y + bias

        pad = tuple(map(tuple, pad))
        rule = self.weight_grad or conv_weight_grad

        def weight_grad(x, g):
            return rule(x, g, (kh, kw), self.strides, pad, groups)
        return with_float32_grads(apply, weight_grad, x, kernel, bias, self.dtype)


class Dense(nn.Module):
    """`nn.Dense` (the same 'kernel' (in, features) and 'bias', initialisers and
    results) whose parameter gradients are float32 (`with_float32_grads`)."""
    features: int
    use_bias: bool = True
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features),
                            self.param_dtype)
        bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)

        def apply(x, kernel, bias):
            y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
            # (the bias reshaped as nn.Dense does: the same program in float32)
            return y if bias is None else y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        return with_float32_grads(apply, dense_weight_grad, x, kernel, bias, self.dtype)


# ---------------------------------------------------------------------------
# Parameter gradients in float32, whatever the compute dtype.
#
# A layer computing in bfloat16 or float16 casts its float32 parameters to that
# dtype. Autodiff then writes each parameter's gradient as a product (or, for a
# bias, a sum) over the batch with a result in the compute dtype; under jit with
# a data-sharded batch, XLA's SPMD partitioner adds the devices' partial results
# right after that product, in bfloat16 or float16, and only then casts to
# float32. The Flax ImageNet example sums float32 gradients (`lax.pmean`). A
# custom VJP on the cast alone comes too late (its backward pass receives the
# gradient already summed), and a float32 `psum` under `shard_map` would need
# BatchNorm's cross-device statistics written by hand in every model. So each
# layer that casts a parameter does so inside `with_float32_grads`, whose
# backward pass computes the parameter's gradient with a float32 result
# (`preferred_element_type`): the operands stay in the compute dtype (full rate
# on tensor cores and the MXU, which accumulate in float32 anyway), the
# cross-device sum is float32, and nothing is rounded to 16 bits before it. The
# input's gradient is autodiff's, or the CPU kernel's (senet_jax.cpu_kernels).


def with_float32_grads(apply, weight_grad, x, kernel, bias, dtype):
    """apply(x, kernel, bias) with all three in `dtype` (None: their promoted
    dtype). Where that narrows the parameters (float32 parameters, bfloat16
    compute), d/dkernel is `weight_grad(x, g)` with a float32 result and
    d/dbias the float32 sum of g over every axis but the last."""
    x, low_kernel, low_bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=dtype)
    if jnp.dtype(low_kernel.dtype).itemsize >= jnp.dtype(kernel.dtype).itemsize:
        return apply(x, low_kernel, low_bias)   # no narrowing: autodiff as it is
    return _float32_grads(apply, weight_grad, x, kernel, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _float32_grads(apply, weight_grad, x, kernel, bias):
    return apply(x, kernel.astype(x.dtype), None if bias is None else bias.astype(x.dtype))


def _float32_grads_fwd(apply, weight_grad, x, kernel, bias):
    return _float32_grads(apply, weight_grad, x, kernel, bias), (x, kernel, bias)


def _float32_grads_bwd(apply, weight_grad, residuals, g):
    x, kernel, bias = residuals
    low_kernel = kernel.astype(x.dtype)
    low_bias = None if bias is None else bias.astype(x.dtype)
    _, input_vjp = jax.vjp(lambda x: apply(x, low_kernel, low_bias), x)
    dbias = None if bias is None else g.sum(tuple(range(g.ndim - 1)), dtype=bias.dtype)
    return (input_vjp(g)[0], weight_grad(x, g).astype(kernel.dtype), dbias)


_float32_grads.defvjp(_float32_grads_fwd, _float32_grads_bwd)


def dense_weight_grad(x, g):
    """d(x @ kernel)/dkernel applied to g: x^T g over every axis but the last, float32."""
    batch = tuple(range(x.ndim - 1))
    return jax.lax.dot_general(x, g, ((batch, batch), ((), ())),
                               preferred_element_type=jnp.float32)


def conv_weight_grad(x, g, window, stride: int, padding, groups: int):
    """d(conv)/dkernel applied to g, float32: the convolution JAX's own transpose
    rule writes for an NHWC x and HWIO kernel (the batch axis summed as the
    features; groups as batch groups), with a float32 result."""
    pads = []
    for (lo, _), size, out, k in zip(padding, x.shape[1:3], g.shape[1:3], window):
        # what the strided output reaches past the input's far edge, as JAX's rule pads it
        pads.append((lo, (stride * (out - 1) + 1) - size + (k - lo - 1)))
    return jax.lax.conv_general_dilated(
        x, g, window_strides=(1, 1), padding=pads, rhs_dilation=(stride, stride),
        dimension_numbers=jax.lax.ConvDimensionNumbers((3, 0, 1, 2), (3, 0, 1, 2), (2, 3, 0, 1)),
        batch_group_count=groups, preferred_element_type=jnp.float32)


def max_pool(x, window: int = 3, stride: int = 2, padding=((1, 1), (1, 1))):
    """Max pooling over NHWC (`nn.max_pool`); padding counts as -inf."""
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=padding)


def max_pool_ceil(x, window: int = 3, stride: int = 2, pool: Callable = max_pool):
    """Max pooling with PyTorch's `ceil_mode=True` and no padding (the Caffe stem pool).

    The last window may run past the edge; the missing part is padded with -inf,
    as long as the window starts inside the input. `pool(x, window, stride,
    padding)` does the pooling: `max_pool`, or one with the same values.
    """
    pads = []
    for size in x.shape[1:3]:
        out = -(-(size - window) // stride) + 1
        if (out - 1) * stride >= size:
            out -= 1
        pads.append((0, max(0, (out - 1) * stride + window - size)))
    return pool(x, window, stride, tuple(pads))


def avg_pool_2x2(x, ceil_mode: bool = False):
    """2x2 average pooling with stride 2 over NHWC, as a reshape and a mean.

    ceil_mode=False is PyTorch's `AvgPool2d(2)` (an odd last row or column is
    dropped); ceil_mode=True is `AvgPool2d(2, ceil_mode=True, count_include_pad=False)`
    (timm's ResNet-D shortcut): an odd last row or column is a window of its own,
    averaged over the values it holds. Non-overlapping windows need no pooling
    primitive, so the gradient is elementwise work too.
    """
    n, h, w, c = x.shape
    if not ceil_mode:
        x = x[:, :h - h % 2, :w - w % 2]
        return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    sums = x.reshape(n, (h + 1) // 2, 2, (w + 1) // 2, 2, c).sum(axis=(2, 4))
    rows = np.full((h + 1) // 2, 2.0)
    cols = np.full((w + 1) // 2, 2.0)
    rows[-1], cols[-1] = 2 - h % 2, 2 - w % 2
    return sums / jnp.asarray(np.outer(rows, cols)[:, :, None], sums.dtype)


def batch_stats(x):
    """Mean and biased variance over every axis but the last, in float32 or wider."""
    axes = tuple(range(x.ndim - 1))
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = x.mean(axes)
    return mean, jnp.maximum(0.0, (x * x).mean(axes) - mean * mean)


def batch_norm_train(x, scale, bias, epsilon: float):
    """(y, mean, var): x normalised with its own statistics over all but the last
    axis, as `nn.BatchNorm` in training computes it."""
    mean, var = batch_stats(x)
    return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias, mean, var


class BatchNorm(nn.Module):
    """Batch normalisation with `nn.BatchNorm`'s variables, statistics and results.

    Same parameters ('scale', 'bias'), running statistics ('mean', 'var' in
    'batch_stats', `momentum` as in Flax) and arithmetic as `nn.BatchNorm` over
    every axis but the last. The running variance averages the biased batch
    variance, as Flax does, or with `unbiased_var` the unbiased one (times
    n / (n - 1) for n values per channel), as PyTorch does. In training,
    `normalize(x, scale, bias, epsilon) -> (y, mean, var)` computes it:
    `batch_norm_train` with autodiff's gradient, or another with the same values
    (senet_jax.cpu_kernels.batch_norm_train).
    """
    use_running_average: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-5
    unbiased_var: bool = False
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    scale_init: Any = nn.initializers.ones
    bias_init: Any = nn.initializers.zeros
    normalize: Callable = batch_norm_train

    @nn.compact
    def __call__(self, x, return_affine: bool = False):
        """BN(x); or, with `return_affine`, (a, b, m) such that BN(x) = x * a + b
        per channel, and m the per-example spatial mean of NHWC x, all float32.

        The second form lets a caller fold the normalisation into its own
        elementwise work (the SE block's squeeze is a * m + b): the statistics
        are sums over x, so autodiff's gradient is elementwise too.
        """
        features = (x.shape[-1],)
        ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), features)
        ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), features)
        scale = self.param('scale', self.scale_init, features, self.param_dtype)
        bias = self.param('bias', self.bias_init, features, self.param_dtype)
        dtype = self.dtype or jnp.result_type(x, scale, bias)
        if return_affine:
            xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            m = xf.mean((1, 2))
            if self.use_running_average:
                mean, var = ra_mean.value, ra_var.value
            else:
                mean = m.mean(0)
                var = jnp.maximum(0.0, (xf * xf).mean((0, 1, 2)) - mean * mean)
                self._update_running(ra_mean, ra_var, mean, var, x)
            a = jax.lax.rsqrt(var + self.epsilon) * scale
            return a, bias - mean * a, m
        if self.use_running_average:
            y = (x - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
        else:
            y, mean, var = self.normalize(x, scale, bias, self.epsilon)
            self._update_running(ra_mean, ra_var, mean, var, x)
        return y.astype(dtype)

    def _update_running(self, ra_mean, ra_var, mean, var, x):
        if self.unbiased_var:
            n = x.size // x.shape[-1]
            var = var * (n / max(n - 1, 1))
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var


def conv_and_norm(train: bool, dtype=None, param_dtype=jnp.float32, kernels=None, *,
                  momentum: float = 0.9, epsilon: float = 1e-5):
    """(conv, norm): `Conv` and `BatchNorm` partials with PyTorch's conventions.

    conv(features, kernel_size, strides, groups, ...): padding k // 2, bias-free
    unless told. norm(...): PyTorch's momentum 0.1 (Flax's 0.9), `epsilon`, the
    unbiased running variance, running statistics unless `train`. `kernels` (a
    senet_jax.cpu_kernels.Kernels; None: these plain layers) says how both compute.
    """
    convolve = conv if kernels is None else kernels.conv
    weight_grad = conv_weight_grad if kernels is None else kernels.conv_weight_grad
    normalize = batch_norm_train if kernels is None else kernels.batch_norm_train
    conv_ = functools.partial(Conv, dtype=dtype, param_dtype=param_dtype, convolve=convolve,
                              weight_grad=weight_grad)
    norm = functools.partial(BatchNorm, use_running_average=not train, momentum=momentum,
                             epsilon=epsilon, unbiased_var=True, dtype=dtype,
                             param_dtype=param_dtype, normalize=normalize)
    return conv_, norm


def classify(x, num_classes: int, drop_rate: float, train: bool, dtype=None,
             param_dtype=jnp.float32):
    """The zoo's head, called inside a model's compact `__call__`: global average
    pooling, dropout, and the classifier `fc` (a Dense with bias, a child of the
    caller); logits in float32 (float64 for a float64 model)."""
    out_dtype = jnp.promote_types(x.dtype, jnp.float32)
    x = jnp.mean(x, axis=(1, 2), dtype=out_dtype)
    x = nn.Dropout(drop_rate, deterministic=not train)(x)
    x = Dense(num_classes, dtype=dtype, param_dtype=param_dtype, name='fc')(x)
    return x.astype(out_dtype)


# ---------------------------------------------------------------------------
# Stochastic depth (Huang et al., "Deep Networks with Stochastic Depth", 2016), in
# timm's form (timm.layers.drop_path, scale_by_keep=True).


def drop_path_scale(rng, batch_size: int, rate: float, dtype=jnp.float32):
    """Per example, the factor of its residual branch: 0 with probability `rate`,
    else 1 / (1 - rate), so that the branch keeps its expected value."""
    keep = 1.0 - rate
    kept = jax.random.bernoulli(rng, keep, (batch_size,))
    return (kept / keep).astype(dtype)


def drop_path_rates(depths, rate: float) -> list:
    """The rate of each residual block, numbered over the whole network: rising
    linearly from 0 at the first block to `rate` at the last (timm's resnet.py,
    `drop_path_rate * net_block_idx / (net_num_blocks - 1)`)."""
    total = sum(depths)
    return [rate * i / max(total - 1, 1) for i in range(total)]
