"""What a source module provides, and the pipeline the trainer receives."""

import abc
import dataclasses
from typing import Callable, Iterator


def eval_image_size(config) -> int:
    """The side of the eval images: config.eval_image_size, 0 = image_size (a
    recipe may test at another resolution than it trains at, e.g. ResNet
    Strikes Back's A3: train 160, test 224)."""
    return config.get('eval_image_size', 0) or config.image_size


def batch_randaugment(config, shard) -> Callable | None:
    """For the numpy sources (digits, fake): (uint8 batch, step) -> the batch with
    config.randaugment applied row by row (randaugment.batch_augmenter); None
    when the field is off. TensorFlow is imported only when on."""
    if not config.get('randaugment', ''):
        return None
    from senet_jax.data import randaugment
    return randaugment.batch_augmenter(config.randaugment, config.seed, shard)


class Source(abc.ABC):
    """A dataset seen by one process: its sizes and its two streams.

    Each source module (digits, fake, imagefolder, tfds) subclasses it; its
    constructor takes (config, shard) and fails with a UserError on bad input.
    """
    num_classes: int
    num_train_examples: int
    num_eval_examples: int
    # Set where the process's eval slice is not cut by indexing.eval_index_batches.
    num_eval_batches: int | None = None
    # The class names by label, where the source has them (an image folder's
    # folders); kept in the workdir so that a resume sees the same labels.
    class_names: list[str] | None = None

    @abc.abstractmethod
    def train_batches(self, start_step: int) -> Iterator[dict]:
        """Batches of steps start_step, start_step + 1, ... (endless)."""

    @abc.abstractmethod
    def eval_batches(self) -> Iterator[dict]:
        """num_eval_batches masked batches covering this process's eval slice."""


@dataclasses.dataclass(frozen=True)
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
    class_names: list[str] | None = None
