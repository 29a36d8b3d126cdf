"""timm's MobileNet v1 (`mobilenetv1_100`): pytorchcv's network with ReLU6, in timm's
layout, and its published weight `mobilenetv1_100.ra4_e3600_r224_in1k` through a local hub.
Parity of logits with timm at 224 and 161x131 is tests/test_parity.py (slow)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save

from hub_server import HubServer
from reference_weights import torch_state_dict
from senet_jax import pretrained
from senet_jax.convert import ConversionError, torch_key, torch_to_flax
from senet_jax.models import create_model, model_spec
from senet_jax.models.mobilenet import MobileNetV1

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'reference')
TAG = 'mobilenetv1_100.ra4_e3600_r224_in1k'


def _fixture(name):
    with open(os.path.join(FIXTURES, f'{name}.json')) as f:
        return json.load(f)


def _shapes(model, size=64):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def test_every_variable_maps_to_one_key_of_timms_state_dict():
    keys = {k for k, _ in _fixture('mobilenetv1_100')['keys'] if not k.endswith('num_batches_tracked')}
    flat = traverse_util.flatten_dict(dict(_shapes(create_model('mobilenetv1_100'))))
    mapped = [torch_key(c, tuple(p), 'timm_mobilenet') for c, *p in flat]
    assert len(set(mapped)) == len(mapped) and set(mapped) == keys
    assert torch_key('params', ('stage4_unit6', 'pw_bn', 'scale'), 'timm_mobilenet') == 'blocks.3.5.bn2.weight'
    # timm's and pytorchcv's networks have the same parameters, under other names.
    assert _fixture('mobilenetv1_100')['num_params'] == _fixture('mobilenet_v1')['num_params'] == 4_231_976


def test_relu6_is_the_only_difference_from_pytorchcvs():
    timm, pytorchcv = model_spec('mobilenetv1_100'), model_spec('mobilenet_v1')
    assert timm.family is pytorchcv.family is MobileNetV1
    assert timm.kwargs == dict(pytorchcv.kwargs, activation='relu6')
    assert (create_model('mobilenetv1_100').activation, create_model('mobilenet_v1').activation) == (
        'relu6', 'relu')
    with pytest.raises(ValueError) as e:
        MobileNetV1(activation='relu5')
    assert "activation must be one of ('relu', 'relu6'), got 'relu5'." in str(e.value)
    assert '\n' not in str(e.value)


def test_pytorchcv_weights_are_refused_in_timms_layout():
    sd = {k: np.zeros(s, np.float32) for k, s in _fixture('mobilenet_v1')['keys']}
    with pytest.raises(ConversionError, match="no classifier 'classifier.bias'"):
        torch_to_flax('mobilenetv1_100', sd)


def test_the_weight_carries_timms_config():
    w = pretrained.weight_config(TAG)
    assert (w.model, w.source, w.layout) == ('mobilenetv1_100', 'hf-hub:timm/' + TAG, None)
    assert (w.input_size, w.crop_pct, w.interpolation, w.test_input_size, w.test_crop_pct) == (
        224, 0.875, 'bicubic', 256, 0.95)
    assert (w.mean, w.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))   # IMAGENET_INCEPTION_*
    assert pretrained.resolve('mobilenetv1_100')[0] == TAG
    assert pretrained.resolve('hf-hub:timm/' + TAG)[0] == TAG


@pytest.mark.slow
def test_a_timm_layout_file_from_the_hub_gives_the_source_logits(tmp_path, monkeypatch):
    """Random variables -> a timm-layout safetensors on a local hub -> load_pretrained(TAG):
    the same logits as the source variables, and ReLU6 matters to them."""
    from huggingface_hub import constants
    model = create_model('mobilenetv1_100', kernels='plain')
    rng = np.random.default_rng(0)
    shapes = _shapes(model, 32)
    variables = jax.tree.map(lambda s: (0.5 + rng.random(s.shape)).astype(np.float32) if len(s.shape) == 1
                             else rng.normal(scale=0.5, size=s.shape).astype(np.float32), shapes)
    server = HubServer()
    server.files[f'timm/{TAG}/model.safetensors'] = save(torch_state_dict(variables, 'timm_mobilenet'))
    url = server.url
    monkeypatch.setattr(constants, 'ENDPOINT', url)
    monkeypatch.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE', url + '/{repo_id}/resolve/{revision}/{filename}')
    monkeypatch.setattr(constants, 'HF_HOME', str(tmp_path / 'hf'))
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'hf' / 'hub'))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    try:
        loaded_model, loaded = pretrained.load_pretrained(TAG)
    finally:
        server.close()
    assert loaded_model.activation == 'relu6'
    x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)).astype(np.float32))
    apply = jax.jit(lambda m, v: m.apply(v, x), static_argnums=0)
    want = apply(model, variables)
    np.testing.assert_array_equal(apply(model, loaded), want)
    relu = apply(model.clone(activation='relu'), loaded)
    assert float(jnp.abs(relu - want).max()) > 1e-2 * float(jnp.abs(want).max())
