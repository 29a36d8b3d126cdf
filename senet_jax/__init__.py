"""senet-jax: Squeeze-and-Excitation Networks in JAX/Flax."""
from senet_jax.layers import SqueezeExcite, reduced_width
from senet_jax.models import ResNet, create_model, list_models
from senet_jax import xla_cpu  # noqa: F401  (senet_jax.xla_cpu.compiler_options)

__version__ = '0.1.0'


def load_pretrained(directory, num_classes=None):
    """(model, variables) from a directory written by `python -m senet_jax.convert`."""
    from senet_jax.convert import load_pretrained as _load
    return _load(directory, num_classes=num_classes)


def __getattr__(name):
    # `senet_jax.to_nnx` (Flax NNX, see senet_jax/nnx.py), imported on first use so
    # that linen users do not import flax.nnx.
    if name == 'to_nnx':
        from senet_jax.nnx import to_nnx
        return to_nnx
    raise AttributeError(f"module 'senet_jax' has no attribute '{name}'")
