"""The CPU kernels stay on the CPU: both forms of a model agree, and the
programs exported for TPU and GPU are the plain ones.

`create_model(name, kernels=...)` picks how the layers are computed: 'auto'
(senet_jax.cpu_kernels on CPU, the plain layers elsewhere, chosen when the step
is lowered for its platform), 'plain' or 'cpu' on every backend.
"""
import functools
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax import export

from reference_weights import random_variables, shallowest
from senet_jax import sharding as sharding_lib
from senet_jax import trainer
from senet_jax.models import create_model

FORMS = ('plain', 'cpu', 'auto')


def _run(name, kernels, size, batch):
    """Eval logits, training logits, the gradient of every parameter and the new
    batch statistics of one float64 training step (one unit per stage: each
    stage's first unit holds every layer kind the deeper ones repeat)."""
    model = create_model(name, num_classes=7, dtype=jnp.float64, param_dtype=jnp.float64,
                         drop_rate=0.0, kernels=kernels, **shallowest(name))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(batch, size, size, 3)))
    # Generic values (not the init's: a zero BN scale would leave a residual branch
    # without gradient, so nothing to compare), the same for every form.
    variables = random_variables(model, x)
    weights = jnp.asarray(rng.normal(size=(batch, 7)))

    def loss(params):
        logits, new = model.apply({**variables, 'params': params}, x, train=True,
                                  mutable=['batch_stats'])
        return jnp.sum(logits * weights), (logits, new['batch_stats'])

    (_, (logits, stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        variables['params'])
    eval_logits = jax.jit(lambda v: model.apply(v, x))(variables)
    return jax.device_get({'variables': variables, 'eval': eval_logits, 'train': logits,
                           'grads': grads, 'batch_stats': stats})


def _assert_close(got, want, rtol):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for path, a in jax.tree_util.tree_leaves_with_path(got):
        b = functools.reduce(lambda t, k: t[k.key], path, want)
        scale = max(np.abs(b).max(), 1e-30)
        assert np.abs(a - b).max() <= rtol * scale, (
            f'{jax.tree_util.keystr(path)}: differs by {np.abs(a - b).max() / scale:.1e} of its largest value')


# se_resnet_mini: basic blocks, strided 1x1 projections, no stem pool.
# legacy_se_resnet18 at an odd size: the Caffe layout's ceil-mode stem pool.
# se_resnet50: bottlenecks (1x1 convolutions everywhere) and the padded stem pool;
# at 64x64, 8 values per channel reach conv5_x's BatchNorms.
@pytest.mark.no_cover   # every line it runs, cheaper tests run too (docs/architecture.md, "Tests")
@pytest.mark.slow
@pytest.mark.parametrize('name,size,batch', [
    ('se_resnet_mini', 16, 4), ('legacy_se_resnet18', 35, 3), ('se_resnet50', 64, 2)])
def test_every_form_gives_the_same_outputs_gradients_and_statistics(name, size, batch):
    with jax.enable_x64(True):
        results = {kernels: _run(name, kernels, size, batch) for kernels in FORMS}
    # The same variables, whatever the form: names, shapes and dtypes (the initial
    # values: test_every_form_initializes_the_same_values).
    for kernels in ('cpu', 'auto'):
        _assert_close(results[kernels]['variables'], results['plain']['variables'], 0)
    # float64 keeps rounding out of the way: a BN over a few values per channel
    # would turn float32's last bits into visible differences of the gradients.
    # Measured: 5e-15 for se_resnet50 (at 32x32, with two values per channel
    # in conv5_x, 3.5e-7: the variance E[x^2] - mean^2 cancels). A wrong
    # gradient is off by 1e-4 or more.
    _assert_close(results['cpu'], results['plain'], 1e-9)
    # 'auto' on this CPU is the CPU form, to the last bit.
    _assert_close(results['auto'], results['cpu'], 0)


@pytest.mark.slow
def test_every_form_initializes_the_same_values():
    x = jnp.zeros((1, 16, 16, 3))
    init = {kernels: jax.jit(create_model('se_resnet_mini', kernels=kernels).init)(
        jax.random.key(0), x) for kernels in ('plain', 'cpu')}
    _assert_close(init['cpu'], init['plain'], 0)


def test_kernels_is_a_validated_model_option():
    for kernels in FORMS:
        assert create_model('se_resnet_mini', kernels=kernels).kernels == kernels
    assert create_model('se_resnet_mini').kernels == 'auto'
    with pytest.raises(ValueError, match=r"kernels must be one of \('auto', 'plain', 'cpu'\), "
                                         r"got 'plian'\. Did you mean 'plain'\?"):
        create_model('se_resnet_mini', kernels='plian')


def test_kernels_is_set_through_the_trainer_config():
    from configs import quickstart
    config = quickstart.get_config()
    assert trainer.create_model_from_config(config, num_classes=10).kernels == 'auto'
    config.model_overrides.kernels = 'plain'
    assert trainer.create_model_from_config(config, num_classes=10).kernels == 'plain'


@pytest.mark.slow
def test_a_bad_kernels_flag_is_one_error_line(tmp_path):
    import subprocess
    import test_train_utils as tu
    proc = subprocess.run(tu.train_cmd(str(tmp_path), '--config.model_overrides.kernels=gpu'),
                          cwd=tu.REPO, env=tu.env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: kernels must be one of ('auto', 'plain', 'cpu'), got 'gpu'. Did you mean 'cpu'?")


@pytest.mark.no_cover   # every line it runs, cheaper tests run too (docs/architecture.md, "Tests")
@pytest.mark.slow
def test_a_run_resumes_under_another_form(tmp_path):
    """kernels says how, not what, is computed: the workdir identity ignores it.
    In process; train.py's own resume is test_trainer's."""
    import test_train_utils as tu
    from configs import quickstart
    workdir = str(tmp_path / 'run')
    config = quickstart.get_config()
    config.update(num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2,
                  log_every_steps=2)
    trainer.train_and_evaluate(config, workdir)
    config.update(num_train_steps=4, eval_every_steps=4,
                  allow_config_change=True)   # longer: the cosine decay changes
    config.model_overrides.kernels = 'plain'
    trainer.train_and_evaluate(config, workdir)
    # Resumed at step 2, not started again: steps 2 and 4 logged once each.
    assert [m['step'] for m in tu.metrics(workdir) if 'train_loss' in m] == [2, 4]
    assert tu.checkpoint_steps(workdir)[-1] == 4


# ---------------------------------------------------------------------------
# The programs for each platform, exported from this CPU-only machine.


def trainer_steps(kernels='auto', image_size=32, batch_size=4, num_classes=10):
    """{'train': (jitted step, example args), 'eval': ...}: the trainer's own
    compiled steps (`trainer.compile_steps`, as `train_and_evaluate` builds them)
    with abstract arguments (nothing is computed). se_resnet_mini with the 7x7
    stem and its max pool holds every CPU kernel."""
    model = create_model('se_resnet_mini', num_classes=num_classes, stem='7x7', stem_pool='pad',
                         kernels=kernels)
    config = ml_collections.ConfigDict(
        dict(image_size=image_size, weight_decay=1e-4, momentum=0.9, nesterov=False,
             label_smoothing=0.0))
    learning_rate_fn = optax.constant_schedule(0.1)
    tx = trainer.create_optimizer(config, learning_rate_fn)
    steps = trainer.compile_steps(config, model, tx, sharding_lib.create_mesh(jax.devices()[:1]),
                                  num_classes=num_classes, learning_rate_fn=learning_rate_fn,
                                  dtype='float32')
    state = jax.eval_shape(steps.init, jax.random.key(0, impl='rbg'))
    images = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.uint8)
    labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    dropout_rng = jax.eval_shape(lambda: jax.random.key(0))
    mask = jax.ShapeDtypeStruct((batch_size,), jnp.float32)
    totals = jax.eval_shape(trainer.zero_eval_totals)
    return {'train': (steps.train, (state, {'image': images, 'label': labels}, dropout_rng)),
            'eval': (steps.eval, (state, {'image': images, 'label': labels, 'mask': mask},
                                  totals))}


@functools.cache
def _program(step, platform, kernels='auto'):
    fn, args = trainer_steps(kernels)[step]
    return export.export(fn, platforms=[platform])(*args).mlir_module()


_OP = re.compile(r'\s*(%[\w]+)(?::\d+)? = "?stablehlo\.(\w+)"?\s*(.*)')


def _operands(rest):
    return [v.split('#')[0] for v in re.findall(r'%[\w#]+', rest.split(' : ')[0])]


def divisions_by_a_runtime_one(text):
    """How many `x / one` with one = c * 0 + 1 computed at run time
    (cpu_kernels.materialize). The printer reuses value names in sibling
    regions, so each use is read as the latest definition above it."""
    defs, count = {}, 0

    def constant(name, value):
        op, rest = defs.get(name, ('', ''))
        return op == 'constant' and re.match(rf'dense<{value}\.0+e\+00>', rest) is not None

    for line in text.splitlines():
        m = _OP.match(line)
        if not m:
            continue
        name, op, rest = m.groups()
        defs[name] = (op, rest)
        if op != 'divide':
            continue
        v = _operands(rest)[1]
        while defs.get(v, ('',))[0] in ('broadcast_in_dim', 'convert', 'reshape'):
            v = _operands(defs[v][1])[0]
        if defs.get(v, ('',))[0] != 'add':
            continue
        a, b = _operands(defs[v][1])
        for one, product in ((a, b), (b, a)):
            if constant(one, 1) and defs.get(product, ('',))[0] == 'multiply' and any(
                    constant(c, 0) for c in _operands(defs[product][1])):
                count += 1
                break
    return count


def dots_over_feature_maps(text):
    """Matrix products with an operand of rank 4 or more: a 1x1 convolution as a
    dot (cpu_kernels.channel_matmul), conv3x3's input gradient. The plain
    networks' only products are the SE projections and the classifier, on (N, C)."""
    return len(re.findall(r'stablehlo\.dot_general [^\n]*: \(tensor<(?:\d+x){4,}|'
                          r'stablehlo\.dot_general [^\n]*: \(tensor<[^>]*>, tensor<(?:\d+x){4,}', text))


def recorded_pool_taps(text):
    """The int8 index of each window's winning tap (cpu_kernels.max_pool's gradient)."""
    return len(re.findall(r'stablehlo\.(?:select|compare) [^\n]*xi8>', text))


def hand_written_gradients(text):
    """The named scopes under which cpu_kernels writes each of its gradients."""
    return set(re.findall(r'cpu_kernels\.(\w+)_bwd', text))


CPU_GRADIENTS = {'channel_matmul', 'conv3x3', 'max_pool', 'batch_norm_train'}


@pytest.mark.parametrize('platform', ['tpu', 'cuda'])
@pytest.mark.slow
def test_tpu_and_gpu_programs_are_plain(platform):
    train, evaluate = _program('train', platform), _program('eval', platform)
    for text in (train, evaluate):
        assert divisions_by_a_runtime_one(text) == 0
        assert dots_over_feature_maps(text) == 0
    assert hand_written_gradients(train) == set()
    assert recorded_pool_taps(train) == 0
    # Autodiff's own gradients in their place, e.g. XLA's for the max pool.
    assert 'stablehlo.select_and_scatter' in train


@pytest.mark.slow
def test_the_cpu_program_holds_every_cpu_kernel():
    train, evaluate = _program('train', 'cpu'), _program('eval', 'cpu')
    # se_resnet_mini: one block per stage, each block's output written once
    # (the training step's backward pass may divide by the same ones again).
    assert divisions_by_a_runtime_one(evaluate) == 4
    assert divisions_by_a_runtime_one(train) >= 4
    for text in (train, evaluate):
        assert dots_over_feature_maps(text) >= 3   # the three strided 1x1 projections
    assert hand_written_gradients(train) == CPU_GRADIENTS
    assert recorded_pool_taps(train) > 0
    assert 'stablehlo.select_and_scatter' not in train


@pytest.mark.slow
def test_a_forced_form_holds_on_every_platform():
    """kernels='cpu' puts the CPU kernels into a GPU program (to time them on
    one); kernels='plain' keeps them out of a CPU program."""
    forced_cpu = _program('train', 'cuda', 'cpu')
    assert hand_written_gradients(forced_cpu) == CPU_GRADIENTS
    assert divisions_by_a_runtime_one(forced_cpu) >= 4
    plain = _program('train', 'cpu', 'plain')
    assert hand_written_gradients(plain) == set()
    assert divisions_by_a_runtime_one(plain) == dots_over_feature_maps(plain) == 0
