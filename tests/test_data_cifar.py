"""preprocess='cifar': pad 4, random 32x32 crop, flip; eval images untouched.

Runs on tfds.testing.mock_data (offline, random 32x32 images for the
registered cifar10 builder), whose examples are the same on every load.
"""
import socket
from unittest import mock

import ml_collections
import numpy as np
import pytest

from senet_jax import data
from senet_jax.errors import UserError

tfds = pytest.importorskip('tensorflow_datasets')
N = 10  # mock examples per split


def _config(**kw):
    c = ml_collections.ConfigDict(dict(
        dataset='cifar10', data_dir='/nonexistent', batch_size=4, image_size=32,
        seed=3, shuffle_buffer=64, train_split='train', eval_split='test',
        preprocess='cifar', min_crop_area=0.08, eval_crop_fraction=0.875))
    c.update(kw)
    return c


@pytest.fixture
def mocked():
    with tfds.testing.mock_data(num_examples=N), mock.patch.object(
            tfds.core.DatasetBuilder, 'is_prepared', return_value=True):
        yield


def _split(name):
    return [x['image'].numpy() for x in tfds.load('cifar10', split=name,
                                                   data_dir='/nonexistent')]


def _take(it, n):
    return [next(it) for _ in range(n)]


def _find(image, originals, pad=4):
    """(index, dy, dx, flipped) of the padded original crop that `image` is."""
    found = []
    for k, orig in enumerate(originals):
        padded = np.pad(orig, ((pad, pad), (pad, pad), (0, 0)))
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                crop = padded[dy:dy + 32, dx:dx + 32]
                found += [(k, dy, dx, f) for f, c in ((False, crop), (True, crop[:, ::-1]))
                          if np.array_equal(c, image)]
    assert len(found) >= 1, 'not a padded crop (or its mirror) of any training image'
    return found[0]


@pytest.mark.slow
def test_train_batches_are_seeded_pad_crop_flips(mocked):
    import tensorflow as tf
    from senet_jax.data import cifar, preprocess
    p = data.create_input_pipeline(_config())
    assert (p.num_classes, p.num_train_examples, p.steps_per_epoch) == (10, N, 2)
    batches = _take(p.train_batches(0), 4)  # two epochs
    assert batches[0]['image'].shape == (4, 32, 32, 3)
    assert batches[0]['image'].dtype == np.uint8
    originals = _split('train')
    draws = []
    for step, b in enumerate(batches):
        epoch = step // p.steps_per_epoch
        for j, image in enumerate(b['image']):
            k, dy, dx, flipped = _find(image, originals)
            # The example's augmentation is the pure function of (seed, position).
            position = epoch * p.steps_per_epoch * 4 + step % p.steps_per_epoch * 4 + j
            again = cifar.pad_crop_flip(tf.constant(originals[k]),
                                        preprocess.example_seed(3, position)).numpy()
            np.testing.assert_array_equal(again, image)
            draws.append((dy, dx, flipped))
    assert len({d[:2] for d in draws}) > 4 and {d[2] for d in draws} == {False, True}
    # Same seed: the same batches, also when resumed mid-epoch; another seed differs.
    for a, b in zip(batches[1:], _take(p.train_batches(1), 3)):
        np.testing.assert_array_equal(a['image'], b['image'])
        np.testing.assert_array_equal(a['label'], b['label'])
    other = next(data.create_input_pipeline(_config(seed=4)).train_batches(0))
    assert not np.array_equal(other['image'], batches[0]['image'])


@pytest.mark.slow
def test_eval_batches_are_the_images_as_they_are(mocked):
    p = data.create_input_pipeline(_config())
    ev = list(p.eval_batches())
    assert len(ev) == p.num_eval_batches == 3  # 10 examples in batches of 4
    images = np.concatenate([b['image'] for b in ev])
    mask = np.concatenate([b['mask'] for b in ev])
    np.testing.assert_array_equal(images[mask == 1], np.stack(_split('test')))
    assert mask.sum() == N


def test_wrong_image_size_or_preprocess_is_refused(mocked):
    with pytest.raises(UserError, match='set image_size=32'):
        data.create_input_pipeline(_config(image_size=64))
    with pytest.raises(UserError, match="preprocess must be one of inception, cifar, got 'cifra'"):
        data.create_input_pipeline(_config(preprocess='cifra'))


def test_unprepared_cifar_fails_fast_offline(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError('the preparation check opened a connection')
    monkeypatch.setattr(socket.socket, 'connect', no_network)
    monkeypatch.setattr(socket, 'create_connection', no_network)
    for name in ('cifar10', 'cifar100'):
        with pytest.raises(UserError, match=f'tfds build {name} '):
            data.create_input_pipeline(_config(dataset=name, data_dir=str(tmp_path)))
