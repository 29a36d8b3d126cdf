"""One run per workdir, with real processes: two train.py on one workdir (at
once, and one starting mid-run), the lock of a SIGKILLed run taken over, two
processes whose workdirs differ, and the lock on gs:// (the GCS emulator)."""

import json
import logging
import re
import signal
import subprocess
import time

import pytest

import test_train_utils as tu
from test_gcs import gcs  # noqa: F401  (the emulator fixture)
from test_multidevice import _free_port

from senet_jax import trainer
from senet_jax import workdir as workdir_lib
from senet_jax.errors import UserError

pytestmark = pytest.mark.slow

# Long enough to be running when it is refused company and killed.
RUN = ('--config.num_train_steps=100000', '--config.checkpoint_every_steps=10',
       '--config.log_every_steps=10', '--config.batch_size=32')


def _config(**overrides):
    from configs import quickstart
    c = quickstart.get_config()
    c.update(dict(num_train_steps=100000, checkpoint_every_steps=10,
                  log_every_steps=10, batch_size=32), **overrides)
    return c


def _last_line(err):
    return err.strip().splitlines()[-1]


def test_one_trainer_per_workdir_and_a_killed_holder_is_taken_over(tmp_path, caplog):
    workdir = str(tmp_path / 'run')
    # Two runs started at once: one trains, the other stops in one line.
    procs = [tu.start(workdir, *RUN) for _ in range(2)]
    try:
        deadline = time.time() + 240
        while all(p.poll() is None for p in procs):
            assert time.time() < deadline, 'neither run stopped'
            time.sleep(0.1)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        _, err = loser.communicate()
        assert loser.returncode == 1 and 'Traceback' not in err, err[-3000:]
        assert re.fullmatch(
            rf'error: the workdir {re.escape(workdir)} is in use by another run '
            rf'\(host \S+, pid {winner.pid}, started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); '
            r'.* its lease expires in \d+ s\)', _last_line(err)), _last_line(err)
        # A third starting mid-run (here in process) is refused the same way,
        # and the first goes on.
        tu.wait_for_checkpoint(winner, workdir, timeout=240)
        with pytest.raises(UserError, match=rf'in use by another run \(host \S+, pid {winner.pid},'):
            trainer.train_and_evaluate(_config(), workdir)
        time.sleep(1)
        assert winner.poll() is None
        winner.kill()  # SIGKILL: its lock stays behind
        winner.communicate()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    # Only the winner wrote: every train step once, in order.
    steps = [m['step'] for m in tu.metrics(workdir) if 'train_loss' in m]
    assert steps == list(range(10, 10 * len(steps) + 1, 10)), steps
    assert json.loads((tmp_path / 'run' / 'run.lock').read_text())['pid'] == winner.pid
    newest = tu.checkpoint_steps(workdir)[-1]
    # The next run (in process) takes the stale lock over, with a warning,
    # and resumes; a shorter run changes the cosine schedule, allowed here by
    # the flag (logged).
    with caplog.at_level(logging.WARNING):
        result = trainer.train_and_evaluate(
            _config(num_train_steps=newest + 2, allow_config_change=True), workdir)
    assert 'eval_top1' in result
    assert re.search(rf'taking over the workdir {re.escape(workdir)} from a stale run '
                     rf'\(host \S+, pid {winner.pid}, .*\): its process {winner.pid} '
                     'on this host is gone', caplog.text), caplog.text[-3000:]
    assert 'was num_train_steps=100000, now num_train_steps=' in caplog.text
    assert tu.checkpoint_steps(workdir)[-1] == newest + 2
    # Resumed, not restarted: the only new train line is the last step's. A
    # line the killed run logged after its newest checkpoint (the kill can land
    # between the two) is dropped on resume, as the log promises.
    kept = [s for s in steps if s <= newest]
    assert [m['step'] for m in tu.metrics(workdir) if 'train_loss' in m] == kept + [newest + 2]
    assert not (tmp_path / 'run' / 'run.lock').exists()  # released at the end
    # Resume checks, in process: a changed image size is refused by name, a
    # changed eval cadence resumes (the run is finished: nothing to do).
    with pytest.raises(UserError, match='belong to a run with image_size=16, but this '
                                        'config has image_size=24'):
        trainer.train_and_evaluate(
            _config(num_train_steps=newest + 2, image_size=24), workdir)
    assert trainer.train_and_evaluate(
        _config(num_train_steps=newest + 2, eval_every_steps=3), workdir) == {}


def test_two_processes_with_different_workdirs_stop_naming_the_cause(tmp_path):
    port = _free_port()
    procs = [subprocess.Popen(
        tu.train_cmd(str(tmp_path / f'host{i}'), *RUN) + [
            f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
            f'--process_id={i}'],
        cwd=tu.REPO, env=tu.env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, (_, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 1 and 'Traceback' not in err, err[-3000:]
        assert _last_line(err).startswith(
            f'error: the workdir {tmp_path / f"host{i}"} is not shared: process(es) '
            '[1] of 2 cannot see the lock process 0 wrote there;'), err[-2000:]
        assert 'step 10/' not in err
    assert not (tmp_path / 'host0' / 'run.lock').exists()  # process 0 let it go
    assert not (tmp_path / 'host1' / 'run.lock').exists()  # the job locks once, on process 0


def test_lock_on_gcs_uses_the_storage_precondition(gcs, caplog):  # noqa: F811
    from etils import epath
    workdir = f'{gcs}/locked'
    lock_path = epath.Path(workdir) / workdir_lib.LOCK
    with workdir_lib.WorkdirLock(workdir) as lock:
        assert isinstance(lock.storage, workdir_lib._Gcs)  # pylint: disable=protected-access
        holder = json.loads(lock_path.read_text())
        with pytest.raises(UserError, match=rf'in use by another run \(host \S+, pid '
                                            rf'{holder["pid"]}, started'):
            workdir_lib.WorkdirLock(workdir).__enter__()
        # Create-if-absent is the storage's precondition: a second create fails.
        assert lock.storage.create(b'{}') is None
        # Replace-if-unchanged too: of two runs taking over the same lock, or
        # a renewal and a takeover, only the first write wins.
        _, version = lock.storage.read()
        lock.version = lock.storage.replace(version, lock_path.read_bytes())
        assert lock.version not in (None, version)
        assert lock.storage.replace(version, b'{}') is None
        assert json.loads(lock_path.read_text())['token'] == lock.token
    assert not lock_path.exists()
    # A lease another host stopped renewing is taken over, with a warning.
    stale = dict(holder, host='elsewhere', token='old',
                 renewed=time.time() - workdir_lib.LEASE_S - 1)
    lock_path.write_text(json.dumps(stale))
    with caplog.at_level(logging.WARNING):
        with workdir_lib.WorkdirLock(workdir) as lock:
            assert json.loads(lock_path.read_text())['token'] == lock.token
    assert 'taking over the workdir gs://' in caplog.text
    assert 'its lease was last renewed' in caplog.text
