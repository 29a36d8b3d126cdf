"""Published weights by tag, offline: a local hub and release host on 127.0.0.1 serve
random weights in timm's layout for the small `se_resnet_mini`; the table itself
is the real one."""
import collections
import hashlib
import io
import os
import pathlib
import pickle
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save

from hub_server import HubServer
from reference_weights import torch_state_dict
from senet_jax import convert, list_pretrained, pretrained
from senet_jax.models import create_model, list_models
from senet_jax.pretrained import PretrainedError, Weight

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = 'se_resnet_mini'


# --- the table -----------------------------------------------------------------------

def test_the_issue_s_tags_are_listed_with_their_configs():
    tags = list_pretrained('*se_resnet50*')
    assert tags[:4] == ['se_resnet50.a1_in1k', 'se_resnet50.a2_in1k', 'se_resnet50.a3_in1k',
                        'se_resnet50.ra2_in1k']
    assert 'legacy_se_resnet50.in1k' in tags
    assert list_pretrained('*se_resnext50*') == [
        'se_resnext50_32x4d.racm_in1k', 'se_resnext50_32x4d.gluon_in1k',
        'legacy_se_resnext50_32x4d.in1k']
    ra2 = pretrained.weight_config('se_resnet50.ra2_in1k')
    assert (ra2.source, ra2.input_size, ra2.crop_pct, ra2.interpolation, ra2.test_input_size) == (
        'hf-hub:timm/seresnet50.ra2_in1k', 224, 0.875, 'bicubic', 288)
    assert pretrained.weight_config('legacy_se_resnet50.in1k').source.endswith(
        'v0.1-cadene/se_resnet50-ce0d4300.pth')
    assert all(w.model in list_models() for w in pretrained.WEIGHTS.values())
    assert len(ra2.label_names()) == 1000 and ra2.label_names()[0] == 'tench'
    cifar = pretrained.weight_config('se_resnet110_cifar.pytorchcv_cifar100')
    assert len(cifar.label_names()) == cifar.num_classes == 100


# Issue 21: every SE weight timm 1.0.31 publishes for a ResNet-variant network.
TIMM_SE = ['legacy_seresnet18.in1k', 'legacy_seresnet34.in1k', 'legacy_seresnet50.in1k',
           'legacy_seresnet101.in1k', 'legacy_seresnet152.in1k', 'legacy_seresnext26_32x4d.in1k',
           'legacy_seresnext50_32x4d.in1k', 'legacy_seresnext101_32x4d.in1k', 'legacy_senet154.in1k',
           'senet154.gluon_in1k', 'seresnet50.a1_in1k', 'seresnet50.a2_in1k', 'seresnet50.a3_in1k',
           'seresnet50.ra2_in1k', 'seresnet152d.ra2_in1k', 'seresnext26d_32x4d.bt_in1k',
           'seresnext26t_32x4d.bt_in1k', 'seresnext50_32x4d.gluon_in1k', 'seresnext50_32x4d.racm_in1k',
           'seresnext101_32x4d.gluon_in1k', 'seresnext101_32x8d.ah_in1k', 'seresnext101_64x4d.gluon_in1k',
           'seresnext101d_32x8d.ah_in1k', 'seresnextaa101d_32x8d.ah_in1k', 'seresnextaa101d_32x8d.sw_in12k',
           'seresnextaa101d_32x8d.sw_in12k_ft_in1k', 'seresnextaa101d_32x8d.sw_in12k_ft_in1k_288',
           'seresnextaa201d_32x8d.sw_in12k', 'seresnextaa201d_32x8d.sw_in12k_ft_in1k_384']


def test_every_timm_se_weight_has_its_tag():
    from senet_jax.models import model_spec
    by_timm_name = {f'{model_spec(w.model).reference}.{tag.split(".", 1)[1]}': (tag, w)
                    for tag, w in pretrained.WEIGHTS.items()}
    for timm_tag in TIMM_SE:
        assert timm_tag in by_timm_name, timm_tag
        tag, w = by_timm_name[timm_tag]
        if not timm_tag.startswith('legacy_'):
            assert w.source == 'hf-hub:timm/' + timm_tag
    assert pretrained.weight_config('se_resnextaa201d_32x8d.sw_in12k').num_classes == 11821
    assert len(pretrained.weight_config('se_resnextaa201d_32x8d.sw_in12k').label_names()) == 11821


# Issue 22: the published weights of SE's successors in the residual family (timm 1.0.31).
TIMM_SUCCESSORS = ['ecaresnet26t.ra2_in1k', 'ecaresnet50d.miil_in1k', 'ecaresnet50t.a1_in1k',
                   'ecaresnet50t.a2_in1k', 'ecaresnet50t.a3_in1k', 'ecaresnet50t.ra2_in1k',
                   'ecaresnet101d.miil_in1k', 'ecaresnet269d.ra2_in1k', 'ecaresnetlight.miil_in1k',
                   'skresnet18.ra_in1k', 'skresnet34.ra_in1k', 'skresnext50_32x4d.ra_in1k']


def test_every_successor_weight_has_its_tag_on_the_hub():
    from senet_jax.models import model_spec
    by_source = {w.source: (tag, w) for tag, w in pretrained.WEIGHTS.items()}
    for timm_tag in TIMM_SUCCESSORS:
        tag, w = by_source['hf-hub:timm/' + timm_tag]
        assert model_spec(w.model).reference == timm_tag.split('.')[0]
        assert tag.split('.', 1)[1] == timm_tag.split('.', 1)[1] and w.layout is None
        assert w.top1 is not None and w.top1_source == pretrained.TIMM_RESULTS
    # timm's default weight of each network is listed first, at the zoo model's input size.
    assert pretrained.resolve('eca_resnet50t')[0] == 'eca_resnet50t.ra2_in1k'
    assert pretrained.resolve('sk_resnext50_32x4d')[0] == 'sk_resnext50_32x4d.ra_in1k'
    for name in ('eca_resnet26t', 'eca_resnet50t', 'eca_resnet269d', 'sk_resnet18'):
        assert pretrained.resolve(name)[1].input_size == model_spec(name).input_size


def test_model_names_hub_ids_and_tags_resolve():
    assert pretrained.resolve('se_resnet50')[0] == 'se_resnet50.a1_in1k'     # timm's default
    assert pretrained.resolve('hf-hub:timm/seresnet50.ra2_in1k')[0] == 'se_resnet50.ra2_in1k'
    assert pretrained.resolve('senet154')[1].source.endswith('legacy_senet154-e9eb9fe6.pth')


def test_an_unknown_tag_is_one_sentence_with_close_matches():
    with pytest.raises(PretrainedError) as e:
        pretrained.load_pretrained('se_resnet50.ra_in1k')
    msg = str(e.value)
    assert "'se_resnet50.ra2_in1k'" in msg and 'Did you mean' in msg and '\n' not in msg


def test_caffe_weights_normalise_in_bgr():
    fmt = pretrained.weight_config('bn_inception.cadene_in1k').input_format()
    assert fmt.bgr and fmt.mean == pytest.approx((104, 117, 128)) and fmt.std == pytest.approx((1, 1, 1))


# --- a local hub -----------------------------------------------------------------------

@pytest.fixture(scope='module')
def mini():
    """Random se_resnet_mini variables (from shapes only: nothing is compiled), an input
    batch, and the variables as a timm-layout safetensors file."""
    model = create_model(MINI, kernels='plain')
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
    variables = jax.tree.map(lambda s: (0.5 + rng.random(s.shape)).astype(np.float32) if len(s.shape) == 1
                             else rng.normal(scale=0.2, size=s.shape).astype(np.float32), shapes)
    variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
    return model, x, variables, save(torch_state_dict(variables, 'timm', se_as_conv=True))


def _endpoint(monkeypatch, url):
    """What HF_ENDPOINT=url sets when huggingface_hub is imported."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'ENDPOINT', url)
    monkeypatch.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE',
                        url + '/{repo_id}/resolve/{revision}/{filename}')


@pytest.fixture
def hub(tmp_path, monkeypatch, mini):
    """The hub on 127.0.0.1 behind huggingface_hub (HF_ENDPOINT, HF_HOME as the env gives them)."""
    from huggingface_hub import constants
    server = HubServer()
    server.files['test/mini/model.safetensors'] = mini[3]
    _endpoint(monkeypatch, server.url)
    monkeypatch.setattr(constants, 'HF_HOME', str(tmp_path / 'hf'))
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'hf' / 'hub'))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setitem(pretrained.WEIGHTS, 'se_resnet_mini.hub',
                        Weight(MINI, 'hf-hub:test/mini', input_size=16, layout='timm'))
    yield server
    server.close()


@pytest.mark.slow
def test_download_convert_load_then_cache_then_offline(hub, mini, monkeypatch):
    from huggingface_hub import constants
    _, x, variables, _ = mini
    apply = jax.jit(mini[0].apply)                              # compiled once
    want = apply(variables, x)
    model, got = pretrained.load_pretrained('se_resnet_mini.hub')
    assert model.num_classes == 1000
    np.testing.assert_array_equal(apply(got, x), want)          # conversion is exact
    assert any(m == 'GET' for m, _ in hub.requests) and len(_blobs()) == 1

    # The second load: no request, no conversion.
    hub.requests.clear()
    torch_to_flax = convert.torch_to_flax
    monkeypatch.setattr(convert, 'torch_to_flax', None)
    model, got = pretrained.load_pretrained('hf-hub:test/mini')
    np.testing.assert_array_equal(apply(got, x), want)
    assert hub.requests == []
    monkeypatch.setattr(convert, 'torch_to_flax', torch_to_flax)

    # Offline, converted cache gone: the hub cache alone serves it.
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    for f in (pretrained.cache_dir() / 'converted').iterdir():
        f.unlink()
    model, got = pretrained.load_pretrained('se_resnet_mini.hub', num_classes=7)
    assert hub.requests == [] and model.num_classes == 7
    np.testing.assert_array_equal(got['params']['stem_conv1']['kernel'],
                                  variables['params']['stem_conv1']['kernel'])


def _blobs():
    from huggingface_hub import constants
    return list(pathlib.Path(constants.HF_HUB_CACHE).rglob('blobs/*'))


def test_a_corrupt_download_is_refused_and_not_cached(hub):
    hub.corrupt.add('model.safetensors')
    with pytest.raises(PretrainedError, match='corrupt') as e:
        pretrained.load_pretrained('se_resnet_mini.hub')
    assert '\n' not in str(e.value)
    assert _blobs() == [] and not (pretrained.cache_dir() / 'converted').exists()


def test_a_truncated_download_is_refused_and_not_cached(hub, monkeypatch):
    import time
    monkeypatch.setattr(time, 'sleep', lambda seconds: None)   # huggingface_hub's retry waits
    hub.truncate.add('model.safetensors')
    with pytest.raises(PretrainedError) as e:
        pretrained.load_pretrained('se_resnet_mini.hub')
    assert '\n' not in str(e.value) and 'se_resnet_mini.hub' in str(e.value)
    assert [p for p in _blobs() if not p.name.endswith('.incomplete')] == []


def test_missing_network_with_nothing_cached_is_one_sentence(hub, monkeypatch):
    import time
    from huggingface_hub import constants
    _endpoint(monkeypatch, 'http://127.0.0.1:9')    # nothing listens there
    monkeypatch.setattr(time, 'sleep', lambda seconds: None)   # huggingface_hub's retry waits
    with pytest.raises(PretrainedError) as e:
        pretrained.load_pretrained('se_resnet_mini.hub')
    msg = str(e.value)
    assert 'se_resnet_mini.hub' in msg and constants.HF_HUB_CACHE in msg
    assert '\n' not in msg
    # a release URL, offline
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(PretrainedError, match='nothing is cached in') as e:
        pretrained.load_pretrained('legacy_se_resnet50.in1k')
    assert str(pretrained.cache_dir() / 'downloads') in str(e.value)


def test_a_release_file_with_a_wrong_hash_is_refused(hub, mini, monkeypatch):
    data = mini[3]
    good = hashlib.sha256(data).hexdigest()[:8]
    hub.files['releases/mini-00000000.safetensors'] = data
    hub.files[f'releases/mini-{good}.safetensors'] = data
    for tag, name in (('bad', 'mini-00000000'), ('good', f'mini-{good}')):
        monkeypatch.setitem(pretrained.WEIGHTS, f'se_resnet_mini.{tag}', Weight(
            MINI, f'{hub.url}/releases/{name}.safetensors', input_size=16, layout='timm'))
    with pytest.raises(PretrainedError, match='does not match its sha256 00000000'):
        pretrained.load_pretrained('se_resnet_mini.bad')
    downloads = pretrained.cache_dir() / 'downloads'
    assert list(downloads.iterdir()) == []
    # the right hash passes, and the file is kept under its own name (no .part left)
    monkeypatch.setattr(pretrained, '_save_variables', lambda *a: None)
    monkeypatch.setattr(pretrained, '_with_head', lambda *a: a)
    # cut off halfway: refused in one sentence, the part kept; the next run resumes it
    hub.truncate.add(f'mini-{good}.safetensors')
    with pytest.raises(PretrainedError, match='run again to resume') as e:
        pretrained.load_pretrained('se_resnet_mini.good')
    assert '\n' not in str(e.value)
    assert [p.name for p in downloads.iterdir()] == [f'mini-{good}.safetensors.part']
    hub.truncate.clear()
    pretrained.load_pretrained('se_resnet_mini.good')
    assert hub.ranges == [f'bytes={len(data) // 2}-']
    assert [p.name for p in downloads.iterdir()] == [f'mini-{good}.safetensors']
    assert (downloads / f'mini-{good}.safetensors').read_bytes() == data


# --- torch's legacy format, and no torch at all ------------------------------------------

def legacy_pth(state_dict, rebuild='_rebuild_tensor_v2') -> bytes:
    """A state_dict in torch.save's pre-1.6 format (the layout torch/serialization.py's
    _legacy_save writes), made without torch: stand-in torch modules name the globals.
    rebuild='_rebuild_tensor' is torch 0.3's spelling (no requires_grad, no hooks)."""
    fake_torch, fake_utils = types.ModuleType('torch'), types.ModuleType('torch._utils')

    class FloatStorage:
        pass
    FloatStorage.__module__, FloatStorage.__qualname__ = 'torch', 'FloatStorage'

    def _rebuild_tensor_v2(*args):
        raise AssertionError
    _rebuild_tensor_v2.__module__ = 'torch._utils'
    _rebuild_tensor_v2.__qualname__ = _rebuild_tensor_v2.__name__ = rebuild
    fake_torch.FloatStorage = FloatStorage
    setattr(fake_utils, rebuild, _rebuild_tensor_v2)
    fake_torch._utils = fake_utils

    class Storage:
        def __init__(self, key, array):
            self.key, self.array = key, array

    class Tensor:
        def __init__(self, storage, shape):
            self.storage, self.shape = storage, shape

        def __reduce__(self):
            stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
            extra = (False, collections.OrderedDict()) if rebuild.endswith('_v2') else ()
            return (_rebuild_tensor_v2, (self.storage, 0, self.shape, stride) + extra)

    storages = {}
    obj = collections.OrderedDict()
    for i, (k, v) in enumerate(state_dict.items()):
        storages[str(i)] = Storage(str(i), np.ascontiguousarray(v, np.float32))
        obj[k] = Tensor(storages[str(i)], tuple(v.shape))

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, Storage):
                return ('storage', FloatStorage, o.key, 'cpu', o.array.size, None)
            return None

    saved = {m: sys.modules.get(m) for m in ('torch', 'torch._utils')}
    sys.modules.update({'torch': fake_torch, 'torch._utils': fake_utils})
    try:
        f = io.BytesIO()
        for header in (0x1950a86a20f9469cfc6c, 1001, {'protocol_version': 1001, 'little_endian': True,
                                                     'type_sizes': {'short': 2, 'int': 4, 'long': 4}}):
            pickle.dump(header, f, protocol=2)
        Pickler(f, protocol=2).dump(obj)
        pickle.dump(sorted(storages), f, protocol=2)
        for key in sorted(storages):
            f.write(np.int64(storages[key].array.size).tobytes() + storages[key].array.tobytes())
    finally:
        for m, mod in saved.items():
            if mod is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = mod
    return f.getvalue()


def test_legacy_pth_files_are_read_without_torch(tmp_path):
    sd = {'a.weight': np.arange(6, dtype=np.float32).reshape(2, 3), 'b.bias': np.ones(4, np.float32)}
    path = tmp_path / 'old.pth'
    for rebuild in ('_rebuild_tensor_v2', '_rebuild_tensor'):
        path.write_bytes(legacy_pth(sd, rebuild))
        got = convert.read_weights(str(path))
        assert sorted(got) == sorted(sd)
        for k in sd:
            np.testing.assert_array_equal(got[k], sd[k])
    path.write_bytes(legacy_pth(sd)[:-8])
    with pytest.raises(convert.ConversionError, match='ends inside a tensor'):
        convert.read_weights(str(path))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_a_hostile_legacy_pth_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / 'pwned'
    f = io.BytesIO()
    for obj in (0x1950a86a20f9469cfc6c, 1001, {}, {'w': _Evil(marker)}, []):
        pickle.dump(obj, f, protocol=2)
    (tmp_path / 'evil.pth').write_bytes(f.getvalue())
    with pytest.raises(convert.ConversionError, match='refusing to load'):
        convert.read_weights(str(tmp_path / 'evil.pth'))
    assert not marker.exists()


_NO_TORCH = '''
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == 'torch' or name.startswith('torch.'):
            raise ImportError('torch is blocked in this test')
sys.meta_path.insert(0, _NoTorch())
'''

_CHILD = '''
import sys, numpy as np
try:
    import torch
    sys.exit('torch imported')
except ImportError:
    pass
from flax import traverse_util
from senet_jax import pretrained, load_pretrained
pretrained.WEIGHTS['se_resnet_mini.release'] = pretrained.Weight(
    'se_resnet_mini', sys.argv[1], input_size=16, layout='timm')
model, variables = load_pretrained('se_resnet_mini.release')
np.savez(sys.argv[2], **traverse_util.flatten_dict(variables, sep='/'))
'''


@pytest.mark.slow
def test_a_release_file_loads_in_a_process_without_torch(tmp_path, mini):
    """HF_HOME from the environment; a legacy-format .pth, hash-checked, from a release URL."""
    variables = mini[2]
    server = HubServer()
    data = legacy_pth(torch_state_dict(variables, 'timm', se_as_conv=True))
    name = f'mini-{hashlib.sha256(data).hexdigest()[:10]}.pth'
    server.files[f'releases/{name}'] = data
    site = tmp_path / 'site'
    site.mkdir()
    (site / 'sitecustomize.py').write_text(_NO_TORCH)
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(site), ROOT]),
           'HF_HOME': str(tmp_path / 'hf'), 'JAX_PLATFORMS': 'cpu'}
    try:
        out = subprocess.run([sys.executable, '-c', _CHILD, f'{server.url}/releases/{name}',
                              str(tmp_path / 'got.npz')],
                             env=env, capture_output=True, text=True, timeout=300)
    finally:
        server.close()
    assert out.returncode == 0, out.stderr[-2000:]
    got = np.load(tmp_path / 'got.npz')
    want = traverse_util.flatten_dict(variables, sep='/')
    assert sorted(got.files) == sorted(want)
    for k in want:     # the same variables, hence the same logits (shown in process above)
        np.testing.assert_array_equal(got[k], want[k])
    assert (tmp_path / 'hf' / 'senet_jax' / 'downloads' / name).is_file()
    assert (tmp_path / 'hf' / 'senet_jax' / 'converted' / 'se_resnet_mini.release.safetensors').is_file()


# --- the weights' own preprocessing ------------------------------------------------------

@pytest.mark.slow
def test_eval_preprocessing_matches_pil_on_photographs():
    """The tf.data eval transform (train.py's) against timm's PIL transform: <= 1 grey level."""
    import skimage.data
    import tensorflow as tf
    from PIL import Image
    from sklearn.datasets import load_sample_images
    from senet_jax.data import preprocess
    photos = [skimage.data.chelsea(), skimage.data.coffee(), load_sample_images().images[0]]
    worst = 0.0
    for tag in ('se_resnet50.ra2_in1k', 'legacy_se_resnet50.in1k'):   # bicubic, bilinear
        weight = pretrained.weight_config(tag)
        for photo in photos:
            png = io.BytesIO()
            Image.fromarray(photo).save(png, 'PNG')
            ref = pretrained.eval_transform(Image.open(png), weight).astype(np.float64)
            got = preprocess.preprocess_eval(tf.constant(png.getvalue()), weight.input_size,
                                             weight.crop_pct, weight.interpolation).numpy()
            assert got.shape == ref.shape == (weight.input_size, weight.input_size, 3)
            worst = max(worst, np.abs(got - ref).mean())
    print(f'largest mean absolute difference: {worst:.3f} grey levels')
    assert worst <= 1.0


# --- using it: predict, train.py's eval and init_from -----------------------------------

@pytest.mark.slow
def test_predict_prints_top5_names_for_files_and_folders(hub, tmp_path, capsys):
    import skimage.data
    from PIL import Image
    from senet_jax import predict
    folder = tmp_path / 'photos'
    folder.mkdir()
    Image.fromarray(skimage.data.chelsea()).save(folder / 'cat.jpg')
    Image.fromarray(skimage.data.coffee()).save(folder / 'coffee.png')
    (folder / 'notes.txt').write_text('not an image')
    single = tmp_path / 'again.jpg'
    Image.fromarray(skimage.data.chelsea()).save(single)
    assert predict.main(['--model', 'se_resnet_mini.hub', '--batch-size', '2',
                         str(folder), str(single)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(':')[0] for line in lines] == [
        str(folder / 'cat.jpg'), str(folder / 'coffee.png'), str(single)]
    results = predict.predict('se_resnet_mini.hub', [str(folder), str(single)], batch_size=2)
    for _, top in results:
        probs = [p for _, p in top]
        assert len(top) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert all(name in pretrained.WEIGHTS['se_resnet50.a1_in1k'].label_names() for name, _ in top)
    # the same photo, alone in a padded batch or beside another, is classified the same
    assert [n for n, _ in results[0][1]] == [n for n, _ in results[2][1]]
    assert predict.main(['--model', 'se_resnet_mini.hub', str(tmp_path / 'missing.jpg')]) == 1
    assert capsys.readouterr().err.count('\n') == 1


def _config(arg, monkeypatch):
    from absl import flags
    from ml_collections import config_flags
    monkeypatch.chdir(ROOT)
    values = flags.FlagValues()
    config_flags.DEFINE_config_file('config', None, flag_values=values)
    values(['train.py', f'--config={arg}'])
    return values.config


def test_finetune_config_takes_the_weight_s_preprocessing(monkeypatch):
    c = _config('configs/finetune.py:se_resnet50.ra2_in1k', monkeypatch)
    assert (c.model, c.init_from, c.dataset, c.image_size) == (
        'se_resnet50', 'se_resnet50.ra2_in1k', 'imagefolder', 224)
    assert (c.eval_crop_fraction, c.eval_interpolation) == (0.875, 'bicubic')
    assert c.input_mean == (0.485, 0.456, 0.406) and c.num_train_steps == -1
    c = _config('configs/eval_pretrained.py:inception_resnet_v2', monkeypatch)
    assert (c.init_from, c.image_size, c.input_std, c.num_train_steps) == (
        'inception_resnet_v2.tf_in1k', 299, (0.5, 0.5, 0.5), 0)


@pytest.mark.slow
def test_train_py_evaluates_a_tag_with_max_eval_batches(hub, tmp_path, monkeypatch):
    """configs/eval_pretrained.py:TAG in process: init_from takes the tag, eval only."""
    from senet_jax.trainer import train_and_evaluate
    config = _config('configs/eval_pretrained.py:se_resnet_mini.hub', monkeypatch)
    assert (config.init_from, config.model, config.num_train_steps) == (
        'se_resnet_mini.hub', MINI, 0)
    assert (config.image_size, config.eval_interpolation) == (16, 'bilinear')
    config.dataset, config.num_classes, config.fake_num_examples = 'fake', 1000, 320
    config.batch_size, config.max_eval_batches = 8, 2
    config.model_overrides.kernels = 'plain'
    metrics = train_and_evaluate(config, str(tmp_path / 'run'))
    assert metrics['eval_examples'] == 16      # 2 of the 4 batches of 8
