"""CIFAR-style preprocessing of a tfds dataset (config.preprocess='cifar').

The standard CIFAR augmentation (He et al. 2016, Sec. 4.2; the SENet paper's
CIFAR experiments): zero-pad 4 pixels on each side, take a random crop of the
original size, flip horizontally at random. Evaluation sees each image as it
is. The images are small and stored whole, so tfds decodes them (no
decode-and-crop) and nothing is resized: image_size must be the dataset's own.

The crop and flip are a pure function of (seed, stream position), as in every
source, so a resumed run sees the batches an uninterrupted one would.
"""

from senet_jax.data.tf_host import tf
from senet_jax.data.tfds import TfdsSource
from senet_jax.errors import UserError

PAD = 4


def pad_crop_flip(image, seed, pad: int = PAD):
    """uint8 [H, W, C] -> uint8 [H, W, C]: zero-pad by `pad`, random HxW crop,
    random horizontal flip; `seed` is an int32/int64 [2] tensor."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(image)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    y, x = tf.unstack(tf.random.stateless_uniform(
        [2], crop_seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32))
    crop = tf.slice(padded, tf.stack([y, x, 0]), shape)
    crop = tf.ensure_shape(crop, image.shape)
    return tf.image.stateless_random_flip_left_right(crop, flip_seed)


class CifarSource(TfdsSource):
    """A tfds dataset of fixed-size images with the CIFAR augmentation."""

    def __init__(self, config, shard):
        super().__init__(config, shard)
        shape = tuple(self.builder.info.features[self.image_key].shape)
        if len(shape) != 3 or None in shape[:2] or shape[2] != 3:
            raise UserError(f"preprocess='cifar' needs RGB images of one fixed size; "
                            f'{config.dataset} has images of shape {shape}')
        if shape[:2] != (self.image_size, self.image_size):
            raise UserError(f"preprocess='cifar' keeps {config.dataset}'s "
                            f'{shape[0]}x{shape[1]} images as they are; set '
                            f'image_size={shape[0]} (got {self.image_size})')
        if self.eval_image_size != self.image_size:
            raise UserError(f"preprocess='cifar' evaluates the images as they are; "
                            f'leave eval_image_size at 0 (got {self.eval_image_size})')
        self.decoders = None  # tfds decodes the small images itself

    def train_image(self, data, seed):
        return pad_crop_flip(data, seed)

    def eval_image(self, data):
        return data
