"""train_and_evaluate in-process: two steps of a tiny model on fake data.

The whole trainer in one process (the train.py runs in test_trainer.py are
subprocesses): it trains, logs, evaluates, checkpoints and knows when it is done.
Slow: compiling the steps and starting the input pipeline cost tens of seconds.
"""
import math

import jax
import numpy as np
import pytest

import test_train_utils as tu
from configs import common
from senet_jax import trainer


@pytest.mark.slow
def test_two_steps_log_evaluate_checkpoint_and_finish(tmp_path):
    workdir = str(tmp_path / 'run')
    config = common.small_run_config(num_epochs=1.0)
    config.update(dataset='fake', num_classes=10, fake_num_examples=64, batch_size=8,
                  num_train_steps=2, log_every_steps=1, eval_every_steps=2,
                  checkpoint_every_steps=1)
    result = trainer.train_and_evaluate(config, workdir)
    assert {'eval_loss', 'eval_top1', 'eval_top5'} <= set(result)
    assert math.isfinite(result['eval_loss']) and 0 <= result['eval_top1'] <= 1
    lines = tu.metrics(workdir)
    assert [m['step'] for m in lines if 'train_loss' in m] == [1, 2]
    assert all(math.isfinite(m['train_loss']) for m in lines if 'train_loss' in m)
    assert [m['step'] for m in lines if 'eval_top1' in m] == [2]
    assert tu.checkpoint_steps(workdir) == [1, 2]
    saved = tu.load_params(workdir)
    assert saved['step'] == 2
    assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(
        [saved['params'], saved['batch_stats']]))
    # A rerun of the finished run trains nothing and writes nothing.
    assert trainer.train_and_evaluate(config, workdir) == {}
    assert tu.metrics(workdir) == lines
