"""Per-`jax.jit` compiler options that make these networks faster on XLA:CPU.

By default XLA:CPU hands convolutions to YNNPACK, which runs some of the zoo's
shapes on a single thread however many cores there are: the 3x3 convolutions
with 64 channels at 56x56 (every conv2_x block) take as long on two cores as on
one. XLA's own convolution kernels (Eigen) use every core for them. Matrix
products and reductions stay with YNNPACK, where they are fast.

The options go to `jax.jit(..., compiler_options=compiler_options())`, so they
touch only the functions compiled with them, never the rest of a program:

    step = jax.jit(train_step, compiler_options=senet_jax.xla_cpu.compiler_options())

On other backends, or where XLA_FLAGS already chooses YNNPACK's operations, or
with a jaxlib that no longer knows the option, `compiler_options()` is None and
XLA's defaults apply. Measured in docs/benchmarks.md.
"""
import functools
import os
from typing import Dict, Optional

import jax
import jax.numpy as jnp

YNN_FUSION_TYPE = 'xla_cpu_experimental_ynn_fusion_type'
# XLA's default set is these two and LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION.
WITHOUT_CONVOLUTIONS = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'


def compiler_options() -> Optional[Dict[str, str]]:
    """The options for the default backend: a fresh dict on CPU, else None."""
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
