"""The trainer's units, in process: a tiny model on fake data for a few steps."""

import json
import os
import signal
import time
import types

import jax
import numpy as np
import pytest

import test_train_utils as tu
from senet_jax import checkpoint as checkpoint_lib
from senet_jax import trainer
from senet_jax.errors import NonFiniteLossError, Preempted, UserError
from senet_jax.models import normalize_images

# Compiles are the slow part: conftest shares them with the subprocess runs' cache.


def tiny_config(**overrides):
    """se_resnet_mini on 16x16 fake images, batch 8, 10 classes."""
    from configs import quickstart
    c = quickstart.get_config()
    c.dataset = 'fake'
    c.num_classes = 10
    c.fake_num_examples = 64
    c.batch_size = 8
    c.num_train_steps = 2
    c.log_every_steps = 1
    c.eval_every_steps = 2
    c.checkpoint_every_steps = 2
    c.warmup_epochs = 0.0
    c.update(overrides)
    return c


def _metrics(workdir):
    with open(f'{workdir}/metrics.jsonl') as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------------------
# Throughput.


class FakeClock:

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_throughput_leaves_paused_time_out():
    clock = FakeClock()
    meter = trainer.Throughput(batch_size=10, clock=clock)
    for _ in range(2):  # two steps of 1 s
        clock.t += 1
        meter.add_step()
    with meter.paused():  # a 100 s eval
        clock.t += 100
    for _ in range(2):
        clock.t += 1
        meter.add_step()
    rate, step_s = meter.read()
    assert rate == pytest.approx(10.0) and step_s == pytest.approx(1.0)
    clock.t += 2  # the next interval starts at the read
    meter.add_step()
    assert meter.read() == (pytest.approx(5.0), pytest.approx(2.0))


@pytest.mark.slow
def test_images_per_sec_counts_only_training_steps(tmp_path, monkeypatch):
    """An eval inside a log interval is neither time nor steps of training.

    Each training batch takes at least 0.4 s to arrive, so no honest figure
    exceeds batch / 0.4 s; an eval of 2 s sits between steps 2 and 3 of the
    4-step log interval. Counting the 4 steps over the time since the eval
    (the old bug) reports about twice the real rate.
    """
    delay = 0.4
    real_shard = trainer.sharding_lib.shard_batch

    def slow_shard(batch, mesh):
        time.sleep(delay)
        return real_shard(batch, mesh)

    real_evaluate = trainer.evaluate

    def slow_evaluate(*args, **kwargs):
        time.sleep(2.0)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer.sharding_lib, 'shard_batch', slow_shard)
    monkeypatch.setattr(trainer, 'evaluate', slow_evaluate)
    config = tiny_config(num_train_steps=4, log_every_steps=4,
                         eval_every_steps=2, checkpoint_every_steps=100)
    trainer.train_and_evaluate(config, str(tmp_path))
    train = [m for m in _metrics(tmp_path) if 'images_per_sec' in m]
    assert [m['step'] for m in train] == [4]
    assert 0 < train[0]['images_per_sec'] <= config.batch_size / delay


# ---------------------------------------------------------------------------
# Setup, state, eval.


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """One setup shared by the tests below (its compiled steps too)."""
    return trainer.setup(tiny_config(), str(tmp_path_factory.mktemp('run')))


@pytest.mark.slow
def test_setup_builds_the_model_once_for_the_data(run):
    assert run.pipeline.num_classes == 10 and run.total_steps == 2
    assert run.dtype == 'float32'  # CPU
    state = run.steps.init(run.init_rng)
    assert state.params['fc']['kernel'].shape[-1] == 10
    assert state.loss_scale is None
    assert 'dtype' not in run.identity and run.identity['num_classes'] == 10


def test_setup_reports_model_errors_before_loading_data(monkeypatch, tmp_path):
    def no_data(*args):
        raise AssertionError('the data was loaded before the model was checked')
    monkeypatch.setattr(trainer.data_lib, 'create_input_pipeline', no_data)
    with pytest.raises(UserError, match='image_size 4 is too small'):
        trainer.setup(tiny_config(image_size=4), str(tmp_path))


@pytest.mark.slow
def test_evaluate_sums_on_device_equal_a_direct_count(run):
    state = run.steps.init(run.init_rng)
    got = trainer.evaluate(run.steps.eval, state, run.pipeline, run.mesh)
    correct = count = 0
    for batch in run.pipeline.eval_batches():
        logits = state.apply_fn({'params': state.params,
                                 'batch_stats': state.batch_stats},
                                normalize_images(batch['image']))
        right = np.argmax(np.asarray(logits), -1) == batch['label']
        correct += float(np.sum(right * batch['mask']))
        count += float(np.sum(batch['mask']))
    assert got['eval_examples'] == count == run.pipeline.num_eval_examples
    assert got['eval_top1'] == pytest.approx(correct / count, abs=1e-6)


@pytest.mark.slow
def test_restore_or_init_fresh_then_restored(run, tmp_path):
    ckpts = checkpoint_lib.Checkpoints(str(tmp_path), async_save=False)
    fresh = trainer.restore_or_init(run, ckpts)
    assert int(fresh.step) == 0
    state, _ = run.steps.train(fresh, _train_batch(run), run.dropout_rng)
    ckpts.save(1, state, run.identity)
    restored = trainer.restore_or_init(run, ckpts)
    assert int(restored.step) == 1
    tu.assert_trees_close(restored.params, state.params, atol=0)
    ckpts.close()
    # The same types (weak types too) fresh, stepped and restored: the train
    # step a fresh run compiled is the one a resumed run finds in the cache.
    avals = lambda s: jax.tree.map(  # noqa: E731
        lambda x: (x.shape, x.dtype, x.aval.weak_type), s)
    assert avals(fresh) == avals(state) == avals(restored)


def _train_batch(run, step=0):
    batch = next(run.pipeline.train_batches(step))
    return trainer.sharding_lib.shard_batch(batch, run.mesh)


@pytest.mark.slow
def test_evaluate_only_scores_init_from_weights(run, tmp_path):
    from senet_jax import convert
    state = jax.device_get(run.steps.init(run.init_rng))
    weights = str(tmp_path / 'weights')
    convert.save_converted(weights, 'se_resnet_mini', {
        'params': state.params, 'batch_stats': state.batch_stats})
    config = tiny_config(num_train_steps=0, init_from=weights)
    got = trainer.train_and_evaluate(config, str(tmp_path / 'eval'))
    want = trainer.evaluate(run.steps.eval, run.steps.init(run.init_rng),
                            run.pipeline, run.mesh)
    assert got == pytest.approx(want)
    assert not os.path.exists(tmp_path / 'eval' / 'checkpoints')
    assert _metrics(tmp_path / 'eval')[0]['step'] == 0


# ---------------------------------------------------------------------------
# Periodic work.


def test_schedule_intervals_epochs_and_the_last_step():
    config = tiny_config(log_every_steps=2, eval_every_steps=0,
                         checkpoint_every_steps=3)
    due = trainer.Schedule(config, steps_per_epoch=4, total_steps=9)
    got = {step: due(step) for step in range(1, 10)}
    assert [s for s, (log, _, _) in got.items() if log] == [2, 4, 6, 8, 9]
    assert [s for s, (_, ev, _) in got.items() if ev] == [4, 8, 9]
    assert [s for s, (_, _, ck) in got.items() if ck] == [3, 4, 6, 8, 9]
    # A resumed run keeps the uninterrupted run's steps.
    due = trainer.Schedule(config, 4, 9)
    assert due(6) == (True, False, True) and due(7) == (False, False, False)


class _Log:
    def __init__(self):
        self.lines = []

    def write(self, step, scalars):
        self.lines.append((step, scalars))


def test_progress_line_and_eta(caplog):
    metrics = trainer.StepMetrics(skip_nonfinite=False, ckpts=None)
    for loss in (1.0, 3.0):
        metrics.add({'loss': np.float32(loss), 'top1': np.float32(0.5),
                     'learning_rate': np.float32(0.1), 'finite': np.bool_(True)})
    metrics.fetch(2)
    log = _Log()
    progress = trainer.ProgressLog(log, total_steps=12, batch_size=8,
                                   report_skipped=False)
    clock = FakeClock()
    progress.meter = trainer.Throughput(8, clock=clock)
    clock.t = 4.0  # 2 steps in 4 s
    progress.meter.add_step()
    progress.meter.add_step()
    with caplog.at_level('INFO'):
        progress.write(2, metrics)
    assert log.lines == [(2, {'train_loss': 2.0, 'train_top1': 0.5,
                              'learning_rate': pytest.approx(0.1),
                              'images_per_sec': 4.0})]
    # 10 steps left at 2 s each.
    assert 'step 2/12  loss 2.0000' in caplog.text and '0h00m20s left' in caplog.text


def test_nonfinite_step_stops_naming_it_or_is_counted():
    ckpts = types.SimpleNamespace(directory='/ckpt', latest_step=lambda: 4)
    def step_metrics(finite):
        return {'loss': np.float32(1), 'top1': np.float32(0),
                'learning_rate': np.float32(0.1), 'finite': np.bool_(finite)}
    metrics = trainer.StepMetrics(skip_nonfinite=False, ckpts=ckpts)
    for finite in (True, False, True):
        metrics.add(step_metrics(finite))
    with pytest.raises(NonFiniteLossError, match='at step 6;.*newest: 4'):
        metrics.fetch(7)
    metrics = trainer.StepMetrics(skip_nonfinite=True, ckpts=ckpts)
    for finite in (True, False, True):
        metrics.add(step_metrics(finite))
    metrics.fetch(7)
    assert metrics.skipped == 1 and len(metrics.take()) == 2


def test_single_process_preemption_is_a_sigterm_flag():
    before = signal.getsignal(signal.SIGTERM)
    with trainer.Preemption() as preemption:
        assert not preemption.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert preemption.reached(2)
    assert signal.getsignal(signal.SIGTERM) is before


def test_prefetch_keeps_two_batches_on_the_devices(run):
    pulled = []

    def batches():
        for i in range(5):
            pulled.append(i)
            yield next(run.pipeline.train_batches(i))
    it = trainer.prefetch(batches(), run.mesh)
    first = next(it)
    assert pulled == [0, 1, 2]  # the one handed out, two ahead
    assert isinstance(first['image'], jax.Array)
    assert len(list(it)) == 4


# ---------------------------------------------------------------------------
# The loop: checkpoints, preemption, resume.


@pytest.mark.no_cover   # every line it runs, cheaper tests run too (docs/architecture.md, "Tests")
@pytest.mark.slow
def test_train_checkpoints_evals_and_resumes(tmp_path):
    workdir = str(tmp_path)
    result = trainer.train_and_evaluate(tiny_config(), workdir)
    assert result['eval_examples'] == 8  # fake: a tenth of 64, at least a batch
    assert tu.checkpoint_steps(workdir) == [2]
    assert trainer.train_and_evaluate(tiny_config(), workdir) == {}  # done
    # Longer (allowed: it changes the cosine decay), and on another compute
    # dtype: resumes, not refused.
    result = trainer.train_and_evaluate(
        tiny_config(num_train_steps=3, dtype='bfloat16', allow_config_change=True), workdir)
    assert [m['step'] for m in _metrics(workdir) if 'train_loss' in m] == [1, 2, 3]
    assert 'eval_top1' in result


@pytest.mark.slow
def test_sigterm_during_training_saves_the_step_and_stops(tmp_path, monkeypatch):
    real = trainer.Preemption.reached
    monkeypatch.setattr(trainer.Preemption, 'reached',
                        lambda self, step: step == 1 or real(self, step))
    with pytest.raises(Preempted, match='at step 1'):
        trainer.train_and_evaluate(tiny_config(num_train_steps=5), str(tmp_path))
    assert tu.checkpoint_steps(str(tmp_path)) == [1]
    assert [m['step'] for m in _metrics(tmp_path)] == [1]


def test_one_training_step_in_the_package():
    """The trainer, the benchmark and the analysis share steps.train_step."""
    import pathlib
    package = pathlib.Path(trainer.__file__).parent
    sites = [p.name for p in package.rglob('*.py')
             for line in p.read_text().splitlines()
             if 'value_and_grad(' in line and not line.strip().startswith('#')]
    assert sites == ['steps.py']


# ---------------------------------------------------------------------------
# Precision.


def _device(platform, capability=None):
    return types.SimpleNamespace(platform=platform,
                                 compute_capability=capability)


@pytest.mark.parametrize('device, want', [
    (_device('tpu'), 'bfloat16'),
    (_device('gpu', '9.0'), 'bfloat16'),
    (_device('gpu', '8.0'), 'bfloat16'),
    (_device('gpu', '7.0'), 'float16'),
    (_device('gpu', '7.5'), 'float16'),
    (_device('cpu'), 'float32'),
])
def test_auto_dtype_by_device(device, want):
    from senet_jax import precision
    assert precision.compute_dtype(tiny_config(), device) == want
    # Any setting can be forced; half_precision is dtype='bfloat16'.
    assert precision.compute_dtype(tiny_config(dtype='float32'), device) == 'float32'
    assert precision.compute_dtype(tiny_config(dtype='float16'), device) == 'float16'
    assert precision.compute_dtype(tiny_config(half_precision=True),
                                   device) == 'bfloat16'


def test_bad_dtype_is_one_sentence():
    from senet_jax import precision
    with pytest.raises(UserError, match="dtype must be 'auto', 'float32'"):
        precision.compute_dtype(tiny_config(dtype='fp8'), _device('cpu'))
    with pytest.raises(UserError, match='half_precision=True means dtype=bfloat16'):
        precision.compute_dtype(tiny_config(dtype='float16', half_precision=True),
                                _device('cpu'))
