"""CPU-only speed-ups: the layers of senet_jax.layers in forms written for XLA:CPU.

Each function here has a plain namesake in senet_jax.layers and the same
values (to rounding), with a gradient or a fusion that made the training step
faster on XLA:CPU (docs/benchmarks.md). None has been measured on a GPU or TPU,
so none runs there unless asked. `choose(kernels)` is the one place where a
model picks its form:

- 'auto': by the platform the step is lowered for (`jax.lax.platform_dependent`):
  these kernels on CPU, the plain layers elsewhere. A gradient through it keeps
  each branch's own rule, so a TPU or GPU program, even one exported from a
  CPU-only machine, holds autodiff's gradients and none of the code below.
- 'plain': the plain layers on every backend.
- 'cpu': these kernels on every backend (tests; timing them on a device).

`compiler_options()` gives the XLA:CPU options to pass to `jax.jit`.
"""
import functools
import os
from typing import Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp

from senet_jax import layers
from senet_jax.options import validate_options


class Kernels(NamedTuple):
    """The computations the models hand to their layers."""
    conv: Callable               # (x, kernel, stride, groups) -> y; see layers.Conv
    batch_norm_train: Callable   # (x, scale, bias, epsilon) -> (y, mean, var); see layers.BatchNorm
    max_pool: Callable           # (x, window, stride, padding) -> y
    materialize: Callable        # (x, anchor) -> x
    conv_weight_grad: Callable   # (x, g, window, stride, padding, groups) -> float32 dkernel


def choose(kernels: str = 'auto') -> Kernels:
    """The layers' computations for `kernels` ('auto', 'plain' or 'cpu'; see above)."""
    validate_options(kernels=kernels)
    return {'auto': _AUTO, 'plain': _PLAIN, 'cpu': _CPU}[kernels]


def _by_platform(cpu, plain, num_arrays):
    """f(*args) = cpu(*args) in a program lowered for CPU, else plain(*args).
    The first `num_arrays` arguments are arrays, the rest Python values."""
    def f(*args):
        arrays, static = args[:num_arrays], args[num_arrays:]
        return jax.lax.platform_dependent(*arrays, cpu=lambda *a: cpu(*a, *static),
                                          default=lambda *a: plain(*a, *static))
    return f


def _defvjp(f, fwd, bwd):
    """f.defvjp(fwd, bwd), the backward pass named: a profile, or a program's
    text, shows each operation of a hand-written gradient under
    'cpu_kernels.<f>_bwd'."""
    def named_bwd(*args):
        with jax.named_scope(f'cpu_kernels.{f.__name__}_bwd'):
            return bwd(*args)
    f.defvjp(fwd, named_bwd)


def conv(x, kernel, stride: int = 1, groups: int = 1):
    """`layers.conv`, by shape: a 1x1 kernel as a matrix product over the channel
    axis (`channel_matmul`, after keeping every stride-th row and column; about
    1.7x as fast a training step as a convolution), a 3x3 kernel without groups
    with `conv3x3`'s input gradient, anything else as XLA's convolution."""
    k = kernel.shape[0]
    if k == 1 and groups == 1:
        return channel_matmul(x[:, ::stride, ::stride, :] if stride > 1 else x, kernel[0, 0])
    if k == 3 and groups == 1:
        return conv3x3(x, kernel, stride)
    return layers.conv(x, kernel, stride, groups)


@jax.custom_vjp
def channel_matmul(x, w):
    """x @ w over the last axis of x; its weight gradient is laid out for XLA:CPU."""
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _channel_matmul_fwd(x, w):
    return channel_matmul(x, w), (x, w)


def _channel_matmul_bwd(residuals, g):
    x, w = residuals
    dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())))
    return dx, _pixel_sum_product(x, g).astype(w.dtype)


_defvjp(channel_matmul, _channel_matmul_fwd, _channel_matmul_bwd)


def _pixel_sum_product(x, g, result_dtype=None):
    """x^T g summed over every pixel (all axes but the last), in `result_dtype`."""
    x = x.reshape(-1, x.shape[-1])
    g = g.reshape(-1, g.shape[-1])
    # The summed axis leads in both operands, and XLA:CPU's fast matmul wants it
    # last on the left. Transposing the narrower of the two explicitly is
    # cheaper than letting XLA choose.
    if x.shape[1] <= g.shape[1]:
        return jnp.matmul(x.T, g, preferred_element_type=result_dtype)
    return jnp.matmul(g.T, x, preferred_element_type=result_dtype).T


def conv_weight_grad(x, g, window, stride: int, padding, groups: int):
    """`layers.conv_weight_grad`: a 1x1 kernel's as channel_matmul's weight
    gradient (a matrix product, float32 result), anything else as XLA's."""
    if tuple(window) == (1, 1) and groups == 1 and all(tuple(p) == (0, 0) for p in padding):
        x = x[:, ::stride, ::stride, :] if stride > 1 else x
        return _pixel_sum_product(x, g, jnp.float32)[None, None]
    return layers.conv_weight_grad(x, g, window, stride, padding, groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3(x, w, stride: int = 1):
    """3x3 convolution of NHWC x with HWIO w, padding 1 on every side."""
    return layers.conv(x, w, stride)


def _conv3x3_fwd(x, w, stride):
    return conv3x3(x, w, stride), (x, w)


def _conv3x3_bwd(stride, residuals, g):
    x, w = residuals
    if _input_grad_as_matmul(g, stride):
        _, weight_vjp = jax.vjp(lambda w: layers.conv(x, w, stride), w)
        dx = _conv3x3_input_grad(g, w, stride, x.shape[1:3])
        return dx.astype(x.dtype), weight_vjp(g)[0]
    _, vjp = jax.vjp(lambda x, w: layers.conv(x, w, stride), x, w)
    return vjp(g)


def _input_grad_as_matmul(g, stride):
    # XLA:CPU writes the input gradient as a convolution of g with the kernel
    # reversed and transposed, and for a stride over g dilated with zeros. A
    # matrix product and a scatter are faster for every strided layer and for
    # 7x7 maps (the kernel transpose weighs most there); at stride 1 on bigger
    # maps XLA's convolution is (docs/benchmarks.md).
    return stride > 1 or g.shape[1] * g.shape[2] <= 7 * 7


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


_defvjp(conv3x3, _conv3x3_fwd, _conv3x3_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, window: int = 3, stride: int = 2, padding=((1, 1), (1, 1))):
    """`layers.max_pool`, whose gradient is elementwise work on window**2 strided
    views: XLA:CPU's own gradient of a pooling window was the slowest operation
    of the training step. Each window's gradient goes to its first maximum in
    raster order, as in PyTorch."""
    return layers.max_pool(x, window, stride, padding)


def _max_pool_fwd(x, window, stride, padding):
    # The forward pass records which tap won (an int8 per output), so the
    # backward pass never compares floats: XLA may recompute x (a ReLU of a BN,
    # say) in another fusion with other rounding, and a maximum found equal to
    # y in one fusion may not be in the next; under jit that lost the gradient
    # of whole windows.
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
    first, size = residuals
    (top, bottom), (left, right) = padding
    padded = (size.shape[1] + top + bottom, size.shape[2] + left + right)
    dxp = sum(_place_strided(jnp.where(first == i * window + j, g, 0), i, j, stride, padded)
              for i in range(window) for j in range(window))
    return (dxp[:, top:top + size.shape[1], left:left + size.shape[2]],)


_defvjp(max_pool, _max_pool_fwd, _max_pool_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon: float):
    """`layers.batch_norm_train`, whose gradient keeps the input, not the centred
    input, for the backward pass: that saves a pass over every activation."""
    return layers.batch_norm_train(x, scale, bias, epsilon)


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


_defvjp(batch_norm_train, _batch_norm_fwd, _batch_norm_bwd)


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


def _as_is(x, anchor):
    del anchor
    return x


_PLAIN = Kernels(layers.conv, layers.batch_norm_train, layers.max_pool, _as_is,
                 layers.conv_weight_grad)
_CPU = Kernels(conv, batch_norm_train, max_pool, materialize, conv_weight_grad)
_AUTO = Kernels(*(_by_platform(cpu, plain, num_arrays)
                  for cpu, plain, num_arrays in zip(_CPU, _PLAIN, (2, 3, 1, 2, 2))))


# ---------------------------------------------------------------------------
# Per-`jax.jit` compiler options.
#
# By default XLA:CPU hands convolutions to YNNPACK, which runs some of the zoo's
# shapes on a single thread however many cores there are: the 3x3 convolutions
# with 64 channels at 56x56 (every conv2_x block) take as long on two cores as
# on one. XLA's own convolution kernels (Eigen) use every core for them. Matrix
# products and reductions stay with YNNPACK, where they are fast.

YNN_FUSION_TYPE = 'xla_cpu_experimental_ynn_fusion_type'
# XLA's default set is these two and LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION.
WITHOUT_CONVOLUTIONS = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'


def compiler_options() -> Optional[Dict[str, str]]:
    """Options for `jax.jit(..., compiler_options=...)` on the default backend:
    a fresh dict on CPU, else None (XLA's defaults).

    They touch only the functions compiled with them:

        step = jax.jit(train_step, compiler_options=senet_jax.xla_cpu.compiler_options())

    They are chosen by the default backend, not per platform like the kernels,
    because a compiler rejects another's options. None too where XLA_FLAGS
    already chooses YNNPACK's operations, or with a jaxlib that no longer knows
    the option. Measured in docs/benchmarks.md.
    """
    options = _cpu_options() if jax.default_backend() == 'cpu' else None
    return dict(options) if options else None


@functools.cache
def _cpu_options():
    if YNN_FUSION_TYPE in os.environ.get('XLA_FLAGS', ''):
        return None   # the user's choice stands
    options = {YNN_FUSION_TYPE: WITHOUT_CONVOLUTIONS}
    try:
        jax.jit(lambda x: x + 1).lower(jnp.zeros((), jnp.float32)).compile(compiler_options=options)
    except Exception:   # an unknown option or value is an INVALID_ARGUMENT at compile time
        return None
    return options
