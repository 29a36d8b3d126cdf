"""Shared helpers for the training tests: run train.py, read its outputs."""

import json
import os
import subprocess
import sys
import time

import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # configs/ are imported as `configs.<name>`
    sys.path.insert(0, REPO)
QUICKSTART = os.path.join(REPO, 'configs', 'quickstart.py')

# A short digits run: 60 steps, checkpoints every 10, eval every 20.
SHORT_RUN = ('--config.num_train_steps=60', '--config.checkpoint_every_steps=10',
             '--config.eval_every_steps=20', '--config.log_every_steps=10',
             '--config.batch_size=32')


# XLA:CPU's elemental fusion emitters for every process of the test run (conftest).
FUSION_EMITTERS_OFF = '--xla_cpu_use_fusion_emitters=false'


def xla_cache_dir():
    """The persistent compilation cache of this test run (made by conftest)."""
    return os.environ.get('SENET_JAX_TEST_XLA_CACHE') or os.path.join(
        tempfile.gettempdir(), 'senet_jax_test_xla_cache')


def env(num_devices=None):
    e = dict(os.environ)
    # The test run's own XLA:CPU flag (conftest), so that a train.py run and an
    # in-process run of the same config compute the same numbers.
    e['XLA_FLAGS'] = FUSION_EMITTERS_OFF
    if num_devices:
        e['XLA_FLAGS'] += f' --xla_force_host_platform_device_count={num_devices}'
    e['TF_CPP_MIN_LOG_LEVEL'] = '2'
    e['JAX_PLATFORMS'] = 'cpu'
    # XLA:CPU compiles are the slow part of these short runs: share them
    # (the test run's own cache, conftest.XLA_CACHE_ENV).
    e['JAX_COMPILATION_CACHE_DIR'] = xla_cache_dir()
    e['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
    return e


def train_cmd(workdir, *overrides, config=QUICKSTART):
    return [sys.executable, os.path.join(REPO, 'train.py'),
            f'--config={config}', f'--workdir={workdir}', *overrides]


def start(workdir, *overrides, num_devices=None, extra=(), config=QUICKSTART):
    return subprocess.Popen(train_cmd(workdir, *overrides, config=config) + list(extra),
                            cwd=REPO, env=env(num_devices),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def run(workdir, *overrides, num_devices=None, timeout=300, check=True,
        config=QUICKSTART):
    p = subprocess.run(train_cmd(workdir, *overrides, config=config), cwd=REPO,
                       env=env(num_devices), capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f'train.py failed ({p.returncode}):\n{p.stderr[-5000:]}')
    return p


def checkpoint_steps(workdir):
    d = os.path.join(workdir, 'checkpoints')
    if not os.path.isdir(d):
        return []
    return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def wait_for_checkpoint(proc, workdir, timeout=120):
    """Polls until a finished checkpoint exists; returns its step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = checkpoint_steps(workdir)
        if steps:
            return steps[-1]
        if proc.poll() is not None:
            raise AssertionError(f'run ended before a checkpoint:\n'
                                 f'{proc.stderr.read()[-3000:]}')
        time.sleep(0.02)
    raise AssertionError('no checkpoint appeared')


def metrics(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def last_eval(workdir):
    return [m for m in metrics(workdir) if 'eval_top1' in m][-1]


def load_params(workdir, step=None):
    """{'params': ..., 'batch_stats': ..., 'step': ..., 'ema': ... (None without
    one)} of a checkpoint, as numpy."""
    import jax
    import orbax.checkpoint as ocp
    step = step if step is not None else checkpoint_steps(workdir)[-1]
    path = os.path.join(workdir, 'checkpoints', str(step), 'state')
    with ocp.PyTreeCheckpointer() as ckptr:
        # As numpy: the checkpoint may come from another mesh than this process's.
        meta = ckptr.metadata(path).item_metadata.tree
        tree = ckptr.restore(path, restore_args=jax.tree.map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta))
    return {'params': tree['params'], 'batch_stats': tree['batch_stats'],
            'step': int(np.asarray(tree['step'])), 'ema': tree.get('ema')}


def assert_trees_close(a, b, atol=1e-5):
    import jax
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol,
                                   rtol=0)
