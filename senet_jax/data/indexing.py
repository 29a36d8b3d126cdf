"""The index arithmetic every source shares: which examples a process reads at
which step, and how evaluation covers every example exactly once.

Pure numpy, no TensorFlow. A global batch is split into contiguous row blocks,
one per process; a step's global batch never depends on the process count.

Repeated augmentation (`Shard.repeats` = R > 1, timm's `RepeatAugSampler`): a
global batch of B rows holds B/R distinct examples, each R times, copy c of
example i at row c * (B/R) + i. The copies thus lie in different row blocks
(different processes and devices) when B/R is at least the block, and each is
augmented differently, its seed being its row's stream position. An epoch keeps
its steps, so it visits about 1/R of the examples.
"""

import dataclasses
import math
from typing import Iterable, Iterator

import numpy as np

from senet_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's rows of every global batch."""
    global_batch: int
    process_index: int = 0
    process_count: int = 1
    # Training copies of each example in a global batch (repeated augmentation).
    repeats: int = 1

    def __post_init__(self):
        if self.global_batch % self.process_count:
            raise UserError(f'batch_size {self.global_batch} is not divisible by '
                            f'the {self.process_count} processes')
        if isinstance(self.repeats, bool) or not isinstance(
                self.repeats, (int, np.integer)) or self.repeats < 1:
            raise UserError('repeated_augmentation must be a whole number of copies '
                            f'(0 or 1 = off), got {self.repeats!r}')
        if self.global_batch % self.repeats:
            raise UserError(f'repeated_augmentation={self.repeats} needs a batch_size '
                            f'divisible by {self.repeats}, got {self.global_batch}')

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.process_count

    @property
    def distinct(self) -> int:
        """Distinct training examples in a global batch (B / repeats)."""
        return self.global_batch // self.repeats

    @property
    def rows(self) -> slice:
        """This process's rows of a global batch."""
        start = self.process_index * self.local_batch
        return slice(start, start + self.local_batch)

    def steps_per_epoch(self, num_examples: int, name: str = 'dataset') -> int:
        """Whole global batches in an epoch of `num_examples` (the rest is dropped)."""
        if num_examples < self.global_batch:
            raise UserError(f'the {name} training split has {num_examples} examples, '
                            f'fewer than one global batch of {self.global_batch}; '
                            'lower batch_size')
        return num_examples // self.global_batch

    def num_eval_batches(self, num_examples: int) -> int:
        """Batches that cover `num_examples`, the last one padded."""
        return math.ceil(num_examples / self.global_batch)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the `n` training examples in `epoch`, fixed by the seed."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def epochs_from(start_step: int, steps_per_epoch: int) -> Iterator[tuple[int, int]]:
    """(epoch, first step offset in it) from `start_step` on: the rest of the
    epoch `start_step` falls in, then whole epochs."""
    epoch, offset = divmod(start_step, steps_per_epoch)
    while True:
        yield epoch, offset
        epoch, offset = epoch + 1, 0


def epoch_indices(seed: int, num_examples: int, shard: Shard, epoch: int,
                  offset: int) -> np.ndarray:
    """[steps, local_batch] example indices this process reads at steps
    `offset`.. of `epoch`; every example at most once per epoch, or with
    `shard.repeats` R > 1 exactly R times, all in one step."""
    d = shard.distinct
    steps = shard.steps_per_epoch(num_examples)
    perm = epoch_permutation(seed, epoch, num_examples)[offset * d:steps * d]
    return repeat_copies(perm.reshape(-1, d), shard.repeats)[:, shard.rows]


def repeat_copies(batches: np.ndarray, repeats: int) -> np.ndarray:
    """[steps, d] -> [steps, repeats * d]: copy c of column i at c * d + i, so
    that the copies land in different contiguous row blocks."""
    return np.tile(batches, (1, repeats))


def stream_positions(epoch: int, offset: int, steps_per_epoch: int,
                     shard: Shard) -> np.ndarray:
    """[steps, local_batch] positions in the whole training stream (step *
    global_batch + row) of this process's examples at steps `offset`.. of
    `epoch`: a per-example augmentation seed independent of the process count."""
    return step_positions(np.arange(epoch * steps_per_epoch + offset,
                                    (epoch + 1) * steps_per_epoch), shard)


def step_positions(step, shard: Shard) -> np.ndarray:
    """[..., local_batch] stream positions (step * global_batch + row) of this
    process's rows at `step` (an int, or an array of steps)."""
    return (np.asarray(step)[..., None] * shard.global_batch
            + np.arange(shard.rows.start, shard.rows.stop))


def process_epoch_offset(epoch: int, steps_per_epoch: int, shard: Shard) -> int:
    """Where this process's examples of `epoch` start in a stream in which each
    process reads its own slice of the split (tfds): disjoint across processes
    and epochs, `steps_per_epoch * local_batch` positions each."""
    return ((epoch * shard.process_count + shard.process_index)
            * steps_per_epoch * shard.local_batch)


def train_index_batches(seed: int, num_examples: int, shard: Shard,
                        start_step: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (step, this process's example indices) from `start_step` on."""
    steps_per_epoch = shard.steps_per_epoch(num_examples)
    step = start_step
    for epoch, offset in epochs_from(start_step, steps_per_epoch):
        for idx in epoch_indices(seed, num_examples, shard, epoch, offset):
            yield step, idx
            step += 1


def eval_index_batches(num_examples: int,
                       shard: Shard) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (indices, mask) of this process's rows, `local_batch` long, so that
    all processes together cover each example exactly once; padding rows point
    at example 0 and have mask 0."""
    gb = shard.global_batch
    for b in range(shard.num_eval_batches(num_examples)):
        idx = np.arange(b * gb, (b + 1) * gb)[shard.rows]
        mask = idx < num_examples
        yield np.where(mask, idx, 0), mask.astype(np.float32)


def pad_batches(batches: Iterable[dict], local_batch: int, num_batches: int,
                image_shape: tuple[int, ...]) -> Iterator[dict]:
    """Pads a stream of possibly short batches to `local_batch` rows with a
    `mask`, and appends all-padding batches up to `num_batches`, so that every
    process yields the same number of batches (collectives must match)."""
    n = 0
    for b in batches:
        k = len(b['label'])
        if n == num_batches or k > local_batch:
            raise ValueError(f'more than {num_batches} batches of {local_batch}')
        pad = local_batch - k
        yield {'image': np.concatenate(
                   [b['image'], np.zeros((pad,) + tuple(image_shape), np.uint8)]),
               'label': np.concatenate([b['label'], np.zeros(pad, b['label'].dtype)]
                                       ).astype(np.int32),
               'mask': (np.arange(local_batch) < k).astype(np.float32)}
        n += 1
    for _ in range(n, num_batches):
        yield {'image': np.zeros((local_batch,) + tuple(image_shape), np.uint8),
               'label': np.zeros(local_batch, np.int32),
               'mask': np.zeros(local_batch, np.float32)}
