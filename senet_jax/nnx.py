"""The zoo and `SqueezeExcite` inside Flax NNX programs, through Flax's own bridge.

Every model of this package is a linen module; `flax.nnx.bridge.ToNNX` turns one into an
NNX module that owns its variables. `to_nnx` builds that module with fresh or
given (e.g. converted pretrained) variables:

    from flax import nnx
    from senet_jax import create_model, to_nnx

    model = to_nnx(create_model('se_resnet50', num_classes=10), rngs=nnx.Rngs(0))
    logits = model(images)                                       # eval: running statistics
    logits = model(images, train=True, mutable=['batch_stats'])  # train: updates them

Training mode takes `mutable=['batch_stats']`, as linen's `apply` does: the
bridge then writes the new BatchNorm running statistics back into the module,
which `nnx.jit` carries out of the step. Without it the call fails, because a
linen collection is read-only unless it is named mutable. Parameters are
`nnx.Param`, statistics `nnx.BatchStat`, so `nnx.Optimizer(model, tx,
wrt=nnx.Param)` trains the parameters only. Dropout (senet154) draws from the
module's `rngs` ('dropout' stream if it has one, else 'params', as linen does).

Converted weights: `model, variables = senet_jax.load_pretrained(directory)`,
then `to_nnx(model, variables, rngs=nnx.Rngs(0))`.
"""
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from senet_jax.models import min_input_size


def to_nnx(model: nn.Module, variables: Optional[Mapping[str, Any]] = None, *,
           rngs: nnx.Rngs, sample_input=None) -> nnx.bridge.ToNNX:
    """`model` (any linen module) as an NNX module.

    With `variables` (linen's {'params': ..., 'batch_stats': ...}) the module
    holds those; without, fresh ones from `model.init` on `sample_input`, with
    the 'params' stream of `rngs`. A zoo model needs no sample: its variables
    do not depend on the image size, so the smallest input it takes is used.
    """
    if variables is None:
        if sample_input is None:
            if not hasattr(model, 'min_input_size'):   # every zoo family has one
                raise ValueError(f'to_nnx needs a sample_input to initialise a '
                                 f'{type(model).__name__}, or its variables.')
            side = min_input_size(model)
            sample_input = jnp.zeros((1, side, side, 3), model.param_dtype)
        # One compiled init: faster than ToNNX.lazy_init's op-by-op run, same variables.
        variables = jax.jit(model.init)(rngs.params(), sample_input)
    module = nnx.bridge.ToNNX(model, rngs=rngs)
    # What ToNNX does with the variables of its own initialisation.
    for name, value in nnx.bridge.variables.linen_vars_to_nnx_attrs(dict(variables)).items():
        setattr(module, name, nnx.data(value))
    return module
