"""senet-jax: Squeeze-and-Excitation Networks in JAX/Flax."""
from senet_jax.layers import SqueezeExcite, reduced_width
from senet_jax.models import ResNet, create_model, list_models
from senet_jax import xla_cpu  # noqa: F401  (senet_jax.xla_cpu.compiler_options)

__version__ = '0.1.0'


def load_pretrained(name, model=None, num_classes=None, **kwargs):
    """(model, variables) for a published weight ('se_resnet50.ra2_in1k', 'se_resnet50',
    'hf-hub:timm/seresnet50.a1_in1k'), a URL or local file with `model=`, or a folder
    written by `python -m senet_jax.convert`; `num_classes=N` gives a fresh head."""
    from senet_jax.pretrained import load_pretrained as _load
    return _load(name, model=model, num_classes=num_classes, **kwargs)


def list_pretrained(pattern='*'):
    """The published weights' tags matching a shell-style pattern, e.g. '*se_resnext*'."""
    from senet_jax.pretrained import list_pretrained as _list
    return _list(pattern)


def __getattr__(name):
    # `senet_jax.to_nnx` (Flax NNX, see senet_jax/nnx.py), imported on first use so
    # that linen users do not import flax.nnx.
    if name == 'to_nnx':
        from senet_jax.nnx import to_nnx
        return to_nnx
    raise AttributeError(f"module 'senet_jax' has no attribute '{name}'")
