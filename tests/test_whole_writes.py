"""Writes land whole or not at all: metrics.jsonl a line at a time (cut back on
resume), the TensorBoard events an event at a time, the analysis figure a file
at a time; a failed one is named."""

import errno
import json
import os

import pytest

from senet_jax.errors import WriteFailed, write_error_kind
from senet_jax.metrics_log import MetricsLog, append_whole, cut_back


def _write(path, *steps, tail=b''):
    with open(path, 'wb') as f:
        f.write(b''.join(json.dumps({'step': s}).encode() + b'\n' for s in steps))
        f.write(tail)


def _steps(path):
    with open(path, 'rb') as f:
        data = f.read()
    assert not data or data.endswith(b'\n')
    return [json.loads(line)['step'] for line in data.splitlines()]


def test_a_write_failing_half_way_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = str(tmp_path / 'metrics.jsonl')
    _write(path, 1, 2)
    real = os.write

    def half_then_full(fd, data):
        real(fd, bytes(data)[:5])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, 'write', half_then_full)
    with pytest.raises(OSError):
        append_whole(path, b'{"step": 3}\n')
    monkeypatch.undo()
    assert _steps(path) == [1, 2]
    append_whole(path, b'{"step": 3}\n')
    assert _steps(path) == [1, 2, 3]


def test_an_events_write_failing_half_way_is_named_and_the_file_keeps_its_events(
        tmp_path, monkeypatch):
    log = MetricsLog(str(tmp_path))
    log.write(1, {'train_loss': 2.5})
    events = tmp_path / log.writer.name
    size = events.stat().st_size
    real = os.write

    def half_then_full(fd, data):
        if os.readlink(f'/proc/self/fd/{fd}') == str(events):
            real(fd, bytes(data)[:7])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)
    monkeypatch.setattr(os, 'write', half_then_full)
    with pytest.raises(WriteFailed, match=r'^cannot write TensorBoard events .*events\.out\.tfevents'
                       r'.*: no space left on the device \(.* MB free\); it keeps every event'):
        log.write(2, {'train_loss': 2.0})
    monkeypatch.undo()
    assert events.stat().st_size == size
    log.write(2, {'train_loss': 2.0})
    assert events.stat().st_size > size
    log.close()


def test_cut_off_line_and_the_steps_after_a_resume_are_dropped(tmp_path):
    path = str(tmp_path / 'metrics.jsonl')
    _write(path, 1, 2, tail=b'{"step": 3, "lo')
    cut_back(path, None)
    assert _steps(path) == [1, 2]
    _write(path, 1, 2, 2, 3, 4)  # eval and train lines at step 2
    cut_back(path, 2)
    assert _steps(path) == [1, 2, 2]
    cut_back(path, 0)  # a fresh start: every line is redone
    assert _steps(path) == []
    cut_back(str(tmp_path / 'absent.jsonl'), 0)  # no file: nothing to do


@pytest.mark.parametrize('error, words', [
    (OSError(errno.ENOSPC, 'x'), 'no space left on the device ('),
    (OSError(errno.EDQUOT, 'x'), 'the disk quota is exceeded ('),
    (OSError(errno.EIO, 'x'), 'an I/O error; '),
    (OSError(errno.EACCES, 'x'), 'permission denied; '),
    (OSError(errno.EROFS, 'x'), 'a read-only file system; '),
    # As tensorstore and gcsfs report them: a message, wrapped.
    (ValueError('Error writing "d/1": [28] No space left on device'),
     'no space left on the device (')])
def test_each_write_error_is_named(tmp_path, error, words):
    try:
        try:
            raise error
        except Exception as inner:
            raise RuntimeError('save failed') from inner
    except RuntimeError as wrapped:
        message = str(WriteFailed('checkpoint', tmp_path / 'c', wrapped,
                                  kept='checkpoint 2 is complete and kept',
                                  needed_bytes=3 * 2**20))
    assert message.startswith(f'cannot write checkpoint {tmp_path}/c: {words}')
    if 'space' in words or 'quota' in words:
        assert '(needs about 3.0 MB, ' in message and ' MB free)' in message
    assert message.endswith('and rerun') and '\n' not in message


def test_a_failed_figure_write_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    from senet_jax import analysis

    def half_then_full(stats, f):
        f.write(b'\x89PNG half')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(analysis, 'plot_gate_curves', half_then_full)
    path = tmp_path / 'gates.png'
    with pytest.raises(WriteFailed, match=f'^cannot write the figure {path}: no '
                       'space left on the device .*; no partial file is left;'):
        analysis.write_figure(None, str(path))
    assert not path.exists()
    assert write_error_kind(RuntimeError('a bug, not a failed write')) is None
