"""Regenerate the parity fixtures in tests/fixtures/reference/ from timm.

Needs torch and timm (not in requirements.txt):
    pip install torch torchvision timm && python tests/make_reference.py [NAME ...]

For each zoo model with a reference, builds timm's network, fills it with the
seeded weights of `reference_weights.random_state_dict`, and stores the
reference's state_dict keys/shapes, its parameter count and its float64 eval
logits at each input size. The tests rebuild the same weights with numpy alone.

For a few models (TRAIN_NAMES) it also stores one training-mode forward and
backward pass in fixtures/reference_train/: the loss and logits, and for every
parameter and BatchNorm buffer a norm and a projection on seeded random weights
(`random_state_dict(keys, seed=1)`) of its gradient, or of the batch statistic
that updated it (PyTorch's, with the unbiased variance).
"""
import json
import os
import sys

import numpy as np
import timm
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from reference_weights import (INPUT_SIZES, TRAIN_NAMES, norm_and_projection,  # noqa: E402
                               random_input, random_state_dict, train_batch)
from senet_jax.models import list_models, model_spec  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'reference')
OUT_TRAIN = OUT + '_train'
MOMENTUM = 0.1   # PyTorch's BatchNorm default, which timm keeps


def make(name):
    ref = model_spec(name).reference
    model = timm.create_model(ref, pretrained=False).eval()
    sd = model.state_dict()
    keys = [(k, list(v.shape)) for k, v in sd.items()]
    weights = random_state_dict(keys)
    model.load_state_dict({k: torch.from_numpy(weights[k]) if k in weights else v
                           for k, v in sd.items()})
    model = model.double()
    record = {'reference': ref, 'timm_version': timm.__version__, 'torch_version': torch.__version__,
              'num_params': sum(p.numel() for p in model.parameters()),
              'keys': keys, 'logits': {}}
    with torch.no_grad():
        for h, w in INPUT_SIZES:
            x = torch.from_numpy(random_input(h, w)).double()
            record['logits'][f'{h}x{w}'] = [float(f'{v:.9g}') for v in model(x)[0].tolist()]
    with open(os.path.join(OUT, f'{name}.json'), 'w') as f:
        json.dump(record, f, separators=(',', ':'))
    lg = np.array(record['logits']['224x224'])
    print(f'{name:28s} <- {ref:26s} params {record["num_params"]:>11,}  |logits| max {abs(lg).max():.3g}')


def _record(value, probe):
    return [float(f'{v:.12g}') for v in norm_and_projection(value.detach().double().numpy(), probe)]


def make_train(name):
    ref = model_spec(name).reference
    model = timm.create_model(ref, pretrained=False, drop_rate=0.0)
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
    record = {'reference': ref, 'timm_version': timm.__version__, 'torch_version': torch.__version__,
              'keys': keys, 'loss': float(loss.detach()), 'logits': [[float(f'{v:.12g}') for v in row]
                                                           for row in logits.detach().tolist()],
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


if __name__ == '__main__':
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(OUT_TRAIN, exist_ok=True)
    make_pth()
    for name in sys.argv[1:] or [n for n in list_models() if model_spec(n).reference]:
        make(name)
        if name in TRAIN_NAMES:
            make_train(name)
