"""The XLA:CPU compiler options: valid for this jaxlib, same results, user flags respected,
and only for a CPU backend."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from senet_jax import cpu_kernels, xla_cpu
from senet_jax.models import create_model


def test_the_public_name_is_the_cpu_kernels_one():
    assert xla_cpu.compiler_options is cpu_kernels.compiler_options


def test_no_options_for_another_backend(monkeypatch):
    # A GPU or TPU compiler would refuse XLA:CPU's options.
    monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
    assert cpu_kernels.compiler_options() is None


@pytest.mark.slow
def test_options_compile_and_keep_the_results():
    options = xla_cpu.compiler_options()
    assert options == {xla_cpu.YNN_FUSION_TYPE: xla_cpu.WITHOUT_CONVOLUTIONS}
    model = create_model('se_resnet_mini', num_classes=10)
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    variables = model.init(jax.random.key(1), x)
    loss = lambda v: jnp.sum(model.apply(v, x, train=True, mutable=['batch_stats'])[0] ** 2)
    step = jax.value_and_grad(loss)
    # The option reaches the compiler: the convolutions leave YNNPACK's fusions.
    ynn = lambda opts: jax.jit(step, compiler_options=opts).lower(variables).compile().as_text().count(
        '"kind":"__ynn_fusion"')
    assert ynn(options) < ynn(None)
    (a, ga), (b, gb) = jax.jit(step, compiler_options=options)(variables), jax.jit(step)(variables)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(u, v, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_a_user_flag_wins():
    code = 'from senet_jax import xla_cpu; print(xla_cpu.compiler_options())'
    env = {'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=+individual_convolution',
           'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu'}
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'None'
