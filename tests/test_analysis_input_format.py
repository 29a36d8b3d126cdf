"""analysis.prepare gives each model the pixels the trainer gives it: its own input format."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reference_weights import random_variables
from senet_jax import analysis
from senet_jax.models import create_model, input_format, model_spec, normalize_images

# One model of each input format: ImageNet, CIFAR, Caffe BGR, Inception.
ONE_PER_FORMAT = ('se_resnet_mini', 'se_resnet110_cifar', 'se_bn_inception', 'se_inception_resnet_v2')
PIXEL = np.array([[[[10, 20, 30]]]], np.uint8)   # R, G, B


def test_one_model_of_each_input_format_gets_its_own_pixels():
    prepared = {}
    for name in ONE_PER_FORMAT:
        model = create_model(name)
        assert input_format(model) == model_spec(name).input_format
        prepared[name] = np.asarray(analysis.prepare(jnp.asarray(PIXEL), model))
        np.testing.assert_array_equal(   # what the trainer's steps feed it
            prepared[name], normalize_images(PIXEL, input_format=model_spec(name).input_format))
    assert len({p.tobytes() for p in prepared.values()}) == 4
    # Caffe: BGR, means 104/117/123, no scaling; Inception: [0, 255] -> [-1, 1].
    np.testing.assert_allclose(prepared['se_bn_inception'][0, 0, 0], [30 - 104, 20 - 117, 10 - 123])
    np.testing.assert_allclose(prepared['se_inception_resnet_v2'][0, 0, 0],
                               np.array([10, 20, 30]) / 127.5 - 1, rtol=1e-6)
    floats = jnp.ones((1, 1, 1, 3))   # float images are the caller's, as they are
    assert analysis.prepare(floats, create_model('se_bn_inception')) is floats


def test_a_module_outside_the_zoo_is_refused():
    import flax.linen as nn
    with pytest.raises(ValueError, match='Dense is not a zoo model'):
        analysis.prepare(jnp.asarray(PIXEL), nn.Dense(3))


@pytest.mark.slow
def test_the_gates_of_a_cifar_model_see_cifar_inputs():
    model = create_model('se_resnet110_cifar', units=(1, 1, 1))
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), np.uint8)
    cifar = normalize_images(images, input_format=model_spec('se_resnet110_cifar').input_format)
    variables = random_variables(model, cifar)   # generic values; no initializer compiled
    logits, _ = analysis.gates_and_logits(model, variables, images)
    apply = jax.jit(model.apply)   # one program, not op by op
    np.testing.assert_allclose(logits, apply(variables, cifar), rtol=1e-5, atol=1e-6)
    assert not np.allclose(logits, apply(variables, normalize_images(images)), atol=1e-3)
