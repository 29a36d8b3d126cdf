"""Models by name: `create_model(name, num_classes=None, **overrides)` and `list_models()`.

Each family module under `senet_jax/models/` ends with a `SPECS` table
(`spec.ModelSpec`: the module class and its arguments, the reference network
it matches number for number, that reference's state_dict layout, its input
size and pixel format). This module gathers them.
"""
import dataclasses
from typing import Any, Dict, List, Mapping, Optional

from senet_jax.models import bn_inception, cifar, inception_resnet, mobilenet, resnet, shufflenet, vgg
from senet_jax.models.spec import (IMAGENET, IMAGENET_MEAN, IMAGENET_STD,  # noqa: F401 (re-exported)
                                   InputFormat, ModelSpec, PaperFigures, normalize_images)
from senet_jax.options import did_you_mean, validate_options  # noqa: F401 (re-exported)

FAMILIES = (resnet, bn_inception, inception_resnet, vgg, mobilenet, shufflenet, cifar)
_REGISTRY: Dict[str, ModelSpec] = {}
# Every name of a family takes the same pixels, so a model instance knows its input format.
_INPUT_FORMATS: Dict[type, InputFormat] = {}
for _family in FAMILIES:
    for _name, _spec in _family.SPECS.items():
        assert _name not in _REGISTRY, f'{_name} is registered twice'
        _REGISTRY[_name] = _spec
        assert _INPUT_FORMATS.setdefault(_spec.family, _spec.input_format) == _spec.input_format, \
            f'{_name}: another input format than the rest of {_spec.family.__name__}'


def set_overrides(overrides: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The `create_model` arguments a config's `model_overrides` sets.

    Config placeholders are None and mean "the model's default"; they are
    dropped here rather than in `create_model`, where None can be a real
    choice (`stem_pool=None`).
    """
    # A nested ConfigDict (selective_kernel's options) reaches the model as a plain dict.
    return {k: v.to_dict() if hasattr(v, 'to_dict') else v
            for k, v in (overrides or {}).items() if v is not None}


def list_models() -> List[str]:
    """Every registered model name, sorted."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model '{name}'.{did_you_mean(name, _REGISTRY)} "
                         '`python -m senet_jax.models` lists them all.')
    return _REGISTRY[name]


def input_format(model) -> InputFormat:
    """The `ModelSpec.input_format` of a zoo model instance (its family's), as the trainer
    normalises its images."""
    for family, fmt in _INPUT_FORMATS.items():
        if isinstance(model, family):
            return fmt
    raise ValueError(f'{type(model).__name__} is not a zoo model: no input format is known for it.')


def min_input_size(model) -> int:
    """The smallest input side the model takes (its `min_input_size()`)."""
    return model.min_input_size()


def overridable(name: str) -> List[str]:
    """The options `create_model(name, ...)` accepts: the fields of its module."""
    fields = {f.name for f in dataclasses.fields(model_spec(name).family)}
    return sorted(fields - {'parent', 'name'})


def create_model(name: str, num_classes: Optional[int] = None, **overrides):
    """Build a zoo model by name, with any field of its module overridden.

    Example: `create_model('se_resnet50', num_classes=10, reduction=8, se_stages=(4, 5),
    dtype=jnp.bfloat16)`. `num_classes` defaults to the model's own (1000 for
    ImageNet, 10 for the CIFAR networks). A bad value is refused by the module
    itself, with the rules of `senet_jax.options`.
    """
    spec = model_spec(name)
    options = overridable(name)
    for option in sorted(overrides):
        if option == 'selective_kernel' and option not in options:
            raise ValueError(f'{name} does not take selective_kernel: SKNet replaces the 3x3 conv '
                             'of a residual block, so only the residual family (ResNet) offers it.')
        if option not in options:
            hint = did_you_mean(option, options) or f' The options are {options}.'
            raise ValueError(f"Unknown option '{option}' for {name}.{hint}")
    if isinstance(overrides.get('se_stages'), int):
        overrides['se_stages'] = (overrides['se_stages'],)
    if overrides.get('se_stages') is not None:
        overrides['se_stages'] = tuple(overrides['se_stages'])
    num_classes = spec.num_classes if num_classes is None else num_classes
    return spec.family(**{**spec.kwargs, 'num_classes': num_classes, **overrides})
