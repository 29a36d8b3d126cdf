"""`senet_jax.xla_cpu.compiler_options()`: the XLA:CPU options for `jax.jit`.

They live in senet_jax.cpu_kernels with the other CPU-only speed-ups; this
name stays for the callers that pass them per `jax.jit`:

    step = jax.jit(train_step, compiler_options=senet_jax.xla_cpu.compiler_options())
"""
from senet_jax.cpu_kernels import WITHOUT_CONVOLUTIONS, YNN_FUSION_TYPE, compiler_options  # noqa: F401
