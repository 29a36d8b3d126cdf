"""A full disk or a failing write: one line, nothing saved is lost, a rerun
resumes exactly. In process, with the failure injected at the storage layer
(Orbax's write of a checkpoint, the os.write of metrics.jsonl)."""

import errno
import json
import os

import pytest
from orbax.checkpoint._src.handlers import json_checkpoint_handler

import test_train_utils as tu
from senet_jax import checkpoint as checkpoint_lib
from senet_jax import trainer
from senet_jax.errors import WriteFailed
from test_trainer_units import tiny_config

# Compiles a model (cached across tests) and trains it for a dozen steps: optimized.
pytestmark = [pytest.mark.slow, pytest.mark.optimized]

from test_interrupts import CONFIG, reference  # noqa: F401 (a fixture)


def _fail_checkpoint_write(monkeypatch, code, steps):
    """Orbax's write of the checkpoint of `steps` fails with `code`."""
    real = json_checkpoint_handler.JsonCheckpointHandler.async_save

    async def failing(self, directory, *args, **kwargs):
        if int(os.path.basename(os.path.dirname(str(directory))).split('.')[0]) in steps:
            raise OSError(code, os.strerror(code), str(directory))
        return await real(self, directory, *args, **kwargs)
    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler,
                        'async_save', failing)


def _lines(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl'), 'rb') as f:
        data = f.read()
    assert data.endswith(b'\n')
    return [json.loads(line) for line in data.splitlines()]


def _leftovers(workdir):
    """Partial directories left once the next run has started."""
    checkpoint_lib.Checkpoints(workdir).close()
    return [n for n in os.listdir(os.path.join(workdir, 'checkpoints'))
            if not n.isdigit()]


# (Each error kind's wording, permission and quota included, is checked
# without a model in test_whole_writes.py.)
@pytest.mark.parametrize('code, kind', [
    (errno.ENOSPC, 'no space left on the device ('),
    (errno.EIO, 'an I/O error')])
def test_a_failed_first_save_stops_in_one_line(tmp_path, monkeypatch, code, kind):
    workdir = str(tmp_path)
    _fail_checkpoint_write(monkeypatch, code, steps={2})
    with pytest.raises(WriteFailed) as e:
        trainer.train_and_evaluate(tiny_config(**CONFIG), workdir)
    message = str(e.value)
    assert '\n' not in message
    assert message.startswith(f'cannot write checkpoint {workdir}/checkpoints/2: {kind}')
    assert 'no earlier checkpoint exists' in message
    assert tu.checkpoint_steps(workdir) == [] and _leftovers(workdir) == []
    assert [m['step'] for m in _lines(workdir)] == [1, 2]


def test_a_full_disk_at_a_later_save_keeps_the_last_and_resumes_exactly(
        tmp_path, monkeypatch, reference):
    workdir = str(tmp_path)
    _fail_checkpoint_write(monkeypatch, errno.ENOSPC, steps={4})
    with pytest.raises(WriteFailed) as e:
        trainer.train_and_evaluate(tiny_config(**CONFIG), workdir)
    message = str(e.value)
    assert 'no space left on the device (needs about ' in message
    assert ' MB free); checkpoint 2 is complete and kept' in message
    assert tu.checkpoint_steps(workdir) == [2] and _leftovers(workdir) == []
    tu.load_params(workdir)  # the last complete one loads
    monkeypatch.undo()  # space freed
    result = trainer.train_and_evaluate(tiny_config(**CONFIG), workdir)
    assert result['eval_loss'] == reference['eval_loss']
    # The lines of steps 3 and 4, redone, are written once.
    assert [m['step'] for m in _lines(workdir)] == list(range(1, 13)) + [12]


def test_a_failed_metrics_write_leaves_no_cut_off_line_and_resumes_exactly(
        tmp_path, monkeypatch, reference):
    workdir = str(tmp_path)
    real_write = os.write

    def write(fd, data):  # half of the line for step 3 lands, then the disk is full
        if (os.readlink(f'/proc/self/fd/{fd}').endswith('metrics.jsonl')
                and b'"step": 3' in bytes(data)):
            real_write(fd, bytes(data)[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)
    monkeypatch.setattr(os, 'write', write)
    with pytest.raises(WriteFailed, match=r'^cannot write metrics .*metrics\.jsonl: '
                       r'no space left on the device \(.* MB free\); it keeps every '
                       'line written before'):
        trainer.train_and_evaluate(tiny_config(**CONFIG), workdir)
    assert [m['step'] for m in _lines(workdir)] == [1, 2]
    assert tu.checkpoint_steps(workdir) == [2]
    monkeypatch.undo()
    result = trainer.train_and_evaluate(tiny_config(**CONFIG), workdir)
    assert result['eval_loss'] == reference['eval_loss']
    assert [m['step'] for m in _lines(workdir)] == list(range(1, 13)) + [12]
