"""scripts/gpu_checks.py runs its benchmarks, tabulates them against the targets and keeps to its time budget."""
import importlib.util
import json
import os

import pytest

from senet_jax.models import model_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def gpu_checks():
    spec = importlib.util.spec_from_file_location('gpu_checks', os.path.join(ROOT, 'scripts', 'gpu_checks.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_check_names_zoo_models_and_the_issue_targets(gpu_checks):
    targets = {}
    for name, args, checks in gpu_checks.CHECKS:
        for flag in ('--model', '--baseline'):
            if flag in args:
                model_spec(args[args.index(flag) + 1])   # raises for an unknown name
        targets.update({(args[args.index('--model') + 1], key): target
                        for key, target, kind, _ in checks if kind == 'min'})
    assert targets == {('se_resnet50', 'images_per_sec'): 4500, ('se_resnet50', 'speedup_vs_timm'): 1.3,
                       ('se_resnext101_32x4d', 'images_per_sec'): 1700}


@pytest.mark.slow
def test_checks_run_and_are_tabulated(gpu_checks, monkeypatch, tmp_path, capsys):
    # The mini models stand in for the real ones, so that this stays quick on a CPU.
    monkeypatch.setattr(gpu_checks, 'CHECKS', [
        ('mini training', ['--model', 'se_resnet_mini', '--mode', 'train', '--baseline', 'resnet_mini',
                           '--compare', 'timm'],
         [('images_per_sec', 4500, 'min', 'images/s'), ('overhead_vs_baseline', 1.1, 'info', 'x')])])
    monkeypatch.setattr(gpu_checks, '_timm_imports', lambda: False)
    out = tmp_path / 'checks.jsonl'
    assert gpu_checks.main(['--smoke', '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'timm comparisons are left out' in printed
    result = json.loads(out.read_text())
    assert result['model'] == 'se_resnet_mini' and result['image_size'] == 32
    assert 'timm_images_per_sec' not in result and result['baseline'] == 'resnet_mini'
    row = next(line for line in printed.splitlines() if 'images/s' in line)
    assert f"{result['images_per_sec']:.4g}" in row and '>= 4500' in row and row.endswith('MISSED')
    assert '1 of 1 checks ran' in printed


def test_without_a_gpu_it_says_so_and_runs_nothing(gpu_checks, tmp_path, capsys):
    assert gpu_checks.main(['--out', str(tmp_path / 'c.jsonl')]) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: JAX sees no GPU here (backend: cpu)') and err.count('\n') == 1
    assert not (tmp_path / 'c.jsonl').exists()


def test_the_time_budget_stops_a_check_and_skips_the_rest(gpu_checks, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gpu_checks, '_backend', lambda: 'gpu')
    monkeypatch.setattr(gpu_checks, '_timm_imports', lambda: False)
    assert gpu_checks.main(['--budget', '2', '--out', str(tmp_path / 'c.jsonl')]) == 1
    printed = capsys.readouterr().out
    first, second = (c[0] for c in gpu_checks.CHECKS[:2])
    assert f'{first}: stopped at the time limit' in printed
    assert f'{second}: not run: the time budget was spent' in printed
    assert '0 of 3 checks ran' in printed and 'not measured' in printed
