"""Repeated augmentation (timm's RepeatAugSampler): each image's R copies in one
global batch, spread over processes, each with its own augmentation seed, and a
stream that a resume reproduces. Pure numpy."""

import itertools

import numpy as np
import pytest

from senet_jax import data
from senet_jax.data import Source, create_input_pipeline, indexing
from senet_jax.data.indexing import Shard
from senet_jax.errors import UserError

N, SEED = 103, 7   # 103 examples: an epoch drops a remainder


def global_steps(gb, repeats, process_count, start_step, num_steps, n=N):
    """[num_steps, gb] the processes' indices side by side, from `start_step`."""
    streams = [indexing.train_index_batches(SEED, n, Shard(gb, p, process_count, repeats),
                                            start_step)
               for p in range(process_count)]
    return np.stack([np.concatenate([idx for _, idx in row])
                     for row in itertools.islice(zip(*streams), num_steps)])


@pytest.mark.parametrize('gb,repeats,process_count', [(12, 3, 2), (12, 3, 4),
                                                      (8, 2, 2), (16, 4, 4)])
def test_copies_share_a_step_and_land_on_different_processes(gb, repeats,
                                                             process_count):
    local, d = gb // process_count, gb // repeats
    batches = global_steps(gb, repeats, process_count, 0, 3 * (N // gb))
    for batch in batches:
        images, counts = np.unique(batch, return_counts=True)
        assert len(images) == d and set(counts) == {repeats}   # each exactly R times
        for image in images:
            rows = np.flatnonzero(batch == image)
            np.testing.assert_array_equal(rows, np.arange(repeats) * d + rows[0])
            if d >= local:   # one copy per process block
                assert len(set(rows // local)) == repeats
    # Within an epoch no image is drawn twice (apart from its copies).
    epoch = batches[:N // gb, :d].ravel()
    assert len(set(epoch)) == len(epoch) == (N // gb) * d


@pytest.mark.parametrize('process_count', [2, 4])
@pytest.mark.parametrize('start_step', [1, 5, 8, 9, 13])
def test_a_resume_reads_the_uninterrupted_stream(process_count, start_step):
    # 103 examples, batch 12: 8 steps an epoch, so 8, 9 and 13 lie past its end.
    full = global_steps(12, 3, process_count, 0, 20)
    resumed = global_steps(12, 3, process_count, start_step, 20 - start_step)
    np.testing.assert_array_equal(resumed, full[start_step:])


def old_epoch_indices(seed, num_examples, shard, epoch, offset):
    """indexing.epoch_indices before repeated augmentation, verbatim."""
    gb = shard.global_batch
    steps = shard.steps_per_epoch(num_examples)
    perm = indexing.epoch_permutation(seed, epoch, num_examples)[offset * gb:steps * gb]
    return perm.reshape(-1, gb)[:, shard.rows]


@pytest.mark.parametrize('repeated_augmentation', [0, 1])
def test_off_is_byte_identical_to_before(repeated_augmentation):
    from ml_collections import ConfigDict
    config = ConfigDict({'batch_size': 8, 'repeated_augmentation': repeated_augmentation})
    shard = Shard(8, 1, 2, repeats=config.repeated_augmentation or 1)
    assert shard == Shard(8, 1, 2)
    for epoch, offset in [(0, 0), (3, 5)]:
        new = indexing.epoch_indices(SEED, N, shard, epoch, offset)
        old = old_epoch_indices(SEED, N, shard, epoch, offset)
        assert new.dtype == old.dtype and new.tobytes() == old.tobytes()


def test_copies_get_different_augmentation_seeds():
    # The augmentation seed of a row is its stream position (step * B + row).
    gb, repeats, spe = 12, 3, N // 12
    shards = [Shard(gb, p, 2, repeats) for p in range(2)]
    idx = np.concatenate([indexing.epoch_indices(SEED, N, s, 1, 0) for s in shards], 1)
    pos = np.concatenate([indexing.stream_positions(1, 0, spe, s) for s in shards], 1)
    assert len(np.unique(pos)) == pos.size
    for step_idx, step_pos in zip(idx, pos):
        for image in np.unique(step_idx):
            assert len(set(step_pos[step_idx == image])) == repeats


@pytest.mark.parametrize('kwargs,message', [
    (dict(global_batch=8, repeats=3),
     'repeated_augmentation=3 needs a batch_size divisible by 3, got 8'),
    (dict(global_batch=8, repeats=-1), 'whole number of copies'),
    (dict(global_batch=8, repeats=2.5), 'whole number of copies'),
])
def test_bad_values_are_one_sentence(kwargs, message):
    with pytest.raises(UserError, match=message):
        Shard(**kwargs)


class ShardProbe(Source):
    """A source that keeps the shard it is given."""
    num_classes, num_train_examples, num_eval_examples = 10, 120, 12

    def __init__(self, config, shard):
        self.shard = shard
        ShardProbe.last = self

    def train_batches(self, start_step):
        yield from ()

    def eval_batches(self):
        yield from ()


def test_the_pipeline_reads_the_config_field(monkeypatch):
    from configs import common
    c = common.base_config()
    assert c.repeated_augmentation == 0
    monkeypatch.setitem(data.SOURCES, 'probe', f'{__name__}:ShardProbe')
    c.dataset, c.batch_size = 'probe', 12
    create_input_pipeline(c)
    assert ShardProbe.last.shard == Shard(12)
    c.repeated_augmentation = 3
    create_input_pipeline(c, 1, 2)
    assert ShardProbe.last.shard == Shard(12, 1, 2, repeats=3)
    c.batch_size = 10
    with pytest.raises(UserError, match='divisible by 3'):
        create_input_pipeline(c)


def epoch_reading(perm, reads, repeats):
    """What an epoch of a repeated-augmentation sampler reads, as properties
    that do not depend on the random generator: (distinct images, samples)."""
    perm = np.asarray(perm)
    everything = np.concatenate(reads)
    images, counts = np.unique(everything, return_counts=True)
    k = len(images)
    assert set(images) == set(perm[:k])               # a prefix of the permutation
    count = dict(zip(images, counts))
    assert all(count[i] == repeats for i in perm[:k - 1]) and count[perm[k - 1]] <= repeats
    rank_of = [set(np.flatnonzero([i in set(r) for r in reads])) for i in perm[:k]]
    assert all(len(r) == count[i] for r, i in zip(rank_of, perm[:k]))  # copies: other ranks
    if len(reads) == repeats:   # as many ranks as copies: each rank reads the prefix
        for r in reads:
            np.testing.assert_array_equal(r[:k - 1], perm[:k - 1])
    return k, len(everything)


@pytest.mark.parametrize('case', range(6))
def test_an_epoch_reads_as_timms_repeat_aug_sampler(case):
    """timm's RepeatAugSampler (fixtures/repeat_aug.json, make_reference.py
    repeat_aug) and ours, each with its own permutation: a prefix of it, each
    image R times on R different ranks, about the dataset's length in samples
    (timm rounds it to 256 images, we to whole global batches)."""
    import json
    import math
    import os
    with open(os.path.join(os.path.dirname(__file__), 'fixtures', 'repeat_aug.json')) as f:
        c = json.load(f)['cases'][case]
    n, repeats, ranks = c['n'], c['repeats'], c['ranks']
    distinct, samples = epoch_reading(c['perm'], c['reads'], repeats)
    assert n - 256 < samples <= n + ranks and distinct == math.ceil(samples / repeats)
    gb = math.lcm(repeats, ranks)
    ours = [indexing.epoch_indices(SEED, n, Shard(gb, p, ranks, repeats), c['epoch'], 0)
            for p in range(ranks)]
    distinct, samples = epoch_reading(indexing.epoch_permutation(SEED, c['epoch'], n),
                                      [o.ravel() for o in ours], repeats)
    assert n - gb < samples <= n and distinct == samples // repeats


def test_a_digits_batch_holds_each_image_twice_augmented_apart():
    """The quickstart (shifts on, so each copy is augmented) with R=2. A run with
    R=2 that is SIGKILLed and resumed ends as the uninterrupted one:
    test_recipes_batch.py::test_recipe_sigkilled_resumes_to_the_identical_eval."""
    from configs import quickstart
    config = quickstart.get_config()
    config.repeated_augmentation = 2
    batch = next(create_input_pipeline(config).train_batches(0))   # 32 digits twice
    np.testing.assert_array_equal(batch['label'][:32], batch['label'][32:])
    assert not np.array_equal(batch['image'][:32], batch['image'][32:])   # shifted apart
