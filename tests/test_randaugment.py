"""RandAugment (senet_jax/data/randaugment.py) against timm's PIL ops, and its
seeding, draws and wiring. The timm outputs come from
`python tests/make_reference.py recipes_aug` (fixtures/recipes_aug.npz)."""

import math
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from senet_jax.data import indexing, preprocess
from senet_jax.data import randaugment as ra
from senet_jax.errors import UserError

FIXTURE = np.load(os.path.join(os.path.dirname(__file__), 'fixtures', 'recipes_aug.npz'))
CASES = sorted(k for k in FIXTURE.files if k not in ('image', 'level'))
GEOMETRIC = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
# Integer look-up tables, as PIL's: identical.
EXACT = ('AutoContrast', 'Equalize', 'Invert', 'Posterize', 'PosterizeIncreasing',
         'Solarize', 'SolarizeIncreasing', 'SolarizeAdd')
FILL = np.array(ra.FILL)


def _timm_and_ours(case):
    name, sign = case[:-1], 1.0 if case[-1] == '+' else -1.0
    ours = ra.apply_op(tf.constant(FIXTURE['image']), name, float(FIXTURE['level']), sign)
    return name, FIXTURE[case].astype(int), ours.numpy().astype(int)


def test_fixture_covers_every_op():
    assert {c[:-1] for c in CASES} == set(ra.RAND_TRANSFORMS) | set(
        ra.RAND_INCREASING_TRANSFORMS) == set(ra.OPS)


@pytest.mark.parametrize('case', CASES)
def test_op_matches_timm(case):
    """LUT ops exactly; the blends (Color, Contrast, Brightness, Sharpness: float
    blend truncated as PIL's ImagingBlend) measured exact too, 1 allowed for
    float rounding order. Geometric ops (measured at level 7 on 64x48: mean abs
    0.08-0.26, 1.1-2.2% of values off by > 2, max 42) differ only where the
    image meets the fill: PIL fills a whole pixel, TF's bilinear constant mode
    blends it; away from it and the image's 1-pixel frame they agree to 3
    (measured max 3, mean <= 0.03: float rounding at truncation)."""
    name, timm, ours = _timm_and_ours(case)
    diff = np.abs(ours - timm)
    if name in EXACT:
        assert diff.max() == 0
    elif name not in GEOMETRIC:
        assert diff.max() <= 1
    else:
        assert diff.mean() < 0.35 and np.mean(diff > 2) < 0.03
        near_fill = ndimage.binary_dilation(np.all(timm == FILL, -1), iterations=1)
        near_fill[[0, -1]], near_fill[:, [0, -1]] = True, True   # the frame too
        assert diff.max(-1)[~near_fill].max() <= 3
        assert diff.max(-1)[~near_fill].mean() < 0.05


@pytest.mark.parametrize('spec, expected', [
    ('rand-m7-mstd0.5-inc1', ra.Policy(7, 2, 0.5, 0.5, 10, True)),
    ('rand-m9-n3-mstd0.5', ra.Policy(9, 3, 0.5, 0.5, 10, False)),
    ('rand-m9-mstd101-p0.7-mmax12', ra.Policy(9, 2, 0.7, math.inf, 12, False)),
    ('rand', ra.Policy())])
def test_parse(spec, expected):
    assert ra.parse(spec) == expected


@pytest.mark.parametrize('spec, part', [
    ('rnd-m7', 'must start with "rand"'), ('rand-m7-x3', "'x3'"),
    ('rand-m7-mstd', "'mstd'"), ('rand-m7.5', "'m7.5' needs an integer"),
    ('rand-m9-tweights', "'tweights'"), ('rand-n0', 'n must be >= 1')])
def test_parse_errors_name_the_bad_part(spec, part):
    with pytest.raises(UserError, match=part) as e:
        ra.parse(spec)
    assert '\n' not in str(e.value)


def _image():
    return tf.constant(FIXTURE['image'])


def test_same_seed_same_image_other_position_other_image():
    policy = ra.parse('rand-m9-mstd0.5-inc1')
    a = ra.augment(_image(), [0, 5], policy).numpy()
    assert np.array_equal(a, ra.augment(_image(), [0, 5], policy).numpy())
    others = [ra.augment(_image(), [0, p], policy).numpy() for p in range(6, 10)]
    assert sum(not np.array_equal(a, o) for o in others) >= 3


def test_draws_distribution():
    """n=2 ops each, uniform over the 15 ops with replacement, applied with
    probability 0.5, level m + N(0, mstd) clipped to [0, 10], sign +-1 evenly."""
    policy = ra.parse('rand-m7-mstd0.5-inc1')
    seeds = tf.stack([tf.zeros(4000, tf.int64), tf.range(4000, dtype=tf.int64)], -1)
    op, applied, level, sign = [t.numpy() for t in tf.function(lambda s: tf.map_fn(
        lambda x: ra.draws(policy, x), s,
        fn_output_signature=(tf.int32, tf.bool, tf.float32, tf.float32)))(seeds)]
    assert op.shape == (4000, 2)
    counts = np.bincount(op.ravel(), minlength=15)
    assert len(counts) == 15 and counts.min() > 0.8 * 8000 / 15 and counts.max() < 1.2 * 8000 / 15
    assert abs(applied.mean() - 0.5) < 0.02
    assert abs(level.mean() - 7) < 0.03 and abs(level.std() - 0.5) < 0.03
    assert abs((sign > 0).mean() - 0.5) < 0.02
    # Both layers drawn independently: the same op twice as often as chance says.
    assert abs((op[:, 0] == op[:, 1]).mean() - 1 / 15) < 0.015
    policy = ra.parse('rand-m3-mstd200')   # > 100: uniform in [0, m]
    level = ra.draws(policy, tf.constant([0, 1], tf.int64))[2]
    assert policy.magnitude_std == math.inf and np.all((level >= 0) & (level <= 3))


def _jpeg():
    return tf.io.encode_jpeg(tf.constant(FIXTURE['image'])).numpy()


def test_preprocess_train_off_is_unchanged():
    """randaugment=None leaves the crop + flip as it was (its draws come from a
    seed folded apart, so the crop and flip are the same with it on)."""
    seed = preprocess.example_seed(3, 17)
    plain = preprocess.preprocess_train(_jpeg(), seed, 24).numpy()
    assert np.array_equal(plain, preprocess.preprocess_train(
        _jpeg(), seed, 24, randaugment=None).numpy())
    policy = ra.Policy(magnitude=10, prob=1.0)
    outs = [preprocess.preprocess_train(_jpeg(), preprocess.example_seed(3, p), 24,
                                        randaugment=policy).numpy() for p in range(17, 20)]
    assert outs[0].shape == plain.shape == (24, 24, 3)
    assert not np.array_equal(outs[0], plain)
    assert np.array_equal(outs[0], ra.augment(plain, seed, policy).numpy())


def _config(randaugment):
    return ml_collections.ConfigDict({'seed': 0, 'image_size': 16, 'randaugment': randaugment,
                                      'digits_max_shift': 0, 'eval_image_size': 0})


@pytest.mark.slow
def test_digits_randaugment_is_resumable_and_off_unchanged():
    from senet_jax.data.digits import DigitsSource
    shard = indexing.Shard(global_batch=16, process_index=0, process_count=1)
    off = DigitsSource(_config(''), shard)
    on = DigitsSource(_config('rand-m7-mstd0.5-inc1'), shard)
    assert off.randaugment is None
    first = [b['image'] for _, b in zip(range(3), on.train_batches(0))]
    plain = [b['image'] for _, b in zip(range(3), off.train_batches(0))]
    for b, (_, idx) in zip(plain, zip(range(3), indexing.train_index_batches(
            0, off.num_train_examples, shard, 0))):
        assert np.array_equal(b, off.train_x[idx[1]])   # off: the images as they were
    assert not np.array_equal(first[0], plain[0])
    resumed = next(iter(on.train_batches(2)))['image']
    assert np.array_equal(resumed, first[2])
    # Row i of step s is augmented with seed (run seed, s * global_batch + i).
    row = ra.augment(plain[2][5], [0, 2 * 16 + 5], ra.parse('rand-m7-mstd0.5-inc1'))
    assert np.array_equal(first[2][5], row.numpy())


@pytest.mark.slow
def test_fake_source_applies_randaugment():
    """configs/rsb.py's local variants train on fake images: RandAugment runs there."""
    from senet_jax.data.fake import FakeSource
    shard = indexing.Shard(global_batch=4)
    config = _config('rand-m9-p1.0')
    config.fake_num_examples = 8
    off, on = FakeSource(_config(''), shard), FakeSource(config, shard)
    a, b = next(iter(off.train_batches(5)))['image'], next(iter(on.train_batches(5)))['image']
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert np.array_equal(b, next(iter(on.train_batches(5)))['image'])
