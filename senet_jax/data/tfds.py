"""tfds: any prepared tfds image-classification dataset, by name.

Training never downloads: an unprepared dataset fails at once with the command
that prepares it. `data_dir` may be local or a gs:// URL; it is handed to tfds
as given (TensorFlow's file system reads both).
"""

import difflib
import math

from etils import epath
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from senet_jax.data import SOURCES, indexing, preprocess
from senet_jax.data.base import Source
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


class TfdsSource(Source):
    """Each process reads its own contiguous slice of each split."""

    def __init__(self, config, shard: indexing.Shard):
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
        self.crop_fraction = config.get('eval_crop_fraction', 0.875)
        self.interpolation = config.get('eval_interpolation', '')
        self.shuffle_buffer = config.get('shuffle_buffer', 16 * 1024)
        self.decoders = {self.image_key: tfds.decode.SkipDecoding()}

    def train_image(self, data, seed):
        """Encoded bytes -> the augmented uint8 [S, S, 3] training image."""
        return preprocess.preprocess_train(data, seed, self.image_size, self.min_area)

    def eval_image(self, data):
        """Encoded bytes -> the uint8 [S, S, 3] centre crop."""
        return preprocess.preprocess_eval(data, self.image_size, self.crop_fraction,
                                          self.interpolation)

    def _epoch_records(self, epoch):
        """This process's records of `epoch`, in an order fixed by (seed, epoch)."""
        epoch_seed = self.seed * 100003 + epoch
        options = tf.data.Options()
        options.deterministic = True
        ds = self.builder.as_dataset(
            split=self.train_part, decoders=self.decoders, shuffle_files=True,
            read_config=tfds.ReadConfig(shuffle_seed=epoch_seed, options=options))
        ds = ds.shuffle(self.shuffle_buffer, seed=epoch_seed,
                        reshuffle_each_iteration=False)
        return ds.take(self.steps_per_epoch * self.shard.local_batch)

    def train_dataset(self, epoch: int, offset: int) -> tf.data.Dataset:
        """This process's batches of steps `offset`.. of `epoch`."""
        local = self.shard.local_batch
        # Resume inside an epoch: skip the records already consumed (before
        # decoding, so it only costs reading).
        ds = self._epoch_records(epoch).skip(offset * local).enumerate(offset * local)
        start = indexing.process_epoch_offset(epoch, self.steps_per_epoch, self.shard)

        def parse(i, ex):
            seed = preprocess.example_seed(self.seed, start + i)
            return self.train_image(ex[self.image_key], seed), ex[self.label_key]

        ds = preprocess.tpu_host_options(ds)
        ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(local, drop_remainder=True).prefetch(2)

    def train_batches(self, start_step):
        for epoch, offset in indexing.epochs_from(start_step, self.steps_per_epoch):
            for image, label in self.train_dataset(epoch, offset).as_numpy_iterator():
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
                                        (self.image_size, self.image_size, 3))
