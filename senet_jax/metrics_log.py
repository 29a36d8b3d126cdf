"""metrics.jsonl and TensorBoard events in the workdir, local or gs://.

Process 0 writes them. A local workdir is written in place: metrics.jsonl is
appended to, and so is the TensorBoard events file (TensorBoardScalars), an
event at a time.

A GCS object cannot be appended to, so for a gs:// workdir both files are
written in a local staging folder and each changed one is uploaded whole,
through etils.epath, after every write (a log step or an eval). TensorFlow's
own GCS writer does the same (it re-uploads the whole events file at each
flush); staging keeps one tested path for every gs:// client and puts each
record in the bucket as soon as it is logged, so TensorBoard pointed at the
workdir follows the run. An existing metrics.jsonl is downloaded first, so a
resumed run continues it.

A line is appended whole or not at all: a write that fails (full disk, I/O
error) is cut back to the previous line and raises WriteFailed, and a line
cut off by a killed run is dropped when the next run opens the file, with the
lines of the steps after the checkpoint it resumes from (they are redone).
"""

import io
import itertools
import json
import os
import shutil
import socket
import tempfile
import time

import jax
from absl import logging
from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from senet_jax.checkpoint import is_remote, user_path
from senet_jax.errors import WriteFailed, write_error_kind

JSONL = 'metrics.jsonl'


class MetricsLog:

    def __init__(self, workdir, after_step: int | None = None):
        """`after_step`: the step a resumed run starts from (see cut_back)."""
        self.primary = jax.process_index() == 0
        self.workdir = user_path(workdir)
        self.writer = None
        if not self.primary:
            return
        self.staging = None
        self.local = self.workdir
        if is_remote(self.workdir):
            self.staging = tempfile.mkdtemp(prefix='senet_jax_metrics_')
            self.local = epath.Path(self.staging)
            if (self.workdir / JSONL).exists():
                (self.local / JSONL).write_bytes(
                    (self.workdir / JSONL).read_bytes())
        cut_back(str(self.local / JSONL), after_step)
        self._uploaded = {}  # file name -> size last uploaded
        self.writer = TensorBoardScalars(str(self.local))

    def write(self, step: int, scalars: dict):
        if not self.primary:
            return
        line = json.dumps({'step': step, **scalars}) + '\n'
        try:
            append_whole(str(self.local / JSONL), line.encode())
        except OSError as e:
            raise WriteFailed('metrics', self.workdir / JSONL, e,
                              kept='it keeps every line written before') from None
        try:
            self.writer.write_scalars(step, scalars)
        except OSError as e:
            raise WriteFailed('TensorBoard events', self.workdir / self.writer.name, e,
                              kept='it keeps every event written before') from None
        if self.staging is not None:
            self._upload()

    def _upload(self):
        """Copies each staged file that changed since its last upload."""
        for path in self.local.iterdir():
            size = path.stat().length if path.is_file() else None
            if size is not None and self._uploaded.get(path.name) != size:
                try:
                    (self.workdir / path.name).write_bytes(path.read_bytes())
                except Exception as e:  # pylint: disable=broad-except
                    if write_error_kind(e) is None:
                        raise
                    raise WriteFailed('metrics', self.workdir / path.name, e,
                                      kept='the copy in the bucket keeps its '
                                      'earlier lines') from None
                self._uploaded[path.name] = size

    def close(self):
        if self.writer is None:
            return
        self.writer = None
        if self.staging is not None:
            self._upload()
            shutil.rmtree(self.staging, ignore_errors=True)


class TensorBoardScalars:
    """Scalars as a TensorBoard events file, in TensorBoard's own record format
    (tensorboard.summary.writer.record_writer) and event protos, each event
    appended whole (append_whole). TensorBoard's EventFileWriter, like clu's
    and TensorFlow's writers, imports TensorFlow when it is installed: seconds
    of CPU at every start, and on a GPU a second cuDNN (docs/accelerators.md)."""

    _count = itertools.count()  # two logs of one process in one second: two files

    def __init__(self, logdir: str):
        self.name = 'events.out.tfevents.%d.%s.%d.%d.v2' % (
            time.time(), socket.gethostname(), os.getpid(), next(self._count))
        self.path = os.path.join(logdir, self.name)
        self.started = False

    def write_scalars(self, step: int, scalars: dict):
        """Appends one event (after the file's version record, first time)."""
        if not self.started:
            self._append(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))
            self.started = True
        self._append(event_pb2.Event(step=step, wall_time=time.time(), summary=summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
                   for tag, value in scalars.items()])))

    def _append(self, event):
        record = io.BytesIO()
        RecordWriter(record).write(event.SerializeToString())
        append_whole(self.path, record.getvalue())


def append_whole(path: str, data: bytes):
    """Appends `data` to the local file `path`, or, if a write fails half-way,
    cuts the file back to its previous end and raises the OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def cut_back(path: str, after_step: int | None):
    """Drops a last line without its newline (a run killed mid-write) and,
    for a resume from `after_step`, the lines of later steps: that work is
    redone, and its lines written again. Lines are in step order (each run
    cuts back first), so this is one truncate, which needs no free space."""
    try:
        with open(path, 'rb+') as f:
            data = f.read()
            keep = data.rfind(b'\n') + 1
            if keep != len(data):
                logging.warning('%s ended in a cut-off line; dropping it', path)
            if after_step is not None:
                offset = 0
                for line in data[:keep].splitlines(keepends=True):
                    try:
                        step = json.loads(line).get('step', 0)
                    except ValueError:  # not a line of ours (a damaged file)
                        step = after_step + 1
                    if step > after_step:
                        keep = offset
                        logging.info('%s: dropping the lines after step %d, '
                                     'the step this run resumes from', path,
                                     after_step)
                        break
                    offset += len(line)
            if keep != len(data):
                f.truncate(keep)
    except FileNotFoundError:
        pass
