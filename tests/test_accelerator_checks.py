"""scripts/accelerator_checks.py: its checks, how it reads train.py's metrics, its refusals and its
time budget; `--smoke` runs every check at toy sizes. scripts/kernels_ab.py: the inference A/B."""
import dataclasses
import importlib.util
import json
import os
import sys
import time

import pytest

from senet_jax import models as zoo
from senet_jax.models import model_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'scripts', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def checks():
    return load_script('accelerator_checks')


def fake_probe(backend='gpu', kind='NVIDIA H200', kernels_missing='', bytes_limit=None):
    return lambda env: {'backend': backend, 'device_kind': kind, 'num_devices': 1,
                        'kernels_missing': kernels_missing, 'bytes_limit': bytes_limit}


def test_every_check_names_a_zoo_model_with_a_config_and_the_issue_targets(checks):
    targets = {}
    for check in checks.CHECKS:
        model_spec(check.model)   # raises for an unknown name
        assert os.path.isfile(os.path.join(ROOT, 'configs', f'{check.model}.py'))
        targets.update({(check.model, key): target for key, target, _ in check.figures if target})
    assert targets == {('se_resnet50', 'images_per_sec_per_device'): 4500,
                       ('se_resnet50', 'speedup_vs_timm'): 1.3,
                       ('se_resnext101_32x4d', 'images_per_sec_per_device'): 1700}
    assert [c.group for c in checks.CHECKS][:2] == ['train', 'train']   # the targets come first


def test_images_per_sec_leave_out_the_first_log_interval(checks, tmp_path):
    path = tmp_path / 'metrics.jsonl'
    rows = [{'step': 20, 'images_per_sec': 10.0},   # holds the compilation
            {'step': 40, 'images_per_sec': 100.0}, {'step': 60, 'images_per_sec': 300.0},
            {'step': 60, 'eval_top1': 0.001}]
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    # 2 equal intervals of n images in n/100 + n/300 seconds: 150 images/s.
    assert checks.timed_rate(str(path)) == pytest.approx(150.0)
    path.write_text(json.dumps(rows[0]) + '\n')
    with pytest.raises(checks.CheckFailed, match='1 log interval'):
        checks.timed_rate(str(path))


def test_verdicts_hold_only_on_the_devices_the_targets_are_for(checks):
    assert checks.verdict(4600.0, 4500, 'NVIDIA H100 80GB HBM3') == 'met'
    assert checks.verdict(4400.0, 4500, 'NVIDIA H200') == 'MISSED'
    assert checks.verdict(4400.0, 4500, 'TPU v5 lite') == '(target set for one H100/H200)'
    assert checks.verdict(None, 4500, 'NVIDIA H200') == 'not measured'
    assert checks.verdict(1.2, None, 'NVIDIA H200') == ''


def test_a_failing_check_reports_its_error_line(checks, monkeypatch):
    ctx = checks.Context(smoke=True, backend='cpu', device_kind='cpu', num_devices=1, kernels_missing='',
                         timm='', workroot='', env=dict(os.environ), deadline=time.monotonic() + 60)
    cmd = [sys.executable, '-c', "import sys; print('error: no such thing.\\nmore', file=sys.stderr); "
                                 "sys.exit(1)"]
    with pytest.raises(checks.CheckFailed, match=r'^failed \(exit 1\): error: no such thing\.$'):
        checks.run_process(cmd, ctx)


def test_without_an_accelerator_it_says_so_and_runs_nothing(checks, tmp_path, capsys):
    assert checks.main(['--out', str(tmp_path / 'c.jsonl')]) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: JAX sees neither a GPU nor a TPU here (backend: cpu)')
    assert err.count('\n') == 1 and f'"jax[tpu]=={checks.jax_pin()}"' in err
    assert checks.jax_pin()   # read from requirements.txt
    assert not (tmp_path / 'c.jsonl').exists()


def test_the_time_budget_stops_a_check_and_skips_the_rest(checks, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(checks, 'probe', fake_probe())
    monkeypatch.setattr(checks, 'timm_unavailable', lambda env, smoke: 'torch and timm do not import here')
    assert checks.main(['--budget', '2', '--out', str(tmp_path / 'c.jsonl')]) == 1
    printed = capsys.readouterr().out
    names = [c.name for c in checks.CHECKS]
    assert f'{names[0]}: stopped at the time limit' in printed
    assert f'{names[1]}: not run: the time budget was spent' in printed
    assert f'{names[2]}: skipped: torch and timm do not import here' in printed
    assert '0 of 6 checks ran' in printed and 'not measured' in printed
    assert (tmp_path / 'c.jsonl').read_text() == ''
    assert printed.splitlines()[-1] == (
        f'Left out for lack of time: {names[0]}; {names[1]}; {names[3]}; {names[4]}. Run them with '
        'python scripts/accelerator_checks.py --checks train,kernels --budget 2')


GiB = 1 << 30


def test_the_per_device_batch_fits_the_device_memory(checks):
    # (bytes_limit -> se_resnet50, se_resnext101_32x4d): a 16 GiB v5e chip; an H100's 75% of
    # 80 GB that JAX takes; an H200's; a device that does not say (memory_stats() is None).
    for limit, batches in ((16 * GiB, (96, 48)), (int(0.75 * 80e9), (256, 128)),
                           (int(0.75 * 141e9), (256, 128)), (None, (256, 128)), (GiB, (16, 16))):
        chosen = (checks.per_device_batch('se_resnet50', 256, limit),
                  checks.per_device_batch('se_resnext101_32x4d', 128, limit))
        assert chosen == batches, limit
        for model, batch in zip(('se_resnet50', 'se_resnext101_32x4d'), chosen):
            need = checks.FIXED_BYTES + batch * checks.PER_IMAGE_BYTES[model]
            assert batch % 16 == 0 and (batch == 16 or limit is None
                                        or need <= checks.MEMORY_SHARE * limit)
    assert checks.per_device_batch('se_resnet_mini', 2, 16 * GiB) == 2   # no estimate: as asked


def test_se_resnet50_training_comes_first_and_the_batches_from_the_memory(checks, monkeypatch, tmp_path,
                                                                            capsys):
    events = []

    def fake_run(ctx, model, batch):
        events.append((model, batch))
        return {'images_per_sec_per_device': 1.0}
    monkeypatch.setattr(checks, 'CHECKS', [dataclasses.replace(c, run=fake_run) if c.group != 'timm'
                                           else c for c in checks.CHECKS])
    monkeypatch.setattr(checks, 'probe', fake_probe(kind='TPU v5 lite', bytes_limit=16 * GiB))
    monkeypatch.setattr(checks, 'timm_unavailable',
                        lambda env, smoke: events.append('timm probe') or 'no torch here')
    assert checks.main(['--out', str(tmp_path / 'c.jsonl')]) == 0
    # Nothing before the se_resnet50 figure; timm's probe (importing torch) only when its turn comes.
    assert events == [('se_resnet50', 96), ('se_resnext101_32x4d', 48), 'timm probe',
                      ('se_resnet50', 96), ('se_resnet50', 96)]
    assert checks.CHECKS[0].name == 'se_resnet50 training (train.py)'
    assert checks.CHECKS[0].figures[0][:2] == ('images_per_sec_per_device', 4500)
    printed = capsys.readouterr().out
    assert 'se_resnet50 training (train.py): batch 96 per device, not 256: the device has 16.0 GiB' in printed
    assert printed.splitlines()[-1] == 'Nothing was left out for lack of time.'
    first = json.loads((tmp_path / 'c.jsonl').read_text().splitlines()[0])
    assert first['per_device_batch'] == 96 and first['bytes_limit'] == 16 * GiB


def test_without_the_kernels_option_the_ab_checks_say_skipped(checks, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(checks, 'probe', fake_probe(kernels_missing="Unknown option(s) ['kernels']"))
    assert checks.main(['--checks', 'kernels', '--out', str(tmp_path / 'c.jsonl')]) == 0
    printed = capsys.readouterr().out
    for check in checks.CHECKS[3:5]:
        assert (f"{check.name}: skipped: create_model has no kernels= option in this checkout "
                f"(Unknown option(s) ['kernels'])") in printed
    assert '0 of 2 checks ran' in printed


@pytest.mark.slow
def test_smoke_runs_every_check_at_toy_sizes(checks, tmp_path, capsys, monkeypatch):
    # Each check's processes compile with XLA's optimizations off, as the in-process
    # tests do (docs/architecture.md, "Tests"): at toy sizes the compiles are the
    # cost, and only that each check runs and reports is checked here.
    monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
    out = tmp_path / 'c.jsonl'
    assert checks.main(['--smoke', '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    results = {r['check']: r for r in map(json.loads, out.read_text().splitlines())}
    names = [c.name for c in checks.CHECKS]
    for name in names[:2]:
        assert results[name]['model'] == checks.SMOKE_MODEL and results[name]['images_per_sec'] > 0
        row = next(line for line in printed.splitlines() if line.startswith(name) and 'per device' in line)
        assert f"{results[name]['images_per_sec_per_device']:.4g}" in row
    kernels_missing = checks.probe(dict(os.environ))['kernels_missing']
    for name in names[3:5]:
        if kernels_missing:
            assert f'{name}: skipped: create_model has no kernels= option' in printed
        else:
            assert results[name]['cpu_over_plain'] > 0
    assert f'{len(results)} of 6 checks ran' in printed


@pytest.mark.slow
def test_kernels_ab_times_both_forms_on_the_same_variables(monkeypatch, capsys):
    kernels_ab = load_script('kernels_ab')
    asked = []

    def create_model(name, kernels, **kw):   # the same network for both forms
        asked.append(kernels)
        return zoo.create_model(name, **kw)
    monkeypatch.setattr(kernels_ab, 'create_model', create_model)
    assert kernels_ab.main(['--model', 'se_resnet_mini', '--batch-size', '2', '--image-size', '16',
                            '--steps', '1', '--rounds', '2', '--dtype', 'float32']) == 0
    result = json.loads(capsys.readouterr().out)
    assert asked == ['plain', 'cpu'] and result['max_abs_logit_difference'] == 0.0
    assert result['plain_images_per_sec'] > 0 and result['cpu_images_per_sec'] > 0
    assert result['cpu_over_plain'] == pytest.approx(result['cpu_images_per_sec']
                                                     / result['plain_images_per_sec'])


def test_kernels_ab_refuses_an_unknown_model_in_one_line(capsys):
    assert load_script('kernels_ab').main(['--model', 'se_resnet_nope']) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown model 'se_resnet_nope'") and err.count('\n') == 1
