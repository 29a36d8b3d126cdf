"""Input pipelines: determinism, resumability, exact-once evaluation, errors."""

import logging
import os
import socket
import time
from unittest import mock

import ml_collections
import numpy as np
import pytest
from PIL import Image

from senet_jax import data
from senet_jax.data import indexing
from senet_jax.errors import UserError


def _config(**kw):
    c = ml_collections.ConfigDict(dict(
        dataset='digits', data_dir='', batch_size=64, image_size=16, seed=3,
        digits_max_shift=1, min_crop_area=0.08, eval_crop_fraction=0.875,
        shuffle_buffer=64, train_split='train', eval_split='validation',
        num_classes=0, fake_num_examples=0))
    c.update(kw)
    return c


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_digits_batches_are_uint8_nhwc_and_resumable():
    p = data.create_input_pipeline(_config())
    assert (p.num_classes, p.num_train_examples, p.num_eval_examples) == (
        10, 1437, 360)
    assert p.steps_per_epoch == 1437 // 64
    # 30 steps cross an epoch boundary (22 steps per epoch).
    full = _take(p.train_batches(0), 30)
    assert full[0]['image'].dtype == np.uint8
    assert full[0]['image'].shape == (64, 16, 16, 3)
    assert full[0]['label'].dtype == np.int32
    for start in (7, 22, 25):
        resumed = _take(p.train_batches(start), 30 - start)
        for a, b in zip(full[start:], resumed):
            np.testing.assert_array_equal(a['image'], b['image'])
            np.testing.assert_array_equal(a['label'], b['label'])
    # Another seed, another order.
    other = next(data.create_input_pipeline(_config(seed=4)).train_batches(0))
    assert not np.array_equal(other['label'], full[0]['label'])


@pytest.mark.parametrize('size', [8, 13, 16, 32, 57])
def test_digits_resize_is_tensorflows_bit_for_bit(size):
    """The digits source resizes in numpy (no TF), exactly as tf.image.resize
    did, so the quickstart's data and results are unchanged."""
    import tensorflow as tf
    from sklearn.datasets import load_digits
    from senet_jax.data import digits
    images = (load_digits().images * (255.0 / 16.0)).astype(np.float32)[..., None]
    want = tf.image.resize(images, (size, size), method='bilinear').numpy()
    np.testing.assert_array_equal(digits.resize_bilinear(images, size), want)


def test_epoch_visits_each_example_once():
    n, gb = 100, 8
    batches = indexing.train_index_batches(0, n, indexing.Shard(gb), 0)
    seen = [i for _, (_, idx) in zip(range(n // gb), batches) for i in idx]
    assert len(seen) == len(set(seen)) == (n // gb) * gb


def test_processes_split_the_same_global_batch():
    one = next(data.create_input_pipeline(_config()).train_batches(5))
    halves = [next(data.create_input_pipeline(_config(), i, 2).train_batches(5))
              for i in range(2)]
    np.testing.assert_array_equal(
        np.concatenate([h['image'] for h in halves]), one['image'])
    np.testing.assert_array_equal(
        np.concatenate([h['label'] for h in halves]), one['label'])


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_covers_every_example_once(process_count):
    _, _, te_x, te_y = data.load_digits_split(16)
    images, labels = [], []
    for pi in range(process_count):
        p = data.create_input_pipeline(_config(), pi, process_count)
        batches = list(p.eval_batches())
        assert len(batches) == p.num_eval_batches == 6  # ceil(360 / 64)
        for b in batches:
            assert b['image'].shape[0] == 64 // process_count
            keep = b['mask'] > 0
            images.append(b['image'][keep])
            labels.append(b['label'][keep])
    assert sum(len(l) for l in labels) == 360
    # Same multiset of examples as the held-out split.
    got = sorted(map(bytes, np.concatenate(images)))
    want = sorted(map(bytes, te_x))
    assert got == want
    np.testing.assert_array_equal(np.sort(np.concatenate(labels)), np.sort(te_y))


def test_batch_not_divisible_by_processes():
    with pytest.raises(UserError, match='not divisible by the 3 processes'):
        data.create_input_pipeline(_config(batch_size=64), 0, 3)


def test_fake_pipeline():
    cfg = _config(dataset='fake', batch_size=8, image_size=20, num_classes=7)
    p = data.create_input_pipeline(cfg)
    assert p.num_classes == 7 and p.steps_per_epoch == 100
    a = _take(p.train_batches(0), 3)
    b = next(p.train_batches(2))
    assert a[0]['image'].shape == (8, 20, 20, 3) and a[0]['image'].dtype == np.uint8
    np.testing.assert_array_equal(a[2]['label'], b['label'])
    assert all(0 <= l < 7 for l in b['label'])
    assert sum(x['mask'].sum() for x in p.eval_batches()) == p.num_eval_examples


def test_eval_images_at_eval_image_size():
    """eval_image_size (the test resolution) sizes the eval images only; 0 keeps
    them at image_size, the fake pool unchanged."""
    cfg = _config(dataset='fake', batch_size=8, image_size=16, num_classes=7)
    same = data.create_input_pipeline(cfg)
    assert next(same.eval_batches())['image'].shape == (8, 16, 16, 3)
    for dataset in ('fake', 'digits'):
        cfg.update(dataset=dataset, eval_image_size=24)
        p = data.create_input_pipeline(cfg)
        assert next(p.train_batches(0))['image'].shape == (8, 16, 16, 3)
        assert next(p.eval_batches())['image'].shape == (8, 24, 24, 3)
        if dataset == 'fake':   # its training images are those of before
            np.testing.assert_array_equal(next(p.train_batches(3))['image'],
                                          next(same.train_batches(3))['image'])


def test_eval_crop_follows_eval_crop_fraction():
    """The eval image is the central eval_crop_fraction of the short side, at
    the eval size: a 40x60 PNG, fraction 0.5, size 20 is its central 20x20."""
    import io
    pixels = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, 'PNG')
    crop = data.preprocess_eval(buf.getvalue(), 20, crop_fraction=0.5).numpy()
    np.testing.assert_array_equal(crop, pixels[10:30, 20:40])
    assert data.preprocess_eval(buf.getvalue(), 28, crop_fraction=0.5).numpy().shape == (
        28, 28, 3)


# ---------------------------------------------------------------------------
# imagefolder


def _make_folder(root, corrupt=True):
    rng = np.random.default_rng(0)
    for split, n in (('train', 6), ('val', 3)):
        for c, name in enumerate(('cat', 'dog')):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 256, size=(20 + 3 * i, 28, 3), dtype=np.uint8)
                a[..., c] = 255  # classes differ in colour
                ext = 'png' if i % 2 else 'jpg'
                Image.fromarray(a).save(d / f'{i}.{ext}')
    if corrupt:
        (root / 'train' / 'cat' / 'broken.jpg').write_bytes(b'not an image')
    (root / 'train' / 'cat' / 'notes.txt').write_text('ignored')


def _assert_tpu_host_options(ds):
    """The tf.data options for a TPU host, read off the batched dataset: set
    where the images are mapped, they hold for the whole pipeline."""
    options = ds.options()
    assert options.threading.private_threadpool_size == len(os.sched_getaffinity(0))
    assert options.threading.max_intra_op_parallelism == 1
    assert options.experimental_optimization.inject_prefetch is False
    assert options.deterministic is True


@pytest.mark.slow
def test_imagefolder(tmp_path, caplog):
    _make_folder(tmp_path)
    cfg = _config(dataset='imagefolder', data_dir=str(tmp_path), batch_size=4,
                  image_size=12)
    with caplog.at_level(logging.WARNING):
        p = data.create_input_pipeline(cfg)
    assert 'skipped 1 unreadable image' in caplog.text
    assert 'broken.jpg' in caplog.text
    assert (p.num_classes, p.num_train_examples, p.num_eval_examples) == (
        2, 12, 6)
    full = _take(p.train_batches(0), 5)  # 3 steps per epoch
    assert full[0]['image'].shape == (4, 12, 12, 3)
    assert full[0]['image'].dtype == np.uint8
    resumed = _take(p.train_batches(2), 3)
    for a, b in zip(full[2:], resumed):
        np.testing.assert_array_equal(a['image'], b['image'])
        np.testing.assert_array_equal(a['label'], b['label'])
    ev = list(p.eval_batches())
    assert len(ev) == 2 and sum(b['mask'].sum() for b in ev) == 6
    labels = np.concatenate([b['label'][b['mask'] > 0] for b in ev])
    assert sorted(labels) == [0, 0, 0, 1, 1, 1]
    source = data.source_class('imagefolder')(cfg, indexing.Shard(4))
    _assert_tpu_host_options(source.train_dataset(1, 2))
    _assert_tpu_host_options(source.eval_dataset(np.arange(4)))
    # Repeated augmentation: 2 images twice a batch, each copy cropped on its own.
    cfg.repeated_augmentation = 2
    batch = next(data.create_input_pipeline(cfg).train_batches(0))
    np.testing.assert_array_equal(batch['label'][:2], batch['label'][2:])
    assert not np.array_equal(batch['image'][:2], batch['image'][2:])


def test_imagefolder_undecodable_image_is_named(tmp_path):
    _make_folder(tmp_path, corrupt=False)
    good = (tmp_path / 'train' / 'dog' / '0.jpg').read_bytes()
    truncated = tmp_path / 'train' / 'dog' / 'truncated.jpg'
    truncated.write_bytes(good[:len(good) // 3])  # a valid header, then nothing
    cfg = _config(dataset='imagefolder', data_dir=str(tmp_path), batch_size=4,
                  image_size=12)
    p = data.create_input_pipeline(cfg)
    assert p.num_train_examples == 13
    with pytest.raises(UserError, match='cannot decode image .*truncated.jpg'):
        _take(p.train_batches(0), 3)  # one epoch


def test_imagefolder_errors(tmp_path):
    cfg = _config(dataset='imagefolder', data_dir=str(tmp_path / 'missing'))
    with pytest.raises(UserError, match='no val/ or validation/'):
        data.create_input_pipeline(cfg)
    (tmp_path / 'train').mkdir()
    (tmp_path / 'validation').mkdir()
    cfg.data_dir = str(tmp_path)
    with pytest.raises(UserError, match='has no class subfolders'):
        data.create_input_pipeline(cfg)
    (tmp_path / 'train' / 'a').mkdir()
    with pytest.raises(UserError, match='holds no readable images'):
        data.create_input_pipeline(cfg)


def test_preprocessing_shapes():
    import io
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(buf, 'JPEG')
    jpeg = buf.getvalue()
    seed = data.example_seed(1, 2)
    a = data.preprocess_train(jpeg, seed, 24).numpy()
    b = data.preprocess_train(jpeg, seed, 24).numpy()
    assert a.shape == (24, 24, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)  # a pure function of the seed
    e = data.preprocess_eval(jpeg, 24).numpy()
    assert e.shape == (24, 24, 3)
    assert abs(int(e.mean()) - 128) <= 2


# ---------------------------------------------------------------------------
# tfds


@pytest.mark.slow
def test_imagenet2012_through_mock_data():
    import tensorflow_datasets as tfds
    cfg = _config(dataset='imagenet2012', batch_size=4, image_size=32,
                  data_dir='/nonexistent')
    with tfds.testing.mock_data(num_examples=10), mock.patch.object(
        tfds.core.DatasetBuilder, 'is_prepared', return_value=True):
        p = data.create_input_pipeline(cfg)
        assert p.num_classes == 1000
        assert p.num_train_examples == 10 and p.steps_per_epoch == 2
        full = _take(p.train_batches(0), 4)
        assert full[0]['image'].shape == (4, 32, 32, 3)
        assert full[0]['image'].dtype == np.uint8
        assert full[0]['label'].dtype == np.int32
        for a, b in zip(full[1:], _take(p.train_batches(1), 3)):
            np.testing.assert_array_equal(a['image'], b['image'])
            np.testing.assert_array_equal(a['label'], b['label'])
        ev = list(p.eval_batches())
        assert len(ev) == p.num_eval_batches == 3  # 10 examples, batches of 4
        assert sum(b['mask'].sum() for b in ev) == 10
        # Repeated augmentation through tfds' own reader: 2 records twice a batch.
        cfg.repeated_augmentation = 2
        p = data.create_input_pipeline(cfg)
        full = _take(p.train_batches(0), 3)
        for b in full:
            np.testing.assert_array_equal(b['label'][:2], b['label'][2:])
        for a, b in zip(full[1:], _take(p.train_batches(1), 2)):
            np.testing.assert_array_equal(a['image'], b['image'])


@pytest.mark.slow
def test_tfds_eval_at_eval_image_size():
    """A tfds source (mock imagenet2012) trains at image_size and evaluates at
    eval_image_size, padded batches too."""
    import tensorflow_datasets as tfds
    cfg = _config(dataset='imagenet2012', batch_size=4, image_size=16,
                  eval_image_size=24, data_dir='/nonexistent')
    with tfds.testing.mock_data(num_examples=6), mock.patch.object(
            tfds.core.DatasetBuilder, 'is_prepared', return_value=True):
        p = data.create_input_pipeline(cfg)
        assert next(p.train_batches(0))['image'].shape == (4, 16, 16, 3)
        ev = list(p.eval_batches())
        assert [b['image'].shape for b in ev] == [(4, 24, 24, 3)] * 2
        assert sum(b['mask'].sum() for b in ev) == 6


def test_unprepared_tfds_dataset_fails_fast(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError('the preparation check opened a connection')
    monkeypatch.setattr(socket.socket, 'connect', no_network)
    monkeypatch.setattr(socket, 'create_connection', no_network)
    import senet_jax.data.tfds  # noqa: F401  (time the check, not the import)
    start = time.time()
    with pytest.raises(UserError) as e:
        data.create_input_pipeline(_config(dataset='imagenet2012',
                                           data_dir=str(tmp_path)))
    msg = str(e.value)
    assert os.path.join(str(tmp_path), 'downloads', 'manual') in msg
    assert 'tfds build imagenet2012' in msg
    with pytest.raises(UserError, match='tfds build cifar10'):
        data.create_input_pipeline(_config(dataset='cifar10',
                                           data_dir=str(tmp_path)))
    with pytest.raises(UserError, match="did you mean cifar10"):
        data.create_input_pipeline(_config(dataset='cifar1O',
                                           data_dir=str(tmp_path)))
    assert time.time() - start < 10


@pytest.mark.slow
def test_prepared_tfds_dataset(tmp_path):
    """A really prepared tfds dataset (tfds' offline DummyMnist: 20 train and
    20 test PNG-encoded 28x28 grey images): slices, resume, exact-once eval."""
    import tensorflow_datasets as tfds
    tfds.testing.DummyMnist(data_dir=str(tmp_path)).download_and_prepare()
    cfg = _config(dataset='dummy_mnist', data_dir=str(tmp_path), batch_size=4,
                  image_size=16)
    p = data.create_input_pipeline(cfg)
    assert (p.num_classes, p.num_train_examples, p.num_eval_examples) == (
        10, 20, 20)  # no 'validation' split: 'test' is used
    full = _take(p.train_batches(0), 7)  # 5 steps per epoch
    assert full[0]['image'].shape == (4, 16, 16, 3)
    for a, b in zip(full[3:], _take(p.train_batches(3), 4)):
        np.testing.assert_array_equal(a['image'], b['image'])
        np.testing.assert_array_equal(a['label'], b['label'])
    source = data.source_class('dummy_mnist')(cfg, indexing.Shard(4))
    _assert_tpu_host_options(source.train_dataset(7))
    _assert_tpu_host_options(source.eval_dataset())
    want = sorted(int(ex['label']) for ex in tfds.builder(
        'dummy_mnist', data_dir=str(tmp_path)).as_dataset(split='test'))
    for process_count in (1, 2):
        labels = []
        for pi in range(process_count):
            q = data.create_input_pipeline(cfg, pi, process_count)
            batches = list(q.eval_batches())
            assert len(batches) == q.num_eval_batches
            labels += [int(l) for b in batches for l in b['label'][b['mask'] > 0]]
        assert sorted(labels) == want


def test_gcs_data_dir_goes_to_tfds_unchanged():
    """A gs:// data_dir reaches tfds as given, and the instructions name it."""
    import tensorflow_datasets as tfds
    builder = mock.Mock(MANUAL_DOWNLOAD_INSTRUCTIONS='manual')
    builder.is_prepared.return_value = False
    with mock.patch.object(tfds, 'builder', return_value=builder) as make:
        with pytest.raises(UserError) as e:
            data.tfds_builder('imagenet2012', 'gs://bucket/tfds')
    make.assert_called_once_with('imagenet2012', data_dir='gs://bucket/tfds')
    assert 'put its files' in str(e.value)
    assert 'in gs://bucket/tfds/downloads/manual/ and run' in str(e.value)
    assert '--data_dir=gs://bucket/tfds`' in str(e.value)


def test_imagefolder_on_gcs_keeps_the_url(tmp_path):
    """An imagefolder in a bucket is listed through etils.epath (here redirected
    to a local copy) and its files are named by their gs:// URLs; no file is
    opened while listing a remote folder."""
    from etils.epath import gpath as epath_gpath, testing as epath_testing
    _make_folder(tmp_path, corrupt=False)
    url = 'gs://bucket/images'

    def local(path):
        path = os.fspath(path)
        assert path.startswith(url), path  # never mangled into a local path
        return str(tmp_path) + path[len(url):]

    def no_open(*args, **kwargs):
        raise AssertionError('opened a remote file while listing')

    # Without the mock's own backend, epath would send gs:// to TensorFlow's.
    with mock.patch.object(epath_gpath, '_is_tf_installed', return_value=False), \
            epath_testing.mock_epath(isdir=lambda fn, p: fn(local(p)),
                                     listdir=lambda fn, p: fn(local(p)),
                                     open=no_open):
        source = data.source_class('imagefolder')(
            _config(dataset='imagefolder', data_dir=url, batch_size=4), indexing.Shard(4))
    assert source.num_train_examples == 12 and source.num_eval_examples == 6
    assert source.train_paths[0] == f'{url}/train/cat/0.jpg'
    assert all(p.startswith(f'{url}/val/') for p in source.eval_paths)


@pytest.mark.slow
def test_tensorflow_is_hidden_from_the_gpus_at_its_first_import(monkeypatch):
    import importlib

    import tensorflow as tf
    from senet_jax.data import tf_host
    calls = []
    monkeypatch.setattr(tf.config, 'set_visible_devices', lambda *a: calls.append(a))
    importlib.reload(tf_host)
    assert calls == [([], 'GPU')]

    def started(*a):
        raise RuntimeError('Visible devices cannot be modified after being initialized')
    monkeypatch.setattr(tf.config, 'set_visible_devices', started)
    importlib.reload(tf_host)   # the program's TensorFlow is running already: left as it is
