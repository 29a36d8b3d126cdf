"""Executes every notebook in colab/ top to bottom (offline, CPU, the notebooks' small settings).

Each takes a few minutes at most on a CPU; skip them with `-k "not notebook_runs"`.
"""
import os
import sys
import time

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(ROOT, 'colab')
NOTEBOOKS = sorted(f for f in os.listdir(COLAB) if f.endswith('.ipynb'))


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
def test_notebook_runs(name, monkeypatch, tmp_path):
    monkeypatch.delenv('SENET_WEIGHTS', raising=False)
    monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
    monkeypatch.setenv('TMPDIR', str(tmp_path))  # workdirs and plots land here
    nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name='python3',
        resources={'metadata': {'path': COLAB}})
    start = time.time()
    client.execute()  # raises CellExecutionError, with the traceback, on any error
    print(f'{name}: {time.time() - start:.0f}s')
    text = '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                     for o in c.outputs if o.get('output_type') == 'stream')
    assert 'Traceback' not in text
    if name == 'excitation_analysis.ipynb':
        assert 'eta^2' in text and 'l1_weight' in text
        images = [o for c in nb.cells for o in c.get('outputs', [])
                  if 'image/png' in o.get('data', {})]
        assert images, 'the Fig. 6 plot was not displayed'
    if name == 'quickstart.ipynb':
        assert 'RANDOM weights' in text and 'held-out top-1' in text
    if name == 'train_tpu.ipynb':
        assert 'last eval top-1' in text
