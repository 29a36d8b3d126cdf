"""Multiply-adds counted from the network's own program, as fvcore and timm's tables count them.

Every convolution tap (zero padding included: a k x k convolution costs
k * k * C_in / groups per output value) and every multiply-add of a dense
layer or other contraction; nothing for elementwise work (BN, activations,
the SE scale, pooling). The count is read off the jaxpr of the forward pass,
so it follows the model exactly as built, and nothing is computed.
"""
import math

import jax
import jax.numpy as jnp


def _conv_macs(eqn) -> int:
    out = eqn.outvars[0].aval.shape
    kernel = eqn.invars[1].aval.shape
    out_features = kernel[eqn.params['dimension_numbers'].rhs_spec[0]]
    return math.prod(out) * (math.prod(kernel) // out_features)


def _dot_macs(eqn) -> int:
    (contracting, _), _ = eqn.params['dimension_numbers']
    lhs = eqn.invars[0].aval.shape
    return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracting)


def _sub_jaxprs(value):
    if hasattr(value, 'eqns'):
        yield value
    elif hasattr(value, 'jaxpr') and hasattr(value.jaxpr, 'eqns'):
        yield value.jaxpr


def jaxpr_macs(jaxpr) -> int:
    """Multiply-adds of one jaxpr, nested calls included (a cond counts its dearest branch)."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == 'conv_general_dilated':
            total += _conv_macs(eqn)
        elif name == 'dot_general':
            total += _dot_macs(eqn)
        elif name == 'cond':
            total += max(jaxpr_macs(b.jaxpr) for b in eqn.params['branches'])
        else:
            inner = sum(jaxpr_macs(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
            total += inner * eqn.params.get('length', 1)   # a scan repeats its body
    return total


def count_macs(model, image_size: int, variables=None) -> int:
    """Multiply-adds of `model`'s eval-mode forward pass on one image_size^2 RGB image."""
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    if variables is None:
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape)))
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
    return jaxpr_macs(jaxpr.jaxpr)
