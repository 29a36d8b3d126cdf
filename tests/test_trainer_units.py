"""The trainer's units, in process: a tiny model on fake data for a few steps."""

import json
import time

import pytest

import test_train_utils as tu  # noqa: F401  (puts the repo root on sys.path)
from senet_jax import trainer


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
