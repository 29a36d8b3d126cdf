"""The model zoo: one module per family, SE as an option of each, found by name."""
from senet_jax.models.registry import (FAMILIES, IMAGENET, IMAGENET_MEAN, IMAGENET_STD,
                                       InputFormat, ModelSpec, PaperFigures, create_model,
                                       input_format, list_models, min_input_size, model_spec, normalize_images,
                                       overridable, set_overrides, validate_options)
from senet_jax.models.resnet import SE_POSITIONS, STAGES, ResidualBlock, ResNet
