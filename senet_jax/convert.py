"""PyTorch (timm / Cadene-Caffe layout) weights -> Flax variables, and back to a model.

    python -m senet_jax.convert --model se_resnet50 --weights seresnet50.safetensors --out DIR

writes an Orbax checkpoint of {'params', 'batch_stats'} plus `model.json`, which
`senet_jax.load_pretrained(DIR)` turns back into (model, variables) and the
trainer starts from with `--config.init_from=DIR`.

Loading never executes pickled code: `.safetensors` is read as plain tensors,
and a `.pth` (torch's zip archive, or its pre-1.6 format) is unpickled by a
reader that only rebuilds tensors and refuses every other object (torch itself
is not needed).

Every path (--weights, --out, load_pretrained's directory) may be local or a
gs:// URL (etils.epath; Orbax writes the arrays).
"""
import argparse
import io
import json
import pickle
import re
import sys
import zipfile
from typing import Any, Dict, Mapping, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from senet_jax.attention import torch_name
from senet_jax.checkpoint import user_path
from senet_jax.models import create_model, model_spec
from senet_jax.models.mobilenet import torch_module as _mobilenet_module
from senet_jax.models.vgg import torch_module as _vgg_module
from senet_jax.models.inception_resnet import torch_module as _inception_resnet_module
from senet_jax.models.shufflenet import torch_module as _shufflenet_module
from senet_jax.models.bn_inception import torch_module as _bn_inception_module
from senet_jax.models.cifar import torch_module as _cifar_module

METADATA = 'model.json'
VARIABLES = 'variables'


class ConversionError(ValueError):
    """A weights file that does not fit the model it is loaded into."""


# --- Flax path -> PyTorch key -------------------------------------------------

# timm's deep stems: conv1 is a Sequential (conv, bn, relu, conv, bn, relu, conv), bn1 follows it.
_TIMM_DEEP_STEM = {'conv1': 'conv1.0', 'bn1': 'conv1.1', 'conv2': 'conv1.3', 'bn2': 'conv1.4',
                   'conv3': 'conv1.6', 'bn3': 'bn1'}


def _resnet_module(path: Tuple[str, ...], layout: str) -> str:
    """The reference's module name for a Flax module path of `models/resnet.py`.

    Layouts: 'timm' and 'legacy' (Cadene's `layer0.*`, `se_module`, `last_linear`);
    'timm_deep', timm's deep stem; 'timm_avg_down', timm's 7x7 stem and average-pooled
    shortcuts (ecaresnetlight); 'timm_d', the deep stem and average-pooled
    shortcuts (`downsample.0` is the pool, which has no weights); 'timm_sk', timm's SK
    ResNets, whose blocks' convs are ConvNormAct (`conv1.conv`, `conv1.bn`) and whose
    SK conv (a module with submodules here) keeps its name (`conv2.paths.0.conv`).
    """
    legacy = layout == 'legacy'
    head, rest = path[0], list(path[1:])
    if head.startswith('stem_'):
        name = head[len('stem_'):]
        if layout in ('timm_deep', 'timm_d'):
            return _TIMM_DEEP_STEM[name]
        return f'layer0.{name}' if legacy else name
    if head == 'fc':
        return 'last_linear' if legacy else 'fc'
    stage, block = head[len('stage'):].split('_block')
    parts = [f'layer{int(stage) - 1}', block]
    down = (('downsample.1', 'downsample.2') if layout in ('timm_d', 'timm_avg_down')
            else ('downsample.0', 'downsample.1'))
    if layout == 'timm_sk' and len(rest) == 1:   # a plain conv or BN of a block
        rest = [re.sub(r'^conv(\d)$', r'conv\1.conv', re.sub(r'^bn(\d)$', r'conv\1.bn', rest[0]))]
    for p in rest:
        parts.append({'se': 'se_module' if legacy else 'se', 'downsample_conv': down[0],
                      'downsample_bn': down[1]}.get(p, torch_name(p)))   # torch_name: attention blocks
    return '.'.join(parts)


# layout (ModelSpec.layout) -> (Flax module path, layout) -> the reference's module name.
# Every zoo model calls its classifier 'fc' (load_pretrained replaces it by that name).
TORCH_MODULE = {
    'timm': _resnet_module,
    'timm_deep': _resnet_module,
    'timm_d': _resnet_module,
    'timm_avg_down': _resnet_module,
    'timm_sk': _resnet_module,
    'legacy': _resnet_module,
    'timm_vgg': _vgg_module,
    'pytorchcv_mobilenet': _mobilenet_module,
    'timm_mobilenet': _mobilenet_module,
    'timm_irv2': _inception_resnet_module,
    'pytorchcv_shufflenet': _shufflenet_module,
    'cadene_bninception': _bn_inception_module,
    'caffe_se_bn_inception': _bn_inception_module,
    'cifar': _cifar_module,
    'cifar_preact': _cifar_module,
}
# Layouts of released weights that no PyTorch network builds to test against:
# the official SE-BN-Inception caffemodel, exported to a state_dict by name.
WEIGHTS_WITHOUT_REFERENCE = {'caffe_se_bn_inception'}


def _torch_module(path: Tuple[str, ...], layout: str) -> str:
    return TORCH_MODULE[layout](path, layout)


_LEAF = {('params', 'kernel'): 'weight', ('params', 'bias'): 'bias', ('params', 'scale'): 'weight',
         ('batch_stats', 'mean'): 'running_mean', ('batch_stats', 'var'): 'running_var'}


def torch_key(collection: str, path: Tuple[str, ...], layout: str) -> str:
    return f'{_torch_module(path[:-1], layout)}.{_LEAF[(collection, path[-1])]}'


def _to_flax(value: np.ndarray, leaf: str, target_ndim: int) -> np.ndarray:
    if leaf != 'kernel':
        return value
    if target_ndim == 4:                        # conv (O, I/g, kh, kw) -> (kh, kw, I/g, O)
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 4:                         # SE 1x1 conv -> dense (I, O)
        value = value[:, :, 0, 0]
    return value.T                              # linear (O, I) -> (I, O)


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, 'detach'):                # a torch tensor
        value = value.detach().cpu().float().numpy() if value.dtype.is_floating_point \
            else value.detach().cpu().numpy()
    return np.asarray(value)


def _layout_name(name: str) -> str:
    """How an error names the state_dict layout a model converts from."""
    spec = model_spec(name)
    return f'{spec.source} {spec.reference}' if spec.reference else spec.layout


def _num_classes(name: str, state_dict: Mapping[str, Any], layout: str) -> int:
    key = torch_key('params', ('fc', 'bias'), layout)
    if key not in state_dict:
        raise ConversionError(f"The weights have no classifier '{key}': they are not in the "
                              f"{_layout_name(name)} layout.")
    return int(np.shape(state_dict[key])[0])


def _variable_shapes(model, size: int):
    """The model's variables as shapes only (nothing is computed)."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def torch_to_flax(name: str, state_dict: Mapping[str, Any], layout: str = None,
                  **overrides) -> Dict[str, Any]:
    """{'params', 'batch_stats'} for zoo model `name` from a reference state_dict.

    Strict: every key the model needs must be present with the right shape, and
    no other key may be (num_batches_tracked aside); the error names the keys.
    """
    spec = model_spec(name)
    if layout is not None:                      # a weight published in another layout
        spec = spec._replace(layout=layout)
    elif spec.reference is None and spec.layout not in WEIGHTS_WITHOUT_REFERENCE:
        raise ConversionError(f'{name} has no PyTorch reference to convert from.')
    model = create_model(name, num_classes=_num_classes(name, state_dict, spec.layout), **overrides)
    shapes = _variable_shapes(model, spec.input_size)
    state = {k: v for k, v in state_dict.items() if not k.endswith('num_batches_tracked')}

    flat, used, missing, misshapen = {}, set(), [], []
    for (collection, *path), target in traverse_util.flatten_dict(dict(shapes)).items():
        key = torch_key(collection, tuple(path), spec.layout)
        if key not in state:
            missing.append(key)
            continue
        used.add(key)
        value = _to_flax(_as_numpy(state[key]), path[-1], len(target.shape))
        if value.shape != target.shape:
            misshapen.append(f'{key} {tuple(np.shape(state[key]))}')
            continue
        flat[(collection, *path)] = value.astype(np.float32)
    unexpected = sorted(set(state) - used)
    problems = []
    for what, keys in (('missing', missing), ('unexpected', unexpected),
                       ('with the wrong shape', misshapen)):
        if keys:
            shown = ', '.join(keys[:8]) + (f' and {len(keys) - 8} more' if len(keys) > 8 else '')
            problems.append(f'{len(keys)} key(s) {what}: {shown}')
    if problems:
        raise ConversionError(f'These weights do not fit {name} ({_layout_name(name)} layout): '
                              + '; '.join(problems) + '.')
    return traverse_util.unflatten_dict(flat)


# --- Reading weight files without executing pickled code ----------------------

_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': 'bfloat16', 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}


class _StorageType:
    def __init__(self, dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *unused):
    itemsize = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)).copy()


def _rebuild_parameter(data, *unused):
    return data


class _TensorsOnlyUnpickler(pickle.Unpickler):
    """Rebuilds a state_dict of tensors from torch's zip format; refuses any other object."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self._archive, self._prefix = archive, prefix

    def find_class(self, module, name):
        if (module, name) == ('collections', 'OrderedDict'):
            import collections
            return collections.OrderedDict
        if module == 'torch._utils' and name == '_rebuild_tensor_v2':
            return _rebuild_tensor
        if module == 'torch._utils' and name == '_rebuild_parameter':
            return _rebuild_parameter
        if module == 'torch' and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f'refusing to load {module}.{name}: a weights file may only '
                                     'hold tensors')

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid
        if kind != 'storage' or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f'unsupported storage record {kind!r}')
        raw = self._archive.read(f'{self._prefix}data/{key}')
        if storage_type.dtype == 'bfloat16':
            bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
            return bits.view(np.float32)
        return np.frombuffer(raw, storage_type.dtype)


# torch.save's format before PyTorch 1.6 (timm's 2019 releases, Cadene's and pytorchcv's
# files): five pickles in a row (magic number, protocol, system info, the object,
# the storage keys), then each storage as an int64 element count and its raw bytes.
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


class _LazyTensor(NamedTuple):
    storage_key: str
    offset: int
    size: Tuple[int, ...]
    stride: Tuple[int, ...]


class _LegacyUnpickler(_TensorsOnlyUnpickler):
    """The legacy format's object pickle: tensors are recorded, filled in later."""

    def __init__(self, file):
        pickle.Unpickler.__init__(self, file, encoding='utf-8')
        self.storages = {}

    def find_class(self, module, name):
        # _rebuild_tensor: torch 0.3, which saved Cadene's Caffe ports (timm's legacy_*).
        if module == 'torch._utils' and name in ('_rebuild_tensor_v2', '_rebuild_tensor'):
            return lambda storage, offset, size, stride, *unused: _LazyTensor(
                storage, offset, tuple(size), tuple(stride))
        return super().find_class(module, name)

    def persistent_load(self, pid):
        if pid[0] != 'storage' or not isinstance(pid[1], _StorageType) or pid[5:6] not in ((), (None,)):
            raise pickle.UnpicklingError(f'unsupported storage record {pid[0]!r}')
        self.storages[pid[2]] = pid[1].dtype
        return pid[2]


def _read_torch_legacy(path: str, data: bytes):
    f = io.BytesIO(data)
    try:
        if pickle.load(f) != _LEGACY_MAGIC:
            raise pickle.UnpicklingError('not a PyTorch checkpoint')
        pickle.load(f), pickle.load(f)                  # protocol version, system info
        unpickler = _LegacyUnpickler(f)
        obj = unpickler.load()
        keys = pickle.load(f)
        arrays = {}
        for key in keys:
            dtype = unpickler.storages[key]
            count = int(np.frombuffer(f.read(8), np.int64)[0])
            item = 2 if dtype == 'bfloat16' else np.dtype(dtype).itemsize
            raw = f.read(count * item)
            if len(raw) != count * item:
                raise pickle.UnpicklingError('the file ends inside a tensor')
            arrays[key] = ((np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
                           if dtype == 'bfloat16' else np.frombuffer(raw, dtype))
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError) as e:
        raise ConversionError(f'Refusing {path}: {e}.') from None

    def fill(value):
        if isinstance(value, _LazyTensor):
            storage = arrays[value.storage_key]
            return _rebuild_tensor(storage, value.offset, value.size, value.stride)
        if isinstance(value, dict):
            return type(value)((k, fill(v)) for k, v in value.items())
        return value
    return fill(obj)


def _read_torch_zip(path: str, data: bytes) -> Dict[str, np.ndarray]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        pkl = [n for n in archive.namelist() if n.endswith('data.pkl')]
        if len(pkl) != 1:
            raise ConversionError(f'{path} is not a PyTorch checkpoint (no data.pkl inside).')
        prefix = pkl[0][:-len('data.pkl')]
        with archive.open(pkl[0]) as f:
            try:
                obj = _TensorsOnlyUnpickler(f, archive, prefix).load()
            except (pickle.UnpicklingError, ValueError, TypeError) as e:
                raise ConversionError(f'Refusing {path}: {e}.') from None
    return obj


def read_weights(path: str) -> Dict[str, np.ndarray]:
    """A state_dict of numpy arrays from `.safetensors` or `.pth`/`.pt` (zip format)."""
    if not user_path(path).is_file():
        raise ConversionError(f'No weights file at {path}.')
    data = user_path(path).read_bytes()
    if str(path).endswith('.safetensors'):
        from safetensors.numpy import load
        try:
            return load(data)
        except Exception as e:  # safetensors raises its own error types
            raise ConversionError(f'{path} is not a readable .safetensors file ({e}).') from None
    if zipfile.is_zipfile(io.BytesIO(data)):
        obj = _read_torch_zip(path, data)
    elif data[:2] == b'\x80\x02':                   # a pickle: torch.save's legacy format
        obj = _read_torch_legacy(path, data)
    else:
        raise ConversionError(
            f'{path} is neither .safetensors nor a PyTorch checkpoint. Re-save it '
            'with `torch.save(torch.load(f, weights_only=True), "w.pth")` or as .safetensors.')
    for wrapper in ('state_dict', 'model', 'state_dict_ema'):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise ConversionError(f'{path} does not hold a state_dict of tensors.')
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in obj.items()}


# --- Orbax checkpoint of converted weights ------------------------------------

def save_converted(out_dir: str, name: str, variables, source: str = '') -> None:
    import orbax.checkpoint as ocp
    out_dir = user_path(out_dir)
    num_classes = int(variables['params']['fc']['bias'].shape[0])
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(out_dir / VARIABLES, variables, force=True)
    (out_dir / METADATA).write_text(json.dumps(
        {'model': name, 'num_classes': num_classes,
         'source': user_path(source).name if source else '',
         'reference': model_spec(name).reference}, indent=1))


def load_pretrained(directory: str, num_classes=None, rng=None):
    """(model, variables) from a directory written by `python -m senet_jax.convert`.

    With `num_classes` different from the checkpoint's, the classifier ('fc') is
    freshly initialised (from `rng`, default key 0) and the backbone kept.
    """
    import orbax.checkpoint as ocp
    directory = user_path(directory)
    meta_path = directory / METADATA
    if not meta_path.is_file():
        raise ConversionError(f'{directory} holds no converted weights (no {METADATA}); '
                              'write one with `python -m senet_jax.convert`.')
    meta = json.loads(meta_path.read_text())
    model = create_model(meta['model'], num_classes=meta['num_classes'])
    size = model_spec(meta['model']).input_size
    abstract = _variable_shapes(model, size)
    with ocp.StandardCheckpointer() as ckptr:
        variables = ckptr.restore(directory / VARIABLES, abstract)
    variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
    if num_classes is not None and num_classes != meta['num_classes']:
        model = create_model(meta['model'], num_classes=num_classes)
        fresh = model.init(rng if rng is not None else jax.random.key(0),
                           jnp.zeros((1, size, size, 3)))
        variables['params'] = {**variables['params'], 'fc': fresh['params']['fc']}
    return model, variables


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m senet_jax.convert', description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', required=True, help='zoo name, e.g. se_resnet50')
    parser.add_argument('--weights', required=True,
                        help='.safetensors or .pth state_dict (a local path or gs://)')
    parser.add_argument('--out', required=True, help='output directory (a local path or gs://)')
    args = parser.parse_args(argv)
    try:
        variables = torch_to_flax(args.model, read_weights(args.weights))
        save_converted(args.out, args.model, variables, source=args.weights)
    except (ConversionError, ValueError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    n = sum(x.size for x in jax.tree.leaves(variables['params']))
    print(f'Converted {args.weights} -> {user_path(args.out)} ({args.model}, {n:,} parameters).')
    return 0


if __name__ == '__main__':
    sys.exit(main())
