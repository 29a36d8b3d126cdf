"""Layers whose gradients are written by hand for speed: they must equal the plain forms."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from senet_jax.layers import channel_matmul, max_pool, max_pool_ceil


@pytest.mark.parametrize('cin,cout', [(16, 48), (48, 16)])   # both weight-gradient branches
def test_channel_matmul_gradients_equal_autodiff_of_a_dot(cin, cout):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 5, 7, cin))
    w = jax.random.normal(kw, (cin, cout))
    g = jax.random.normal(kg, (2, 5, 7, cout))
    plain = lambda x, w: jnp.einsum('nhwi,io->nhwo', x, w)
    np.testing.assert_allclose(channel_matmul(x, w), plain(x, w), rtol=1e-6, atol=1e-5)
    ours = jax.vjp(channel_matmul, x, w)[1](g)
    want = jax.vjp(plain, x, w)[1](g)
    for a, b in zip(ours, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def reference_max_pool_grad(x, g, window, stride, pads):
    """PyTorch's rule: each window's gradient goes to its first maximum in raster order."""
    (top, _), (left, _) = pads
    dx = np.zeros_like(x)
    n, out_h, out_w, c = g.shape
    for b in range(n):
        for oh in range(out_h):
            for ow in range(out_w):
                for ch in range(c):
                    best, where = -np.inf, None
                    for i in range(window):
                        for j in range(window):
                            h, w = oh * stride + i - top, ow * stride + j - left
                            if 0 <= h < x.shape[1] and 0 <= w < x.shape[2] and x[b, h, w, ch] > best:
                                best, where = x[b, h, w, ch], (h, w)
                    dx[b, where[0], where[1], ch] += g[b, oh, ow, ch]
    return dx


@pytest.mark.parametrize('size', [(9, 9), (8, 11)])
@pytest.mark.parametrize('ceil', [False, True])
def test_max_pool_values_and_pytorch_gradient(size, ceil):
    rng = np.random.default_rng(0)
    # Rounded values give ties (as ReLU zeros do), where the first maximum must win.
    x = jnp.asarray(np.round(rng.normal(size=(2, *size, 3)), 0), jnp.float32)
    if ceil:
        pool = lambda v: max_pool_ceil(v, 3, 2)
        out = pool(x)
        pads = ((0, (out.shape[1] - 1) * 2 + 3 - size[0]), (0, (out.shape[2] - 1) * 2 + 3 - size[1]))
    else:
        pads = ((1, 1), (1, 1))
        pool = lambda v: max_pool(v, 3, 2, pads)
        out = pool(x)
    np.testing.assert_array_equal(out, nn.max_pool(x, (3, 3), strides=(2, 2), padding=pads))
    g = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
    dx = jax.vjp(pool, x)[1](g)[0]
    np.testing.assert_allclose(dx, reference_max_pool_grad(np.asarray(x), np.asarray(g), 3, 2, pads),
                               rtol=1e-6, atol=1e-6)

