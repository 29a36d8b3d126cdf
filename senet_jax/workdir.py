"""One run per workdir, and what a resume must match.

`WorkdirLock`: `<workdir>/run.lock` names the run that holds the workdir
(host, pid, start time, a random token). A second trainer on the same
workdir stops at once with one line naming the holder. The holder's process 0
renews the lease every `RENEW_S` seconds; a lock is stale, and taken over
with a logged warning, when its process on this host is gone, or when its
lease was not renewed for `LEASE_S` seconds (a killed VM, another host).
Creation is create-only-if-absent: `O_EXCL` on a local disk; on gs://, the
object precondition `ifGenerationMatch=0` (through gcsfs when it is
installed; otherwise write, wait, read back, which leaves a window, see
docs/reliability.md). On several processes only process 0 takes the lock,
and every process then reads its token back from its own `--workdir`: a
workdir the hosts do not share stops all of them in one line.

`check_resume`: every config field that changes the run, compared with the
checkpoint's config (`MAY_CHANGE` lists those that may differ).
`check_class_list`: an image folder's class list, kept in
`<workdir>/classes.json`, compared on resume.
"""

import contextlib
import datetime
import json
import os
import socket
import threading
import time
import uuid

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from senet_jax.checkpoint import IDENTITY_FIELDS, is_remote, prepare_workdir, user_path
from senet_jax.errors import UserError

LOCK = 'run.lock'
CLASSES = 'classes.json'
LEASE_S = 180.0  # a lock not renewed for this long is stale
RENEW_S = 20.0   # how often the holder's process 0 renews it
# Config fields a resume may change: when and how the run is logged, saved and
# computed, not what it computes (docs/reliability.md).
MAY_CHANGE = frozenset({
    'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
    'keep_checkpoints', 'skip_nonfinite_steps', 'init_from', 'data_dir',
    'dtype', 'half_precision', 'model_overrides.kernels', 'allow_config_change',
    'max_eval_batches',  # a quick look at part of the eval split
    'num_classes',  # compared as the data's class count instead (run identity)
})
# The run's length: it may change unless the schedule spans it (cosine decays
# to 0 at the last step; a longer step, constant or plateau schedule repeats
# the rates of the steps already trained and goes on).
LENGTH = frozenset({'num_epochs', 'num_train_steps'})
_FIRST = ('model', 'num_classes', 'dataset')
# Fields added to the config after workdirs were started, with the value that
# computes what the code before them did: a checkpoint whose config lacks one
# is compared as if it held that value, so an older run cannot be resumed with
# the feature switched on unnoticed.
ADDED_FIELDS = {
    # ResNet Strikes Back: optimizer, loss, mixing, drop path (all off).
    'optimizer': 'sgd', 'loss': 'softmax', 'bce_target_threshold': None,
    'mixup_alpha': 0.0, 'cutmix_alpha': 0.0, 'model_overrides.drop_path_rate': None,
    # The test resolution (0: image_size). Not ema_decay: an older run resumed with an
    # EMA starts it from its weights (trainer.restore_or_init), as timm does.
    'eval_image_size': 0,
    'randaugment': '',   # RandAugment (off)
    # Repeated augmentation (0: off).
    'repeated_augmentation': 0,
}
_MESSAGE_BYTES = 2048  # process 0's verdict, broadcast to the others


# ---------------------------------------------------------------------------
# The lock file on each storage.


class _Local:
    """A lock file on a local or mounted file system. Each write is made
    aside and then linked or renamed into place, so a reader never sees half
    of one; the compare-and-replace steps run under flock."""

    def __init__(self, path: epath.Path):
        self.path = os.fspath(path)

    def _aside(self, data: bytes) -> str:
        tmp = f'{self.path}.{uuid.uuid4().hex}.tmp'
        with open(tmp, 'wb') as f:
            f.write(data)
        return tmp

    def create(self, data: bytes):
        """The new version, or None if a lock exists."""
        tmp = self._aside(data)
        try:
            os.link(tmp, self.path)  # fails if the lock exists
        except FileExistsError:
            return None
        finally:
            os.unlink(tmp)
        return data

    def read(self):
        """(content, version), or (None, None) when there is no lock."""
        try:
            with open(self.path, 'rb') as f:
                data = f.read()
        except FileNotFoundError:
            return None, None
        return data, data

    @contextlib.contextmanager
    def _guard(self):
        import fcntl  # pylint: disable=g-import-not-at-top
        with open(self.path + '.guard', 'a') as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            yield

    def replace(self, version, data: bytes):
        """The new version, or None if the lock is no longer `version`."""
        with self._guard():
            if self.read()[1] != version:
                return None
            os.replace(self._aside(data), self.path)
            return data

    def remove(self, version) -> bool:
        with self._guard():
            if self.read()[1] != version:
                return False
            os.unlink(self.path)
            return True


class _Gcs:
    """A lock object on gs://, written with GCS's own precondition
    (ifGenerationMatch: 0 to create only if absent, the generation read to
    replace only what was read). gcsfs sends the same request for its
    create-only writes (`pipe_file(mode='create')`) but has no API for a
    generation other than 0."""

    def __init__(self, path: epath.Path):
        import gcsfs  # pylint: disable=g-import-not-at-top
        self.fs = gcsfs.GCSFileSystem()
        self.bucket, self.key, _ = self.fs.split_path(os.fspath(path))

    def _put(self, data: bytes, generation):
        meta = json.dumps({'name': self.key})
        body = (f'--==0==\nContent-Type: application/json; charset=UTF-8\n\n{meta}\n'
                '--==0==\nContent-Type: application/json\n\n').encode()
        try:
            out = self.fs.call(
                'POST', f'{self.fs._location}/upload/storage/v1/b/{self.bucket}/o',  # pylint: disable=protected-access
                uploadType='multipart', ifGenerationMatch=str(generation),
                headers={'Content-Type': 'multipart/related; boundary="==0=="'},
                data=body + data + b'\n--==0==--', json_out=True)
        except FileExistsError:  # HTTP 412: the precondition failed
            return None
        return out['generation']

    def create(self, data: bytes):
        return self._put(data, 0)

    def read(self):
        try:
            meta = self.fs.call('GET', 'b/{}/o/{}', self.bucket, self.key,
                                json_out=True)
            _, data = self.fs.call('GET', 'b/{}/o/{}', self.bucket, self.key,
                                   alt='media', generation=meta['generation'])
        except FileNotFoundError:
            return None, None
        return data, meta['generation']

    def replace(self, version, data: bytes):
        return self._put(data, version)

    def remove(self, version) -> bool:
        try:
            self.fs.call('DELETE', 'b/{}/o/{}', self.bucket, self.key,
                         ifGenerationMatch=str(version))
        except (FileExistsError, FileNotFoundError):  # 412 / 404: it changed
            return False
        return True


class _Plain:
    """Any other storage etils.epath reaches (gs:// through TensorFlow's file
    system, when gcsfs is not installed): no precondition, so a create is
    write, wait, read back, and a replace is read, compare, write."""

    SETTLE_S = 2.0

    def __init__(self, path: epath.Path):
        self.path = path

    def create(self, data: bytes):
        if self.path.exists():
            return None
        self.path.write_bytes(data)
        time.sleep(self.SETTLE_S)  # a run writing at the same moment wins or loses here
        return data if self.read()[0] == data else None

    def read(self):
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None, None
        return data, data

    def replace(self, version, data: bytes):
        if self.read()[1] != version:
            return None
        self.path.write_bytes(data)
        return data

    def remove(self, version) -> bool:
        if self.read()[1] != version:
            return False
        self.path.unlink(missing_ok=True)
        return True


def _storage(path: epath.Path):
    if not is_remote(path):
        return _Local(path)
    if str(path).startswith('gs://'):
        try:
            import gcsfs  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
            return _Gcs(path)
        except ImportError:
            pass
    return _Plain(path)


# ---------------------------------------------------------------------------
# Who holds a workdir, and whether that holder is gone.


def process_stamp(pid: int) -> str | None:
    """This host's boot and the start time of process `pid` ('' where /proc
    cannot tell), or None if there is no such live process. A pid reused
    after the holder died, or after a reboot, has another stamp."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # another user's process
    try:
        with open('/proc/sys/kernel/random/boot_id') as f:
            boot = f.read().strip()
        with open(f'/proc/{pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[-1].split()
    except OSError:
        return ''
    if fields[0] == 'Z':  # killed, not yet reaped by its parent
        return None
    return f'{boot}/{fields[19]}'  # field 22 of stat: start time, in ticks


def stale_reason(holder: dict, now: float | None = None,
                 host: str | None = None) -> str | None:
    """Why the run in `holder` no longer holds the workdir, or None."""
    if not holder:
        return 'the lock cannot be read'
    now = time.time() if now is None else now
    host = socket.gethostname() if host is None else host
    if holder.get('host') == host:
        stamp = process_stamp(int(holder.get('pid', -1)))
        if stamp is None or (stamp and holder.get('stamp')
                             and stamp != holder['stamp']):
            return f'its process {holder.get("pid")} on this host is gone'
    age = now - float(holder.get('renewed', 0))
    lease = float(holder.get('lease_s', LEASE_S))
    if age > lease:
        return f'its lease was last renewed {age:.0f} s ago (lease {lease:.0f} s)'
    return None


def _parse(data) -> dict:
    try:
        return json.loads(data) if data else {}
    except ValueError:
        return {}


def describe(holder: dict) -> str:
    return (f'host {holder.get("host")}, pid {holder.get("pid")}, started '
            f'{holder.get("started")}')


class WorkdirLock:
    """Holds `<workdir>/run.lock` for the life of a run (see the module doc).

    Used as a context manager by `trainer.train_and_evaluate`; `check()` at
    each checkpoint save stops a run whose lock another run took over.
    """

    def __init__(self, workdir, lease_s: float = LEASE_S,
                 renew_s: float = RENEW_S):
        self.workdir = user_path(workdir)
        self.path = self.workdir / LOCK
        self.lease_s, self.renew_s = lease_s, renew_s
        self.primary = jax.process_index() == 0
        self.token = uuid.uuid4().hex
        self.record = None
        self.version = None  # of the lock as this run last wrote it
        self.lost = None  # the reason, once another run has taken the lock
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        _prepare_everywhere(self.workdir)
        verdict = ''
        if self.primary:
            self.storage = _storage(self.path)
            try:
                self._acquire()
                verdict = 'ok:' + self.token
            except UserError as e:
                verdict = str(e)
            except Exception as e:  # pylint: disable=broad-except
                # Told to every process, so that none waits for the others.
                detail = ' '.join(str(e).split())[:300] or type(e).__name__
                verdict = f'cannot take the lock {self.path} ({detail})'
        verdict = _from_process_0(verdict)
        if not verdict.startswith('ok:'):
            raise UserError(verdict)
        try:
            _check_shared(self.path, verdict[3:], self.workdir)
        except BaseException:
            self._release()
            raise
        if self.primary:
            self._thread = threading.Thread(target=self._renew, daemon=True,
                                            name='workdir_lease')
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._release()

    def _new_record(self) -> bytes:
        now = time.time()
        if self.record is None:
            self.record = {
                'token': self.token, 'host': socket.gethostname(),
                'pid': os.getpid(), 'stamp': process_stamp(os.getpid()),
                'processes': jax.process_count(),
                'started': datetime.datetime.now(datetime.timezone.utc)
                .strftime('%Y-%m-%d %H:%M:%S UTC'),
                'lease_s': self.lease_s}
        self.record['renewed'] = now
        return json.dumps(self.record).encode()

    def _acquire(self):
        for _ in range(5):
            self.version = self.storage.create(self._new_record())
            if self.version is not None:
                return
            data, version = self.storage.read()
            if data is None:
                continue  # released meanwhile: try again
            holder = _parse(data)
            why = stale_reason(holder)
            if why is None:
                left = float(holder.get('lease_s', LEASE_S)) - (
                    time.time() - float(holder.get('renewed', 0)))
                raise UserError(
                    f'the workdir {self.workdir} is in use by another run '
                    f'({describe(holder)}); wait for it to finish, stop it, or use '
                    'another --workdir (if that run is gone, its lease expires '
                    f'in {max(left, 0):.0f} s)')
            # Replaced only if it is still the stale lock that was read: of
            # two runs taking it over at once, one wins.
            self.version = self.storage.replace(version, self._new_record())
            if self.version is not None:
                logging.warning('taking over the workdir %s from a stale run (%s): %s',
                                self.workdir, describe(holder), why)
                return
        raise UserError(f'could not take the lock {self.path}: other runs keep '
                        'taking it; start one run per workdir')

    def _renew(self):
        while not self._stop.wait(self.renew_s):
            try:
                version = self.storage.replace(self.version, self._new_record())
                if version is None:
                    holder = _parse(self.storage.read()[0])
                    self.lost = (f'another run ({describe(holder)}) took over the '
                                 f'workdir {self.workdir}' if holder else
                                 f'the lock {self.path} was removed')
                    logging.error('%s; this run stops at its next checkpoint', self.lost)
                    return
                self.version = version
            except Exception as e:  # pylint: disable=broad-except
                # Transient storage errors: the lease tolerates a few misses.
                logging.warning('could not renew the lease %s: %s', self.path, e)

    def check(self):
        """Raises UserError if another run has taken this workdir."""
        if self.lost:
            raise UserError(f'{self.lost}; stopped without saving, so that only '
                            'one run writes its checkpoints')

    def _release(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.primary and self.record is not None and not self.lost:
            with contextlib.suppress(Exception):
                self.storage.remove(self.version)  # only if still ours
            self.record = None


def _prepare_everywhere(workdir):
    """prepare_workdir on every process; if one cannot write, all stop."""
    try:
        prepare_workdir(workdir)
        problem = None
    except UserError as e:
        problem = str(e)
    if jax.process_count() > 1:
        failed = np.asarray(multihost_utils.process_allgather(np.int32(problem is not None)))
        if failed.any() and problem is None:
            problem = (f'process(es) {[int(p) for p in np.flatnonzero(failed)]} of '
                       f'{jax.process_count()} cannot write to the workdir {workdir}; '
                       'their own error line says why')
    if problem:
        raise UserError(problem)


def _from_process_0(message: str) -> str:
    """Process 0's `message`, on every process."""
    if jax.process_count() == 1:
        return message
    raw = message.encode()[:_MESSAGE_BYTES]
    buf = np.zeros(_MESSAGE_BYTES, np.uint8)
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return bytes(out).rstrip(b'\0').decode(errors='replace')


def _check_shared(path: epath.Path, token: str, workdir, wait_s: float = 10.0):
    """Every process must read process 0's token in its own workdir: a local
    path on each of several hosts would make them restore different steps."""
    if jax.process_count() == 1:
        return
    deadline = time.time() + wait_s
    while True:  # a shared file system may show a new file a little late
        try:
            seen = json.loads(path.read_bytes()).get('token')
        except (OSError, ValueError):
            seen = None
        if seen == token or time.time() > deadline:
            break
        time.sleep(0.5)
    blind = np.asarray(multihost_utils.process_allgather(np.int32(seen != token)))
    if blind.any():
        which = [int(p) for p in np.flatnonzero(blind)]
        raise UserError(
            f'the workdir {workdir} is not shared: process(es) {which} of '
            f'{jax.process_count()} cannot see the lock process 0 wrote there; '
            'every process must get the same --workdir on storage they all see '
            '(a shared file system or gs://)')


# ---------------------------------------------------------------------------
# What a resume must match.


def _flatten(tree: dict, prefix: str = '') -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f'{prefix}{key}.'))
        else:
            out[f'{prefix}{key}'] = value
    return out


def config_changes(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    """(key, saved value, current value) of each field that changes the run.

    `saved` and `current` are run identities (trainer.run_identity): the
    config under 'config', the data's class count under 'num_classes'.
    Checkpoints written before the config was recorded are compared on
    checkpoint.IDENTITY_FIELDS. A field of ADDED_FIELDS that the saved
    config lacks counts as its old value; other fields only one side knows
    (a config of another version of this code) are not compared.
    """
    if 'config' not in saved or 'config' not in current:
        return [(k, saved[k], current.get(k)) for k in IDENTITY_FIELDS
                if k in saved and saved[k] != current.get(k)]
    changes = []
    if saved.get('num_classes') != current.get('num_classes'):
        changes.append(('num_classes', saved.get('num_classes'),
                        current.get('num_classes')))
    old, new = _flatten(saved['config']), _flatten(current['config'])
    old = {**{k: v for k, v in ADDED_FIELDS.items() if k in new}, **old}
    may_change = MAY_CHANGE
    if 'cosine' not in (old.get('lr_schedule'), new.get('lr_schedule')):
        may_change = may_change | LENGTH
    for key, value in new.items():
        if key in old and key not in may_change and old[key] != value:
            changes.append((key, old[key], value))
    # The fields that make it another network or another dataset first.
    return sorted(changes, key=lambda c: (_FIRST.index(c[0]) if c[0] in _FIRST
                                          else len(_FIRST), c[0]))


def check_resume(saved: dict, current: dict, directory, allow: bool = False):
    """Raises UserError naming every changed field, unless `allow`."""
    changes = config_changes(saved, current)
    if not changes:
        return
    was = ', '.join(f'{k}={a!r}' for k, a, _ in changes)
    now = ', '.join(f'{k}={b!r}' for k, _, b in changes)
    if allow:
        logging.warning('resuming %s with a changed config (allow_config_change'
                        '=True): was %s, now %s', directory, was, now)
        return
    raise UserError(
        f'the checkpoints in {directory} belong to a run with {was}, but this '
        f'config has {now}; use a new --workdir, the original values, or '
        '--config.allow_config_change=True to resume with the change')


def check_class_list(workdir, classes, resuming: bool, allow: bool = False):
    """Writes the class list (index, name) into the workdir; on resume, a
    different list (a class folder added, removed or renamed, which shifts
    the labels) stops the run unless `allow`."""
    if classes is None:
        return
    path = user_path(workdir) / CLASSES
    listed = [{'index': i, 'name': name} for i, name in enumerate(classes)]
    if resuming and path.exists():
        saved = [c['name'] for c in json.loads(path.read_text())]
        if saved != list(classes):
            gone = [n for n in saved if n not in classes]
            added = [n for n in classes if n not in saved]
            moved = [n for i, n in enumerate(classes)
                     if n in saved and saved.index(n) != i]
            what = '; '.join(f'{k} {v[:5]}' for k, v in (
                ('missing', gone), ('new', added), ('at another index', moved)) if v)
            if not allow:
                raise UserError(
                    f'the classes of the data ({len(classes)}) differ from those '
                    f'this run started with ({path}, {len(saved)}): {what}; the '
                    'labels would shift. Restore the folders, use a new --workdir, '
                    'or --config.allow_config_change=True')
            logging.warning('the class list changed (%s); allow_config_change'
                            '=True, so %s is rewritten', what, path)
        else:
            return
    if jax.process_index() == 0:
        path.write_text(json.dumps(listed, indent=0) + '\n')
