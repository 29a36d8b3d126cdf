"""Two processes (jax.distributed on 127.0.0.1) agree on a restore, and stop
together when a save fails on one.

A process whose read fails once retries and both resume; one whose reads
always fail makes both stop in one line, and nothing is set aside. A save that
fails on one process stops that one in its own line and the other, which would
wait for it at Orbax's barrier, within seconds, naming it.
"""

import os
import socket
import subprocess
import time

import pytest

import test_train_utils as tu

pytestmark = pytest.mark.slow  # train.py subprocesses

# A digits run that ends at its first checkpoint: the resumes below then only
# restore and report that nothing is left to do (no training step compiles).
RUN = ('--config.num_train_steps=2', '--config.checkpoint_every_steps=2',
       '--config.eval_every_steps=2', '--config.log_every_steps=2',
       '--config.batch_size=32')


@pytest.fixture(scope='module', autouse=True)
def optimizations_off():
    """These runs take 2 steps: they compile more than they compute, so their
    processes compile with XLA's optimizations off (docs/architecture.md, "Tests")."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')   # tu.env passes it on
        yield


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _two_processes(workdir, failures, run=RUN):
    port = _free_port()
    procs = []
    for i in range(2):
        cmd = tu.train_cmd(workdir, *run) + [
            f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
            f'--process_id={i}']
        cmd[1:2] = [os.path.join(tu.REPO, 'tests', 'restore_probe.py'), '1',
                    failures]
        procs.append(subprocess.Popen(cmd, cwd=tu.REPO, env=tu.env(1),
                                      stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    start = time.time()
    try:
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, err) for p, (_, err) in zip(procs, outs)], time.time() - start


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('agree') / 'run')
    tu.run(workdir, *RUN)
    assert tu.checkpoint_steps(workdir) == [2]
    return workdir


def test_a_read_failing_once_on_one_process_is_retried(trained):
    results, _ = _two_processes(trained, '1')
    for code, err in results:
        assert code == 0, err[-3000:]
        assert 'resumed from checkpoint step 2' in err or 'nothing to do' in err
    assert 'attempt 1 of 3' in results[1][1]
    assert not os.path.exists(os.path.join(trained, 'corrupt_checkpoints'))


def test_a_read_always_failing_on_one_process_stops_both(trained):
    results, took = _two_processes(trained, 'always')
    assert took < 120
    for i, (code, err) in enumerate(results):
        assert code == 1, err[-3000:]
        assert 'Traceback' not in err, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith('error: process(es) [1] could not read checkpoint 2'), (i, last)
        assert 'nothing was moved' in last
    assert 'injected read error' in results[1][1].strip().splitlines()[-1]
    # The good checkpoint is where it was.
    assert not os.path.exists(os.path.join(trained, 'corrupt_checkpoints'))
    assert tu.checkpoint_steps(trained) == [2]


def test_a_save_failing_on_one_process_stops_both(tmp_path):
    workdir = str(tmp_path / 'run')
    results, took = _two_processes(workdir, 'save')
    (code0, err0), (code1, err1) = results
    assert code1 == 1 and code0 == 1, (err0[-2000:], err1[-2000:])
    last1 = err1.strip().splitlines()[-1]
    assert last1.startswith(f'error: cannot write checkpoint {workdir}/checkpoints/2: '
                            'no space left on the device'), last1
    last0 = err0.strip().splitlines()[-1]
    assert last0 == (f'error: process 1 of 2 (it stopped: {last1}); stopping this one '
                     'too: rerun every process with the same command to resume from '
                     'the newest checkpoint'), last0
    assert 'Traceback' not in err0 + err1
    assert took < 150   # Orbax's barrier alone held process 0 for 20 minutes
    assert tu.checkpoint_steps(workdir) == []
