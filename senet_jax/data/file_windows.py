"""The order in which a process reads its TFRecord files, so that a resume
skips whole files: pure numpy, no TensorFlow.

Epoch `e` permutes the process's files (seeded by (seed, e)) and cuts the
permuted list into windows of `files_per_window` files. A window's records are
read in full and shuffled as a whole (seeded by (seed, e, window)); the epoch
is the windows one after another, cut to `records` records. What a window
yields depends only on its own files, so a run resumed at record r of an epoch
opens no file of the windows before r's, and reads and drops fewer records
than one window holds.

(tf.data's sliding shuffle buffer cannot do this: what it yields at record r
depends on every record read before, so it cannot resume without re-reading
them.)
"""

import dataclasses
from typing import Iterator, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Window:
    """One window of an epoch, as the pipeline reads it."""
    files: np.ndarray      # indices into the process's file list, in read order
    order: np.ndarray      # which of the window's records (in read order) it
                           # yields, in yield order: a shuffle, less the
                           # records a resume drops and the epoch's cut
    position: int          # stream position of the first record yielded


def files_per_window(file_sizes: Sequence[int], shuffle_buffer: int) -> int:
    """Files per window so that a window holds about `shuffle_buffer` records."""
    mean = max(1.0, float(np.mean(file_sizes)))
    return int(min(len(file_sizes), max(1, round(shuffle_buffer / mean))))


def epoch_windows(file_sizes: Sequence[int], per_window: int, seed: int,
                  epoch: int, records: int, skip: int,
                  first_position: int) -> Iterator[Window]:
    """The windows of `epoch` from its record `skip` on.

    `file_sizes`: records of each of the process's files; `records`: records
    the epoch yields (<= their sum); `first_position`: stream position of the
    epoch's record 0. Windows that end before `skip` are not yielded (their
    files are never opened).
    """
    sizes = np.asarray(file_sizes, np.int64)
    files = np.random.default_rng([seed, epoch]).permutation(len(sizes))
    start = 0  # the epoch's record at which the window starts
    for w, first in enumerate(range(0, len(files), per_window)):
        if start >= records:
            return
        chunk = files[first:first + per_window]
        n = int(sizes[chunk].sum())
        end = min(start + n, records)
        if end > skip:
            order = np.random.default_rng([seed, epoch, w]).permutation(n)
            lo = max(skip, start)
            yield Window(files=chunk, order=order[lo - start:end - start],
                         position=first_position + lo)
        start += n
