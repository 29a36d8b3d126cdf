"""The compute dtype of a run: `config.dtype`, 'auto' by default.

'auto' is bfloat16 where the hardware computes in it at full rate (TPU, and
NVIDIA GPUs of compute capability 8.0 and up: A100, H100, L4, RTX 30xx...),
float16 with dynamic loss scaling on older GPUs (V100, T4), float32 on CPU.
Parameters, BatchNorm statistics and logits stay float32 whatever the compute
dtype. `half_precision=True` is the older spelling of dtype='bfloat16'.

The resolved dtype is not part of a run's identity: a workdir trained with
bfloat16 on a TPU resumes in float32 on a CPU, and the other way round.
"""

import jax.numpy as jnp

from senet_jax.errors import UserError

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16,
          'float16': jnp.float16}


def compute_dtype(config, device) -> str:
    """The dtype name a run computes in on `device` (e.g. jax.devices()[0])."""
    requested = config.get('dtype', 'auto') or 'auto'
    if requested not in ('auto', *DTYPES):
        raise UserError(f"dtype must be 'auto', {', '.join(map(repr, DTYPES))}, "
                        f'got {requested!r}')
    if config.get('half_precision'):
        if requested not in ('auto', 'bfloat16'):
            raise UserError(f'half_precision=True means dtype=bfloat16, which '
                            f'contradicts dtype={requested!r}; set only dtype')
        return 'bfloat16'
    return default_dtype(device) if requested == 'auto' else requested


def default_dtype(device) -> str:
    """bfloat16 on TPU and bf16-capable GPUs, float16 on older GPUs, else float32."""
    if device.platform == 'tpu':
        return 'bfloat16'
    if device.platform in ('gpu', 'cuda', 'rocm'):
        capability = _capability(getattr(device, 'compute_capability', None))
        # ROCm devices report a gfx name, not a number: their bf16 is native.
        return 'bfloat16' if capability is None or capability >= (8, 0) else (
            'float16')
    return 'float32'


def _capability(text):
    try:
        major, minor = str(text).split('.')[:2]
        return int(major), int(minor)
    except ValueError:
        return None
