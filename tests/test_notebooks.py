"""The notebooks in colab/: committed clean, and run top to bottom on a CPU (offline, their small
settings), with the setup cell taking the Colab path as on Colab.

The Colab path runs in a throwaway venv that sees this environment's packages, with a stub
`google.colab` module importable and the repository cloned from `file://` (its committed state):
the setup cell must find every requirement met and install nothing. Each notebook takes a few
minutes on a CPU.
"""
import json
import os
import site
import subprocess
import sys
import time

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(ROOT, 'colab')
NOTEBOOKS = sorted(f for f in os.listdir(COLAB) if f.endswith('.ipynb'))
SETUP = 2   # index of the setup cell
UNSET = "REPO_URL = ''  #@param {type:\"string\"}"
KERNEL = 'senet-colab-venv'


@pytest.fixture(scope='module')
def colab_venv(tmp_path_factory):
    """A venv whose kernel imports a stub google.colab; returns (JUPYTER_PATH, its site-packages)."""
    base = tmp_path_factory.mktemp('colab')
    venv = base / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', '--system-site-packages', str(venv)],
                   check=True)
    python = venv / 'bin' / 'python'
    packages = subprocess.run([str(python), '-c', 'import site; print(site.getsitepackages()[0])'],
                              check=True, capture_output=True, text=True).stdout.strip()
    # This environment's packages (pip included), as Colab has its preinstalled ones.
    with open(os.path.join(packages, 'parent.pth'), 'w') as f:
        f.write('\n'.join(site.getsitepackages()) + '\n')
    stub = base / 'stub' / 'google' / 'colab'
    stub.mkdir(parents=True)
    (stub / '__init__.py').write_text('"""Stands in for Colab\'s module: its presence means Colab."""\n')
    (stub / 'output.py').write_text('"""Imported by jax when google.colab is loaded."""\n')
    spec = base / 'jupyter' / 'kernels' / KERNEL
    spec.mkdir(parents=True)
    (spec / 'kernel.json').write_text(json.dumps({
        'argv': [str(python), '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
        'display_name': 'Colab stand-in', 'language': 'python',
        'env': {'PYTHONPATH': str(base / 'stub')}}))
    return str(base / 'jupyter'), packages


def run_on_colab(nb, cwd, monkeypatch, colab_venv, allow_errors=False):
    jupyter_path, _ = colab_venv
    monkeypatch.setenv('JUPYTER_PATH', jupyter_path)
    monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')   # no weights download in CI
    monkeypatch.setenv('TMPDIR', str(cwd))      # workdirs and plots land here
    monkeypatch.delenv('SENET_WEIGHTS', raising=False)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name=KERNEL, allow_errors=allow_errors,
        skip_cells_with_tag='colab-ui',   # inline TensorBoard would start a server
        resources={'metadata': {'path': str(cwd)}})
    client.execute()   # raises CellExecutionError, with the traceback, on any error
    return '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                     for o in c.outputs if o.get('output_type') == 'stream')


def test_all_notebooks_are_listed():
    assert NOTEBOOKS == ['excitation_analysis.ipynb', 'quickstart.ipynb', 'train_tpu.ipynb']


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_committed_without_outputs(name):
    nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == 'code':
            assert cell.outputs == [] and cell.execution_count is None, name


@pytest.mark.slow
@pytest.mark.parametrize('name', NOTEBOOKS)
def test_setup_cell_is_a_colab_form_field_left_unset(name):
    nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
    source = nb.cells[SETUP].source
    assert nb.cells[SETUP].cell_type == 'code' and UNSET in source.splitlines()
    assert 'set_visible_devices([], \'GPU\')' in source


def test_metadata_asks_for_the_runtime_each_notebook_wants():
    meta = {n: nbformat.read(os.path.join(COLAB, n), as_version=4).metadata for n in NOTEBOOKS}
    assert meta['train_tpu.ipynb']['accelerator'] == 'TPU'
    assert meta['train_tpu.ipynb']['colab']['gpuType'].startswith('V')   # a TPU type
    assert 'accelerator' not in meta['quickstart.ipynb']                  # any runtime
    assert 'accelerator' not in meta['excitation_analysis.ipynb']


@pytest.mark.slow
def test_on_colab_an_unset_repo_url_is_one_sentence(monkeypatch, tmp_path, colab_venv):
    nb = nbformat.read(os.path.join(COLAB, 'quickstart.ipynb'), as_version=4)
    nb.cells = nb.cells[:SETUP + 1]
    run_on_colab(nb, tmp_path, monkeypatch, colab_venv, allow_errors=True)
    [error] = [o for o in nb.cells[SETUP].outputs if o.output_type == 'error']
    assert len(error.traceback) == 1
    assert error.traceback[0].startswith('error: set REPO_URL in the form above')
    assert 'senet-jax' not in os.listdir(tmp_path)   # nothing cloned


@pytest.mark.slow
@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs_as_on_colab(name, monkeypatch, tmp_path, colab_venv):
    nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
    nb.cells[SETUP].source = nb.cells[SETUP].source.replace(
        UNSET, f"REPO_URL = 'file://{ROOT}'  #@param {{type:\"string\"}}")   # the form, filled in
    start = time.time()
    text = run_on_colab(nb, tmp_path, monkeypatch, colab_venv)
    print(f'{name}: {time.time() - start:.0f}s')
    clone = os.path.join(str(tmp_path), 'senet-jax')
    assert f'working in {clone}' in text and os.path.isfile(os.path.join(clone, 'requirements.txt'))
    assert os.listdir(colab_venv[1]) == ['parent.pth'], 'pip installed something'
    assert 'Traceback' not in text
    if name == 'excitation_analysis.ipynb':
        assert 'eta^2' in text and 'l1_weight' in text
        images = [o for c in nb.cells for o in c.get('outputs', [])
                  if 'image/png' in o.get('data', {})]
        assert images, 'the Fig. 6 plot was not displayed'
    if name == 'quickstart.ipynb':
        assert 'RANDOM weights' in text and 'held-out top-1' in text
    if name == 'train_tpu.ipynb':
        assert 'CPU or offline: digits' in text and 'last eval top-1' in text


@pytest.mark.slow
def test_setup_cell_in_a_local_checkout_moves_to_the_root(monkeypatch):
    monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
    nb = nbformat.read(os.path.join(COLAB, 'quickstart.ipynb'), as_version=4)
    nb.cells = nb.cells[:SETUP + 1]
    nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                            resources={'metadata': {'path': COLAB}}).execute()
    printed = [o.text for o in nb.cells[SETUP].outputs if o.get('name') == 'stdout']
    assert printed == [f'working in {ROOT}\n']
