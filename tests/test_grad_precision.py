"""Parameter gradients are float32 whatever the compute dtype.

Under jit with a data-sharded batch, XLA's SPMD partitioner sums each
gradient's per-device partial results across devices in the dtype of the
product that made them; senet_jax.layers makes every parameter's gradient
product float32 (see `with_float32_grads`).
"""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from senet_jax import cpu_kernels, layers

HERE = os.path.dirname(os.path.abspath(__file__))

# Each model in each half dtype, each kernel path with each model.
CASES = ('se_resnet_mini:bfloat16:plain', 'se_resnet_mini:float16:cpu',
         'se_resnext_block:bfloat16:cpu', 'se_resnext_block:float16:plain',
         # every attention block of senet_jax.attention but SE (above), in one bottleneck
         *(f'attention_block/{name}:bfloat16:plain' for name in ('ese', 'eca', 'ge', 'gc', 'cbam')))


@pytest.fixture(scope='module')
def all_reduces():
    """{case: {element type: count}} after SPMD partitioning, on 4 CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
    proc = subprocess.run([sys.executable, os.path.join(HERE, 'grad_precision_probe.py'), *CASES],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize('case', CASES)
def test_no_half_precision_all_reduce_after_spmd_partitioning(all_reduces, case):
    counts = all_reduces[case]
    assert counts.get('f32', 0) > 20, counts   # every gradient, BN statistic and metric
    assert set(counts) == {'f32'}, counts      # none in bf16 or f16


@pytest.mark.parametrize('size,kernel,stride,groups,padding', [
    (9, 3, 1, 1, None), (9, 3, 2, 1, None), (8, 3, 2, 4, None), (7, 1, 2, 1, None),
    (11, 7, 2, 1, None), (8, (1, 7), 1, 1, None), (9, 3, 2, 2, ((0, 0), (0, 0))),
    (10, 3, 1, 8, ((0, 1), (1, 0))), (6, 1, 1, 1, None)])
@pytest.mark.parametrize('form', ['plain', 'cpu'])
def test_conv_weight_grad_is_autodiffs(size, kernel, stride, groups, padding, form):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    padding = padding or ((kh // 2, kh // 2), (kw // 2, kw // 2))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, size, size, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kh, kw, 8 // groups, 16)), jnp.float32)
    y, vjp = jax.vjp(lambda w: jax.lax.conv_general_dilated(
        x, w, (stride, stride), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=groups), w)
    g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    rule = cpu_kernels.choose(form).conv_weight_grad
    got = rule(x, g, (kh, kw), stride, padding, groups)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, vjp(g)[0], rtol=1e-6, atol=1e-5)


def _grads(module, variables, x):
    loss = lambda v, x: jnp.sum(module.apply(v, x).astype(jnp.float32) ** 2)
    return jax.grad(loss, argnums=(0, 1))(variables, x)


@pytest.mark.parametrize('kernels,dtype,kernel,stride,groups,bias', [
    ('plain', jnp.bfloat16, 3, 1, 1, True), ('cpu', jnp.float16, 3, 2, 4, False),
    ('cpu', jnp.bfloat16, 1, 2, 1, True), ('plain', jnp.float16, 1, 1, 1, False)])
def test_half_precision_conv_gives_float32_parameter_gradients(kernels, dtype, kernel, stride,
                                                               groups, bias):
    convolve = cpu_kernels.choose(kernels).conv
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 6, 8)), jnp.float32)
    full = layers.Conv(8, kernel, stride, groups, use_bias=bias, convolve=convolve)
    variables = full.init(jax.random.key(0), x)
    half = full.clone(dtype=dtype)
    (got, dx), (want, dx_want) = _grads(half, variables, x), _grads(full, variables, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-2 * float(jnp.max(jnp.abs(b))))
    np.testing.assert_allclose(dx, dx_want, rtol=0, atol=2e-2 * float(jnp.max(jnp.abs(dx_want))))


def test_dense_is_flax_dense_with_float32_parameter_gradients():
    import flax.linen as nn
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 3, 3, 7)), jnp.float32)
    variables = nn.Dense(5).init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, layers.Dense(5).init(jax.random.key(1), x)) == \
        jax.tree.map(jnp.shape, variables)
    np.testing.assert_array_equal(layers.Dense(5).apply(variables, x),
                                  nn.Dense(5).apply(variables, x))
    (got, _), (want, _) = (_grads(layers.Dense(5, dtype=jnp.bfloat16), variables, x),
                           _grads(layers.Dense(5), variables, x))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-2 * float(jnp.max(jnp.abs(b))))


def test_float32_compute_is_autodiff_unchanged():
    """In float32 (the CPU default) the layers hold no custom VJP: the
    program is the one autodiff writes."""
    x = jnp.ones((1, 4, 4, 3))
    conv = layers.Conv(4, 3, use_bias=True)
    variables = conv.init(jax.random.key(0), x)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda v: conv.apply(v, x).sum()))(variables))
    assert 'custom_vjp' not in jaxpr
    half = str(jax.make_jaxpr(jax.grad(lambda v: conv.clone(dtype=jnp.bfloat16).apply(
        v, x).astype(jnp.float32).sum()))(variables))
    assert 'custom_vjp' in half


@pytest.mark.slow
def test_every_family_keeps_its_parameters_in_float32_gradient_layers():
    """Conv and Dense cast their parameters through `with_float32_grads`;
    BatchNorm computes with its parameters in float32. No other module of any
    family owns a parameter, so every parameter gradient is float32."""
    import flax.linen as nn
    from senet_jax.models import create_model, min_input_size, registry
    owners = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == '__call__' and context.module.scope is not None:
            params = context.module.variables.get('params', {})
            if any(hasattr(v, 'shape') for v in params.values()):
                owners.setdefault(type(context.module), set()).add(name)
        return out

    for family in registry.FAMILIES:
        name = next(n for n in family.SPECS if n.startswith('se_'))
        model = create_model(name, num_classes=10, dtype=jnp.bfloat16)
        x = jax.ShapeDtypeStruct((1, min_input_size(model), min_input_size(model), 3), jnp.float32)
        with nn.intercept_methods(record):
            jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    assert set(owners) == {layers.Conv, layers.Dense, layers.BatchNorm}, owners
