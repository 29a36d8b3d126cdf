"""The zoo and SqueezeExcite in Flax NNX programs: eval, training, converted weights."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from safetensors.numpy import save_file

from reference_weights import random_input, random_state_dict, random_variables, shallowest
from senet_jax import SqueezeExcite, create_model, list_models, load_pretrained, to_nnx
from senet_jax.models import min_input_size, model_spec
from senet_jax.convert import main as convert_main

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')


def linen_variables(net):
    """The linen {'params', 'batch_stats'} an NNX-wrapped module holds (same names)."""
    out = {'params': nnx.state(net, nnx.Param).to_pure_dict()}
    stats = nnx.state(net, nnx.BatchStat).to_pure_dict()
    return {**out, 'batch_stats': stats} if stats else out


def loss_fn(net, images, labels):
    logits = net(images, train=True, mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@nnx.jit
def train_step(net, optimizer, images, labels):
    loss, grads = nnx.value_and_grad(loss_fn)(net, images, labels)
    optimizer.update(net, grads)
    return loss


@pytest.mark.slow
def test_eval_equals_linen_apply_for_the_same_variables():
    model = create_model('se_resnet_mini', num_classes=10)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    variables = random_variables(model, x)
    net = to_nnx(model, variables, rngs=nnx.Rngs(0))
    assert jax.tree.structure(linen_variables(net)) == jax.tree.structure(variables)
    np.testing.assert_allclose(nnx.jit(lambda n, x: n(x))(net, x),
                               jax.jit(model.apply)(variables, x), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize('name,size', [('se_resnet_mini', 16), ('se_resnet18', 32)])
def test_fresh_nnx_model_holds_linen_variables_and_gives_linen_outputs(name, size):
    model = create_model(name, num_classes=10)
    x = jax.random.normal(jax.random.key(1), (2, size, size, 3))
    net = to_nnx(model, rngs=nnx.Rngs(0))
    variables = linen_variables(net)       # linen's variables, under the same names
    assert jax.tree.structure(variables) == jax.tree.structure(
        jax.eval_shape(model.init, jax.random.key(0), x))
    np.testing.assert_allclose(nnx.jit(lambda n, x: n(x))(net, x),
                               jax.jit(model.apply)(variables, x), rtol=1e-6, atol=1e-7)


@pytest.mark.no_cover   # every line it runs, cheaper tests run too (docs/architecture.md, "Tests")
@pytest.mark.slow
def test_one_nnx_training_step_equals_linen_and_training_lowers_the_loss():
    model = create_model('se_resnet_mini', num_classes=10)
    images = jax.random.normal(jax.random.key(1), (16, 16, 16, 3))
    labels = jnp.arange(16) % 10
    variables = jax.jit(model.init)(jax.random.key(0), images)
    net = to_nnx(model, variables, rngs=nnx.Rngs(0))
    tx = optax.sgd(0.1, momentum=0.9)
    optimizer = nnx.Optimizer(net, tx, wrt=nnx.Param)
    first = float(train_step(net, optimizer, images, labels))

    # The same step in linen: loss, parameters and running statistics agree.
    def linen_loss(params):
        logits, new = model.apply({**variables, 'params': params}, images, train=True,
                                  mutable=['batch_stats'])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new
    (loss, new), grads = jax.jit(jax.value_and_grad(linen_loss, has_aux=True))(variables['params'])
    updates, _ = tx.update(grads, tx.init(variables['params']), variables['params'])
    want = {'params': optax.apply_updates(variables['params'], updates), **new}
    assert first == pytest.approx(float(loss), rel=1e-5)
    got = linen_variables(net)
    for path, a in jax.tree_util.tree_leaves_with_path(got):
        b = want
        for k in path:
            b = b[k.key]
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))

    before = nnx.state(net, nnx.BatchStat).to_pure_dict()
    losses = [first] + [float(train_step(net, optimizer, images, labels)) for _ in range(7)]
    assert losses[-1] < 0.5 * losses[0], losses
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), before,
                         nnx.state(net, nnx.BatchStat).to_pure_dict())
    assert min(jax.tree.leaves(moved)) > 0       # every BatchNorm's statistics were updated
    assert int(optimizer.step[...]) == 8


@pytest.mark.slow
def test_train_mode_needs_mutable_batch_stats_and_draws_dropout_from_rngs():
    model = create_model('se_resnet_mini', num_classes=10, drop_rate=0.5)
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
    net = to_nnx(model, random_variables(model, x), rngs=nnx.Rngs(0))
    before = net.stem_bn1['mean'][...]
    train_call = nnx.jit(lambda net, x: net(x, train=True, mutable=['batch_stats']))
    a, b = train_call(net, x), train_call(net, x)
    assert not np.allclose(a, b)                          # a new dropout mask each call
    assert not np.allclose(net.stem_bn1['mean'][...], before)


class SEHead(nnx.Module):
    """A small NNX network: the linen SqueezeExcite, then an NNX classifier."""

    def __init__(self, rngs: nnx.Rngs):
        self.se = to_nnx(SqueezeExcite(reduction=4), rngs=rngs,
                         sample_input=jnp.zeros((1, 4, 4, 16)))
        self.fc = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x, train=False, mutable=False):   # the zoo's signature, for loss_fn
        return self.fc(self.se(x).mean((1, 2)))


@pytest.mark.slow
def test_squeeze_excite_alone_in_an_nnx_module():
    head = SEHead(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (8, 4, 4, 16))
    np.testing.assert_allclose(head.se(x), SqueezeExcite(reduction=4).apply(linen_variables(head.se), x),
                               rtol=1e-6)
    assert head.se.fc1['kernel'][...].shape == (16, 4)
    labels = jnp.arange(8) % 4
    optimizer = nnx.Optimizer(head, optax.sgd(0.5), wrt=nnx.Param)
    se_before = head.se.fc2['kernel'][...]
    losses = [float(train_step(head, optimizer, x, labels)) for _ in range(10)]
    assert losses[-1] < losses[0], losses
    assert not np.allclose(head.se.fc2['kernel'][...], se_before)   # the SE block learns too


@pytest.mark.slow
def test_converted_weights_load_into_the_nnx_form(tmp_path):
    name = 'legacy_se_resnet18'
    with open(os.path.join(FIXTURES, 'reference', f'{name}.json')) as f:
        save_file(random_state_dict(json.load(f)['keys']), str(tmp_path / 'w.safetensors'))
    assert convert_main(['--model', name, '--weights', str(tmp_path / 'w.safetensors'),
                         '--out', str(tmp_path / 'converted')]) == 0
    model, variables = load_pretrained(str(tmp_path / 'converted'))
    net = to_nnx(model, variables, rngs=nnx.Rngs(0))
    x = jnp.asarray(random_input(40, 36).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(net(x), model.apply(variables, x))
    logits, new = model.apply(variables, x, train=True, mutable=['batch_stats'])
    np.testing.assert_array_equal(net(x, train=True, mutable=['batch_stats']), logits)
    np.testing.assert_array_equal(net.stage5_block1['bn2']['var'][...],
                                  new['batch_stats']['stage5_block1']['bn2']['var'])


@pytest.mark.slow
@pytest.mark.no_cover   # tracing only; coverage's tracer would slow it by ~40% (docs/architecture.md)
def test_every_zoo_model_traces_a_training_step_in_nnx():
    # Shapes only (no compilation): each model builds as an NNX module, and a
    # train-mode call returns logits and writes every BatchNorm's statistics.
    # Each at one unit per stage, and one model per set of constructor options
    # but the depth: depth changes nothing here.
    distinct = {}
    for name in list_models():
        spec = model_spec(name)
        options = sorted((k, repr(v)) for k, v in spec.kwargs.items()
                         if k not in ('layers', 'units', 'repeats'))
        distinct.setdefault((spec.family.__name__, spec.layout, tuple(options)), name)
    for name in distinct.values():
        depth = shallowest(name)
        size = min_input_size(create_model(name))
        x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
        net = nnx.eval_shape(lambda: to_nnx(create_model(name, num_classes=5, **depth), rngs=nnx.Rngs(0)))
        graphdef, state = nnx.split(net)

        def step(state, x):
            net = nnx.merge(graphdef, state)
            logits = net(x, train=True, mutable=['batch_stats'])
            return logits, nnx.state(net, nnx.BatchStat)

        logits, stats = jax.eval_shape(step, state, x)
        assert logits.shape == (2, 5), name
        assert jax.tree.structure(stats) == jax.tree.structure(nnx.state(net, nnx.BatchStat)), name
