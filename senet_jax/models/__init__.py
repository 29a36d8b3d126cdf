"""The model zoo: one residual-network family with SE as a block option."""
from senet_jax.models.registry import (IMAGENET_MEAN, IMAGENET_STD, ModelSpec, create_model,
                                       list_models, min_input_size, model_spec, normalize_images,
                                       set_overrides, validate_options)
from senet_jax.models.resnet import SE_POSITIONS, STAGES, ResidualBlock, ResNet
