"""The Squeeze-and-Excitation block and the small pieces the networks share.

Notation follows Hu et al., "Squeeze-and-Excitation Networks" (TPAMI 2019), Sec. 3:
squeeze F_sq (global pooling to a channel descriptor z), excitation F_ex (two
projections W1 (C -> C/r) and W2 (C/r -> C) with a ReLU between and a gate
after), scale F_scale (channel-wise product of the gates s and the features U).
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

SQUEEZES = ('avg', 'max', 'none')
GATES = ('sigmoid', 'tanh', 'relu')


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

    @nn.compact
    def __call__(self, u):
        if self.squeeze not in SQUEEZES:
            raise ValueError(f"squeeze must be one of {SQUEEZES}, got '{self.squeeze}'.")
        if self.gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got '{self.gate}'.")
        channels = u.shape[-1]
        width = reduced_width(channels, self.reduction, self.divisor, self.min_width)

        # Squeeze: global information embedding, z in R^C (Eq. 2).
        if self.squeeze == 'avg':
            z = jnp.mean(u, axis=(1, 2), dtype=jnp.float32).astype(u.dtype)
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
        # Scale: channel-wise multiplication (Eq. 4).
        if self.squeeze != 'none':
            s = s[:, None, None, :]
        return u * s.astype(u.dtype)


class Conv1x1(nn.Module):
    """A 1x1 convolution computed as a matrix product over the channel axis.

    Same parameter ('kernel', shape (1, 1, in, out)) and initialiser as
    `nn.Conv(features, (1, 1), strides)`; a stride s keeps every s-th row and
    column, as a 1x1 convolution without padding does. A dot instead of a
    convolution keeps XLA:CPU from transposing activations for the weight
    gradient, which made the training step twice as slow.
    """
    features: int
    strides: int = 1
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        kernel = self.param('kernel', self.kernel_init, (1, 1, x.shape[-1], self.features),
                            self.param_dtype)
        if self.strides > 1:
            x = x[:, ::self.strides, ::self.strides, :]
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        return jax.lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))


def conv_padding(kernel_size: int, padding: Optional[int] = None):
    """Explicit symmetric padding, as PyTorch's `padding=k // 2` (never 'SAME')."""
    p = kernel_size // 2 if padding is None else padding
    return ((p, p), (p, p))


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
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)
