"""Ctrl-C: the first saves the step and stops (exit 130), a second stops at
once; in a notebook, one clean exception and the handler given back."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

import test_train_utils as tu
from senet_jax import trainer
from senet_jax.errors import Interrupted
from test_trainer_units import tiny_config

pytestmark = pytest.mark.slow  # compiles a model; train.py subprocesses

# Shared with test_write_failures.py (one compile, one reference run).
CONFIG = dict(num_train_steps=12, checkpoint_every_steps=2, eval_every_steps=12,
              log_every_steps=1)
# tiny_config(**CONFIG) as train.py flags.
FLAGS = ['--config.dataset=fake', '--config.num_classes=10',
         '--config.fake_num_examples=64', '--config.batch_size=8',
         '--config.warmup_epochs=0.0'] + [
             f'--config.{k}={v}' for k, v in CONFIG.items()]


@pytest.fixture(scope='session')
def reference(tmp_path_factory):
    """The final eval of an uninterrupted run."""
    return trainer.train_and_evaluate(tiny_config(**CONFIG),
                                      str(tmp_path_factory.mktemp('reference')))


def _start(workdir, mode, marker):
    """train.py in its own process group, as a terminal starts it."""
    cmd = [sys.executable, os.path.join(tu.REPO, 'tests', 'interrupt_probe.py'),
           mode, marker, f'--config={tu.QUICKSTART}', f'--workdir={workdir}',
           *FLAGS]
    return subprocess.Popen(cmd, cwd=tu.REPO, env=tu.env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def _ctrl_c(proc):
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends: the whole group


def test_ctrl_c_in_a_notebook_raises_once_and_gives_the_handler_back(
        tmp_path, monkeypatch):
    before = signal.getsignal(signal.SIGINT)
    real = trainer.Preemption.reached

    def reached(self, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, step)
    monkeypatch.setattr(trainer.Preemption, 'reached', reached)
    with pytest.raises(Interrupted, match='^stopped by Ctrl-C at step 1; a '
                       'checkpoint of step 1 was saved; rerun to go on$'):
        trainer.train_and_evaluate(tiny_config(**CONFIG), str(tmp_path))
    assert signal.getsignal(signal.SIGINT) is before
    assert tu.checkpoint_steps(str(tmp_path)) == [1]


def test_ctrl_c_saves_the_step_and_the_rerun_is_exact(tmp_path, reference):
    workdir = str(tmp_path / 'run')
    proc = _start(workdir, 'plain', '')
    try:
        tu.wait_for_checkpoint(proc, workdir, timeout=240)
        _ctrl_c(proc)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert 'Traceback' not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    step = int(re.fullmatch(r'stopped by Ctrl-C at step (\d+); a checkpoint of '
                            r'step \1 was saved; rerun to go on', last).group(1))
    assert step < 12 and tu.checkpoint_steps(workdir)[-1] == step
    result = trainer.train_and_evaluate(tiny_config(**CONFIG), workdir)
    assert result['eval_loss'] == reference['eval_loss']


def test_a_second_ctrl_c_during_the_save_stops_at_once(tmp_path):
    workdir, marker = str(tmp_path / 'run'), str(tmp_path / 'saving')
    proc = _start(workdir, 'slow_save', marker)
    try:
        first = tu.wait_for_checkpoint(proc, workdir, timeout=240)
        _ctrl_c(proc)
        deadline = time.time() + 60
        while not os.path.exists(marker) and time.time() < deadline:
            time.sleep(0.05)
        assert os.path.exists(marker), 'the save after Ctrl-C never began'
        sent = time.time()
        _ctrl_c(proc)
        _, err = proc.communicate(timeout=30)
        took = time.time() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert took < 10 and proc.returncode == 130, err[-3000:]
    assert 'Traceback' not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith('stopped by Ctrl-C at once')
    # The newest complete checkpoint loads; the interrupted step's is not listed.
    steps = tu.checkpoint_steps(workdir)
    assert steps and steps[-1] >= first
    assert tu.load_params(workdir)['step'] == steps[-1]
