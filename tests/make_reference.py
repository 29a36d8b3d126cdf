"""Regenerate the parity fixtures in tests/fixtures/reference/ from the reference networks.

Needs, beside requirements.txt, torch, timm, pytorchcv and Cadene's pretrainedmodels
(none of them a requirement of the package), in one venv:
    pip install -r requirements.txt torch==2.14.1 torchvision==0.29.1 timm pytorchcv pretrainedmodels six
    python tests/make_reference.py [NAME ...]
timm imports torchvision, but only for what no fixture uses: where torchvision is
missing or does not load beside the installed torch, a stand-in takes its place.

For each zoo model with a reference (`ModelSpec.source`: timm's create_model,
pytorchcv's get_model, or Cadene's bninception.py loaded as a file), builds the
network without downloading weights, fills it with the seeded weights of
`reference_weights.random_state_dict`, and stores the reference's state_dict
keys/shapes, its parameter count and its float64 eval logits at the model's
input size and at one odd size (`ModelSpec.odd_size`). The tests rebuild the
same weights with numpy alone. The models of `reference_weights.REDUCED` are
built with those arguments (one block per stage) for the keys and logits; their
record keeps the full network's parameter count too.

`python tests/make_reference.py recipes_batch` stores, in fixtures/recipes_batch.json,
timm's results for the ResNet Strikes Back pieces of the trainer: three Lamb steps, the
BinaryCrossEntropy loss, Mixup/CutMix with given lambdas and boxes, and resnet50's
per-block drop-path rates.

`python tests/make_reference.py recipes_aug` stores, in fixtures/recipes_aug.npz,
scikit-image's chelsea resized to 64x48 by PIL and timm's RandAugment ops applied
to it one at a time at a fixed level (bilinear, timm's ImageNet-mean fill), each
signed op once with each sign.

`python tests/make_reference.py repeat_aug` stores, in fixtures/repeat_aug.json, what
each rank of timm's RepeatAugSampler reads in two epochs, with the epoch's permutation.

`python tests/make_reference.py attention` stores, in fixtures/attention.json, each
attention block of `reference_weights.ATTENTION_CASES` against its timm module:
seeded weights and input, the float64 output, and the gradient of <output, probe>
with respect to the input and every parameter, each as a norm and a projection;
and in fixtures/attention_resnet50.json timm's resnet50 at one block per stage with
each block of `ATTENTION_RESNET50` as its attn_layer (keys, parameter count, logits).

For a few models (TRAIN_NAMES) it also stores one training-mode forward and
backward pass, at one block per stage (TRAIN_DEPTH), in fixtures/reference_train/:
the loss and logits, and for every parameter and BatchNorm buffer a norm and a
projection on seeded random weights (`random_state_dict(keys, seed=1)`) of its
gradient, or of the batch statistic that updated it (PyTorch's, with the unbiased
variance). `python tests/make_reference.py train [NAME ...]` stores these alone.
"""
import json
import os
import sys

import importlib.abc
import importlib.machinery
import importlib.util

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from reference_weights import (ATTENTION_CASES, ATTENTION_RESNET50, ATTENTION_RESNET50_SIZE, REDUCED, TRAIN_DEPTH, TRAIN_NAMES, norm_and_projection,  # noqa: E402
                               random_input, random_state_dict, seeded_normal, train_batch)
from senet_jax.models import list_models, model_spec  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'reference')
OUT_TRAIN = OUT + '_train'
MOMENTUM = 0.1   # PyTorch's BatchNorm default, which timm keeps


def _stand_in_torchvision():
    """A stand-in for torchvision where the installed one does not load beside this
    torch (PyPI's torchvision wheels are built for one torch each): timm needs it
    only for data transforms and FX feature extraction, pytorchcv's model list only
    for networks no fixture uses."""
    import types
    try:
        import torchvision  # noqa: F401
    except Exception:  # an ImportError, or a RuntimeError from its C++ operators
        class Anything(type):
            def __getattr__(cls, name):
                if name.startswith('__'):
                    raise AttributeError(name)
                return Anything(name, (), {})

        class Module(types.ModuleType):
            __getattr__ = Anything.__getattr__

        class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] == 'torchvision':
                    return importlib.machinery.ModuleSpec(name, self, is_package=True)

            def create_module(self, spec):
                module = Module(spec.name)
                module.__path__ = []
                return module

            def exec_module(self, module):
                pass

        for name in [n for n in sys.modules if n.split('.')[0] == 'torchvision']:
            del sys.modules[name]
        sys.meta_path.insert(0, Finder())


def _import_timm():
    _stand_in_torchvision()
    import timm
    return timm


def build_reference(spec, **kwargs):
    """The reference PyTorch network of a ModelSpec, with its initial (random) weights."""
    if spec.source == 'timm':
        timm = _import_timm()
        return timm.create_model(spec.reference, pretrained=False, **kwargs)
    if spec.source == 'pytorchcv':
        _stand_in_torchvision()
        from pytorchcv.model_provider import get_model
        if 'units' in kwargs:   # a reduced CIFAR ResNet: pytorchcv's builder takes its depth
            from pytorchcv.models.resnet_cifar import get_resnet_cifar
            from pytorchcv.models.seresnet_cifar import get_seresnet_cifar
            units, = set(kwargs.pop('units'))   # the same count in every stage
            bottleneck = spec.reference.endswith('bn_cifar10')
            build = get_seresnet_cifar if spec.reference.startswith('se') else get_resnet_cifar
            return build(num_classes=spec.num_classes, blocks=(9 if bottleneck else 6) * units + 2,
                         bottleneck=bottleneck, model_name=spec.reference, **kwargs)
        if spec.reference == 'wrn16_8_cifar10':   # not a registered name: pytorchcv's WRN builder
            from pytorchcv.models.wrn_cifar import get_wrn_cifar
            return get_wrn_cifar(num_classes=10, blocks=16, width_factor=8, model_name=spec.reference)
        return get_model(spec.reference, pretrained=False, **kwargs)
    if spec.source == 'cadene':   # the one file, which imports only torch
        package = os.path.dirname(importlib.util.find_spec('pretrainedmodels').origin)
        path = os.path.join(package, 'models', f'{spec.reference}.py')
        loader = importlib.util.spec_from_file_location(f'cadene_{spec.reference}', path)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        return {'bninception': module.BNInception}[spec.reference](num_classes=spec.num_classes)
    raise ValueError(f'unknown reference source {spec.source!r}')


def _library_version(spec):
    import importlib.metadata
    package = {'timm': 'timm', 'pytorchcv': 'pytorchcv', 'cadene': 'pretrainedmodels'}[spec.source]
    return f'{package} {importlib.metadata.version(package)}'


def _num_params(model):
    return sum(p.numel() for p in model.parameters())


def make(name):
    spec = model_spec(name)
    ref = spec.reference
    overrides = REDUCED.get(name, {})
    model = build_reference(spec, **overrides).eval()
    sd = model.state_dict()
    keys = [(k, list(v.shape)) for k, v in sd.items()]
    weights = random_state_dict(keys)
    model.load_state_dict({k: torch.from_numpy(weights[k]) if k in weights else v
                           for k, v in sd.items()})
    model = model.double()
    record = {'reference': ref, 'source': _library_version(spec), 'torch_version': torch.__version__,
              'num_params': _num_params(build_reference(spec) if overrides else model),
              'keys': keys, 'logits': {}}
    if overrides:   # keys and logits are the reduced network's
        record.update(overrides=overrides, num_params_tested=_num_params(model))
    with torch.no_grad():
        for h, w in ((spec.input_size, spec.input_size), spec.odd_size):
            x = torch.from_numpy(random_input(h, w)).double()
            record['logits'][f'{h}x{w}'] = [float(f'{v:.9g}') for v in model(x)[0].tolist()]
    with open(os.path.join(OUT, f'{name}.json'), 'w') as f:
        json.dump(record, f, separators=(',', ':'))
    lg = np.array(record['logits'][f'{spec.input_size}x{spec.input_size}'])
    print(f'{name:28s} <- {ref:26s} params {record["num_params"]:>11,}  |logits| max {abs(lg).max():.3g}'
          + (f'  (tested {overrides})' if overrides else ''))


def _record(value, probe):
    return [float(f'{v:.12g}') for v in norm_and_projection(value.detach().double().numpy(), probe)]


def make_train(name):
    spec = model_spec(name)
    ref = spec.reference
    model = build_reference(spec, drop_rate=0.0, **TRAIN_DEPTH)
    sd = model.state_dict()
    keys = [(k, list(v.shape)) for k, v in sd.items()]
    weights = random_state_dict(keys)
    model.load_state_dict({k: torch.from_numpy(weights[k]) if k in weights else v
                           for k, v in sd.items()})
    model = model.double().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = train_batch()
    logits = model(torch.from_numpy(images).double())
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
    loss.backward()
    probe = random_state_dict(keys, seed=1)
    record = {'reference': ref, 'source': _library_version(spec), 'torch_version': torch.__version__,
              'overrides': TRAIN_DEPTH, 'keys': keys, 'loss': float(loss.detach()),
              'logits': [[float(f'{v:.12g}') for v in row] for row in logits.detach().tolist()],
              'grads': {k: _record(p.grad, probe[k]) for k, p in model.named_parameters()},
              'batch_stats': {}}
    for k, v in model.state_dict().items():
        if k.endswith(('running_mean', 'running_var')):   # the batch statistic behind the update
            batch = (v - (1 - MOMENTUM) * before[k]) / MOMENTUM
            record['batch_stats'][k] = _record(batch, probe[k])
    with open(os.path.join(OUT_TRAIN, f'{name}.json'), 'w') as f:
        json.dump(record, f, separators=(',', ':'))
    print(f'{name:28s} <- {ref:26s} train-mode loss {record["loss"]:.6g}')


def make_pth():
    """A small torch.save() file with tensors of several dtypes, views and a Parameter,
    and the values it holds, for the torch-free .pth reader's test."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    sd = {'w': base, 'view_t': base.t(), 'slice': base[1:3, ::2],
          'param': torch.nn.Parameter(torch.randn(3, 2, 1, 1, generator=g)),
          'f16': base.half(), 'bf16': base.bfloat16(), 'i64': torch.arange(5), 'flag': torch.tensor([True, False])}
    path = os.path.join(os.path.dirname(OUT), 'tensors.pth')
    torch.save(sd, path)
    np.savez(os.path.join(os.path.dirname(OUT), 'tensors_expected.npz'),
             **{k: (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()).numpy() for k, v in sd.items()})
    print('wrote', path)


def _mended_gather_excite(timm):
    """timm 1.0.31's GatherExcite with its argument clash mended: it passes `*dd` (the
    keys 'device', 'dtype' as positionals) where `**dd` is meant, so `use_mlp=True`
    and `extra_params=True` fail to build. The same source, `**dd` in each place."""
    import inspect
    import re
    from timm.layers import gather_excite
    source = inspect.getsource(gather_excite.GatherExcite)
    mended, count = re.subn(r'(?<!\*)\*dd\)', '**dd)', source)
    assert count == 5, count   # the five calls of timm 1.0.31
    namespace = dict(vars(gather_excite))
    exec(compile(mended, gather_excite.__file__, 'exec'), namespace)
    return namespace['GatherExcite']


def make_attention():
    timm = _import_timm()
    import timm.layers as tl
    from timm.layers.cbam import CbamModule
    classes = {'GatherExciteMended': _mended_gather_excite(timm), 'CbamModule': CbamModule}
    records = []
    for case_id, spec, cls, kwargs, shape in ATTENTION_CASES:
        module = (classes.get(cls) or getattr(tl, cls))(shape[1], **kwargs).double().eval()
        sd = module.state_dict()
        keys = [(k, list(v.shape)) for k, v in sd.items() if not k.endswith('num_batches_tracked')]
        weights = random_state_dict(keys)
        module.load_state_dict({k: torch.from_numpy(weights[k]).double() if k in weights else v
                                for k, v in sd.items()})
        x = torch.from_numpy(seeded_normal(case_id + '/x', shape)).requires_grad_()
        out = module(x)
        probe = seeded_normal(case_id + '/out', tuple(out.shape))
        loss = (out * torch.from_numpy(probe)).sum()
        loss.backward()
        param_probe = random_state_dict(keys, seed=1)
        records.append({
            'id': case_id, 'spec': spec, 'timm': cls, 'kwargs': kwargs, 'shape': list(shape),
            'out_shape': list(out.shape), 'keys': keys,
            'out': _record(out, probe),
            'grads': {'input': _record(x.grad, seeded_normal(case_id + '/dx', shape)),
                      **{k: _record(p.grad, param_probe[k]) for k, p in module.named_parameters()}}})
        print(f'{case_id:16s} <- {cls:20s} {kwargs}  |out| {records[-1]["out"][0]:.6g}')
    record = {'source': f'timm {timm.__version__}', 'torch_version': torch.__version__, 'cases': records}
    with open(os.path.join(os.path.dirname(OUT), 'attention.json'), 'w') as f:
        json.dump(record, f, separators=(',', ':'))


def make_attention_resnet50():
    """timm's resnet50 at one block per stage with each attention block: state_dict keys,
    parameter count and float64 eval logits at an odd size, in fixtures/attention_resnet50.json."""
    timm = _import_timm()
    import functools
    from timm.layers import GatherExcite
    layer_of = lambda attn: functools.partial(GatherExcite, use_mlp=False) if attn == 'ge' else attn
    records = {}
    h, w = ATTENTION_RESNET50_SIZE
    for attn in ATTENTION_RESNET50:
        model = timm.create_model('resnet50', pretrained=False, layers=[1, 1, 1, 1], num_classes=10,
                                  block_args=dict(attn_layer=layer_of(attn))).eval()
        sd = model.state_dict()
        keys = [(k, list(v.shape)) for k, v in sd.items()]
        weights = random_state_dict(keys)
        model.load_state_dict({k: torch.from_numpy(weights[k]) if k in weights else v for k, v in sd.items()})
        model = model.double()
        with torch.no_grad():
            logits = model(torch.from_numpy(random_input(h, w)).double())[0]
        records[attn] = {'keys': keys, 'num_params': _num_params(model),
                         'logits': [float(f'{v:.12g}') for v in logits.tolist()]}
        print(f'resnet50 attn_layer={attn:5s} params {records[attn]["num_params"]:>11,}')
    record = {'source': f'timm {timm.__version__}', 'torch_version': torch.__version__,
              'overrides': {'layers': [1, 1, 1, 1], 'num_classes': 10}, 'size': [h, w], 'models': records}
    with open(os.path.join(os.path.dirname(OUT), 'attention_resnet50.json'), 'w') as f:
        json.dump(record, f, separators=(',', ':'))


# `recipes_batch`: the ResNet Strikes Back pieces of the trainer against timm, in
# fixtures/recipes_batch.json: Lamb's updates, BinaryCrossEntropy, Mixup/CutMix with
# given lambdas and boxes, and resnet50's per-block drop-path rates.
RECIPES_BATCH_SEED = 23


def _lamb_case(rng):
    """timm's Lamb, three steps on a kernel, a bias and a BN scale with given
    gradients; weight decay on the kernel only (timm's param_groups_weight_decay)."""
    from timm.optim import Lamb
    shapes = {'conv/kernel': (3, 3, 2, 4), 'conv/bias': (4,), 'bn/scale': (4,)}
    init = {k: rng.normal(size=v).astype(np.float32) for k, v in shapes.items()}
    # The first two steps' gradients exceed the global norm of 1 that Lamb clips to.
    grads = [{k: (scale * rng.normal(size=v)).astype(np.float32) for k, v in shapes.items()}
             for scale in (1.0, 0.5, 0.01)]
    params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in init.items()}
    hyper = dict(lr=0.05, weight_decay=0.02, betas=(0.9, 0.999), eps=1e-6)
    opt = Lamb([{'params': [params['conv/kernel']], 'weight_decay': hyper['weight_decay']},
                {'params': [params['conv/bias'], params['bn/scale']], 'weight_decay': 0.0}],
               lr=hyper['lr'], betas=hyper['betas'], eps=hyper['eps'])
    after = []
    for g in grads:
        for k, p in params.items():
            p.grad = torch.from_numpy(g[k])
        opt.step()
        after.append({k: p.detach().numpy().tolist() for k, p in params.items()})
    return {**hyper, 'init': {k: v.tolist() for k, v in init.items()},
            'grads': [{k: v.tolist() for k, v in g.items()} for g in grads], 'after': after}


def _bce_cases(rng):
    from timm.loss import BinaryCrossEntropy
    logits = torch.from_numpy(rng.normal(size=(4, 5)) * 2)
    labels = torch.tensor([0, 3, 4, 3])
    dense = torch.from_numpy(rng.dirichlet(np.ones(5) * 0.3, size=4))
    cases = []
    for name, target, kw in (('labels', labels, dict(smoothing=0.0)),
                             ('labels_smoothed', labels, dict(smoothing=0.1)),
                             ('labels_threshold', labels, dict(smoothing=0.1, target_threshold=0.2)),
                             ('dense', dense, dict(smoothing=0.1)),   # smoothing is upstream for dense
                             ('dense_threshold', dense, dict(target_threshold=0.2))):
        loss = BinaryCrossEntropy(**kw)(logits, target)
        cases.append({'name': name, 'kwargs': kw, 'target': target.tolist(), 'loss': float(loss)})
    return {'logits': logits.tolist(), 'cases': cases}


def _mixup_cases(rng):
    """timm's Mixup on a 4x3x5x5 batch with its random draws replaced by given ones:
    `_params_per_batch` / `_params_per_elem` return the lambdas and methods, and the
    CutMix box centres (rand_bbox's np.random.randint) come from a list, so the box
    and its clipping are timm's own."""
    from timm.data import mixup as timm_mixup
    x = rng.normal(size=(4, 3, 5, 5)).astype(np.float32)
    labels = np.array([1, 0, 4, 2])
    cases = [  # mode, lambdas, CutMix or not, box centres (cy, cx) in the order drawn
        ('batch', [0.7], [False], []),
        ('batch', [0.6], [True], [(1, 4)]),          # clipped at the bottom-right border
        ('batch', [0.75], [True], [(2, 2)]),
        ('pair', [0.3, 0.55], [True, False], [(0, 0)]),
        ('elem', [0.35, 1.0, 0.8, 0.5], [False, True, True, False], [(4, 1)]),
    ]
    out = []
    for mode, lams, cutmix, centres in cases:
        mixer = timm_mixup.Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, mode=mode, label_smoothing=0.1,
                                 num_classes=5)
        if mode == 'batch':
            mixer._params_per_batch = lambda: (lams[0], cutmix[0])
        else:
            mixer._params_per_elem = lambda n: (np.array(lams, np.float32), np.array(cutmix))
        queue = [v for c in centres for v in c]
        real_randint = timm_mixup.np.random.randint
        timm_mixup.np.random.randint = lambda *a, **k: queue.pop(0)
        try:
            mixed, target = mixer(torch.from_numpy(x.copy()), torch.from_numpy(labels))
        finally:
            timm_mixup.np.random.randint = real_randint
        assert not queue, queue
        out.append({'mode': mode, 'lam': lams, 'cutmix': cutmix, 'centres': centres,
                    'mixed': mixed.numpy().tolist(), 'target': target.numpy().tolist()})
    return {'x': x.tolist(), 'labels': labels.tolist(), 'num_classes': 5, 'smoothing': 0.1,
            'cases': out}


def _cutmix_box_cases():
    """timm's cutmix_bbox_and_lam (correct_lam=True) for given lambdas and centres."""
    from timm.data import mixup as timm_mixup
    out = []
    for shape, lam, centre in (((7, 9), 0.3, (3, 4)), ((7, 9), 0.3, (0, 8)), ((16, 16), 0.9, (15, 0)),
                               ((16, 16), 0.05, (8, 8)), ((5, 5), 0.99, (2, 2))):
        queue = list(centre)
        real_randint = timm_mixup.np.random.randint
        timm_mixup.np.random.randint = lambda *a, **k: queue.pop(0)
        try:
            box, corrected = timm_mixup.cutmix_bbox_and_lam(shape, lam, correct_lam=True)
        finally:
            timm_mixup.np.random.randint = real_randint
        out.append({'shape': list(shape), 'lam': lam, 'centre': list(centre),
                    'box': [int(v) for v in box], 'corrected_lam': float(corrected)})
    return out


def _drop_path_rates(timm):
    model = timm.create_model('resnet50', pretrained=False, drop_path_rate=0.05)
    rates = []
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        rates += [float(b.drop_path.drop_prob) if b.drop_path is not None else 0.0 for b in stage]
    return {'model': 'resnet50', 'drop_path_rate': 0.05, 'rates': rates}


def make_recipes_batch():
    timm = _import_timm()
    rng = np.random.default_rng(RECIPES_BATCH_SEED)
    record = {'source': f'timm {timm.__version__}', 'torch_version': torch.__version__,
              'lamb': _lamb_case(rng), 'bce': _bce_cases(rng), 'mixup': _mixup_cases(rng),
              'cutmix_box': _cutmix_box_cases(), 'drop_path': _drop_path_rates(timm)}
    path = os.path.join(os.path.dirname(OUT), 'recipes_batch.json')
    with open(path, 'w') as f:
        json.dump(record, f, separators=(',', ':'))
    print('wrote', path)


# RandAugment's ops at this level (timm's magnitude scale 0..10, RSB's m7), with
# the signs timm's _randomly_negate would draw.
RECIPES_AUG_LEVEL = 7.0
RECIPES_AUG_SIGNED = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel',
                      'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
                      'SharpnessIncreasing')


def make_recipes_aug():
    from unittest import mock

    import skimage.data
    from PIL import Image
    _import_timm()
    from timm.data import auto_augment as aa
    image = Image.fromarray(skimage.data.chelsea()).resize((64, 48), Image.BILINEAR)
    hparams = {'translate_pct': 0.45, 'img_mean': (124, 116, 104)}
    names = sorted(set(aa._RAND_TRANSFORMS) | set(aa._RAND_INCREASING_TRANSFORMS))
    arrays = {'image': np.asarray(image), 'level': np.float32(RECIPES_AUG_LEVEL)}
    for name in names:
        for sign in ((1, -1) if name in RECIPES_AUG_SIGNED else (1,)):
            # _randomly_negate negates when random() > 0.5.
            with mock.patch.object(aa.random, 'random', lambda: 0.9 if sign < 0 else 0.1):
                level_fn = aa.LEVEL_TO_ARG[name]
                args = level_fn(RECIPES_AUG_LEVEL, hparams) if level_fn else ()
            out = aa.NAME_TO_OP[name](image, *args, fillcolor=hparams['img_mean'],
                                      resample=Image.BILINEAR)
            arrays[f'{name}{"-" if sign < 0 else "+"}'] = np.asarray(out)
    path = os.path.join(os.path.dirname(OUT), 'recipes_aug.npz')
    np.savez_compressed(path, **arrays)
    print('wrote', path, len(arrays) - 2, 'ops')


# `repeat_aug`: timm's RepeatAugSampler, in fixtures/repeat_aug.json: for a few
# (dataset length, repeats, ranks), each epoch's permutation and what each rank reads.
REPEAT_AUG_CASES = [(103, 3, 3), (103, 2, 4), (600, 3, 4)]


def make_repeat_aug():
    timm = _import_timm()
    from timm.data.distributed_sampler import RepeatAugSampler
    cases = []
    for n, repeats, ranks in REPEAT_AUG_CASES:
        for epoch in (0, 1):
            g = torch.Generator()
            g.manual_seed(epoch)   # the sampler's own permutation of this epoch
            perm = torch.randperm(n, generator=g).tolist()
            reads = []
            for rank in range(ranks):
                sampler = RepeatAugSampler(list(range(n)), num_replicas=ranks, rank=rank,
                                           num_repeats=repeats)
                sampler.set_epoch(epoch)
                reads.append(list(sampler))
            cases.append({'n': n, 'repeats': repeats, 'ranks': ranks, 'epoch': epoch,
                          'perm': perm, 'reads': reads})
    path = os.path.join(os.path.dirname(OUT), 'repeat_aug.json')
    with open(path, 'w') as f:
        json.dump({'source': f'timm {timm.__version__}', 'cases': cases}, f,
                  separators=(',', ':'))
    print('wrote', path)


if __name__ == '__main__':
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(OUT_TRAIN, exist_ok=True)
    if sys.argv[1:] == ['attention']:
        make_attention()
        make_attention_resnet50()
        sys.exit()
    if sys.argv[1:] == ['recipes_aug']:
        make_recipes_aug()
        sys.exit()
    if sys.argv[1:] == ['recipes_batch']:
        make_recipes_batch()
        sys.exit()
    if sys.argv[1:] == ['repeat_aug']:
        make_repeat_aug()
        sys.exit()
    if sys.argv[1:2] == ['train']:   # the training-mode fixtures alone
        for name in sys.argv[2:] or TRAIN_NAMES:
            make_train(name)
        sys.exit()
    if not sys.argv[1:]:
        make_pth()
        make_attention()
        make_attention_resnet50()
    for name in sys.argv[1:] or [n for n in list_models() if model_spec(n).reference]:
        make(name)
        if name in TRAIN_NAMES:
            make_train(name)
