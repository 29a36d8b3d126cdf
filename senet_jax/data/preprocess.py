"""Image preprocessing on the host, in TensorFlow, for the imagefolder and tfds
sources: encoded image bytes -> uint8 [S, S, 3].

JPEGs are decoded and cropped in one op (decode_and_crop_jpeg) so only the crop
is ever decompressed.
"""

import math
import os

from senet_jax.data import randaugment as ra
from senet_jax.data.tf_host import tf


def host_cores() -> int:
    """The CPU cores this process may run on (its affinity mask: a process
    pinned with taskset or numactl, one per GPU, counts only its own)."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# tf.data threading for a TPU host (as big_vision and the flax ImageNet example
# set it): the input pipeline gets its own pool, one thread per core this
# process may use, instead of sharing TF's global one, and each op runs
# single-threaded, since the parallelism is across examples (map's parallel
# calls).
def tpu_host_options(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` with the TPU-host tf.data options; deterministic order kept."""
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = host_cores()
    options.threading.max_intra_op_parallelism = 1
    # Automatically injected prefetch buffers grow host RAM use (big_vision).
    options.experimental_optimization.inject_prefetch = False
    return ds.with_options(options)


def example_seed(seed, counter):
    """The int64 [2] seed of one example's augmentation: (run seed, position)."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(counter, tf.int64)])


def _decode_and_crop(data, crop_fn):
    """Decodes `data` (any image format) and crops with crop_fn(shape)->window."""
    def jpeg():
        shape = tf.image.extract_jpeg_shape(data)
        y, x, h, w = crop_fn(shape)
        return tf.image.decode_and_crop_jpeg(data, tf.stack([y, x, h, w]),
                                             channels=3)

    def other():
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        y, x, h, w = crop_fn(tf.shape(image))
        return image[y:y + h, x:x + w]

    return tf.cond(tf.io.is_jpeg(data), jpeg, other)


def _resize_uint8(image, image_size, method='bicubic', antialias=True):
    image = tf.image.resize(image, (image_size, image_size), method=method,
                            antialias=antialias)
    image = tf.clip_by_value(tf.round(image), 0, 255)
    return tf.cast(image, tf.uint8)


def preprocess_train(data, seed, image_size, min_area=0.08,
                     aspect_ratio=(3 / 4, 4 / 3), randaugment=None):
    """Random-size crop (area min_area..100%, aspect 3/4..4/3) + flip, then
    RandAugment when `randaugment` (a randaugment.Policy) is given (timm's order).

    `seed` is an int32/int64 [2] tensor; the result is a pure function of it.
    """
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2))

    def crop_fn(shape):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=crop_seed, min_object_covered=0.0,
            aspect_ratio_range=aspect_ratio, area_range=(min_area, 1.0),
            max_attempts=10, use_image_if_no_bounding_boxes=True)
        return begin[0], begin[1], size[0], size[1]

    # Bilinear without antialiasing, as Inception-style training crops usually are:
    # antialiasing made the whole decode + crop + resize 2.7x slower on a CPU core.
    image = _resize_uint8(_decode_and_crop(data, crop_fn), image_size,
                          method='bilinear', antialias=False)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return ra.augment(image, seed, randaugment) if randaugment else image


def resize_then_crop(image, image_size, crop_pct, method='bilinear'):
    """timm's eval transform on a decoded uint8 image: the short side resized to
    floor(image_size / crop_pct) with `method` ('bilinear' or 'bicubic', antialiased
    as PIL resizes), then the central image_size square (torchvision's rounding)."""
    scale = int(math.floor(image_size / crop_pct))
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    short, long = tf.minimum(h, w), tf.maximum(h, w)
    new_long = (scale * tf.cast(long, tf.int64)) // tf.cast(short, tf.int64)
    new_long = tf.cast(new_long, tf.int32)
    size = tf.where(h <= w, tf.stack([scale, new_long]), tf.stack([new_long, scale]))
    image = tf.image.resize(image, size, method=method, antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    top = tf.cast(tf.round((size[0] - image_size) / 2), tf.int32)
    left = tf.cast(tf.round((size[1] - image_size) / 2), tf.int32)
    return image[top:top + image_size, left:left + image_size]


def preprocess_eval(data, image_size, crop_fraction=0.875, interpolation=''):
    """Centre crop of `crop_fraction` of the short side, resized to image_size.

    With the default 0.875 = 224/256 this equals the paper's "resize the short
    side to 256, take the central 224x224". With an `interpolation`, a pretrained
    weight's own transform instead (`resize_then_crop`: timm's order, resize first).
    """
    if interpolation:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return resize_then_crop(image, image_size, crop_fraction, interpolation)

    def crop_fn(shape):
        h, w = shape[0], shape[1]
        size = tf.cast(crop_fraction * tf.cast(tf.minimum(h, w), tf.float32),
                       tf.int32)
        return (h - size + 1) // 2, (w - size + 1) // 2, size, size

    return _resize_uint8(_decode_and_crop(data, crop_fn), image_size)
