"""The notebooks in colab/: committed clean, and run top to bottom on a CPU (offline, their small
settings), with the setup cell taking the Colab path as on Colab.

The Colab path runs in a throwaway venv that sees this environment's packages, with a stub
`google.colab` module importable and the repository cloned from `file://` (its committed state):
the setup cell must find every requirement met and install nothing. A probe in the kernel
(`sitecustomize`) records whether JAX had started its backend when TensorFlow was first looked
up; a last cell added to each says whether TensorFlow was imported (on a CPU it never is). Each notebook takes a few minutes on a CPU.
"""
import ast
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
# Runs at the kernel's start: records, at the first lookup of tensorflow (an import, or a
# find_spec before one), whether JAX's backend had started.
IMPORT_PROBE = '''
import importlib.abc, json, os, sys, traceback

class TensorFlowProbe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == 'tensorflow':
            sys.meta_path.remove(self)
            bridge = sys.modules.get('jax._src.xla_bridge')
            with open(os.environ['SENET_IMPORT_PROBE'], 'w') as f:
                json.dump({'jax_started': bool(bridge and bridge.backends_are_initialized()),
                           'from': traceback.format_stack(limit=8)}, f)
        return None

if os.environ.get('SENET_IMPORT_PROBE'):
    sys.meta_path.insert(0, TensorFlowProbe())
'''


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
    (base / 'stub' / 'sitecustomize.py').write_text(IMPORT_PROBE)
    spec = base / 'jupyter' / 'kernels' / KERNEL
    spec.mkdir(parents=True)
    (spec / 'kernel.json').write_text(json.dumps({
        'argv': [str(python), '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
        'display_name': 'Colab stand-in', 'language': 'python',
        'env': {'PYTHONPATH': str(base / 'stub')}}))
    return str(base / 'jupyter'), packages, str(python)


def run_on_colab(nb, cwd, monkeypatch, colab_venv, allow_errors=False):
    jupyter_path = colab_venv[0]
    monkeypatch.setenv('JUPYTER_PATH', jupyter_path)
    monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')   # no weights download in CI
    monkeypatch.setenv('TMPDIR', str(cwd))      # workdirs and plots land here
    monkeypatch.delenv('SENET_WEIGHTS', raising=False)
    monkeypatch.setenv('SENET_IMPORT_PROBE', str(cwd / 'import_probe.json'))
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name=KERNEL, allow_errors=allow_errors,
        skip_cells_with_tag='colab-ui',   # inline TensorBoard would start a server
        resources={'metadata': {'path': str(cwd)}})
    client.execute()   # raises CellExecutionError, with the traceback, on any error
    # A stream arrives in pieces cut anywhere (one print can span two messages): each
    # cell's stdout, then its stderr, is joined as it came.
    return '\n'.join(''.join(o.get('text', '') for o in c.outputs
                             if o.get('output_type') == 'stream' and o.get('name') == stream)
                     for c in nb.cells if c.cell_type == 'code' for stream in ('stdout', 'stderr'))


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
    # TensorFlow is left to the pipelines that need it, which hide the GPUs from it.
    assert 'import tensorflow' not in source


def test_the_setup_cells_are_one_cell():
    """So that one notebook's Colab run proves the setup of all."""
    sources = {nbformat.read(os.path.join(COLAB, n), as_version=4).cells[SETUP].source
               for n in NOTEBOOKS}
    assert len(sources) == 1


def setup_functions():
    """The setup cell's constants and functions, without running the cell."""
    tree = ast.parse(nbformat.read(os.path.join(COLAB, NOTEBOOKS[0]), as_version=4).cells[SETUP].source)
    stdlib = lambda node: all(a.name not in ('jax', 'tensorflow') for a in node.names)  # noqa: E731
    tree.body = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))
                 or isinstance(node, ast.Import) and stdlib(node)
                 or isinstance(node, ast.Assign) and node.targets[0].id in ('COLAB_KEEPS', 'TEST_ONLY')]
    namespace = {}
    exec(compile(tree, 'setup cell', 'exec'), namespace)
    return namespace


def test_setup_installs_only_what_colab_lacks(tmp_path):
    setup = setup_functions()
    (tmp_path / 'requirements.txt').write_text(
        '# comment\njax==0.10.2\nflax==0.12.8\nnumpy==2.4.6\npillow==13.0.0\n'
        'tensorflow-cpu==2.21.0\nml_collections==1.1.0\npytest==9.2.0\n')
    colab = {'jax': '0.4.30', 'flax': '0.12.8', 'numpy': '2.0.2', 'pillow': '11.1.0',
             'tensorflow': '2.19.0', 'ml-collections': '0.1.1'}
    assert setup['missing'](str(tmp_path), 'tpu', colab) == ['jax[tpu]==0.10.2', 'ml_collections==1.1.0']
    assert setup['missing'](str(tmp_path), 'cpu', colab) == ['jax==0.10.2', 'ml_collections==1.1.0']
    # The jax pin met but not its accelerator plugin; no TensorFlow at all.
    bare = {'jax': '0.10.2', 'flax': '0.12.8', 'ml-collections': '1.1.0'}
    assert setup['missing'](str(tmp_path), 'gpu', bare) == [
        'jax[cuda12]==0.10.2', 'numpy==2.4.6', 'pillow==13.0.0', 'tensorflow-cpu==2.21.0']
    assert setup['missing'](str(tmp_path), 'gpu', {**bare, **colab, 'jax': '0.10.2',
                                                   'jax-cuda12-plugin': '0.10.2',
                                                   'ml-collections': '1.1.0'}) == []
    # What pip changed that the kernel has imported needs a restart: numpy here, not a stranger.
    import numpy  # noqa: F401
    assert setup['loaded'](['numpy', 'no-such-distribution']) == ['numpy']


def test_metadata_asks_for_the_runtime_each_notebook_wants():
    meta = {n: nbformat.read(os.path.join(COLAB, n), as_version=4).metadata for n in NOTEBOOKS}
    assert meta['train_tpu.ipynb']['accelerator'] == 'TPU'
    assert meta['train_tpu.ipynb']['colab']['gpuType'].startswith('V')   # a TPU type
    assert 'accelerator' not in meta['quickstart.ipynb']                  # any runtime
    assert 'accelerator' not in meta['excitation_analysis.ipynb']


def config_cell(name='train_tpu.ipynb'):
    nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
    [cell] = [c for c in nb.cells if c.cell_type == 'code' and 'get_config(' in c.source]
    return cell.source


def run_config_cell(monkeypatch, tmp_path, backend, online=True):
    """The cell on a Colab runtime: no device, no network, no download."""
    import socket
    import types
    prepared = []
    monkeypatch.setattr(socket, 'create_connection', lambda *a, **k: (
        types.SimpleNamespace(close=lambda: None) if online else (_ for _ in ()).throw(OSError())))
    builder = lambda name, data_dir: types.SimpleNamespace(  # noqa: E731
        download_and_prepare=lambda: prepared.append(name))
    monkeypatch.setitem(sys.modules, 'tensorflow_datasets', types.SimpleNamespace(builder=builder))
    monkeypatch.setenv('SENET_WORKDIR', str(tmp_path))
    namespace = {'BACKEND': backend, 'IN_COLAB': True, 'os': os}
    exec(config_cell(), namespace)
    return namespace['config'], prepared


def differences(a, b):
    a, b = a.to_dict(), b.to_dict()
    assert a.keys() == b.keys()
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def test_train_tpu_trains_cifar_with_configs_cifar(monkeypatch, tmp_path):
    from configs import cifar, quickstart
    config, prepared = run_config_cell(monkeypatch, tmp_path, 'tpu')
    recipe = cifar.get_config('se_resnet110_cifar,cifar10')
    assert config.preprocess == 'cifar' and config.dataset == 'cifar10' and prepared == ['cifar10']
    # The same config but its length: the schedule over 8, its lr steps with it.
    assert differences(config, recipe) == {'num_train_steps': (8000, 64000),
                                           'lr_boundaries_steps': ((4000, 6000), (32000, 48000))}
    for backend, online in (('cpu', True), ('gpu', False)):   # digits, offline
        config, prepared = run_config_cell(monkeypatch, tmp_path, backend, online)
        assert differences(config, quickstart.get_config()) == {'num_epochs': (3.0, 15.0)}
        assert prepared == []
    # The other notebooks train on digits only.
    for name in set(NOTEBOOKS) - {'train_tpu.ipynb'}:
        cells = nbformat.read(os.path.join(COLAB, name), as_version=4).cells
        assert not any('cifar' in c.source for c in cells if c.cell_type == 'code'), name


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
    nb.cells.append(nbformat.v4.new_code_cell(
        "import sys\nprint('TensorFlow imported:', 'tensorflow' in sys.modules)"))
    start = time.time()
    text = run_on_colab(nb, tmp_path, monkeypatch, colab_venv)
    print(f'{name}: {time.time() - start:.0f}s')
    clone = os.path.join(str(tmp_path), 'senet-jax')
    assert f'working in {clone}' in text and os.path.isfile(os.path.join(clone, 'requirements.txt'))
    assert os.listdir(colab_venv[1]) == ['parent.pth'], 'pip installed something'
    assert 'Installed nothing (every pin met); kept Colab\'s ' in text
    check = subprocess.run([colab_venv[2], '-m', 'pip', 'check'], capture_output=True, text=True)
    broken = [line for line in check.stdout.splitlines() if not line.startswith('No broken')]
    assert (f'pip check: {len(broken)} broken requirement(s), e.g. {broken[0]}.' if broken
            else 'pip check: no broken requirements.') in text
    # JAX first: a lookup of TensorFlow (etils.epath's find_spec, say) comes after JAX's start.
    if (tmp_path / 'import_probe.json').exists():
        with open(tmp_path / 'import_probe.json') as f:
            probe = json.load(f)
        assert probe['jax_started'], 'TensorFlow before JAX:\n' + ''.join(probe['from'])
    # On a CPU every notebook trains on digits, and TensorFlow is never imported (where a
    # pipeline needs it, senet_jax.data.tf_host hides the GPUs from it).
    assert 'TensorFlow imported: False' in text
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
    printed = ''.join(o.text for o in nb.cells[SETUP].outputs if o.get('name') == 'stdout')
    assert printed.splitlines()[-1] == f'working in {ROOT}'
