"""The plain layers equal Flax's, and the CPU kernels (hand-written gradients) equal the plain layers."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reference_weights import random_variables
from senet_jax import cpu_kernels, layers
from senet_jax.cpu_kernels import batch_norm_train, channel_matmul, materialize, max_pool
from senet_jax.layers import BatchNorm, Conv, max_pool_ceil


@pytest.mark.parametrize('cin,cout', [(16, 48), (48, 16)])   # both weight-gradient branches
@pytest.mark.slow
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


# The CPU form by shape: for 3x3, strided layers and 7x7 maps take the
# matrix-product input gradient, stride 1 on bigger maps XLA's convolution; odd
# sizes check the scatter's edges. 1x1 is a matrix product; grouped and 7x7
# kernels are XLA's convolution. The plain form is XLA's convolution throughout.
@pytest.mark.parametrize('form', ['plain', 'cpu'])
@pytest.mark.parametrize('kernel,size,stride,groups', [
    (3, 7, 1, 1), (3, 5, 1, 1), (3, 14, 2, 1), (3, 13, 2, 1), (3, 9, 1, 1), (3, 14, 1, 1),
    (1, 9, 1, 1), (1, 9, 2, 1), (3, 9, 2, 4), (7, 11, 2, 1)])
@pytest.mark.slow
def test_conv_equals_flax_conv(kernel, size, stride, groups, form, monkeypatch):
    taken = []
    rule = cpu_kernels._input_grad_as_matmul
    monkeypatch.setattr(cpu_kernels, '_input_grad_as_matmul',
                        lambda g, stride: taken.append(rule(g, stride)) or taken[-1])
    x = jax.random.normal(jax.random.key(0), (2, size, size, 8))
    ours = Conv(12, kernel, stride, groups, convolve=cpu_kernels.choose(form).conv)
    p = kernel // 2
    flax_conv = nn.Conv(12, (kernel, kernel), (stride, stride), padding=((p, p), (p, p)),
                        feature_group_count=groups, use_bias=False)
    variables = ours.init(jax.random.key(1), x)
    want_variables = flax_conv.init(jax.random.key(1), x)
    np.testing.assert_array_equal(variables['params']['kernel'], want_variables['params']['kernel'])
    y, vjp = jax.vjp(lambda p, x: ours.apply(p, x), variables, x)
    want_y, want_vjp = jax.vjp(lambda p, x: flax_conv.apply(p, x), variables, x)
    if kernel == 1 and form == 'cpu':   # a dot, not a convolution: the same sums, perhaps in another order
        np.testing.assert_allclose(y, want_y, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(y, want_y)
    g = jax.random.normal(jax.random.key(2), y.shape)
    (dp, dx), (want_dp, want_dx) = vjp(g), want_vjp(g)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dp['params']['kernel'], want_dp['params']['kernel'], rtol=1e-5, atol=1e-4)
    assert taken == ([stride > 1 or size <= 7] if (kernel, groups, form) == (3, 1, 'cpu') else [])


def test_conv_refuses_groups_that_do_not_divide_the_channels():
    with pytest.raises(ValueError, match='3 groups do not divide 8 input and 12 output channels'):
        Conv(12, 3, groups=3).init(jax.random.key(0), jnp.zeros((1, 5, 5, 8)))


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


@pytest.mark.parametrize('form', [layers.max_pool, max_pool], ids=['plain', 'cpu'])
@pytest.mark.parametrize('size', [(9, 9), (8, 11)])
@pytest.mark.parametrize('ceil', [False, True])
def test_max_pool_values_and_pytorch_gradient(size, ceil, form):
    rng = np.random.default_rng(0)
    # Rounded values give ties (as ReLU zeros do), where the first maximum must win.
    x = jnp.asarray(np.round(rng.normal(size=(2, *size, 3)), 0), jnp.float32)
    if ceil:
        pool = lambda v: max_pool_ceil(v, 3, 2, pool=form)
        out = pool(x)
        pads = ((0, (out.shape[1] - 1) * 2 + 3 - size[0]), (0, (out.shape[2] - 1) * 2 + 3 - size[1]))
    else:
        pads = ((1, 1), (1, 1))
        pool = lambda v: form(v, 3, 2, pads)
        out = pool(x)
    np.testing.assert_array_equal(out, nn.max_pool(x, (3, 3), strides=(2, 2), padding=pads))
    g = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
    dx = jax.jit(lambda x, g: jax.vjp(pool, x)[1](g)[0])(x, g)
    np.testing.assert_allclose(dx, reference_max_pool_grad(np.asarray(x), np.asarray(g), 3, 2, pads),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('form', [layers.batch_norm_train, batch_norm_train], ids=['plain', 'cpu'])
@pytest.mark.parametrize('train', [True, False])
@pytest.mark.slow
def test_batch_norm_matches_flax(train, form):
    x = jax.random.normal(jax.random.key(1), (4, 5, 3, 6)) * 3 + 1
    ours, flax_bn = (BatchNorm(momentum=0.9, use_running_average=not train, normalize=form),
                     nn.BatchNorm(momentum=0.9, use_running_average=not train))
    variables = flax_bn.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, variables)
    variables = jax.tree.map(lambda v: v + jax.random.uniform(jax.random.key(2), v.shape), variables)
    g = jax.random.normal(jax.random.key(3), x.shape)

    def run(module):
        def loss(params, x):
            y, new = module.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
            return jnp.sum(y * g), (y, new)
        (_, (y, new)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
            variables['params'], x)
        return y, new, grads
    for a, b in zip(jax.tree.leaves(run(ours)), jax.tree.leaves(run(flax_bn))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('form', [layers.batch_norm_train, batch_norm_train], ids=['plain', 'cpu'])
@pytest.mark.slow
def test_batch_norm_gradient_through_its_statistics(form):
    x = jax.random.normal(jax.random.key(1), (3, 4, 2, 5)) + 2
    scale, bias = jnp.linspace(0.5, 2, 5), jnp.linspace(-1, 1, 5)

    def plain(x, scale, bias):
        mean = x.mean((0, 1, 2))
        var = (x * x).mean((0, 1, 2)) - mean * mean
        return (x - mean) * (jax.lax.rsqrt(var + 1e-5) * scale) + bias, mean, var
    weights = [jax.random.normal(jax.random.key(i), s) for i, s in enumerate([x.shape, (5,), (5,)])]
    loss = lambda f: lambda *a: sum(jnp.sum(w * o) for w, o in zip(weights, f(*a)))
    ours = jax.grad(loss(lambda *a: form(*a, 1e-5)), argnums=(0, 1, 2))(x, scale, bias)
    want = jax.grad(loss(plain), argnums=(0, 1, 2))(x, scale, bias)
    for a, b in zip(ours, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('kernels', ['plain', 'cpu'])
def test_gradients_work_in_bfloat16(kernels):
    from senet_jax import create_model
    model = create_model('se_resnet_mini', dtype=jnp.bfloat16, num_classes=10, kernels=kernels)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    variables = random_variables(model, x)

    def loss(params):
        logits, _ = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
        return logits.sum()
    grads = jax.jit(jax.grad(loss))(variables['params'])   # (compiled: op by op is slower)
    assert all(g.dtype == jnp.float32 and jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.slow
def test_materialize_is_an_exact_identity(dtype):
    x = (jax.random.normal(jax.random.key(0), (2, 3, 4, 5)) * 1e3).astype(dtype)
    anchor = jnp.array([0.0, 7.0])   # a zero-initialised scale is a valid anchor
    y, vjp = jax.vjp(lambda v: materialize(v, anchor), x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(x, np.float32))
    np.testing.assert_array_equal(np.asarray(vjp(x)[0], np.float32), np.asarray(x, np.float32))
