"""metrics.jsonl and TensorBoard events in the workdir, local or gs://.

Process 0 writes them. A local workdir is written in place: metrics.jsonl is
appended to, and clu writes the events file there.

A GCS object cannot be appended to, so for a gs:// workdir both files are
written in a local staging folder and each changed one is uploaded whole,
through etils.epath, after every write (a log step or an eval). TensorFlow's
own GCS writer does the same (it re-uploads the whole events file at each
flush); staging keeps one tested path for every gs:// client and puts each
record in the bucket as soon as it is logged, so TensorBoard pointed at the
workdir follows the run. An existing metrics.jsonl is downloaded first, so a
resumed run continues it.
"""

import json
import shutil
import tempfile

import jax
from clu import metric_writers
from etils import epath

from senet_jax.checkpoint import is_remote, user_path

JSONL = 'metrics.jsonl'


class MetricsLog:

    def __init__(self, workdir):
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
        self._uploaded = {}  # file name -> size last uploaded
        # The console line is ours (see the loop); clu writes TensorBoard events.
        self.writer = metric_writers.AsyncWriter(
            metric_writers.SummaryWriter(str(self.local)))

    def write(self, step: int, scalars: dict):
        if not self.primary:
            return
        self.writer.write_scalars(step, scalars)
        with (self.local / JSONL).open('a') as f:
            f.write(json.dumps({'step': step, **scalars}) + '\n')
        if self.staging is not None:
            self.writer.flush()
            self._upload()

    def _upload(self):
        """Copies each staged file that changed since its last upload."""
        for path in self.local.iterdir():
            size = path.stat().length if path.is_file() else None
            if size is not None and self._uploaded.get(path.name) != size:
                (self.workdir / path.name).write_bytes(path.read_bytes())
                self._uploaded[path.name] = size

    def close(self):
        if self.writer is None:
            return
        self.writer.flush()
        self.writer.close()
        self.writer = None
        if self.staging is not None:
            self._upload()
            shutil.rmtree(self.staging, ignore_errors=True)
