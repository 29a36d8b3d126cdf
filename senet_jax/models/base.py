"""What every network of the zoo shares: its options for the attention block
(SE or a successor) and the head, their validation, and the one place a family
builds its block.

Each family's module subclasses `ZooModule`, names its own `se_stages` (the
stages, modules or units that carry the block, in its own numbering) and calls
`self.attention_block(train)` where the paper puts SE. So every family takes
every registered block (`senet_jax.attention.ATTENTIONS`) by name, with the
same option names and the same one-sentence refusals.
"""
import functools
from typing import Any, ClassVar, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from senet_jax.attention import create_attention, parse_attention
from senet_jax.layers import SqueezeExcite
from senet_jax.options import validate_fields, validate_subset

Dtype = Any


class ZooModule(nn.Module):
    """The fields every family shares. `attention` names the block ('se', 'eca',
    ('ge', {'extent': 4}), ...; None: the plain network); `reduction`, `squeeze`,
    `gate`, `se_divisor` and `se_bias` are the 'se' block's options (Sec. 6 of
    the paper), and an option given with the name wins over them."""
    num_classes: int = 1000
    attention: Any = 'se'
    reduction: float = 16
    squeeze: str = 'avg'
    gate: str = 'sigmoid'
    se_divisor: int = 1        # 1: width floor(C / r) (paper, Caffe); 8: timm's rounding
    se_bias: bool = True
    drop_rate: float = 0.0     # dropout before the classifier
    kernels: str = 'auto'      # how the layers compute (senet_jax.cpu_kernels), never what
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    # A family whose se_stages are not the residual stages conv2_x..conv5_x:
    # (the allowed values, what they mean) for `validate_subset`.
    SE_STAGES: ClassVar[Optional[Tuple[tuple, str]]] = None

    def __post_init__(self):
        own = type(self).SE_STAGES
        validate_fields(self, exclude=('se_stages',) if own else ())
        if own:
            validate_subset('se_stages', self.se_stages, *own)
        parse_attention(self.attention)
        super().__post_init__()

    def attention_block(self, train: bool):
        """A partial building this network's block (call it with `name=`), or
        None for `attention=None`. Which stages get it is the family's business
        (`se_stages`)."""
        name, options = parse_attention(self.attention)
        if name is None:
            return None
        if name == 'se':
            se = dict(reduction=self.reduction, squeeze=self.squeeze, gate=self.gate,
                      divisor=self.se_divisor, use_bias=self.se_bias)
            return functools.partial(SqueezeExcite, **{**se, **options}, dtype=self.dtype,
                                     param_dtype=self.param_dtype)
        return functools.partial(create_attention, self.attention, train=train, dtype=self.dtype,
                                 param_dtype=self.param_dtype)
