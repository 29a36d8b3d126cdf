"""tfds: any prepared tfds image-classification dataset, by name.

Training never downloads: an unprepared dataset fails at once with the command
that prepares it. `data_dir` may be local or a gs:// URL; it is handed to tfds
as given (TensorFlow's file system reads both).

Training reads the split's TFRecord files in windows of about
`shuffle_buffer` records, each shuffled whole (`epoch_windows`): one tf.data
pipeline for all epochs, and a resume that opens no file before the window it
resumes in. (tf.data's sliding shuffle buffer cannot do this: what it yields
at record r depends on every record read before.) The pipeline holds about
three windows of encoded records (one being yielded, one loaded ahead, the one
being read): by arithmetic, ~5 GB per process at ImageNet's ~110 KB per JPEG
and the default 16k; lower `shuffle_buffer` with several processes per host.
Splits tfds knows no TFRecord files of (another file format,
tfds.testing.mock_data) go through tfds' own reader, an epoch at a time.

Repeated augmentation (config.repeated_augmentation = R) repeats each record R
times within its process's batch, not across processes as the other sources do:
sharing records across processes would have every process read them.
"""

import difflib
import math
import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from senet_jax.data import SOURCES, indexing, preprocess, randaugment
from senet_jax.data.base import Source, eval_image_size
from senet_jax.data.tf_host import tf
from senet_jax.errors import UserError


def _not_prepared_message(builder, name, data_dir):
    data_dir = data_dir or '~/tensorflow_datasets'
    if getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
        manual = epath.Path(data_dir) / 'downloads' / 'manual'
        return (f'tfds dataset {name} is not prepared in {data_dir} and needs a '
                f'manual download: put its files (for imagenet2012: '
                f'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar) in '
                f'{manual}/ and run `tfds build {name} --data_dir={data_dir}` once')
    return (f'tfds dataset {name} is not prepared in {data_dir}; prepare it '
            f'once with `tfds build {name} --data_dir={data_dir}` on a machine '
            'with internet access (training never downloads)')


def tfds_builder(name: str, data_dir: str | None):
    """A prepared tfds builder, or a UserError; never downloads. Only a gs://
    data_dir is read over the network (it is where the data is)."""
    known = tfds.list_builders(with_community_datasets=False)

    def unknown():
        # tfds' own message lists thousands of names; suggest a few instead.
        close = difflib.get_close_matches(name, known + list(SOURCES), n=3)
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


def _tfrecord_files(builder, split):
    """(filenames, skips, takes) of the TFRecord file instructions that make up
    `split`, as numpy arrays; None where tfds knows no TFRecord files (another
    file format, or tfds.testing.mock_data)."""
    if (not builder.info.splits
            or builder.info.file_format != tfds.core.FileFormat.TFRECORD):
        return None
    instructions = [f for f in builder.info.splits[split].file_instructions if f.take]
    return (np.array([os.fspath(f.filename) for f in instructions]),
            np.array([f.skip for f in instructions], np.int64),
            np.array([f.take for f in instructions], np.int64))


def files_per_window(file_sizes, shuffle_buffer: int) -> int:
    """Files per window so that a window holds about `shuffle_buffer` records."""
    mean = max(1.0, float(np.mean(file_sizes)))
    return int(min(len(file_sizes), max(1, round(shuffle_buffer / mean))))


def epoch_windows(file_sizes, per_window: int, seed: int, epoch, records: int,
                  skip, first_position) -> tf.data.Dataset:
    """The windows of `epoch` from its record `skip` on: a dataset of (file
    indices in read order, the window's records to yield as indices into
    them in read order, stream position of the first).

    Epoch `epoch` permutes the files (seeded by (seed, epoch)) and cuts them
    into windows of `per_window` files; each window's records are shuffled
    whole (seeded by the window's number too); the windows one after another,
    cut to `records`, are the epoch. Windows that end before `skip` are left
    out, so their files are never opened. Computed in the graph, so that the
    pipeline runs no Python.
    """
    num_files = len(file_sizes)
    num_windows = -(-num_files // per_window)
    epoch = tf.cast(epoch, tf.int64)
    key = tf.stack([tf.constant(seed, tf.int64), epoch])
    files = tf.random.experimental.stateless_shuffle(
        tf.range(num_files, dtype=tf.int64), seed=key)
    # Pad to whole windows with a file of no records (index num_files).
    files = tf.reshape(tf.concat([files, tf.fill(
        [num_windows * per_window - num_files], tf.constant(num_files, tf.int64))], 0),
        [num_windows, per_window])
    sizes = tf.gather(tf.constant(list(file_sizes) + [0], tf.int64), files)
    size = tf.reduce_sum(sizes, axis=1)
    start = tf.cumsum(size, exclusive=True)

    def window(files, start, size, w):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(size), seed=tf.random.experimental.stateless_fold_in(key, w))
        lo, end = tf.maximum(start, skip), tf.minimum(start + size, records)
        return (tf.boolean_mask(files, files < num_files), order[lo - start:end - start],
                first_position + lo)

    windows = tf.data.Dataset.from_tensor_slices(
        (files, start, size, tf.range(num_windows, dtype=tf.int64)))
    windows = windows.filter(lambda f, start, size, w: (start < records) &
                             (start + size > skip))
    return windows.map(window)


def repeat_within_process(ds: tf.data.Dataset, shard: indexing.Shard,
                          records: int) -> tf.data.Dataset:
    """Repeated augmentation within this process's batch: each run of
    local_batch / R (record, position) elements becomes R copies, copy c of
    element i at c * (local_batch / R) + i, at position + c * `records` (the
    records of a process's epoch), a seed no other element has: the epoch's
    positions are `process_epoch_offset`'s steps * local_batch."""
    r = shard.repeats
    if r == 1:
        return ds
    ds = ds.batch(shard.local_batch // r, drop_remainder=True)
    return ds.map(lambda record, position: (
        tf.nest.map_structure(lambda t: tf.concat([t] * r, 0), record),
        tf.concat([position + c * records for c in range(r)], 0))).unbatch()


class TfdsSource(Source):
    """Each process reads its own contiguous slice of each split."""

    def __init__(self, config, shard: indexing.Shard):
        if shard.local_batch % shard.repeats:
            # Each process reads its own slice of the records, so its copies stay
            # in its own batch (repeat_within_process).
            raise UserError(f'repeated_augmentation={shard.repeats} with a tfds dataset '
                            'repeats images within each process\'s batch, so the '
                            f'per-process batch must be divisible by {shard.repeats}, '
                            f'got {shard.local_batch}')
        self.builder = builder = tfds_builder(config.dataset, config.data_dir)
        # (places365_small's supervised keys add a third: the file name.)
        self.image_key, self.label_key = (builder.info.supervised_keys
                                          or ('image', 'label'))[:2]
        self.num_classes = builder.info.features[self.label_key].num_classes
        train_split = config.get('train_split', 'train')
        eval_split = config.get('eval_split', 'validation')
        if eval_split not in builder.info.splits and builder.info.splits:
            eval_split = 'test' if 'test' in builder.info.splits else eval_split
        self.train_part = tfds.even_splits(train_split, shard.process_count)[
            shard.process_index]
        eval_parts = tfds.even_splits(eval_split, shard.process_count)
        self.eval_part = eval_parts[shard.process_index]
        self.num_train_examples = _num_examples(builder, train_split)
        self.num_eval_examples = _num_examples(builder, eval_split)
        self.steps_per_epoch = shard.steps_per_epoch(self.num_train_examples,
                                                     config.dataset)
        # Every process yields as many eval batches as the largest slice needs.
        self.num_eval_batches = math.ceil(
            max(_num_examples(builder, p) for p in eval_parts) / shard.local_batch)
        self.shard, self.seed, self.image_size = shard, config.seed, config.image_size
        self.min_area = config.get('min_crop_area', 0.08)
        self.randaugment = randaugment.from_config(config.get('randaugment', ''))
        self.crop_fraction = config.get('eval_crop_fraction', 0.875)
        self.eval_image_size = eval_image_size(config)
        self.interpolation = config.get('eval_interpolation', '')
        self.shuffle_buffer = config.get('shuffle_buffer', 16 * 1024)
        self.decoders = {self.image_key: tfds.decode.SkipDecoding()}
        self.files = _tfrecord_files(builder, self.train_part)
        if self.files is not None:
            self.file_sizes = self.files[2]
            self.files_per_window = files_per_window(
                self.file_sizes, self.shuffle_buffer)
            self.max_window_records = int(np.sort(self.file_sizes)[
                -self.files_per_window:].sum())

    def train_image(self, data, seed):
        """Encoded bytes -> the augmented uint8 [S, S, 3] training image."""
        return preprocess.preprocess_train(data, seed, self.image_size, self.min_area,
                                           randaugment=self.randaugment)

    def eval_image(self, data):
        """Encoded bytes -> the uint8 [S, S, 3] centre crop."""
        return preprocess.preprocess_eval(data, self.eval_image_size, self.crop_fraction,
                                          self.interpolation)

    def train_dataset(self, start_step: int) -> tf.data.Dataset:
        """This process's batches of steps `start_step`, `start_step` + 1, ...:
        one pipeline for every epoch, so shuffling and the decoding workers
        carry on across epoch boundaries."""
        # Each window: its files' records, read in parallel, shuffled whole.
        # One window is loaded ahead while the previous one is decoded.
        distinct = self.shard.local_batch // self.shard.repeats
        epoch, offset = divmod(start_step, self.steps_per_epoch)

        def epoch_plan(e):
            first = indexing.process_epoch_offset(e, self.steps_per_epoch, self.shard)
            skip = tf.cast(e == epoch, tf.int64) * (offset * distinct)
            return epoch_windows(self.file_sizes, self.files_per_window, self.seed, e,
                                 self.steps_per_epoch * distinct, skip, first)

        windows = tf.data.Dataset.range(epoch, 2**62).flat_map(epoch_plan)
        ds = windows.map(self._load_window).prefetch(1)
        ds = ds.flat_map(lambda records, positions: tf.data.Dataset.from_tensor_slices(
            (records, positions)))
        ds = repeat_within_process(ds, self.shard, self.steps_per_epoch * distinct)

        def parse(record, position):
            ex = self.builder.info.features.deserialize_example(
                record, decoders=self.decoders)
            seed = preprocess.example_seed(self.seed, position)
            return self.train_image(ex[self.image_key], seed), ex[self.label_key]

        ds = preprocess.tpu_host_options(ds)
        ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        # Every epoch yields whole batches, so no batch spans two epochs.
        return ds.batch(self.shard.local_batch, drop_remainder=True).prefetch(2)

    def _load_window(self, files, order, position):
        """A window's records in its shuffled order, with their stream positions."""
        records = tf.data.Dataset.from_tensor_slices(
            tuple(tf.gather(tf.constant(a), files) for a in self.files))
        records = records.interleave(
            self.read_file, cycle_length=self.files_per_window, block_length=1,
            num_parallel_calls=self.files_per_window, deterministic=True)
        # Serialized records: they are parsed and decoded later, in parallel.
        records = records.batch(self.max_window_records).get_single_element()
        positions = position + tf.range(tf.size(order, out_type=tf.int64))
        return tf.gather(records, order), positions

    @staticmethod
    def read_file(filename, skip, take):
        """The records of one tfds file instruction (part of one TFRecord file)."""
        return tf.data.TFRecordDataset(filename, buffer_size=8 << 20).skip(skip).take(take)

    def _tfds_reader_dataset(self, epoch, offset):
        """Steps `offset`.. of `epoch` through tfds' own reader, for splits
        whose TFRecord files are not known (another file format;
        tfds.testing.mock_data): built per epoch, and a resume reads the
        epoch's records before `offset` to skip them."""
        local = self.shard.local_batch
        distinct = local // self.shard.repeats
        epoch_seed = self.seed * 100003 + epoch
        options = tf.data.Options()
        options.deterministic = True
        ds = self.builder.as_dataset(
            split=self.train_part, decoders=self.decoders, shuffle_files=True,
            read_config=tfds.ReadConfig(shuffle_seed=epoch_seed, options=options))
        ds = ds.shuffle(self.shuffle_buffer, seed=epoch_seed,
                        reshuffle_each_iteration=False)
        ds = ds.take(self.steps_per_epoch * distinct).skip(offset * distinct)
        ds = ds.enumerate(offset * distinct + indexing.process_epoch_offset(
            epoch, self.steps_per_epoch, self.shard)).map(lambda position, ex: (ex, position))
        ds = repeat_within_process(ds, self.shard, self.steps_per_epoch * distinct)

        def parse(ex, position):
            seed = preprocess.example_seed(self.seed, position)
            return self.train_image(ex[self.image_key], seed), ex[self.label_key]

        ds = preprocess.tpu_host_options(ds)
        ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(local, drop_remainder=True).prefetch(2)

    def train_batches(self, start_step):
        if self.files is None:
            datasets = (self._tfds_reader_dataset(epoch, offset) for epoch, offset
                        in indexing.epochs_from(start_step, self.steps_per_epoch))
        else:
            datasets = [self.train_dataset(start_step)]
        for ds in datasets:
            for image, label in ds.as_numpy_iterator():
                yield {'image': image, 'label': label.astype(np.int32)}

    def eval_dataset(self) -> tf.data.Dataset:
        """This process's eval slice, centre-cropped, in batches (the last short)."""
        ds = self.builder.as_dataset(split=self.eval_part, decoders=self.decoders,
                                     shuffle_files=False)
        ds = preprocess.tpu_host_options(ds)
        ds = ds.map(lambda ex: (self.eval_image(ex[self.image_key]),
                                ex[self.label_key]),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(self.shard.local_batch).prefetch(2)

    def eval_batches(self):
        batches = ({'image': x, 'label': y}
                   for x, y in self.eval_dataset().as_numpy_iterator())
        yield from indexing.pad_batches(batches, self.shard.local_batch,
                                        self.num_eval_batches,
                                        (self.eval_image_size, self.eval_image_size, 3))
