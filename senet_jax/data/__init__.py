"""Input pipelines: tfds / imagefolder / digits / fake -> host-local uint8 batches.

Every pipeline yields dicts of numpy arrays holding this process's rows of a
global batch: `image` uint8 [local_batch, H, W, 3] (NHWC; normalisation happens
on the device) and `label` int32 [local_batch]; evaluation batches add `mask`
(1 for real examples, 0 for padding).

Resumability: the training stream is a pure function of (seed, step). Epoch `e`
visits the examples in an order fixed by (seed, e); step `s` is batch
`s % steps_per_epoch` of epoch `s // steps_per_epoch`, and random augmentation
is seeded by the example's position in the stream. A run restarted at step `s`
therefore sees exactly the batches an uninterrupted run would have seen. A
tfds source shuffles windows of whole TFRecord files (`tfds.epoch_windows`), so a
resume skips files instead of reading the records it skips.

Evaluation covers every example exactly once: the last batch is padded and
masked, nothing is dropped.

Layout: one module per source (`digits`, `fake`, `imagefolder`, `tfds`, and
`cifar`: tfds with the CIFAR augmentation, config.preprocess='cifar'), the
index arithmetic they share in `indexing`, the TensorFlow image preprocessing
in `preprocess`. Only `imagefolder`, `tfds`, `cifar`, `preprocess` and `randaugment`
import TensorFlow, only when a config names them, and always through `tf_host`,
which hides the GPUs from it.
"""

import importlib

from senet_jax.data.base import InputPipeline, Source, eval_image_size  # noqa: F401
from senet_jax.data.indexing import Shard, epoch_permutation  # noqa: F401  (re-exported)
from senet_jax.errors import UserError

# dataset name -> "module:class"; any other name is a tfds dataset.
SOURCES = {
    'digits': 'senet_jax.data.digits:DigitsSource',
    'fake': 'senet_jax.data.fake:FakeSource',
    'imagefolder': 'senet_jax.data.imagefolder:ImageFolderSource',
}
_TFDS = 'senet_jax.data.tfds:TfdsSource'
# tfds datasets by config.preprocess.
_TFDS_BY_PREPROCESS = {'inception': _TFDS, 'cifar': 'senet_jax.data.cifar:CifarSource'}

# Names kept importable from `senet_jax.data`, loaded on first use so that
# importing this package never imports TensorFlow.
_LAZY = {
    'load_digits_split': 'senet_jax.data.digits',
    'list_image_folder': 'senet_jax.data.imagefolder',
    'tfds_builder': 'senet_jax.data.tfds',
    'preprocess_train': 'senet_jax.data.preprocess',
    'preprocess_eval': 'senet_jax.data.preprocess',
    'example_seed': 'senet_jax.data.preprocess',
}


def source_class(dataset: str, preprocess: str = 'inception') -> type[Source]:
    """The Source subclass that serves `dataset`, imported on demand; a tfds
    dataset's depends on `preprocess` (the other sources ignore it)."""
    if preprocess not in _TFDS_BY_PREPROCESS:
        raise UserError(f'preprocess must be one of {", ".join(_TFDS_BY_PREPROCESS)}, '
                        f'got {preprocess!r}')
    module, cls = SOURCES.get(dataset, _TFDS_BY_PREPROCESS[preprocess]).split(':')
    return getattr(importlib.import_module(module), cls)


def create_input_pipeline(config, process_index: int = 0,
                          process_count: int = 1) -> InputPipeline:
    """Builds the pipeline named by `config.dataset` for this process's slice."""
    shard = Shard(config.batch_size, process_index, process_count,
                  repeats=config.get('repeated_augmentation', 0) or 1)
    source = source_class(config.dataset, config.get('preprocess', 'inception'))(
        config, shard)
    return InputPipeline(
        num_classes=source.num_classes,
        num_train_examples=source.num_train_examples,
        num_eval_examples=source.num_eval_examples,
        steps_per_epoch=shard.steps_per_epoch(source.num_train_examples,
                                              config.dataset),
        num_eval_batches=(source.num_eval_batches or
                          shard.num_eval_batches(source.num_eval_examples)),
        train_batches=source.train_batches,
        eval_batches=source.eval_batches,
        class_names=source.class_names)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
