"""The index arithmetic every source shares, and the sources that need no TF."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from senet_jax.data import indexing
from senet_jax.data.indexing import Shard
from senet_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shard_rows_partition_the_global_batch():
    rows = [Shard(12, i, 3).rows for i in range(3)]
    assert [(r.start, r.stop) for r in rows] == [(0, 4), (4, 8), (8, 12)]
    assert Shard(12, 1, 3).local_batch == 4
    with pytest.raises(UserError, match='batch_size 12 is not divisible by the 5'):
        Shard(12, 0, 5)


def test_steps_per_epoch_drops_the_remainder_and_refuses_tiny_splits():
    assert Shard(8).steps_per_epoch(100) == 12
    assert Shard(8).num_eval_batches(100) == 13
    with pytest.raises(UserError, match='the tiny training split has 7 examples'):
        Shard(8).steps_per_epoch(7, 'tiny')


def test_epochs_from_resumes_inside_an_epoch():
    it = indexing.epochs_from(7, 3)
    assert [next(it) for _ in range(3)] == [(2, 1), (3, 0), (4, 0)]
    it = indexing.epochs_from(6, 3)
    assert next(it) == (2, 0)


def test_epoch_permutation_is_fixed_by_seed_and_epoch():
    a = indexing.epoch_permutation(1, 0, 50)
    np.testing.assert_array_equal(a, indexing.epoch_permutation(1, 0, 50))
    assert sorted(a) == list(range(50))
    assert not np.array_equal(a, indexing.epoch_permutation(1, 1, 50))
    assert not np.array_equal(a, indexing.epoch_permutation(2, 0, 50))


@pytest.mark.parametrize('process_count', [1, 2, 4])
def test_epoch_indices_split_one_global_order(process_count):
    n, gb, seed, epoch = 103, 8, 5, 3
    whole = indexing.epoch_indices(seed, n, Shard(gb), epoch, 0)
    assert whole.shape == (12, 8)
    assert len(set(whole.ravel())) == 96  # each example at most once an epoch
    parts = [indexing.epoch_indices(seed, n, Shard(gb, i, process_count), epoch, 0)
             for i in range(process_count)]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
    # Resuming at step 5 of the epoch reads the same rows as the full epoch.
    np.testing.assert_array_equal(
        indexing.epoch_indices(seed, n, Shard(gb), epoch, 5), whole[5:])


def test_train_index_batches_cross_epochs():
    shard = Shard(4, 1, 2)
    full = [idx for _, (_, idx) in zip(range(9), indexing.train_index_batches(
        0, 13, shard, 0))]
    resumed = indexing.train_index_batches(0, 13, shard, 4)
    for step, idx in (next(resumed) for _ in range(5)):
        np.testing.assert_array_equal(idx, full[step])
    assert step == 8


@pytest.mark.parametrize('process_count', [1, 2])
def test_stream_positions_number_each_example_of_the_stream(process_count):
    spe, gb = 3, 4
    positions = np.concatenate([
        np.concatenate([indexing.stream_positions(e, 0, spe, Shard(gb, i, process_count))
                        for i in range(process_count)], axis=1)
        for e in range(2)])
    np.testing.assert_array_equal(positions.ravel(), np.arange(2 * spe * gb))
    np.testing.assert_array_equal(
        indexing.stream_positions(1, 2, spe, Shard(gb)), [[20, 21, 22, 23]])


def test_process_epoch_offsets_are_disjoint():
    spe, shard_count, local = 3, 2, 4
    starts = sorted(indexing.process_epoch_offset(e, spe, Shard(8, i, shard_count))
                    for e in range(3) for i in range(shard_count))
    # Each (epoch, process) owns spe * local consecutive positions.
    assert starts == list(range(0, 6 * spe * local, spe * local))


@pytest.mark.parametrize('n,gb,process_count', [(10, 4, 1), (10, 4, 2), (9, 6, 3),
                                                (4, 8, 2), (16, 8, 2)])
def test_eval_index_batches_cover_each_example_once(n, gb, process_count):
    seen = []
    for i in range(process_count):
        batches = list(indexing.eval_index_batches(n, Shard(gb, i, process_count)))
        assert len(batches) == math.ceil(n / gb)  # same count on every process
        for idx, mask in batches:
            assert idx.shape == mask.shape == (gb // process_count,)
            assert mask.dtype == np.float32
            assert (idx[mask == 0] == 0).all()  # padding points at a real row
            seen += list(idx[mask > 0])
    assert sorted(seen) == list(range(n))


def test_pad_batches_pads_and_appends_masked_batches():
    short = {'image': np.ones((3, 2, 2, 3), np.uint8),
             'label': np.array([7, 8, 9], np.int64)}
    out = list(indexing.pad_batches([short], 4, 3, (2, 2, 3)))
    assert len(out) == 3
    np.testing.assert_array_equal(out[0]['mask'], [1, 1, 1, 0])
    np.testing.assert_array_equal(out[0]['label'], [7, 8, 9, 0])
    assert out[0]['label'].dtype == np.int32
    assert out[0]['image'].shape == (4, 2, 2, 3) and out[0]['image'][3].max() == 0
    assert all(b['mask'].sum() == 0 for b in out[1:])
    with pytest.raises(ValueError, match='more than 0 batches'):
        list(indexing.pad_batches([short], 4, 0, (2, 2, 3)))


@pytest.mark.slow
def test_model_zoo_weights_nnx_digits_fake_and_the_trainer_do_not_import_tensorflow(tmp_path):
    code = f'''
import sys
import ml_collections
import senet_jax, senet_jax.models, senet_jax.nnx, senet_jax.pretrained
from senet_jax import data, metrics_log, trainer
metrics_log.MetricsLog({str(tmp_path)!r}).write(1, {{'train_loss': 2.5}})
from senet_jax.data import digits, fake
cfg = ml_collections.ConfigDict(dict(dataset='digits', data_dir='', batch_size=8,
    image_size=16, seed=0, num_classes=0, fake_num_examples=0))
for name in ('digits', 'fake'):
    cfg.dataset = name
    p = data.create_input_pipeline(cfg)
    next(p.train_batches(0)), next(p.eval_batches())
print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'tensorflow', 'tensorflow_datasets'}}))
'''
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == '[]', out.stdout
