"""Errors that mean "the user asked for something we cannot do".

`train.py` prints them as one line (`error: <message>`) and exits 1, without a
traceback; everything else is a bug and keeps its traceback.
"""

import errno
import os
import shutil


class UserError(Exception):
    """A bad flag, config value, dataset or workdir, explained in one sentence."""


class NonFiniteLossError(UserError):
    """Training produced a NaN/Inf loss or gradient and is configured to stop."""


class Preempted(Exception):
    """SIGTERM received: a checkpoint of the agreed step was saved; rerun to go on."""

    signal_name = 'SIGTERM'
    exit_status = 143  # 128 + SIGTERM

    def __init__(self, step: int):
        super().__init__(
            f'stopped by SIGTERM at step {step}; a checkpoint of step {step} was '
            'saved, rerun the same command to continue')
        self.step = step


class Interrupted(Preempted):
    """Ctrl-C (SIGINT) received: like SIGTERM, the step was saved; exit 130."""

    signal_name = 'Ctrl-C'
    exit_status = 130  # 128 + SIGINT, as a shell reports Ctrl-C

    def __init__(self, step: int):
        Exception.__init__(
            self, f'stopped by Ctrl-C at step {step}; a checkpoint of step {step} '
            'was saved; rerun to go on')
        self.step = step


# errno -> how a failed write is named to the user.
_WRITE_ERRORS = {
    errno.ENOSPC: 'no space left on the device',
    errno.EDQUOT: 'the disk quota is exceeded',
    errno.EIO: 'an I/O error',
    errno.EACCES: 'permission denied',
    errno.EPERM: 'permission denied',
    errno.EROFS: 'a read-only file system',
}
# The same, as storage libraries spell them in messages (tensorstore, gcsfs).
_WRITE_MESSAGES = {
    'no space left': errno.ENOSPC, 'quota': errno.EDQUOT,
    'input/output error': errno.EIO, 'permission denied': errno.EACCES,
    'read-only file system': errno.EROFS,
}


def write_error_kind(error: BaseException) -> int | None:
    """The errno of a failed write (see _WRITE_ERRORS), looking through the
    exceptions that a storage library wraps it in; None if it is not one."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _WRITE_ERRORS:
            return error.errno
        text = str(error).lower()
        for words, code in _WRITE_MESSAGES.items():
            if words in text:
                return code
        error = error.__cause__ or error.__context__
    return None


class WriteFailed(UserError):
    """A write to the workdir (or an output file) failed: full disk, quota,
    I/O error, permission. Says what was kept and what to do."""

    def __init__(self, what: str, path, error: BaseException, *, kept: str = '',
                 needed_bytes: int | None = None):
        code = write_error_kind(error)
        self.errno = code
        kind = _WRITE_ERRORS.get(code, type(error).__name__)
        space = ''
        if code in (errno.ENOSPC, errno.EDQUOT):
            free = _free_bytes(path)
            if needed_bytes is not None and free is not None:
                space = (f' (needs about {_mb(needed_bytes)}, '
                         f'{_mb(free)} free)')
            elif free is not None:
                space = f' ({_mb(free)} free)'
        fix = {errno.ENOSPC: 'free some space', errno.EDQUOT: 'free some space',
               errno.EACCES: 'fix the permissions', errno.EPERM:
               'fix the permissions', errno.EROFS: 'make it writable'}.get(
                   code, 'check the storage')
        super().__init__(f'cannot write {what} {path}: {kind}{space}'
                         f'{"; " + kept if kept else ""}; {fix} and rerun')


def _mb(n: int) -> str:
    return f'{n / 2**20:.1f} MB'


def _free_bytes(path) -> int | None:
    """Free bytes on the local file system holding `path` (None on gs://)."""
    path = str(path)
    if '://' in path:
        return None
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path or '.').free
    except OSError:
        return None
