"""The floors of docs/architecture.md: a module of senet_jax imports only from
floors below its own (and from inside its own package)."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / 'senet_jax'

# docs/architecture.md, from the ground up.
FLOORS = [
    {'errors', 'options', 'sharding'},
    {'layers'},
    {'cpu_kernels', 'attention'},
    {'xla_cpu', 'models', 'data', 'checkpoint', 'precision', 'mixing'},
    {'steps', 'metrics_log', 'convert', 'nnx', 'workdir'},
    {'pretrained'},
    {'trainer'},
    {'analysis', 'benchmark', 'predict'},
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}


def ours(tree):
    """The top-level senet_jax modules a syntax tree imports (lazy imports too)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('senet_jax'):
            parts = node.module.split('.')
            if len(parts) > 1:
                yield parts[1]
            else:   # from senet_jax import a, b
                yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split('.')
                if parts[0] == 'senet_jax' and len(parts) > 1:
                    yield parts[1]


def test_every_module_has_a_floor():
    modules = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
               if (p.suffix == '.py' and p.stem != '__init__') or (p / '__init__.py').exists()}
    assert modules == set(FLOOR)


def test_nothing_imports_upward():
    upward = []
    for path in ROOT.rglob('*.py'):
        rel = path.relative_to(ROOT)
        if rel == pathlib.Path('__init__.py'):
            continue   # the package's front door re-exports from every floor
        module = rel.parts[0].removesuffix('.py')
        for name in ours(ast.parse(path.read_text())):
            if name != module and FLOOR[name] >= FLOOR[module]:
                upward.append(f'{rel} imports {name}')
    assert not upward


def test_tensorflow_is_imported_only_through_tf_host():
    """So that it is hidden from the GPUs wherever it is first imported."""
    importers = set()
    for path in ROOT.rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ''] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(n == 'tensorflow' or n.startswith('tensorflow.') for n in names):
                importers.add(str(path.relative_to(ROOT)))
    assert importers == {'data/tf_host.py'}
