"""The Squeeze-and-Excitation block and the small pieces the networks share.

Notation follows Hu et al., "Squeeze-and-Excitation Networks" (TPAMI 2019), Sec. 3:
squeeze F_sq (global pooling to a channel descriptor z), excitation F_ex (two
projections W1 (C -> C/r) and W2 (C/r -> C) with a ReLU between and a gate
after), scale F_scale (channel-wise product of the gates s and the features U).
"""
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

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
        dense = lambda features, name: nn.Dense(
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


class Conv(nn.Module):
    """A bias-free k x k convolution of NHWC inputs with PyTorch's padding k // 2.

    The same parameter ('kernel', shape (k, k, in // groups, out)), initialiser
    and results as `nn.Conv(features, (k, k), strides, padding=k // 2,
    feature_group_count=groups, use_bias=False)`, computed by shape:

    - 1x1: a matrix product over the channel axis (`channel_matmul`), after
      keeping every s-th row and column for a stride s. On XLA:CPU this runs the
      training step about 1.7x as fast as a convolution.
    - 3x3 with groups=1: `conv3x3`, XLA's convolution whose input gradient on
      CPU is a matrix product and a scatter for some shapes.
    - anything else (the stems, grouped convolutions): XLA's convolution.
    """
    features: int
    kernel_size: int = 3
    strides: int = 1
    groups: int = 1
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        k, s, groups = self.kernel_size, self.strides, self.groups
        if x.shape[-1] % groups or self.features % groups:
            raise ValueError(f'{groups} groups do not divide {x.shape[-1]} input and '
                             f'{self.features} output channels.')
        kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1] // groups, self.features),
                            self.param_dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        if k == 1 and groups == 1:
            return channel_matmul(x[:, ::s, ::s, :] if s > 1 else x, kernel[0, 0])
        if k == 3 and groups == 1:
            return conv3x3(x, kernel, s)
        return _conv_xla(x, kernel, s, groups)


@jax.custom_vjp
def channel_matmul(x, w):
    """x @ w over the last axis of x; its weight gradient is laid out for XLA:CPU."""
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _channel_matmul_fwd(x, w):
    return channel_matmul(x, w), (x, w)


def _channel_matmul_bwd(residuals, g):
    x, w = residuals
    dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())))
    x = x.reshape(-1, x.shape[-1])
    g = g.reshape(-1, g.shape[-1])
    # dW = x^T g sums over every pixel, the leading axis of both operands, and
    # XLA:CPU's fast matmul wants the summed axis last on the left. Transposing
    # the narrower of the two explicitly is cheaper than letting XLA choose.
    if x.shape[1] <= g.shape[1]:
        dw = x.T @ g
    else:
        dw = (g.T @ x).T
    return dx, dw.astype(w.dtype)


channel_matmul.defvjp(_channel_matmul_fwd, _channel_matmul_bwd)


def _conv_xla(x, w, stride, groups=1):
    """XLA's convolution of NHWC x with HWIO w, with explicit symmetric padding
    k // 2 (never 'SAME', so that odd sizes give PyTorch's maps)."""
    p = w.shape[0] // 2
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((p, p), (p, p)),
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                        feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3(x, w, stride: int = 1):
    """3x3 convolution of NHWC x with HWIO w, padding 1 on every side."""
    return _conv_xla(x, w, stride)


def _conv3x3_fwd(x, w, stride):
    return conv3x3(x, w, stride), (x, w)


def _conv3x3_bwd(stride, residuals, g):
    x, w = residuals
    if _input_grad_as_matmul(g, stride):
        _, weight_vjp = jax.vjp(lambda w: _conv_xla(x, w, stride), w)
        dx = _conv3x3_input_grad(g, w, stride, x.shape[1:3])
        return dx.astype(x.dtype), weight_vjp(g)[0]
    _, vjp = jax.vjp(lambda x, w: _conv_xla(x, w, stride), x, w)
    return vjp(g)


def _input_grad_as_matmul(g, stride):
    # XLA:CPU writes the input gradient as a convolution of g with the kernel
    # reversed and transposed, and for a stride over g dilated with zeros. A
    # matrix product and a scatter are faster for every strided layer and for
    # 7x7 maps (the kernel transpose weighs most there); at stride 1 on bigger
    # maps, and on other backends, XLA's convolution is (docs/benchmarks.md).
    return jax.default_backend() == 'cpu' and (stride > 1 or g.shape[1] * g.shape[2] <= 7 * 7)


def _conv3x3_input_grad(g, w, stride, size):
    """d(conv3x3)/dx, in float32 or wider, for an input of spatial `size`: each output
    pixel's g times the kernel, added back onto the nine input pixels it read."""
    # taps[..., i, j, :] = w[i, j] @ g: one product over the output channels.
    taps = jax.lax.dot_general(g, w, (((3,), (3,)), ((), ())),    # (n, out_h, out_w, 3, 3, in)
                               preferred_element_type=jnp.promote_types(g.dtype, jnp.float32))
    padded = (size[0] + 2, size[1] + 2)
    dx = sum(_place_strided(taps[:, :, :, i, j], i, j, stride, padded)
             for i in range(3) for j in range(3))
    return dx[:, 1:1 + size[0], 1:1 + size[1]]


def _place_strided(v, i, j, stride, size):
    """NHWC v written at rows i, i + stride, ... and columns j, j + stride, ...
    of zeros of spatial `size`: the adjoint of reading that strided view."""
    out_h, out_w = v.shape[1:3]
    return jax.lax.pad(v, jnp.zeros((), v.dtype), (
        (0, 0, 0),
        (i, size[0] - i - (out_h - 1) * stride - 1, stride - 1),
        (j, size[1] - j - (out_w - 1) * stride - 1, stride - 1),
        (0, 0, 0)))


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, window: int = 3, stride: int = 2, padding=((1, 1), (1, 1))):
    """Max pooling over NHWC; padding counts as -inf. Same values as `nn.max_pool`."""
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=padding)


def _max_pool_fwd(x, window, stride, padding):
    # Each window's gradient goes to its first maximum in raster order, as in
    # PyTorch. The forward pass records which tap that was (an int8 per output),
    # so the backward pass never compares floats: XLA may recompute x (a ReLU of
    # a BN, say) in another fusion with other rounding, and a maximum found
    # equal to y in one fusion may not be in the next; under jit that lost the
    # gradient of whole windows.
    (top, bottom), (left, right) = padding
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-jnp.inf)
    out_h = (xp.shape[1] - window) // stride + 1
    out_w = (xp.shape[2] - window) // stride + 1
    y, first = None, None
    for k, (i, j) in enumerate((i, j) for i in range(window) for j in range(window)):
        view = xp[:, i:i + (out_h - 1) * stride + 1:stride, j:j + (out_w - 1) * stride + 1:stride]
        if y is None:
            y, first = view, jnp.zeros(view.shape, jnp.int8)
        else:
            later = view > y   # strictly greater: ties stay with the earlier tap
            y, first = jnp.where(later, view, y), jnp.where(later, jnp.int8(k), first)
    # The input's height and width ride along as the shape of an empty array.
    return y, (first, jnp.zeros((0, *x.shape[1:3]), jnp.int8))


def _max_pool_bwd(window, stride, padding, residuals, g):
    # Elementwise work on window**2 strided views: XLA:CPU's own gradient of a
    # pooling window was the slowest operation of the training step.
    first, size = residuals
    (top, bottom), (left, right) = padding
    padded = (size.shape[1] + top + bottom, size.shape[2] + left + right)
    dxp = sum(_place_strided(jnp.where(first == i * window + j, g, 0), i, j, stride, padded)
              for i in range(window) for j in range(window))
    return (dxp[:, top:top + size.shape[1], left:left + size.shape[2]],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool_ceil(x, window: int = 3, stride: int = 2):
    """Max pooling with PyTorch's `ceil_mode=True` and no padding (the Caffe stem pool).

    The last window may run past the edge; the missing part is padded with -inf,
    as long as the window starts inside the input.
    """
    pads = []
    for size in x.shape[1:3]:
        out = -(-(size - window) // stride) + 1
        if (out - 1) * stride >= size:
            out -= 1
        pads.append((0, max(0, (out - 1) * stride + window - size)))
    return max_pool(x, window, stride, tuple(pads))


class BatchNorm(nn.Module):
    """Batch normalisation with `nn.BatchNorm`'s variables, statistics and results.

    Same parameters ('scale', 'bias'), running statistics ('mean', 'var' in
    'batch_stats', `momentum` as in Flax) and arithmetic as `nn.BatchNorm` over
    every axis but the last. The running variance averages the biased batch
    variance, as Flax does, or with `unbiased_var` the unbiased one (times
    n / (n - 1) for n values per channel), as PyTorch does. In training the gradient is
    written by hand (`batch_norm_train`): it keeps the input, not the centred
    input, for the backward pass, which saves a pass over every activation.
    """
    use_running_average: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-5
    unbiased_var: bool = False
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    scale_init: Any = nn.initializers.ones
    bias_init: Any = nn.initializers.zeros

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
            y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
            self._update_running(ra_mean, ra_var, mean, var, x)
        return y.astype(dtype)

    def _update_running(self, ra_mean, ra_var, mean, var, x):
        if self.unbiased_var:
            n = x.size // x.shape[-1]
            var = var * (n / max(n - 1, 1))
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var


def _batch_stats(x):
    axes = tuple(range(x.ndim - 1))
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = x.mean(axes)
    return mean, jnp.maximum(0.0, (x * x).mean(axes) - mean * mean)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon):
    """(y, mean, var): x normalised with its own statistics over all but the last axis."""
    mean, var = _batch_stats(x)
    return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias, mean, var


def _batch_norm_fwd(x, scale, bias, epsilon):
    y, mean, var = batch_norm_train(x, scale, bias, epsilon)
    return (y, mean, var), (x, scale, mean, var)


def _batch_norm_bwd(epsilon, residuals, cotangents):
    x, scale, mean, var = residuals
    gy, gmean, gvar = cotangents
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    inv = jax.lax.rsqrt(var + epsilon)
    x_dtype = x.dtype
    gy, x = gy.astype(mean.dtype), x.astype(mean.dtype)
    gbias = gy.sum(axes)
    # sum(gy * (x - mean)) from sums over gy and x themselves, so that x - mean
    # is never written out whole.
    gscale = ((gy * x).sum(axes) - mean * gbias) * inv
    centred = x - mean
    # d/dx of y, then of the two statistics (which feed only the running averages).
    gx = (scale * inv) * (gy - gbias / n - centred * (inv * gscale / n))
    gx = gx + gmean / n + centred * (2 * gvar / n)
    return gx.astype(x_dtype), gscale.astype(scale.dtype), gbias.astype(scale.dtype)


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


def materialize(x, anchor):
    """x, unchanged, but written out once rather than recomputed by each consumer.

    XLA:CPU folds cheap elementwise work into every operation that reads it;
    along a chain of residual blocks each block's output was recomputed, with
    the blocks before it, several times over (about 5% of the se_resnet50
    training step). A division makes the value costly in XLA's eyes, so it is
    computed once and read. Dividing by a one the compiler cannot see through
    is exact. The one is made from `anchor`, any array that every device holds
    whole (a parameter), so that a sharded x needs no communication.
    """
    one = jax.lax.stop_gradient(anchor.reshape(-1)[0]) * 0 + 1
    return x / one.astype(x.dtype)
