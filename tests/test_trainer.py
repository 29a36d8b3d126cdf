"""train.py end to end on digits (CPU): quickstart, resume, reliability, errors.

Runs go through train.py in subprocesses, as a user would run them, where the
process is the point (signals, exit codes, the quickstart); a shared persistent
XLA cache (see test_train_utils.env) keeps them short.
"""

import logging
import math
import os
import re
import shutil
import signal
import time

import jax
import ml_collections
import numpy as np
import optax
import pytest

import test_train_utils as tu
from senet_jax import trainer
from senet_jax.errors import UserError


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """An uninterrupted SHORT_RUN to compare interrupted ones with."""
    workdir = str(tmp_path_factory.mktemp('reference') / 'run')
    tu.run(workdir, *tu.SHORT_RUN)
    return workdir


def _quickstart(*overrides):
    """The quickstart config with train.py's `--config.<field>=<value>` overrides, in process."""
    from configs import quickstart
    config = quickstart.get_config()
    for flag in overrides:
        field, value = flag[len('--config.'):].split('=')
        old = config[field]
        config[field] = value == 'True' if isinstance(old, bool) else type(old)(value)
    return config


def _no_traceback(proc):
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]


def tensorboard_scalars(path):
    """(step, tag, value) of each scalar in an events file, read by TensorBoard."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util
    return [(e.step, v.tag, float(tensor_util.make_ndarray(v.tensor)))
            for e in EventFileLoader(path).Load() for v in e.summary.value]


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    workdir = str(tmp_path / 'quickstart')
    start = time.time()
    tu.run(workdir, timeout=600)
    first = time.time() - start
    lines = tu.metrics(workdir)
    train = [m for m in lines if 'train_loss' in m]
    evals = [m for m in lines if 'eval_top1' in m]
    assert train and evals and all('step' in m for m in lines)
    assert {'train_loss', 'train_top1', 'learning_rate',
            'images_per_sec'} <= set(train[0])
    assert {'eval_loss', 'eval_top1', 'eval_top5'} <= set(evals[0])
    assert evals[-1]['eval_top1'] >= 0.97, evals[-1]
    assert evals[-1]['eval_examples'] == 360
    # The TensorBoard events hold every line's scalars, as TensorBoard reads them.
    [events] = [f for f in os.listdir(workdir) if f.startswith('events.out.tfevents')]
    assert tensorboard_scalars(os.path.join(workdir, events)) == [
        (m['step'], k, pytest.approx(v, rel=1e-6)) for m in lines for k, v in m.items() if k != 'step']
    # A rerun of the finished run exits at once, without training.
    start = time.time()
    again = tu.run(workdir)
    assert 'nothing to do' in again.stderr
    assert len(tu.metrics(workdir)) == len(lines)
    assert time.time() - start < min(first, 30)


@pytest.mark.slow
def test_sigkill_then_rerun_matches_uninterrupted(reference, tmp_path):
    workdir = str(tmp_path / 'run')
    proc = tu.start(workdir, *tu.SHORT_RUN)
    tu.wait_for_checkpoint(proc, workdir)
    proc.kill()
    proc.communicate()
    killed_at = tu.checkpoint_steps(workdir)[-1]
    assert killed_at < 60, 'the run finished before it could be killed'
    rerun = tu.run(workdir, *tu.SHORT_RUN)
    # At most checkpoint_every_steps of work redone.
    assert f'resumed from checkpoint step {killed_at}' in rerun.stderr
    tu.assert_trees_close(tu.load_params(workdir), tu.load_params(reference))
    for key in ('eval_loss', 'eval_top1', 'eval_top5'):
        assert tu.last_eval(workdir)[key] == pytest.approx(
            tu.last_eval(reference)[key], abs=1e-5)


@pytest.mark.slow
def test_sigterm_saves_agreed_step_and_next_start_continues(reference,
                                                           tmp_path):
    workdir = str(tmp_path / 'run')
    proc = tu.start(workdir, *tu.SHORT_RUN)
    tu.wait_for_checkpoint(proc, workdir)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert time.time() - sent < 60
    assert proc.returncode == 143, err[-3000:]
    step = int(re.search(r'stopped by SIGTERM at step (\d+)', err).group(1))
    assert step < 60 and step in tu.checkpoint_steps(workdir)
    rerun = tu.run(workdir, *tu.SHORT_RUN)
    assert f'resumed from checkpoint step {step}' in rerun.stderr
    tu.assert_trees_close(tu.load_params(workdir), tu.load_params(reference))


def _damage(checkpoint_dir):
    for root, _, files in os.walk(os.path.join(checkpoint_dir, 'state')):
        for f in files:
            with open(os.path.join(root, f), 'wb') as fh:
                fh.write(b'\0damaged')


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_previous(reference,
                                                          tmp_path):
    workdir = str(tmp_path / 'run')
    shutil.copytree(reference, workdir)
    assert tu.checkpoint_steps(workdir)[-2:] == [50, 60]
    _damage(os.path.join(workdir, 'checkpoints', '60'))
    # A save killed half-way leaves only Orbax's temporary directory: ignored.
    half = os.path.join(workdir, 'checkpoints', '70.orbax-checkpoint-tmp',
                        'state')
    os.makedirs(half)
    with open(os.path.join(half, 'partial'), 'wb') as f:
        f.write(b'\0')
    rerun = tu.run(workdir, *tu.SHORT_RUN)
    assert 'checkpoint 60' in rerun.stderr and 'cannot be restored' in (
        rerun.stderr)
    assert 'resumed from checkpoint step 50' in rerun.stderr
    # The damaged one is set aside, not deleted; the good ones stay.
    assert os.listdir(os.path.join(workdir, 'corrupt_checkpoints'))
    assert {40, 50, 60} <= set(tu.checkpoint_steps(workdir))
    tu.assert_trees_close(tu.load_params(workdir), tu.load_params(reference))


@pytest.mark.slow
def test_all_checkpoints_unreadable_stops_instead_of_restarting(reference,
                                                                tmp_path, monkeypatch):
    # In process: train.py turns this UserError into one `error:` line and exit 1
    # as it does every other (test_workdir_of_another_model_is_refused). Each
    # checkpoint is still read READ_ATTEMPTS times, without the waits between
    # (1 s, 2 s: 9 s idle here), whose lines test_restore_agreement checks.
    monkeypatch.setattr(trainer.checkpoint_lib, 'READ_BACKOFF_S', 0.0)
    workdir = str(tmp_path / 'run')
    shutil.copytree(reference, workdir)
    steps = tu.checkpoint_steps(workdir)
    lines = tu.metrics(workdir)
    for s in steps:
        _damage(os.path.join(workdir, 'checkpoints', str(s)))
    with pytest.raises(UserError) as e:
        trainer.train_and_evaluate(_quickstart(*tu.SHORT_RUN), workdir)
    assert 'none of the checkpoints' in str(e.value) and '\n' not in str(e.value)
    assert os.path.join(workdir, 'checkpoints') in str(e.value)
    assert tu.metrics(workdir) == lines   # did not train from scratch


@pytest.mark.slow
def test_nonfinite_loss_stops_naming_the_step(tmp_path):
    workdir = str(tmp_path / 'run')
    proc = tu.run(workdir, '--config.learning_rate=1e30',
                  '--config.num_train_steps=20',
                  '--config.checkpoint_every_steps=2', check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    _no_traceback(proc)
    step = int(re.search(r'error: non-finite loss or gradient at step (\d+)',
                         proc.stderr).group(1))
    saved = tu.checkpoint_steps(workdir)
    assert saved and max(saved) < step
    for s in saved:  # only finite states were checkpointed
        for leaf in jax.tree.leaves(tu.load_params(workdir, s)['params']):
            assert np.all(np.isfinite(leaf))


@pytest.mark.optimized
@pytest.mark.slow
def test_nonfinite_steps_can_be_skipped(tmp_path):
    workdir = str(tmp_path / 'run')
    trainer.train_and_evaluate(_quickstart(
        '--config.learning_rate=1e30', '--config.num_train_steps=20',
        '--config.log_every_steps=5', '--config.skip_nonfinite_steps=True'), workdir)
    lines = [m for m in tu.metrics(workdir) if 'skipped_steps' in m]
    assert lines[-1]['step'] == 20 and lines[-1]['skipped_steps'] > 0
    assert tu.checkpoint_steps(workdir)[-1] == 20
    for leaf in jax.tree.leaves(tu.load_params(workdir)['params']):
        assert np.all(np.isfinite(leaf))


@pytest.mark.slow
def test_workdir_of_another_model_is_refused(reference, tmp_path):
    workdir = str(tmp_path / 'run')
    shutil.copytree(reference, workdir)
    proc = tu.run(workdir, *tu.SHORT_RUN, '--config.model=resnet18',
                  '--config.image_size=32', check=False)
    assert proc.returncode == 1
    _no_traceback(proc)
    assert "belong to a run with model='se_resnet_mini'" in proc.stderr
    assert tu.checkpoint_steps(workdir) == tu.checkpoint_steps(reference)


@pytest.mark.parametrize('override, message', [
    (dict(model='se_resnet5O'), "Unknown model 'se_resnet5O'. Did you mean"),
    (dict(learning_rate=-0.1), 'learning_rate must be positive'),
    (dict(image_size=4), 'image_size 4 is too small for se_resnet_mini'),
    (dict(dataset='imagefolder'), 'dataset=imagefolder needs'),
    (dict(num_train_steps=0), 'num_train_steps=0 only evaluates'),
    (dict(keep_checkpoints=0), 'keep_checkpoints must be at least 1'),
    (dict(momentum=1.5), '0 <= momentum < 1'),
])
def test_bad_config_is_a_user_error(tmp_path, override, message):
    from configs import quickstart
    config = quickstart.get_config()
    config.update(override)
    with pytest.raises(UserError) as e:
        trainer.train_and_evaluate(config, str(tmp_path))
    assert message in str(e.value)
    assert '\n' not in str(e.value)


@pytest.mark.parametrize('flag, message', [
    ('--config.lerning_rate=0.1', 'Did you mean "learning_rate"'),
    ('--config.batch_size=abc', 'flag --config.batch_size=abc'),
    ('--config=configs/missing.py', 'cannot load the --config file: [Errno 2]'),
    ('--config=configs/se_resnet50.py:foo', "unknown recipe 'foo'"),
    ('--config.model_overrides.reducton=8', 'Did you mean "reduction"'),
    ('--config.model_overrides.xyz=8', "the config has no field 'xyz'"),
    ('--config.model_overrides.reduction=0', 'reduction must be at least 1 (the ratio r), got 0'),
    ('--config.model_overrides.se_position=middle', 'se_position must be one of'),
])
@pytest.mark.slow
def test_bad_flags_are_one_error_line(tmp_path, flag, message):
    import subprocess
    proc = subprocess.run(tu.train_cmd(str(tmp_path), flag), cwd=tu.REPO,
                          env=tu.env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    _no_traceback(proc)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and message in last, proc.stderr[-2000:]


@pytest.mark.slow
def test_init_from_eval_only_and_new_classifier(reference, tmp_path, caplog):
    """train.py's weights, evaluated and fine-tuned from, in process."""
    from senet_jax import convert
    ref = tu.load_params(reference)
    weights = str(tmp_path / 'weights')
    convert.save_converted(weights, 'se_resnet_mini',
                           {'params': ref['params'],
                            'batch_stats': ref['batch_stats']})
    workdir = str(tmp_path / 'eval')
    with caplog.at_level(logging.INFO):
        trainer.train_and_evaluate(_quickstart('--config.num_train_steps=0',
                                               '--config.batch_size=32',
                                               f'--config.init_from={weights}'), workdir)
    assert re.search(r'top-1 error \d+\.\d\d%, top-5 error', caplog.text)
    got, want = tu.last_eval(workdir), tu.last_eval(reference)
    assert got['eval_top1'] == pytest.approx(want['eval_top1'], abs=1e-6)
    assert got['eval_loss'] == pytest.approx(want['eval_loss'], abs=1e-5)
    # Weights with another class count: backbone kept, classifier new.
    other = jax.tree.map(np.asarray, {'params': ref['params'],
                                       'batch_stats': ref['batch_stats']})
    other['params']['fc'] = {'kernel': np.ones((128, 7), np.float32),
                             'bias': np.zeros(7, np.float32)}
    weights7 = str(tmp_path / 'weights7')
    convert.save_converted(weights7, 'se_resnet_mini', other)
    workdir = str(tmp_path / 'finetune')
    caplog.clear()
    with caplog.at_level(logging.INFO):
        trainer.train_and_evaluate(_quickstart('--config.num_train_steps=1',
                                               '--config.batch_size=32',
                                               f'--config.init_from={weights7}',
                                               '--config.half_precision=True'), workdir)
    assert 're-initialising the classifier' in caplog.text
    # half_precision: bf16 compute, fp32 parameters.
    tuned = tu.load_params(workdir)
    assert tuned['step'] == 1
    for leaf in jax.tree.leaves(tuned['params']):
        assert leaf.dtype == np.float32 and np.all(np.isfinite(leaf))
    # The backbone is the reference's (the warmup lr of step 0 is 0); the
    # classifier is a fresh 10-class one.
    backbone = {k: v for k, v in tuned['params'].items() if k != 'fc'}
    tu.assert_trees_close(backbone, {k: v for k, v in ref['params'].items()
                                     if k != 'fc'}, atol=1e-6)
    assert tuned['params']['fc']['kernel'].shape == (128, 10)
    assert not np.all(tuned['params']['fc']['kernel'] == 1)


# ---------------------------------------------------------------------------
# Pieces.


def _config(**kw):
    from configs import se_resnet50
    c = se_resnet50.get_config()
    c.update(kw)
    return c


def test_paper_step_schedule():
    c = _config(batch_size=256)
    fn = trainer.create_learning_rate_fn(c, steps_per_epoch=10,
                                         total_steps=1000)
    assert fn(0) == pytest.approx(0.6 * 256 / 1024)  # linear scaling
    assert fn(299) == pytest.approx(0.15)
    assert fn(300) == pytest.approx(0.015)  # /10 after 30 epochs
    assert fn(600) == pytest.approx(0.0015)


@pytest.mark.slow
def test_cosine_recipe():
    from configs import se_resnet50
    c = se_resnet50.get_config('cosine')
    assert c.nesterov and c.label_smoothing == 0.1
    fn = trainer.create_learning_rate_fn(c, steps_per_epoch=10, total_steps=1000)
    assert fn(0) == 0 and fn(50) == pytest.approx(0.6)
    assert fn(1000) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_weight_decay_only_on_kernels():
    params = {'conv1': {'kernel': np.ones((3, 3, 3, 8))},
              'bn1': {'scale': np.ones(8), 'bias': np.ones(8)},
              'fc': {'kernel': np.ones((8, 2)), 'bias': np.ones(2)}}
    c = _config(learning_rate=1.0, momentum=0.0, weight_decay=0.5,
                base_batch_size=0)
    tx = trainer.create_optimizer(c, optax.constant_schedule(1.0))
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    assert np.all(updates['conv1']['kernel'] == -0.5)
    assert np.all(updates['fc']['kernel'] == -0.5)
    assert np.all(updates['bn1']['scale'] == 0)
    assert np.all(updates['fc']['bias'] == 0)


@pytest.mark.slow
def test_label_smoothing_loss():
    logits = np.zeros((1, 4), np.float32)
    plain = trainer.cross_entropy_loss(logits, np.array([0]), 4)
    smooth = trainer.cross_entropy_loss(logits, np.array([0]), 4, 0.1)
    assert float(plain[0]) == pytest.approx(math.log(4))
    assert float(smooth[0]) == pytest.approx(math.log(4))  # uniform logits
    logits[0, 0] = 5
    assert float(trainer.cross_entropy_loss(logits, np.array([0]), 4, 0.1)[0]) > (
        float(trainer.cross_entropy_loss(logits, np.array([0]), 4)[0]))


def test_configs_load():
    import importlib
    for name in ('se_resnet50', 'se_resnet101', 'se_resnet152',
                 'se_resnext50_32x4d', 'se_resnext101_32x4d', 'senet154',
                 'resnet50'):
        mod = importlib.import_module(f'configs.{name}')
        for recipe in ('', 'cosine'):
            c = mod.get_config(recipe)
            assert isinstance(c, ml_collections.ConfigDict)
            trainer.validate_config(c)
    assert importlib.import_module('configs.senet154').get_config().drop_rate == 0.2


@pytest.mark.slow
def test_checkpoints_keep_the_newest_and_the_best(tmp_path):
    from senet_jax import checkpoint
    ckpts = checkpoint.Checkpoints(str(tmp_path), keep=2, async_save=False)
    top1 = {2: 0.9, 4: 0.5, 6: 0.6}  # step 2 is the best
    for step in range(1, 7):
        state = {'w': np.full(3, step, np.float32), 'step': np.int32(step)}
        metrics = {'eval_top1': top1[step]} if step in top1 else None
        ckpts.save(step, state, {'model': 'm'}, metrics=metrics)
    ckpts.wait()
    assert ckpts.all_steps() == [2, 5, 6]
    abstract = {'w': jax.ShapeDtypeStruct((3,), np.float32),
                'step': jax.ShapeDtypeStruct((), np.int32)}
    state, step = ckpts.restore_latest(abstract, {'model': 'm'})
    assert step == 6 and np.all(np.asarray(state['w']) == 6)
    with pytest.raises(UserError, match="model='m'"):
        ckpts.restore_latest(abstract, {'model': 'other'})
    ckpts.close()
