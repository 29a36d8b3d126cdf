"""The benchmark runs at small sizes and prints what it promises (timings live in the script)."""
import json
import sys
import time

import numpy as np
import pytest
from PIL import Image

from senet_jax import benchmark


@pytest.mark.no_cover   # every line it runs, cheaper tests run too (docs/architecture.md, "Tests")
@pytest.mark.slow
@pytest.mark.parametrize('mode', ['infer', 'train'])
def test_benchmark_prints_one_json_object(mode, capsys):
    assert benchmark.main(['--model', 'se_resnet_mini', '--batch-size', '2', '--image-size', '16',
                           '--mode', mode, '--steps', '1', '--rounds', '1', '--warmup', '1', '--json']) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result['images_per_sec'] > 0 and result['compile_time_s'] > 0
    assert result['gmacs_per_image'] > 0 and result['mode'] == mode


@pytest.mark.slow
def test_baseline_is_timed_beside_the_model(capsys):
    assert benchmark.main(['--model', 'se_resnet_mini', '--baseline', 'resnet_mini', '--batch-size', '2',
                           '--image-size', '16', '--steps', '1', '--rounds', '2', '--warmup', '1',
                           '--json']) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result['baseline'] == 'resnet_mini' and result['baseline_images_per_sec'] > 0
    ratio = result['baseline_images_per_sec'] / result['images_per_sec']
    assert result['overhead_vs_baseline'] == pytest.approx(ratio)
    assert result['overhead_vs_baseline_paired'] > 0


COMPARE_MINI = ['--model', 'se_resnet_mini', '--compare', 'timm', '--batch-size', '2',
                '--image-size', '16', '--steps', '1', '--rounds', '3', '--warmup', '1', '--json']


def _unset(monkeypatch, *names):
    for name in names:   # set first, so that the teardown removes what main() sets
        monkeypatch.setenv(name, '')
        monkeypatch.delenv(name)


@pytest.fixture
def mini_has_reference(monkeypatch):
    """A timm reference name for the mini model, which has none."""
    spec = benchmark.model_spec('se_resnet_mini')
    monkeypatch.setattr(benchmark, 'model_spec', lambda name: spec._replace(reference='seresnet_stub'))


@pytest.mark.slow
def test_timm_comparison_prints_both_ratios(mini_has_reference, monkeypatch, capsys):
    # A stand-in for the PyTorch step: torch is not a requirement.
    monkeypatch.setattr(benchmark, '_import_timm', lambda: None)
    monkeypatch.setattr(benchmark, 'torch_step', lambda *args: lambda: time.sleep(0.01))
    _unset(monkeypatch, *benchmark.GPU_MEMORY_FRACTION_VARS)
    assert benchmark.main(COMPARE_MINI) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ratio = result['images_per_sec'] / result['timm_images_per_sec']
    assert result['speedup_vs_timm'] == pytest.approx(ratio)
    assert result['speedup_vs_timm_paired'] > 0
    # JAX would take 75% of a GPU: half is left to PyTorch, unless the user chose.
    assert benchmark.os.environ['XLA_CLIENT_MEM_FRACTION'] == '0.5'
    _unset(monkeypatch, 'XLA_CLIENT_MEM_FRACTION')
    monkeypatch.setenv('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.3')
    assert benchmark.main(COMPARE_MINI) == 0
    assert 'XLA_CLIENT_MEM_FRACTION' not in benchmark.os.environ


@pytest.mark.parametrize('failure', ['not installed', 'torchvision built for another torch'])
def test_timm_that_does_not_import_is_one_sentence(failure, mini_has_reference, tmp_path,
                                                    monkeypatch, capsys):
    for name in ('torch', 'timm'):
        monkeypatch.delitem(sys.modules, name, raising=False)
    if failure == 'not installed':
        monkeypatch.setitem(sys.modules, 'timm', None)   # import timm raises ModuleNotFoundError
    else:
        for name, body in [('torch', ''), ('timm', 'raise RuntimeError("operator torchvision::nms '
                                                     'does not exist")')]:
            (tmp_path / name).mkdir()
            (tmp_path / name / '__init__.py').write_text(body + '\n')
        monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert benchmark.main(COMPARE_MINI) == 1
    finally:   # the stubs must not outlive the test (scipy, for one, looks for sys.modules['torch'])
        for name in ('torch', 'timm'):
            if str(getattr(sys.modules.get(name), '__file__', None)).startswith(str(tmp_path)):
                del sys.modules[name]
    err = capsys.readouterr().err
    assert err.startswith('error: --compare timm needs torch and timm') and err.count('\n') == 1
    assert ('timm' if failure == 'not installed' else 'torchvision::nms') in err


def test_input_pipeline_benchmark_on_an_image_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), np.uint8)).save(tmp_path / f'{i}.jpg')
    assert benchmark.main(['--input-pipeline', str(tmp_path), '--image-size', '32',
                           '--num-images', '40', '--json']) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result['num_files'] == 4 and result['images_per_sec_per_core'] > 0
    assert benchmark.main(['--input-pipeline', str(tmp_path), '--randaugment', 'rand-m7-x',
                           '--num-images', '8']) == 1
    assert "cannot read the section 'x'" in capsys.readouterr().err


@pytest.mark.slow
def test_bad_arguments_exit_1(capsys):
    assert benchmark.main(['--batch-size', '0']) == 1
    assert 'must be positive' in capsys.readouterr().err
    assert benchmark.main(['--model', 'se_resnet5']) == 1
    assert "Did you mean 'se_resnet50'" in capsys.readouterr().err
    assert benchmark.main(['--model', 'se_resnet_mini', '--baseline', 'resnet5']) == 1
    assert "Unknown model 'resnet5'" in capsys.readouterr().err
    assert benchmark.main(['--model', 'se_resnet_mini', '--compare', 'timm']) == 1
    assert 'no timm reference' in capsys.readouterr().err


@pytest.mark.slow
def test_train_mode_times_the_trainers_own_step(monkeypatch, capsys):
    """The benchmark's step is trainer.train_step, jitted by trainer.compile_steps."""
    from senet_jax import trainer
    traced = []
    real = trainer.train_step

    def spy(state, batch, dropout_rng, **kwargs):
        traced.append((batch['image'].dtype, kwargs['label_smoothing']))
        return real(state, batch, dropout_rng, **kwargs)
    monkeypatch.setattr(trainer, 'train_step', spy)
    assert benchmark.main(['--model', 'se_resnet_mini', '--batch-size', '2', '--image-size', '16',
                           '--mode', 'train', '--steps', '1', '--rounds', '1', '--warmup', '1',
                           '--json']) == 0
    assert traced == [(np.uint8, 0.0)]  # traced once: uint8 images, as train.py feeds them
