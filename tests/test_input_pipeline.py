"""The tfds input pipeline: one pipeline for every epoch, and a resume that
opens no file before the window it resumes in.

Runs on a small tfds dataset prepared offline here in 12 TFRecord files of 8
examples; example i is an 8x8 image of constant colour i, so every crop and
resize of it still says which example it is.
"""
import collections

import ml_collections
import numpy as np
import pytest

from senet_jax import data

N, FILES = 96, 12   # training examples, TFRecord files


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    """The dataset, prepared in FILES files (TensorFlow is imported here, so
    that the fast tests of this file do without it)."""
    tfds = pytest.importorskip('tensorflow_datasets')

    class InputPipelineShards(tfds.core.GeneratorBasedBuilder):
        """N training and FILES validation examples; example i is all colour i."""
        VERSION = tfds.core.Version('1.0.0')

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({
                    'image': tfds.features.Image(shape=(8, 8, 3)),
                    'label': tfds.features.ClassLabel(num_classes=10)}),
                supervised_keys=('image', 'label'))

        def _split_generators(self, dl_manager):
            return {'train': self._generate_examples(N),
                    'validation': self._generate_examples(FILES)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {'image': np.full((8, 8, 3), i, np.uint8), 'label': i % 10}

    d = str(tmp_path_factory.mktemp('tfds'))
    InputPipelineShards(data_dir=d).download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=FILES))
    return d


def _config(data_dir, **kw):
    c = ml_collections.ConfigDict(dict(
        dataset='input_pipeline_shards', data_dir=data_dir, batch_size=4,
        image_size=8, seed=3, shuffle_buffer=8, train_split='train',
        eval_split='validation', min_crop_area=0.08, eval_crop_fraction=0.875))
    c.update(kw)
    return c


def _take(it, n):
    return [next(it) for _ in range(n)]


def _ids(batch):
    return batch['image'][:, 0, 0, 0].astype(int).tolist()


@pytest.fixture
def reads(monkeypatch):
    """file name -> records read from it, counted as the pipeline reads them."""
    import tensorflow as tf
    from senet_jax.data.tfds import TfdsSource
    read = collections.Counter()
    original = TfdsSource.read_file

    def note(filename, record):
        read[filename.numpy().decode()] += 1
        return record

    def counting(filename, skip, take):
        return original(filename, skip, take).map(lambda r: tf.ensure_shape(
            tf.py_function(note, [filename, r], tf.string), []))
    monkeypatch.setattr(TfdsSource, 'read_file', staticmethod(counting))
    return read


# ---------------------------------------------------------------------------
# The plan

@pytest.mark.slow
def test_windows_cover_each_record_once_and_resume_anywhere():
    from senet_jax.data.tfds import epoch_windows, files_per_window
    sizes = [5, 8, 8, 3, 8, 7, 8]   # (a slice starts and ends inside files)
    ends = np.cumsum(sizes)
    records = 40                      # the epoch cut: 7 of the 47 are dropped

    def plan(skip, epoch=1):
        return list(epoch_windows(sizes, 2, 3, epoch, records, skip, 1000)
                    .as_numpy_iterator())

    def ids(skip, epoch=1):
        out = []
        for files, order, position in plan(skip, epoch):
            read = np.concatenate([np.arange(ends[f] - sizes[f], ends[f]) for f in files])
            assert position == 1000 + skip + len(out)
            out += read[order].tolist()
        return out
    full = ids(0)
    assert len(full) == len(set(full)) == records
    for skip in (1, 7, 13, 16, 29, 39, 40):
        assert ids(skip) == full[skip:], skip
    assert ids(0, epoch=2) != full   # another epoch, another order
    # A resume opens no file of the windows before its own: at most the rest
    # of the epoch and one window (2 files of at most 8) more.
    opened = [f for files, _, _ in plan(30) for f in files]
    assert sum(sizes[f] for f in opened) <= records - 30 + 16
    assert files_per_window([1251] * 128, 16 * 1024) == 13
    assert files_per_window([8] * 3, 1000) == 3


# ---------------------------------------------------------------------------
# The pipeline (TensorFlow)

@pytest.mark.slow
def test_one_pipeline_for_every_epoch(data_dir, monkeypatch):
    from senet_jax.data.tfds import TfdsSource
    built = []
    monkeypatch.setattr(TfdsSource, 'train_dataset', lambda self, start, f=(
        TfdsSource.train_dataset): built.append(start) or f(self, start))
    p = data.create_input_pipeline(_config(data_dir))
    assert p.steps_per_epoch == N // 4
    batches = _take(p.train_batches(0), 2 * p.steps_per_epoch + 3)
    assert built == [0]   # built once, for two epochs and more
    epochs = [sum((_ids(b) for b in batches[e * 24:(e + 1) * 24]), []) for e in (0, 1)]
    for ids in epochs:
        assert sorted(ids) == list(range(N))   # each example once per epoch
    assert epochs[0] != epochs[1]
    for b in batches:
        assert b['image'].shape == (4, 8, 8, 3) and b['image'].dtype == np.uint8
        np.testing.assert_array_equal(b['label'], np.array(_ids(b)) % 10)
    # The augmentation is the pure function of (seed, stream position) on the
    # uint8 image; the same seed gives the same bytes, another seed another order.
    again = _take(data.create_input_pipeline(_config(data_dir)).train_batches(0), 3)
    for a, b in zip(batches, again):
        np.testing.assert_array_equal(a['image'], b['image'])
    other = _take(data.create_input_pipeline(_config(data_dir, seed=4)).train_batches(0), 3)
    assert [_ids(b) for b in other] != [_ids(b) for b in batches[:3]]


@pytest.mark.slow
def test_resume_equals_the_uninterrupted_run_and_reads_one_window(data_dir, reads):
    cfg = _config(data_dir)
    p = data.create_input_pipeline(cfg)
    full = _take(p.train_batches(0), 2 * p.steps_per_epoch + 2)
    reads.clear()
    for start in (5, 20, 24, 26):   # inside windows, at a window's start, an epoch's
        resumed = _take(p.train_batches(start), 2)
        for a, b in zip(full[start:], resumed):
            np.testing.assert_array_equal(a['image'], b['image'])
            np.testing.assert_array_equal(a['label'], b['label'])
    # Step 20 of an epoch of 24 is record 80 of 96: the old pipeline read and
    # dropped 80 records first. Here whole files are skipped: it reads the
    # window it resumes in and the one loaded ahead (8 records each), nothing
    # before.
    reads.clear()
    resumed = _take(p.train_batches(20), 1)
    np.testing.assert_array_equal(resumed[0]['image'], full[20]['image'])
    assert 8 <= sum(reads.values()) <= 3 * 8, reads
    assert len(reads) <= 3
    print('records read to resume at step 20:', sum(reads.values()), 'from', len(reads), 'files')


@pytest.mark.slow
def test_processes_read_disjoint_slices(data_dir):
    cfg = _config(data_dir)
    seen = []
    for i in range(2):
        p = data.create_input_pipeline(cfg, i, 2)
        ids = sum((_ids(b) for b in _take(p.train_batches(0), p.steps_per_epoch)), [])
        assert len(ids) == p.steps_per_epoch * 2
        seen.append(set(ids))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == N
    ev = list(data.create_input_pipeline(cfg).eval_batches())
    assert sum(b['mask'].sum() for b in ev) == FILES


# ---------------------------------------------------------------------------
# One process per device (as PyTorch DDP runs on a GPU node)

def test_local_device_ids_flag(monkeypatch):
    """--local_device_ids reaches jax.distributed.initialize as ints; a bad
    value or one without the other process flags is a UserError."""
    from absl.testing import flagsaver
    import jax
    import train
    from senet_jax.errors import UserError
    calls = []
    monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
    monkeypatch.setattr(train, '_cluster_detected', lambda: False)
    if not train.FLAGS.is_parsed():
        train.FLAGS.mark_as_parsed()
    with flagsaver.flagsaver(coordinator_address='127.0.0.1:1', num_processes=8,
                             process_id=3, local_device_ids=['3']):
        train.init_distributed()
    assert calls == [dict(coordinator_address='127.0.0.1:1', num_processes=8,
                          process_id=3, local_device_ids=[3])]
    for bad in (['x'], ['1', '1'], ['-1']):
        with flagsaver.flagsaver(num_processes=8, process_id=3, local_device_ids=bad):
            with pytest.raises(UserError, match='--local_device_ids must be distinct'):
                train.init_distributed()
    with flagsaver.flagsaver(local_device_ids=['0']):
        with pytest.raises(UserError, match='give --coordinator_address'):
            train.init_distributed()


def test_peer_timeout_below_its_floor_is_one_line(capsys):
    """--peer_timeout_s (PeerWatch's timeout; test_multidevice's lost process
    runs at 20 s) refuses less than two beats."""
    from absl.testing import flagsaver
    import train
    with flagsaver.flagsaver(), pytest.raises(SystemExit) as e:
        train.parse_flags(['train.py', '--config=configs/quickstart.py', '--workdir=/tmp/unused',
                           '--peer_timeout_s=3'])
    assert e.value.code == 1
    assert capsys.readouterr().err == 'error: flag --peer_timeout_s=3: 3.0 is not number >= 10.0\n'


@pytest.mark.slow
def test_cifar_preprocessing_reads_the_same_windows(data_dir):
    """preprocess='cifar' (tfds decodes, pad-crop-flip) on the same files."""
    p = data.create_input_pipeline(_config(data_dir, preprocess='cifar'))
    batches = _take(p.train_batches(0), p.steps_per_epoch + 1)
    ids = [int(image.max()) for b in batches for image in b['image']]  # zero padding
    assert sorted(ids[:N]) == list(range(N))
    for b in batches:
        np.testing.assert_array_equal(b['label'], b['image'].max(axis=(1, 2, 3)) % 10)
    resumed = _take(p.train_batches(p.steps_per_epoch - 1), 2)
    for a, b in zip(batches[-2:], resumed):
        np.testing.assert_array_equal(a['image'], b['image'])


@pytest.mark.slow
def test_repeated_augmentation_within_each_process(data_dir, monkeypatch):
    """repeated_augmentation=2 on tfds: each process's batch of 4 holds 2 records
    twice (copy c of record i at row 2c + i), each copy with its own seed; an
    epoch keeps its 24 steps and reads 48 distinct records; resumable."""
    import tensorflow as tf
    from senet_jax.data.tfds import TfdsSource
    original = TfdsSource.train_image

    def marked(self, record, seed):   # channel 1 says the copy's seed
        image = original(self, record, seed)
        return tf.concat([image[..., :1], tf.fill(tf.shape(image[..., 1:2]), tf.cast(
            seed[1] % 256, tf.uint8)), image[..., 2:]], -1)
    monkeypatch.setattr(TfdsSource, 'train_image', marked)
    p = data.create_input_pipeline(_config(data_dir, repeated_augmentation=2))
    assert p.steps_per_epoch == N // 4
    full = _take(p.train_batches(0), p.steps_per_epoch + 3)
    ids = np.array([_ids(b) for b in full])
    np.testing.assert_array_equal(ids[:, :2], ids[:, 2:])
    assert len(set(ids[:24, :2].ravel())) == 48
    seeds = np.array([b['image'][:, 0, 0, 1] for b in full[:24]])
    assert len(set(seeds.ravel())) == 96   # every copy its own augmentation seed
    for start in (5, 24, 25):
        for a, b in zip(full[start:], _take(p.train_batches(start), 2)):
            np.testing.assert_array_equal(a['image'], b['image'])
    with pytest.raises(data.UserError, match='per-process batch must be divisible by 4, '
                                             'got 6'):
        data.create_input_pipeline(_config(data_dir, batch_size=12,
                                           repeated_augmentation=4), 0, 2)
