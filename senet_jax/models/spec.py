"""What the registry knows of a model besides its module: `ModelSpec`.

Each family module (resnet.py, ...) ends with a `SPECS` table of these;
`registry.py` gathers them. This module imports no family, so that every
family can use it.
"""
from typing import Any, Dict, NamedTuple, Optional, Tuple

import jax.numpy as jnp
import numpy as np


class InputFormat(NamedTuple):
    """How a network wants its pixels: (x - mean) / std per channel, in [0, 255]
    units, channels in RGB order or (bgr=True) reversed first."""
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    bgr: bool = False


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision / timm: RGB scaled to [0, 1], then the ImageNet statistics.
IMAGENET = InputFormat(tuple(m * 255 for m in IMAGENET_MEAN), tuple(s * 255 for s in IMAGENET_STD))
# Caffe (the official SENet release, Cadene's bninception): BGR in [0, 255],
# mean 104/117/123 (B, G, R), no division.
CAFFE_BGR = InputFormat((104.0, 117.0, 123.0), (1.0, 1.0, 1.0), bgr=True)
# CIFAR-10 training statistics, the usual normalisation of the CIFAR networks.
CIFAR = InputFormat((125.3, 123.0, 113.9), (63.0, 62.1, 66.7))


def normalize_images(images, dtype=jnp.float32, input_format: InputFormat = IMAGENET):
    """RGB in [0, 255] (uint8 or float) -> the input a zoo model expects
    (its `ModelSpec.input_format`; the ImageNet normalisation by default)."""
    x = images.astype(jnp.float32)
    if input_format.bgr:
        x = x[..., ::-1]
    mean = np.asarray(input_format.mean, np.float32)
    std = np.asarray(input_format.std, np.float32)
    return ((x - mean) / std).astype(dtype)


class PaperFigures(NamedTuple):
    """A network's complexity as the SENet paper reports it."""
    table: str                      # e.g. 'Table 2'
    gflops: Optional[float] = None  # multiply-adds, in G, at the paper's resolution
    params_m: Optional[float] = None


class ModelSpec(NamedTuple):
    family: Any                   # the flax module class (ResNet, BNInception, ...)
    kwargs: Dict[str, Any]        # its arguments for this name
    reference: Optional[str]      # the reference network's name in `source`
    layout: str                   # state_dict layout of the reference (convert.py's table)
    input_size: int = 224         # the resolution it is meant for
    source: str = 'timm'          # who builds the reference: 'timm' | 'pytorchcv' | 'cadene'
    input_format: InputFormat = IMAGENET
    num_classes: int = 1000       # the default head
    paper: Optional[PaperFigures] = None
    odd_size: Tuple[int, int] = (161, 131)   # the parity fixture's second, odd input size


def spec(family, reference, layout, **fields_and_kwargs) -> ModelSpec:
    """A ModelSpec from its fields and, for everything else, module arguments."""
    fields = {k: fields_and_kwargs.pop(k) for k in list(fields_and_kwargs)
              if k in ModelSpec._fields}
    return ModelSpec(family, fields_and_kwargs, reference, layout, **fields)
