"""Number-for-number parity with the reference PyTorch networks (timm 1.0).

The fixtures hold each reference's state_dict layout, parameter count and
float64 eval logits for seeded weights (tests/make_reference.py); the weights
are rebuilt here with numpy, converted, and run through our Flax model.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reference_weights import INPUT_SIZES, random_input, random_state_dict
from senet_jax.convert import torch_to_flax
from senet_jax.models import create_model, list_models, model_spec

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'reference')
NAMES = [n for n in list_models() if model_spec(n).reference]


def _fixture(name):
    with open(os.path.join(FIXTURES, f'{name}.json')) as f:
        return json.load(f)


def test_every_reference_model_has_a_fixture():
    assert sorted(f[:-5] for f in os.listdir(FIXTURES)) == sorted(NAMES)


@pytest.mark.parametrize('name', NAMES)
def test_matches_reference(name):
    ref = _fixture(name)
    assert ref['reference'] == model_spec(name).reference
    variables = torch_to_flax(name, random_state_dict(ref['keys']))
    model = create_model(name)
    assert sum(x.size for x in jax.tree.leaves(variables['params'])) == ref['num_params']
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    for h, w in INPUT_SIZES:
        x = jnp.asarray(random_input(h, w).transpose(0, 2, 3, 1))
        got = np.asarray(apply(variables, x))[0]
        want = np.asarray(ref['logits'][f'{h}x{w}'])
        rel = np.abs(got - want).max() / np.abs(want).max()
        assert rel < 1e-4, f'{name} at {h}x{w}: max relative difference {rel:.2e}'
