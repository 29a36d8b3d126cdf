"""Weight conversion: strictness, file formats, hostile files, the CLI and load_pretrained."""
import json
import os
import pickle
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from reference_weights import random_input, random_state_dict
from senet_jax import load_pretrained
from senet_jax.convert import ConversionError, main, read_weights, torch_to_flax
from senet_jax.models import create_model

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_state_dict(name):
    with open(os.path.join(FIXTURES, 'reference', f'{name}.json')) as f:
        return random_state_dict(json.load(f)['keys'])


def test_missing_unexpected_and_misshapen_keys_are_named():
    sd = reference_state_dict('se_resnet18')
    del sd['layer3.1.bn2.running_var']
    sd['layer9.extra.weight'] = np.zeros(3, np.float32)
    sd['layer2.0.se.fc1.weight'] = np.zeros((9, 128, 1, 1), np.float32)
    with pytest.raises(ConversionError) as e:
        torch_to_flax('se_resnet18', sd)
    msg = str(e.value)
    assert 'layer3.1.bn2.running_var' in msg and 'layer9.extra.weight' in msg
    assert 'layer2.0.se.fc1.weight (9, 128, 1, 1)' in msg


@pytest.mark.slow
def test_weights_of_another_model_are_refused():
    with pytest.raises(ConversionError, match='do not fit se_resnet50'):
        torch_to_flax('se_resnet50', reference_state_dict('se_resnet18'))
    with pytest.raises(ConversionError, match='classifier'):   # timm layout into a legacy model
        torch_to_flax('legacy_se_resnet18', reference_state_dict('se_resnet18'))


def test_num_classes_follows_the_weights():
    sd = reference_state_dict('resnet18')
    sd['fc.weight'], sd['fc.bias'] = sd['fc.weight'][:10], sd['fc.bias'][:10]
    assert torch_to_flax('resnet18', sd)['params']['fc']['kernel'].shape == (512, 10)


def test_pth_reader_rebuilds_tensors_without_torch():
    got = read_weights(os.path.join(FIXTURES, 'tensors.pth'))
    want = np.load(os.path.join(FIXTURES, 'tensors_expected.npz'))
    assert sorted(got) == sorted(want.files)
    for k in want.files:
        np.testing.assert_array_equal(np.asarray(got[k], want[k].dtype), want[k])
    assert got['view_t'].shape == (6, 4) and got['slice'].shape == (2, 3)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_hostile_pth_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('evil/data.pkl', pickle.dumps({'fc.weight': _Evil(marker)}, protocol=2))
    with pytest.raises(ConversionError, match='refusing to load'):
        read_weights(str(path))
    assert not marker.exists()
    raw = tmp_path / 'evil_raw.pth'                  # legacy (non-zip) pickle: refused outright
    raw.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(ConversionError, match='neither .safetensors nor'):
        read_weights(str(raw))
    assert not marker.exists()


@pytest.mark.no_cover   # every line it runs, cheaper tests run too (docs/architecture.md, "Tests")
@pytest.mark.slow
def test_cli_converts_and_load_pretrained_gives_the_same_network(tmp_path):
    sd = reference_state_dict('legacy_se_resnet18')
    weights = tmp_path / 'w.safetensors'
    save_file(sd, str(weights))
    out = tmp_path / 'converted'
    assert main(['--model', 'legacy_se_resnet18', '--weights', str(weights), '--out', str(out)]) == 0
    model, variables = load_pretrained(str(out))
    x = jnp.asarray(random_input(64, 48).transpose(0, 2, 3, 1))
    direct = create_model('legacy_se_resnet18').apply(torch_to_flax('legacy_se_resnet18', sd), x)
    np.testing.assert_array_equal(model.apply(variables, x), direct)
    # A new head for fine-tuning keeps the backbone.
    model10, variables10 = load_pretrained(str(out), num_classes=10)
    assert model10.apply(variables10, x).shape == (1, 10)
    np.testing.assert_array_equal(variables10['params']['stage5_block1']['conv2']['kernel'],
                                  variables['params']['stage5_block1']['conv2']['kernel'])


@pytest.mark.slow
def test_cli_bad_input_is_one_sentence_and_exit_1(tmp_path):
    sd = reference_state_dict('se_resnet18')
    weights = tmp_path / 'w.safetensors'
    save_file(sd, str(weights))
    cases = [(['--model', 'se_resnet50', '--weights', str(weights)], 'do not fit se_resnet50'),
             (['--model', 'se_resnt18', '--weights', str(weights)], "Did you mean 'se_resnet18'"),
             (['--model', 'se_resnet18', '--weights', str(tmp_path / 'nope.pth')], 'No weights file')]
    for args, message in cases:
        r = subprocess.run([sys.executable, '-m', 'senet_jax.convert', *args, '--out', str(tmp_path / 'o')],
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 1, r.stderr
        assert message in r.stderr and 'Traceback' not in r.stderr


@pytest.mark.slow
def test_init_from_refuses_weights_of_another_model(tmp_path):
    import optax
    from configs import quickstart
    from senet_jax import trainer
    from senet_jax.convert import save_converted
    from senet_jax.errors import UserError
    config = quickstart.get_config()
    resnet18 = create_model('resnet18', num_classes=10)
    save_converted(str(tmp_path / 'r18'), 'resnet18',
                   resnet18.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    mini = trainer.create_model_from_config(config, 10)
    state = trainer.create_train_state(jax.random.key(0), config, mini, optax.sgd(0.1))
    config.init_from = str(tmp_path / 'r18')
    with pytest.raises(UserError, match='holds resnet18 weights, which do not fit se_resnet_mini'):
        trainer.load_init_from(config, state, 10)
    config.init_from = str(tmp_path)            # a directory without converted weights
    with pytest.raises(UserError, match='holds no converted weights'):
        trainer.load_init_from(config, state, 10)
