"""imagefolder: <data_dir>/train/<class>/<images> and <data_dir>/{val,validation}/.

`data_dir` may be local or a remote URL (gs://...): listing goes through
etils.epath, reading through TensorFlow's file system.
"""

import logging
import os

from etils import epath
import numpy as np

from senet_jax.data import indexing, preprocess, randaugment
from senet_jax.data.base import Source, eval_image_size
from senet_jax.data.tf_host import tf
from senet_jax.errors import UserError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
# Magic numbers of the formats above: a cheap validity check at listing time.
_MAGIC = (b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n', b'BM', b'GIF87a', b'GIF89a')
_NUM_LOGGED_CORRUPT = 5


def _is_local(path) -> bool:
    return '://' not in os.fspath(path)


def _has_image_header(path: epath.Path) -> bool:
    with path.open('rb') as f:
        return f.read(16).startswith(_MAGIC)


def list_image_folder(root, classes=None, require_all=False):
    """(paths, labels, classes, corrupt_paths) of an ImageFolder split.

    Local files are checked by their first bytes; remote ones are not (one
    request per file), a bad one is named when it fails to decode. Files
    without an image extension are skipped and counted in the log. With
    `require_all` (the train split), a class folder without a readable image
    is an error: it would be a class the model can never learn.
    """
    root = epath.Path(root)
    if not root.is_dir():
        raise UserError(f'image folder {root} does not exist')
    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    classes = classes or found
    if not classes:
        raise UserError(f'image folder {root} has no class subfolders '
                        '(expected <split>/<class>/<image files>)')
    extra = sorted(set(found) - set(classes))
    if extra:
        raise UserError(f'{root} has classes {extra} that the train split lacks')
    check = _is_local(root)
    paths, labels, corrupt, other, empty = [], [], [], [], []
    for label, name in enumerate(classes):
        class_dir = root / name
        if not class_dir.is_dir():
            continue
        before = len(paths)
        for path in sorted(class_dir.iterdir(), key=lambda p: p.name):
            if not path.name.lower().endswith(IMAGE_EXTENSIONS):
                other.append(os.fspath(path))
                continue
            if check and not _has_image_header(path):
                corrupt.append(os.fspath(path))
                continue
            paths.append(os.fspath(path))
            labels.append(label)
        if len(paths) == before:
            empty.append(name)
    if other:
        logging.warning('skipped %d file(s) that are not images (%s) in %s, '
                        'e.g. %s', len(other), ', '.join(IMAGE_EXTENSIONS), root,
                        other[:_NUM_LOGGED_CORRUPT])
    if require_all and empty and paths:
        raise UserError(
            f'{len(empty)} class folder(s) in {root} hold no readable images: '
            f'{", ".join(str(root / n) for n in empty[:5])}'
            f'{" ..." if len(empty) > 5 else ""}; add images or remove the '
            'folder (an empty class could never be learned)')
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


class ImageFolderSource(Source):

    def __init__(self, config, shard: indexing.Shard):
        if not config.data_dir:
            raise UserError('dataset=imagefolder needs --config.data_dir=<folder '
                            'with train/ and val/ subfolders>')
        root = epath.Path(config.data_dir)
        self.train_dir = root / 'train'
        self.eval_dir = next((root / d for d in ('val', 'validation')
                              if (root / d).is_dir()), None)
        if self.eval_dir is None:
            raise UserError(f'image folder {config.data_dir} has no val/ or '
                            'validation/ subfolder')
        tr_paths, self.train_labels, classes, bad = list_image_folder(
            self.train_dir, require_all=True)
        _log_corrupt(self.train_dir, bad)
        ev_paths, self.eval_labels, _, bad = list_image_folder(self.eval_dir, classes)
        _log_corrupt(self.eval_dir, bad)
        self.train_paths, self.eval_paths = np.asarray(tr_paths), np.asarray(ev_paths)
        self.num_classes = len(classes)
        self.class_names = list(classes)
        self.num_train_examples, self.num_eval_examples = len(tr_paths), len(ev_paths)
        self.steps_per_epoch = shard.steps_per_epoch(self.num_train_examples,
                                                     'imagefolder')
        self.shard, self.seed, self.image_size = shard, config.seed, config.image_size
        self.min_area = config.get('min_crop_area', 0.08)
        self.randaugment = randaugment.from_config(config.get('randaugment', ''))
        self.crop_fraction = config.get('eval_crop_fraction', 0.875)
        self.eval_image_size = eval_image_size(config)
        self.interpolation = config.get('eval_interpolation', '')

    def _epoch_indices(self, epoch, offset):
        return indexing.epoch_indices(self.seed, self.num_train_examples,
                                      self.shard, epoch, offset).reshape(-1)

    def train_dataset(self, epoch: int, offset: int) -> tf.data.Dataset:
        """This process's examples of steps `offset`.. of `epoch`, batched; each
        augmented with a seed from its position in the whole stream."""
        positions = indexing.stream_positions(epoch, offset, self.steps_per_epoch,
                                              self.shard).reshape(-1)
        idx = self._epoch_indices(epoch, offset)
        ds = tf.data.Dataset.from_tensor_slices(
            (self.train_paths[idx], self.train_labels[idx], positions))
        ds = preprocess.tpu_host_options(ds)
        ds = ds.map(lambda p, y, c: (preprocess.preprocess_train(
            tf.io.read_file(p), preprocess.example_seed(self.seed, c),
            self.image_size, self.min_area, randaugment=self.randaugment), y),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(self.shard.local_batch, drop_remainder=True).prefetch(2)

    def train_batches(self, start_step):
        local = self.shard.local_batch
        ahead = 4 * local  # batches decoded ahead of the one that failed
        for epoch, offset in indexing.epochs_from(start_step, self.steps_per_epoch):
            paths = self.train_paths[self._epoch_indices(epoch, offset)]
            for image, label in _naming_undecodable(
                    self.train_dataset(epoch, offset).as_numpy_iterator(),
                    lambda k: paths[k * local:(k + 1) * local + ahead],
                    self.train_dir):
                yield {'image': image, 'label': label}

    def eval_dataset(self, idx: np.ndarray) -> tf.data.Dataset:
        """The eval images `idx`, centre-cropped, in one batch."""
        ds = tf.data.Dataset.from_tensor_slices(self.eval_paths[idx])
        ds = preprocess.tpu_host_options(ds)
        ds = ds.map(lambda p: preprocess.preprocess_eval(
            tf.io.read_file(p), self.eval_image_size, self.crop_fraction,
            self.interpolation),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(len(idx))

    def eval_batches(self):
        for idx, mask in indexing.eval_index_batches(self.num_eval_examples,
                                                     self.shard):
            images = np.concatenate(list(_naming_undecodable(
                self.eval_dataset(idx).as_numpy_iterator(),
                lambda _: self.eval_paths[idx], self.eval_dir)))
            yield {'image': images, 'label': self.eval_labels[idx], 'mask': mask}
