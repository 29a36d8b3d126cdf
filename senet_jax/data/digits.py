"""digits: scikit-learn's 8x8 handwritten digits, offline, for the quickstart.

Pure numpy and scikit-learn: no TensorFlow, unless config.randaugment is set
(then RandAugment's TensorFlow ops run on each training batch).
"""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from senet_jax.data import indexing
from senet_jax.data.base import Source, batch_randaugment, eval_image_size
from senet_jax.errors import UserError


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """float32 NHWC -> [N, size, size, C], bit for bit what
    `tf.image.resize(images, (size, size), 'bilinear')` gives (half-pixel
    centres, no antialiasing; the same float32 operations in the same order)."""
    def taps(n_in):
        x = ((np.arange(size, dtype=np.float32) + np.float32(0.5))
             * (np.float32(n_in) / np.float32(size)) - np.float32(0.5))
        lower = np.floor(x)
        return (np.maximum(lower, 0).astype(int),
                np.minimum(np.ceil(x), n_in - 1).astype(int), x - lower)

    _, h, w, _ = images.shape
    y0, y1, y_frac = taps(h)
    x0, x1, x_frac = taps(w)
    x_frac, y_frac = x_frac[None, None, :, None], y_frac[None, :, None, None]

    def along_x(rows):
        left, right = rows[:, :, x0], rows[:, :, x1]
        return left + (right - left) * x_frac

    top, bottom = along_x(images[:, y0]), along_x(images[:, y1])
    return top + (bottom - top) * y_frac


def load_digits_split(image_size: int):
    """(train_x, train_y, test_x, test_y): uint8 NHWC, fixed 80/20 split."""
    if image_size < 8:
        raise UserError(f'image_size {image_size} is too small for digits (8x8)')
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.float32)[..., None]
    images = resize_bilinear(images, image_size)
    images = np.repeat(np.clip(np.round(images), 0, 255).astype(np.uint8), 3, -1)
    labels = digits.target.astype(np.int32)
    # The held-out split is fixed (random_state=0), independent of config.seed.
    tr_x, te_x, tr_y, te_y = train_test_split(
        images, labels, test_size=0.2, random_state=0, stratify=labels)
    return tr_x, tr_y, te_x, te_y


def shift_augment(images, seed, step, max_shift, shard):
    """Random translation by up to `max_shift` pixels (zero fill), per example.

    Drawn for the whole global batch, then sliced: the same for any process count.
    """
    if max_shift <= 0:
        return images
    rng = np.random.default_rng([seed, step, 1])
    out = np.zeros_like(images)
    _, h, w, _ = images.shape
    shifts = rng.integers(-max_shift, max_shift + 1,
                          size=(shard.global_batch, 2))[shard.rows]
    for i, (dy, dx) in enumerate(shifts):
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (
            slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (
            slice(-dx, w), slice(0, w + dx))
        out[i, yd, xd] = images[i, ys, xs]
    return out


class DigitsSource(Source):
    num_classes = 10

    def __init__(self, config, shard: indexing.Shard):
        self.train_x, self.train_y, self.test_x, self.test_y = load_digits_split(
            config.image_size)
        if eval_image_size(config) != config.image_size:   # the 8x8 digits resized again
            _, _, self.test_x, _ = load_digits_split(eval_image_size(config))
        self.num_train_examples = len(self.train_y)
        self.num_eval_examples = len(self.test_y)
        shard.steps_per_epoch(self.num_train_examples, 'digits')
        self.seed, self.shard = config.seed, shard
        self.max_shift = config.get('digits_max_shift', 0)
        self.randaugment = batch_randaugment(config, shard)

    def train_batches(self, start_step):
        for step, idx in indexing.train_index_batches(
                self.seed, self.num_train_examples, self.shard, start_step):
            images = shift_augment(self.train_x[idx], self.seed, step,
                                   self.max_shift, self.shard)
            if self.randaugment:
                images = self.randaugment(images, step)
            yield {'image': images, 'label': self.train_y[idx]}

    def eval_batches(self):
        for idx, mask in indexing.eval_index_batches(self.num_eval_examples,
                                                     self.shard):
            yield {'image': self.test_x[idx], 'label': self.test_y[idx],
                   'mask': mask}
