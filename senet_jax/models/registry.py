"""Models by name: `create_model(name, num_classes=1000, **overrides)` and `list_models()`.

Each entry is a set of `ResNet` arguments plus the reference network it matches
number for number (timm 1.0 names) and that reference's state_dict layout
('timm' for torchvision-style ResNets, 'legacy' for the Cadene/Caffe SENets).
"""
import dataclasses
import difflib
from typing import Any, Dict, List, Mapping, NamedTuple, Optional

import jax.numpy as jnp
import numpy as np

from senet_jax.models.resnet import SE_POSITIONS, STAGES, ResNet
from senet_jax.cpu_kernels import KERNELS
from senet_jax.layers import GATES, SQUEEZES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_images(images, dtype=jnp.float32):
    """RGB in [0, 255] (uint8 or float) -> the ImageNet-normalised input the zoo models expect."""
    mean = np.asarray(IMAGENET_MEAN, np.float32) * 255
    std = np.asarray(IMAGENET_STD, np.float32) * 255
    return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


def set_overrides(overrides: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The `create_model` arguments a config's `model_overrides` sets.

    Config placeholders are None and mean "the model's default"; they are
    dropped here rather than in `create_model`, where None can be a real
    choice (`stem_pool=None`). Stage lists (from JSON) become tuples.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if 'se_stages' in given:
        given['se_stages'] = tuple(given['se_stages'])
    return given


class ModelSpec(NamedTuple):
    kwargs: Dict[str, Any]
    reference: Optional[str]      # timm.create_model name of the reference network
    layout: str                   # state_dict layout of the reference: 'timm' | 'legacy'
    input_size: int = 224         # default training / evaluation resolution


_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
           152: (3, 8, 36, 3)}
_BOTTLENECK = {18: False, 34: False, 50: True, 101: True, 152: True}
# The Caffe layout: ceil-mode stem pool, SE width floor(C/r).
_LEGACY = dict(stem_pool='ceil', se_divisor=1)

_REGISTRY: Dict[str, ModelSpec] = {}


def _register(name, reference, layout, **kwargs):
    _REGISTRY[name] = ModelSpec(kwargs, reference, layout)


for _d in (18, 34, 50, 101, 152):
    _base = dict(layers=_DEPTHS[_d], bottleneck=_BOTTLENECK[_d])
    _register(f'resnet{_d}', f'resnet{_d}', 'timm', se_stages=(), **_base)
    _register(f'se_resnet{_d}', f'seresnet{_d}', 'timm', se_divisor=8, **_base)
    _register(f'legacy_se_resnet{_d}', f'legacy_seresnet{_d}', 'legacy', **_LEGACY, **_base,
              # Caffe SE-ResNet: stride on the bottleneck's 1x1; ReLU before SE in basic blocks.
              stride_on_1x1=_BOTTLENECK[_d], act_before_se=not _BOTTLENECK[_d])
for _d in (50, 101):
    _base = dict(layers=_DEPTHS[_d], cardinality=32, base_width=4)
    _register(f'resnext{_d}_32x4d', f'resnext{_d}_32x4d', 'timm', se_stages=(), **_base)
    _register(f'se_resnext{_d}_32x4d', f'seresnext{_d}_32x4d', 'timm', se_divisor=8, **_base)
    _register(f'legacy_se_resnext{_d}_32x4d', f'legacy_seresnext{_d}_32x4d', 'legacy',
              **_LEGACY, **_base)
# SENet-154 (Sec. 5 / Appendix of the paper): 64x4d SE-ResNeXt-152 with a three-conv stem,
# a half-width first 1x1 conv, 3x3 projection shortcuts, and dropout 0.2 before the classifier.
_register('senet154', 'legacy_senet154', 'legacy', **_LEGACY, layers=_DEPTHS[152],
          cardinality=64, base_width=4, reduce_first=2, stem='deep', stem_width=128,
          downsample_kernel=3, drop_rate=0.2)
# A small SE-ResNet for tiny images (the digits quickstart, tests): one basic block a
# stage, a 3x3 stride-1 stem, no stem pool, total stride 8.
_MINI = dict(layers=(1, 1, 1, 1), bottleneck=False, widths=(16, 32, 64, 128), stem='small',
             stem_width=16, stem_pool=None)
_register('se_resnet_mini', None, 'timm', reduction=4, se_divisor=1, **_MINI)
_register('resnet_mini', None, 'timm', se_stages=(), **_MINI)   # its plain baseline

_OVERRIDABLE = {f.name for f in dataclasses.fields(ResNet)} - {'parent', 'name'}


def list_models() -> List[str]:
    """Every registered model name, sorted."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ''
        raise ValueError(f"Unknown model '{name}'.{hint} `python -m senet_jax.models` lists them all.")
    return _REGISTRY[name]


def min_input_size(model: ResNet) -> int:
    """The smallest input side for which every stage still has a feature map of at least 1x1."""
    stem_stride = {'7x7': 2, 'deep': 2, 'small': 1}[model.stem] * (1 if model.stem_pool is None else 2)
    return stem_stride * 8


def validate_options(**options):
    """Raise ValueError with one clear sentence for an out-of-range SE / model option."""
    if 'reduction' in options and not options['reduction'] >= 1:
        raise ValueError(f"reduction (r) must be at least 1, got {options['reduction']}.")
    if 'squeeze' in options and options['squeeze'] not in SQUEEZES:
        raise ValueError(f"squeeze must be one of {SQUEEZES}, got {options['squeeze']!r}.")
    if 'gate' in options and options['gate'] not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got {options['gate']!r}.")
    if 'se_position' in options and options['se_position'] not in SE_POSITIONS:
        raise ValueError(f"se_position must be one of {SE_POSITIONS}, got {options['se_position']!r}.")
    if 'se_stages' in options:
        stages = options['se_stages']
        if isinstance(stages, int) or not all(s in STAGES for s in stages):
            raise ValueError(f'se_stages must be a subset of {set(STAGES)} '
                             f'(conv2_x..conv5_x), got {stages!r}.')
    if 'num_classes' in options and not options['num_classes'] >= 1:
        raise ValueError(f"num_classes must be at least 1, got {options['num_classes']}.")
    if 'drop_rate' in options and not 0 <= options['drop_rate'] < 1:
        raise ValueError(f"drop_rate must be in [0, 1), got {options['drop_rate']}.")
    if 'kernels' in options and options['kernels'] not in KERNELS:
        close = difflib.get_close_matches(str(options['kernels']), KERNELS, n=1)
        hint = f' Did you mean {close[0]!r}?' if close else ''
        raise ValueError(f"kernels must be one of {KERNELS}, got {options['kernels']!r}.{hint}")


def create_model(name: str, num_classes: int = 1000, **overrides) -> ResNet:
    """Build a zoo model by name, with any `ResNet` field overridden.

    Example: `create_model('se_resnet50', num_classes=10, reduction=8, se_stages=(4, 5),
    dtype=jnp.bfloat16)`.
    """
    spec = model_spec(name)
    unknown = sorted(set(overrides) - _OVERRIDABLE)
    if unknown:
        raise ValueError(f'Unknown option(s) {unknown} for {name}; '
                         f'the options are {sorted(_OVERRIDABLE)}.')
    if 'se_stages' in overrides and overrides['se_stages'] is not None:
        if isinstance(overrides['se_stages'], int):
            overrides['se_stages'] = (overrides['se_stages'],)
        overrides['se_stages'] = tuple(overrides['se_stages'])
    validate_options(num_classes=num_classes, **overrides)
    return ResNet(**{**spec.kwargs, 'num_classes': num_classes, **overrides})
