"""Input pipelines: tfds / imagefolder / digits / fake -> host-local uint8 batches.

Every pipeline yields dicts of numpy arrays holding this process's rows of a
global batch: `image` uint8 [local_batch, H, W, 3] (NHWC; normalisation happens
on the device) and `label` int32 [local_batch]; evaluation batches add `mask`
(1 for real examples, 0 for padding).

Resumability: the training stream is a pure function of (seed, step). Epoch `e`
visits the examples in an order fixed by (seed, e); step `s` is batch
`s % steps_per_epoch` of epoch `s // steps_per_epoch`, and random augmentation
is seeded by the example's position in the stream. A run restarted at step `s`
therefore sees exactly the batches an uninterrupted run would have seen.

Evaluation covers every example exactly once: the last batch is padded and
masked, nothing is dropped.
"""

import dataclasses
import difflib
import logging
import math
import os
from typing import Callable, Iterator

import numpy as np

from senet_jax.errors import UserError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
# Magic numbers of the formats above: a cheap validity check at listing time.
_MAGIC = (b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n', b'BM', b'GIF87a', b'GIF89a')
_NUM_LOGGED_CORRUPT = 5


@dataclasses.dataclass
class InputPipeline:
    """What the trainer needs to know about a dataset, plus its two streams."""
    num_classes: int
    num_train_examples: int
    num_eval_examples: int
    steps_per_epoch: int
    num_eval_batches: int
    # train_batches(start_step) -> iterator over steps start_step, start_step+1...
    train_batches: Callable[[int], Iterator[dict]]
    eval_batches: Callable[[], Iterator[dict]]


def create_input_pipeline(config, process_index: int = 0,
                          process_count: int = 1) -> InputPipeline:
    """Builds the pipeline named by `config.dataset` for this process's slice."""
    if config.batch_size % process_count:
        raise UserError(f'batch_size {config.batch_size} is not divisible by the '
                        f'{process_count} processes')
    name = config.dataset
    if name == 'digits':
        return _digits_pipeline(config, process_index, process_count)
    if name == 'fake':
        return _fake_pipeline(config, process_index, process_count)
    if name == 'imagefolder':
        return _imagefolder_pipeline(config, process_index, process_count)
    return _tfds_pipeline(config, process_index, process_count)


# ---------------------------------------------------------------------------
# Index arithmetic shared by the in-memory / file-list sources.


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the `n` training examples in `epoch`, fixed by the seed."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _local_rows(global_batch: int, process_index: int, process_count: int):
    local = global_batch // process_count
    return slice(process_index * local, (process_index + 1) * local)


def _train_index_batches(seed, num_examples, global_batch, start_step,
                         process_index, process_count):
    """Yields (step, this process's example indices) from `start_step` on.

    The global batch of a step does not depend on the process count, so one
    process, eight devices or two processes see the same data.
    """
    steps_per_epoch = num_examples // global_batch
    rows = _local_rows(global_batch, process_index, process_count)
    step = start_step
    while True:
        epoch, offset = divmod(step, steps_per_epoch)
        perm = epoch_permutation(seed, epoch, num_examples)
        for i in range(offset, steps_per_epoch):
            yield step, perm[i * global_batch:(i + 1) * global_batch][rows]
            step += 1


def _eval_index_batches(num_examples, global_batch, process_index,
                        process_count):
    """Yields (indices, mask) of fixed length covering each example once."""
    rows = _local_rows(global_batch, process_index, process_count)
    for b in range(math.ceil(num_examples / global_batch)):
        idx = np.arange(b * global_batch, (b + 1) * global_batch)[rows]
        mask = idx < num_examples
        yield np.where(mask, idx, 0), mask.astype(np.float32)


# ---------------------------------------------------------------------------
# digits: scikit-learn's 8x8 handwritten digits, offline, for the quickstart.


def load_digits_split(image_size: int):
    """(train_x, train_y, test_x, test_y): uint8 NHWC, fixed 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    import tensorflow as tf

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.float32)[..., None]
    if image_size < 8:
        raise UserError(f'image_size {image_size} is too small for digits (8x8)')
    images = tf.image.resize(images, (image_size, image_size),
                             method='bilinear').numpy()
    images = np.repeat(np.clip(np.round(images), 0, 255).astype(np.uint8), 3, -1)
    labels = digits.target.astype(np.int32)
    # The held-out split is fixed (random_state=0), independent of config.seed.
    tr_x, te_x, tr_y, te_y = train_test_split(
        images, labels, test_size=0.2, random_state=0, stratify=labels)
    return tr_x, tr_y, te_x, te_y


def _shift_augment(images, seed, step, max_shift, global_batch, rows):
    """Random translation by up to `max_shift` pixels (zero fill), per example.

    Drawn for the whole global batch, then sliced: the same for any process count.
    """
    if max_shift <= 0:
        return images
    rng = np.random.default_rng([seed, step, 1])
    out = np.zeros_like(images)
    _, h, w, _ = images.shape
    shifts = rng.integers(-max_shift, max_shift + 1, size=(global_batch, 2))[rows]
    for i, (dy, dx) in enumerate(shifts):
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (
            slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (
            slice(-dx, w), slice(0, w + dx))
        out[i, yd, xd] = images[i, ys, xs]
    return out


def _digits_pipeline(config, process_index, process_count):
    tr_x, tr_y, te_x, te_y = load_digits_split(config.image_size)
    gb = config.batch_size
    _check_enough_examples(len(tr_y), gb, 'digits')
    max_shift = config.get('digits_max_shift', 0)
    rows = _local_rows(gb, process_index, process_count)

    def train_batches(start_step):
        for step, idx in _train_index_batches(config.seed, len(tr_y), gb,
                                              start_step, process_index,
                                              process_count):
            images = _shift_augment(tr_x[idx], config.seed, step, max_shift, gb,
                                    rows)
            yield {'image': images, 'label': tr_y[idx]}

    def eval_batches():
        for idx, mask in _eval_index_batches(len(te_y), gb, process_index,
                                             process_count):
            yield {'image': te_x[idx], 'label': te_y[idx], 'mask': mask}

    return InputPipeline(
        num_classes=10, num_train_examples=len(tr_y),
        num_eval_examples=len(te_y), steps_per_epoch=len(tr_y) // gb,
        num_eval_batches=math.ceil(len(te_y) / gb),
        train_batches=train_batches, eval_batches=eval_batches)


# ---------------------------------------------------------------------------
# fake: synthetic images for throughput measurements.


def _fake_pipeline(config, process_index, process_count):
    gb = config.batch_size
    local = gb // process_count
    num_classes = config.get('num_classes', 1000) or 1000
    s = config.image_size
    num_train = config.get('fake_num_examples', 0) or gb * 100
    num_eval = max(gb, num_train // 10)
    _check_enough_examples(num_train, gb, 'fake')
    # A small pool of distinct batches, cycled: generating fresh random images
    # every step would measure numpy, not the model.
    pool = 4
    rng = np.random.default_rng([config.seed, process_index])
    images = rng.integers(0, 256, size=(pool, local, s, s, 3), dtype=np.uint8)

    def labels(step, stream=2):
        r = np.random.default_rng([config.seed, step, stream])
        return r.integers(0, num_classes, size=gb).astype(np.int32)[
            _local_rows(gb, process_index, process_count)]

    def train_batches(start_step):
        step = start_step
        while True:
            yield {'image': images[step % pool], 'label': labels(step)}
            step += 1

    def eval_batches():
        for b in range(math.ceil(num_eval / gb)):
            idx = np.arange(b * gb, (b + 1) * gb)[
                _local_rows(gb, process_index, process_count)]
            yield {'image': images[b % pool], 'label': labels(b, stream=3),
                   'mask': (idx < num_eval).astype(np.float32)}

    return InputPipeline(
        num_classes=num_classes, num_train_examples=num_train,
        num_eval_examples=num_eval, steps_per_epoch=num_train // gb,
        num_eval_batches=math.ceil(num_eval / gb),
        train_batches=train_batches, eval_batches=eval_batches)


def _check_enough_examples(n, global_batch, name):
    if n < global_batch:
        raise UserError(f'the {name} training split has {n} examples, fewer than '
                        f'one global batch of {global_batch}; lower batch_size')


# ---------------------------------------------------------------------------
# Image preprocessing (TensorFlow, on the host). JPEGs are decoded and cropped
# in one op (decode_and_crop_jpeg) so only the crop is ever decompressed.


def _decode_and_crop(data, crop_fn):
    """Decodes `data` (any image format) and crops with crop_fn(shape)->window."""
    import tensorflow as tf

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
    import tensorflow as tf
    image = tf.image.resize(image, (image_size, image_size), method=method,
                            antialias=antialias)
    image = tf.clip_by_value(tf.round(image), 0, 255)
    return tf.cast(image, tf.uint8)


def preprocess_train(data, seed, image_size, min_area=0.08,
                     aspect_ratio=(3 / 4, 4 / 3)):
    """Random-size crop (area min_area..100%, aspect 3/4..4/3) + flip.

    `seed` is an int32/int64 [2] tensor; the result is a pure function of it.
    """
    import tensorflow as tf
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
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


def preprocess_eval(data, image_size, crop_fraction=0.875):
    """Centre crop of `crop_fraction` of the short side, resized to image_size.

    With the default 0.875 = 224/256 this equals the paper's "resize the short
    side to 256, take the central 224x224".
    """
    import tensorflow as tf

    def crop_fn(shape):
        h, w = shape[0], shape[1]
        size = tf.cast(crop_fraction * tf.cast(tf.minimum(h, w), tf.float32),
                       tf.int32)
        return (h - size + 1) // 2, (w - size + 1) // 2, size, size

    return _resize_uint8(_decode_and_crop(data, crop_fn), image_size)


def _example_seed(seed, counter):
    import tensorflow as tf
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(counter, tf.int64)])


def _pad_batches(batches, local_batch, num_batches, image_size):
    """Pads the last batch to `local_batch` rows and appends all-padding batches
    so that every process yields exactly `num_batches` (collectives must match)."""
    n = 0
    for b in batches:
        k = len(b['label'])
        mask = np.zeros(local_batch, np.float32)
        mask[:k] = 1
        if k < local_batch:
            pad = local_batch - k
            b = {'image': np.concatenate(
                     [b['image'], np.zeros((pad,) + b['image'].shape[1:], np.uint8)]),
                 'label': np.concatenate([b['label'], np.zeros(pad, np.int32)])}
        yield {'image': b['image'], 'label': b['label'].astype(np.int32),
               'mask': mask}
        n += 1
    for _ in range(n, num_batches):
        yield {'image': np.zeros((local_batch, image_size, image_size, 3),
                                 np.uint8),
               'label': np.zeros(local_batch, np.int32),
               'mask': np.zeros(local_batch, np.float32)}


# ---------------------------------------------------------------------------
# imagefolder: <data_dir>/train/<class>/*.jpg and <data_dir>/{val,validation}/.


def list_image_folder(root: str, classes=None):
    """(paths, labels, classes, corrupt_paths) of an ImageFolder split."""
    if not os.path.isdir(root):
        raise UserError(f'image folder {root} does not exist')
    found = sorted(d for d in os.listdir(root)
                   if os.path.isdir(os.path.join(root, d)))
    classes = classes or found
    if not classes:
        raise UserError(f'image folder {root} has no class subfolders '
                        '(expected <split>/<class>/<image files>)')
    extra = sorted(set(found) - set(classes))
    if extra:
        raise UserError(f'{root} has classes {extra} that the train split lacks')
    paths, labels, corrupt = [], [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(root, name)
        if not os.path.isdir(class_dir):
            continue
        for fname in sorted(os.listdir(class_dir)):
            if not fname.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(class_dir, fname)
            with open(path, 'rb') as f:
                head = f.read(16)
            if not head.startswith(_MAGIC):
                corrupt.append(path)
                continue
            paths.append(path)
            labels.append(label)
    if not paths:
        raise UserError(f'image folder {root} holds no readable images '
                        f'({", ".join(IMAGE_EXTENSIONS)})')
    return paths, np.asarray(labels, np.int32), classes, corrupt


def _log_corrupt(split_dir, corrupt):
    if corrupt:
        logging.warning('skipped %d unreadable image file(s) in %s, e.g. %s',
                        len(corrupt), split_dir, corrupt[:_NUM_LOGGED_CORRUPT])


def _undecodable(paths):
    """The first of `paths` that TensorFlow cannot decode, or None."""
    import tensorflow as tf
    for p in paths:
        try:
            tf.io.decode_image(tf.io.read_file(p), channels=3,
                               expand_animations=False)
        except tf.errors.OpError:
            return p
    return None


def _naming_undecodable(batches, candidates, folder):
    """Re-raises a decode failure inside tf.data as a UserError naming the file.

    `candidates(k)` gives the paths that may have failed when batch k was due
    (a few batches are decoded ahead).
    """
    import tensorflow as tf
    it = iter(batches)
    k = 0
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            path = _undecodable(candidates(k))
            if path:
                raise UserError(f'cannot decode image {path}; remove or replace it')
            raise UserError(f'an image in {folder} cannot be decoded '
                            f'({e.message.splitlines()[0]})') from None
        yield batch
        k += 1


def _imagefolder_pipeline(config, process_index, process_count):
    import tensorflow as tf
    if not config.data_dir:
        raise UserError('dataset=imagefolder needs --config.data_dir=<folder with '
                        'train/ and val/ subfolders>')
    train_dir = os.path.join(config.data_dir, 'train')
    eval_dir = next((os.path.join(config.data_dir, d) for d in
                     ('val', 'validation')
                     if os.path.isdir(os.path.join(config.data_dir, d))), None)
    if eval_dir is None:
        raise UserError(f'image folder {config.data_dir} has no val/ or '
                        'validation/ subfolder')
    tr_paths, tr_labels, classes, bad = list_image_folder(train_dir)
    _log_corrupt(train_dir, bad)
    ev_paths, ev_labels, _, bad = list_image_folder(eval_dir, classes)
    _log_corrupt(eval_dir, bad)
    gb, s = config.batch_size, config.image_size
    local = gb // process_count
    _check_enough_examples(len(tr_paths), gb, 'imagefolder')
    steps_per_epoch = len(tr_paths) // gb
    tr_paths, ev_paths = np.asarray(tr_paths), np.asarray(ev_paths)
    min_area = config.get('min_crop_area', 0.08)
    crop_fraction = config.get('eval_crop_fraction', 0.875)

    rows = _local_rows(gb, process_index, process_count)

    def train_batches(start_step):
        step = start_step
        while True:
            epoch, offset = divmod(step, steps_per_epoch)
            perm = epoch_permutation(config.seed, epoch, len(tr_paths))
            batches = range(offset, steps_per_epoch)
            idx = np.concatenate([perm[i * gb:(i + 1) * gb][rows] for i in batches])
            # Seed each example's augmentation by its position in the whole stream.
            counters = np.concatenate([
                (epoch * steps_per_epoch + i) * gb + np.arange(rows.start, rows.stop)
                for i in batches])
            ds = tf.data.Dataset.from_tensor_slices(
                (tr_paths[idx], tr_labels[idx], counters))
            ds = ds.map(lambda p, y, c: (preprocess_train(
                tf.io.read_file(p), _example_seed(config.seed, c), s, min_area), y),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            ds = ds.batch(local, drop_remainder=True).prefetch(2)
            ahead = 4 * local  # batches decoded ahead of the one that failed
            for image, label in _naming_undecodable(
                ds.as_numpy_iterator(),
                lambda k: tr_paths[idx[k * local:(k + 1) * local + ahead]],
                train_dir):
                yield {'image': image, 'label': label}
                step += 1

    num_eval_batches = math.ceil(len(ev_paths) / gb)

    def eval_batches():
        for idx, mask in _eval_index_batches(len(ev_paths), gb, process_index,
                                             process_count):
            ds = tf.data.Dataset.from_tensor_slices(ev_paths[idx])
            ds = ds.map(lambda p: preprocess_eval(tf.io.read_file(p), s,
                                                  crop_fraction),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            images = np.concatenate(list(_naming_undecodable(
                ds.batch(local).as_numpy_iterator(), lambda _: ev_paths[idx],
                eval_dir)))
            yield {'image': images, 'label': ev_labels[idx], 'mask': mask}

    return InputPipeline(
        num_classes=len(classes), num_train_examples=len(tr_paths),
        num_eval_examples=len(ev_paths), steps_per_epoch=steps_per_epoch,
        num_eval_batches=num_eval_batches, train_batches=train_batches,
        eval_batches=eval_batches)


# ---------------------------------------------------------------------------
# tfds: any prepared image-classification dataset, by name.


def _not_prepared_message(builder, name, data_dir):
    data_dir = data_dir or '~/tensorflow_datasets'
    if getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
        return (f'tfds dataset {name} is not prepared in {data_dir} and needs a '
                f'manual download: put its files (for imagenet2012: '
                f'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar) in '
                f'{os.path.join(data_dir, "downloads", "manual")}/ and run '
                f'`tfds build {name} --data_dir={data_dir}` once')
    return (f'tfds dataset {name} is not prepared in {data_dir}; prepare it '
            f'once with `tfds build {name} --data_dir={data_dir}` on a machine '
            'with internet access (training never downloads)')


def tfds_builder(name: str, data_dir: str | None):
    """A prepared tfds builder, or a UserError; never touches the network."""
    import tensorflow_datasets as tfds
    known = tfds.list_builders(with_community_datasets=False)

    def unknown():
        # tfds' own message lists thousands of names; suggest a few instead.
        close = difflib.get_close_matches(name, known + ['imagefolder', 'digits',
                                                         'fake'], n=3)
        hint = f' (did you mean {", ".join(close)}?)' if close else ''
        return UserError(f'unknown dataset {name!r}{hint}')

    base = name.split('/')[0].split(':')[0]
    if base not in known and ':' in name:
        raise unknown()  # a community namespace would be looked up online
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        raise unknown() from None
    if not builder.is_prepared():
        raise UserError(_not_prepared_message(builder, name, data_dir))
    return builder


def _num_examples(builder, split):
    try:
        n = builder.info.splits[split].num_examples
        if n:
            return n
    except (KeyError, ValueError):
        pass
    # Unknown split sizes (e.g. under tfds.testing.mock_data): count.
    ds = builder.as_dataset(split=split)
    n = int(ds.cardinality())
    return n if n >= 0 else sum(1 for _ in ds)


def _tfds_pipeline(config, process_index, process_count):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = tfds_builder(config.dataset, config.data_dir)
    image_key, label_key = builder.info.supervised_keys or ('image', 'label')
    num_classes = builder.info.features[label_key].num_classes
    train_split = config.get('train_split', 'train')
    eval_split = config.get('eval_split', 'validation')
    if eval_split not in builder.info.splits and builder.info.splits:
        eval_split = 'test' if 'test' in builder.info.splits else eval_split
    gb, s = config.batch_size, config.image_size
    local = gb // process_count
    # Each process reads its own contiguous slice of each split.
    train_parts = tfds.even_splits(train_split, n=process_count)
    eval_parts = tfds.even_splits(eval_split, n=process_count)
    num_train = _num_examples(builder, train_split)
    eval_counts = [_num_examples(builder, p) for p in eval_parts]
    num_eval = _num_examples(builder, eval_split)
    _check_enough_examples(num_train, gb, config.dataset)
    steps_per_epoch = num_train // gb
    num_eval_batches = math.ceil(max(eval_counts) / local)
    min_area = config.get('min_crop_area', 0.08)
    crop_fraction = config.get('eval_crop_fraction', 0.875)
    shuffle_buffer = config.get('shuffle_buffer', 16 * 1024)
    decoders = {image_key: tfds.decode.SkipDecoding()}
    opts = tf.data.Options()
    opts.deterministic = True

    def epoch_dataset(epoch):
        """This process's examples of `epoch`, in an order fixed by (seed, epoch)."""
        epoch_seed = config.seed * 100003 + epoch
        ds = builder.as_dataset(
            split=train_parts[process_index], decoders=decoders,
            shuffle_files=True,
            read_config=tfds.ReadConfig(shuffle_seed=epoch_seed, options=opts))
        ds = ds.shuffle(shuffle_buffer, seed=epoch_seed,
                        reshuffle_each_iteration=False)
        return ds.take(steps_per_epoch * local)

    def train_batches(start_step):
        step = start_step
        while True:
            epoch, offset = divmod(step, steps_per_epoch)
            # Resume inside an epoch: skip the records already consumed (before
            # decoding, so it only costs reading).
            ds = epoch_dataset(epoch).skip(offset * local).enumerate(offset * local)
            base = (epoch * process_count + process_index) * steps_per_epoch * local

            def parse(i, ex):
                return (preprocess_train(ex[image_key], _example_seed(
                    config.seed, base + i), s, min_area), ex[label_key])

            ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)
            ds = ds.batch(local, drop_remainder=True).prefetch(2)
            for image, label in ds.as_numpy_iterator():
                yield {'image': image, 'label': label.astype(np.int32)}
                step += 1

    def eval_batches():
        ds = builder.as_dataset(split=eval_parts[process_index],
                                decoders=decoders, shuffle_files=False)
        ds = ds.map(lambda ex: (preprocess_eval(ex[image_key], s, crop_fraction),
                                ex[label_key]),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(local).prefetch(2)
        batches = ({'image': x, 'label': y} for x, y in ds.as_numpy_iterator())
        yield from _pad_batches(batches, local, num_eval_batches, s)

    return InputPipeline(
        num_classes=num_classes, num_train_examples=num_train,
        num_eval_examples=num_eval, steps_per_epoch=steps_per_epoch,
        num_eval_batches=num_eval_batches, train_batches=train_batches,
        eval_batches=eval_batches)
