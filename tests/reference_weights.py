"""Deterministic random weights for a reference state_dict, shared by the fixture
generator (run with torch + timm) and the parity tests (numpy only)."""
import re
import zlib

import numpy as np

# One training-mode step: both layouts, basic and bottleneck blocks, grouped convolutions,
# SENet-154's deep stem and 3x3 downsampling, ResNet-D's pooled shortcut at odd sizes, and
# the Selective Kernel conv's BNs (its paths' and its attention's, on per-example vectors).
TRAIN_NAMES = ('se_resnet50', 'legacy_se_resnet18', 'legacy_se_resnet50', 'se_resnext50_32x4d', 'senet154',
               'se_resnext26d_32x4d', 'sk_resnext50_32x4d')
# All at one block per stage: a stage's later blocks differ from its first only in an
# identity shortcut, which the eval logits check at full depth (REDUCED aside).
TRAIN_DEPTH = {'layers': [1, 1, 1, 1]}
TRAIN_BATCH = (2, 71, 57)   # images, height, width
# Checked at one block per stage: every piece of their layout (deep stems, pooled or 3x3
# projection shortcuts, anti-aliasing, widths) is in a stage's first block, and the deep
# nets cost minutes to compile at full depth. Their full parameter count is checked apart.
REDUCED = {name: {'layers': [1, 1, 1, 1]} for name in (
    'resnet50d', 'resnet152d', 'se_resnet152d', 'se_resnext26d_32x4d', 'se_resnext26t_32x4d',
    'resnext101_32x8d', 'se_resnext101_32x8d', 'resnext101_64x4d', 'se_resnext101_64x4d',
    'se_resnext101d_32x8d', 'se_resnextaa101d_32x8d', 'se_resnextaa201d_32x8d', 'gluon_senet154',
    'legacy_se_resnext26_32x4d', 'eca_resnet101d', 'eca_resnet269d', 'senet154', 'sk_resnext50_32x4d')}
# The CIFAR ResNets' 18 units a stage repeat the first unit's code path (pytorchcv builds
# the reduced ones from the same function with blocks = 8, basic, or 11, bottleneck).
REDUCED.update({name: {'units': [1, 1, 1]} for name in (
    'resnet110_cifar', 'se_resnet110_cifar', 'resnet164_cifar', 'se_resnet164_cifar')})


def shallowest(name):
    """create_model arguments that keep `name`'s every code path at one unit per
    stage (its stem, each stage's first unit, its head) and VGG's fc6/fc7 at 64
    channels, not 4,096 (103M parameters to draw): for checks where size adds
    time and nothing else."""
    from senet_jax.models import model_spec   # pylint: disable=g-import-not-at-top
    family = model_spec(name).family.__name__
    return {'ResNet': {'layers': (1, 1, 1, 1)}, 'CifarResNet': {'units': (1, 1, 1)},
            'InceptionResNetV2': {'repeats': (1, 1, 1)}, 'VGG': {'mlp_width': 64}}.get(family, {})


def train_batch():
    """(NCHW float32 images, int64 labels) of the training-mode check."""
    n, h, w = TRAIN_BATCH
    images = np.concatenate([random_input(h, w, seed=i) for i in range(n)])
    return images, np.arange(n, dtype=np.int64) * 7 + 3


def norm_and_projection(value, probe):
    """(|value|, <value, probe>) in float64: how a fixture records a whole array."""
    value = np.asarray(value, np.float64)
    return np.linalg.norm(value), np.vdot(value, np.asarray(probe, np.float64))


def _last_bn(keys):
    """Per residual block, the BN that ends its branch (kept small so deep nets stay finite)."""
    last = {}
    for k in keys:
        # timm's SK blocks name their convs' BNs conv{i}.bn (ConvNormAct).
        m = re.match(r'(layer\d+\.\d+)\.(?:bn(\d)|conv(\d)\.bn)\.weight$', k)
        if m:
            last[m.group(1)] = max(last.get(m.group(1), (0, '')), (int(m.group(2) or m.group(3)),
                                                                  'bn' if m.group(2) else 'conv'))
    # pytorchcv ShuffleNet units: the branch ends with expand_bn3.
    shuffle = {k[:-len('.weight')] for k in keys if re.search(r'\.unit\d+\.expand_bn3\.weight$', k)}
    small = {f'{block}.bn{i}' if kind == 'bn' else f'{block}.conv{i}.bn'
             for block, (i, kind) in last.items()} | shuffle
    # pytorchcv's post-activation CIFAR units (body.conv{k} = conv then bn); not its
    # pre-activation WRN (a final 'post_activ' BN), whose BNs come before the convs.
    if not any(k.startswith('features.post_activ.') for k in keys):
        units = {}
        for k in keys:
            m = re.match(r'(features\.stage\d+\.unit\d+)\.body\.conv(\d)\.bn\.weight$', k)
            if m:
                units[m.group(1)] = max(units.get(m.group(1), 0), int(m.group(2)))
        small |= {f'{unit}.body.conv{i}.bn' for unit, i in units.items()}
    return small


def random_state_dict(keys_and_shapes, seed=0):
    """{key: float32 array} for [(key, shape), ...], each value a function of (seed, key)."""
    keys = [k for k, _ in keys_and_shapes]
    key_set = set(keys)
    small = _last_bn(keys)
    # BNs that are named by index, not 'bn' (timm's VGG `features.1`): they keep running stats.
    has_stats = {k[:-len('.running_var')] for k in keys if k.endswith('.running_var')}
    out = {}
    for key, shape in keys_and_shapes:
        if key.endswith('num_batches_tracked'):
            continue
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        module, leaf = key.rsplit('.', 1)
        shape = tuple(shape)
        # downsample.1 is the shortcut's BN, but its conv after timm's ResNet-D pool (downsample.0).
        is_bn = ('bn' in module.split('.')[-1] or module in has_stats
                 or (module.endswith('downsample.1') and module[:-1] + '2.weight' not in key_set))
        if leaf == 'weight' and is_bn:
            lo, hi = (0.05, 0.25) if module in small else (0.5, 1.5)
            v = rng.uniform(lo, hi, shape)
        elif leaf == 'running_var':
            v = rng.uniform(0.5, 1.5, shape)
        elif leaf in ('bias', 'running_mean'):
            v = rng.normal(0.0, 0.1, shape)
        elif leaf == 'weight':
            fan_in = int(np.prod(shape[1:]))
            is_se_or_head = '.se' in module or module in ('fc', 'last_linear')
            gain = 1.0 if is_se_or_head else 2.0   # He init for convs feeding ReLUs
            v = rng.normal(0.0, np.sqrt(gain / fan_in), shape)
        else:
            raise ValueError(f'no rule for {key}')
        out[key] = v.astype(np.float32)
    return out


def random_input(height, width, seed=0):
    """One NCHW float32 image, standard normal."""
    return np.random.default_rng([seed, height, width]).normal(size=(1, 3, height, width)).astype(np.float32)


def seeded_normal(label, shape):
    """A float64 standard-normal array, a function of (label, shape): the attention
    fixtures' inputs and probes."""
    return np.random.default_rng([zlib.crc32(label.encode()), *shape]).normal(size=tuple(shape))


# The attention parity cases: (id, block spec, timm module, its kwargs, NCHW input shape).
# 'GatherExciteMended' is timm's GatherExcite with its `*dd` argument clash mended
# (tests/make_reference.py), for the forms timm 1.0.31 cannot build.
ATTENTION_CASES = [
    ('se_c32', ('se', {'divisor': 8}), 'SEModule', {}, (2, 32, 7, 9)),
    ('se_c24', ('se', {'divisor': 8}), 'SEModule', {}, (2, 24, 5, 11)),
    ('ese_c16', 'ese', 'EffectiveSEModule', {}, (2, 16, 7, 9)),
    ('ese_c24', 'ese', 'EffectiveSEModule', {}, (2, 24, 5, 11)),
    ('eca_c16', 'eca', 'EcaModule', {}, (2, 16, 7, 9)),
    ('eca_c256', 'eca', 'EcaModule', {}, (1, 256, 5, 11)),   # k = 5
    ('ge_global', ('ge', {'use_mlp': False}), 'GatherExcite', {'use_mlp': False}, (2, 16, 7, 9)),
    ('ge_e2', ('ge', {'use_mlp': False, 'extent': 2}), 'GatherExcite', {'use_mlp': False, 'extent': 2},
     (2, 16, 7, 9)),
    ('ge_e4', ('ge', {'use_mlp': False, 'extent': 4}), 'GatherExcite', {'use_mlp': False, 'extent': 4},
     (2, 8, 5, 11)),
    ('ge_mlp_global', 'ge', 'GatherExciteMended', {}, (2, 32, 7, 9)),
    ('ge_mlp_e2', ('ge', {'extent': 2}), 'GatherExciteMended', {'extent': 2}, (2, 32, 5, 11)),
    ('ge_params_e2', ('ge', {'extent': 2, 'extra_params': True}), 'GatherExciteMended',
     {'extent': 2, 'extra_params': True}, (2, 32, 7, 9)),
    ('ge_params_e4', ('ge', {'extent': 4, 'extra_params': True, 'use_mlp': False}), 'GatherExciteMended',
     {'extent': 4, 'extra_params': True, 'use_mlp': False}, (2, 16, 5, 11)),
    ('gc_c16', 'gc', 'GlobalContext', {}, (2, 16, 7, 9)),
    ('gc_c20', 'gc', 'GlobalContext', {}, (2, 20, 5, 11)),   # C/8 = 2.5: timm rounds to 3
    ('cbam_c32', 'cbam', 'CbamModule', {}, (2, 32, 7, 9)),
    ('cbam_c40', 'cbam', 'CbamModule', {}, (2, 40, 5, 11)),
    # Selective Kernel: a convolution, not a block that scales (senet_jax.attention.SelectiveKernel).
    ('sk_c16', ('sk', {}), 'SelectiveKernel', {}, (2, 16, 7, 9)),
    ('sk_c32_s2', ('sk', {'features': 64, 'strides': 2}), 'SelectiveKernel', {'out_channels': 64, 'stride': 2},
     (2, 32, 5, 11)),
    ('sk_5x5_groups', ('sk', {'split_input': False, 'keep_3x3': False, 'groups': 4}), 'SelectiveKernel',
     {'split_input': False, 'keep_3x3': False, 'groups': 4}, (2, 16, 7, 9)),
]

# timm's resnet50 at one block per stage with each attention block (block_args=dict(attn_layer=X)),
# against ours: attention name -> our `attention` option. timm's SEModule rounds widths to 8;
# 'ge' is GatherExcite's parameter-free form (use_mlp=False), the only one timm 1.0.31 builds.
ATTENTION_RESNET50 = {'se': ('se', {'divisor': 8}), 'ese': 'ese', 'eca': 'eca', 'gc': 'gc', 'cbam': 'cbam',
                      'ge': ('ge', {'use_mlp': False})}
ATTENTION_RESNET50_SIZE = (67, 53)


def random_variables(model, x, seed=0, **kwargs):
    """Variables for `model` on inputs like `x`, drawn with numpy instead of running
    model.init: its names, shapes and dtypes (jax.eval_shape), no initializer
    compiled (XLA:CPU takes 4-20 s on one init). Kernels LeCun-scaled (1 / fan-in),
    BN scales in [0.5, 1.5], running variances positive, the rest normal(0, 0.1);
    each leaf a function of (seed, path). For tests where the values only need to
    be generic; an init's own values are tested in test_models and test_parity."""
    import jax
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, **kwargs))

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        last = path[-1].key
        if last == 'kernel':
            v = rng.normal(0.0, np.sqrt(1.0 / max(1, int(np.prod(leaf.shape[:-1])))), leaf.shape)
        elif last in ('scale', 'var'):
            v = rng.uniform(0.5, 1.5, leaf.shape)
        else:
            v = rng.normal(0.0, 0.1, leaf.shape)
        return np.asarray(v, leaf.dtype)
    return jax.tree_util.tree_map_with_path(draw, shapes)


def torch_state_dict(variables, layout, se_as_conv=False):
    """Flax variables -> a state_dict in the reference `layout`, as numpy
    (convert.torch_to_flax's inverse): conv kernels as (O, I, kh, kw), linear ones
    as (O, I); with se_as_conv, SE's projections as 1x1 convolutions (timm's)."""
    from flax import traverse_util   # pylint: disable=g-import-not-at-top
    from senet_jax.convert import torch_key   # pylint: disable=g-import-not-at-top
    out = {}
    for (collection, *path), v in traverse_util.flatten_dict(variables).items():
        v = np.asarray(v)
        key = torch_key(collection, tuple(path), layout)
        if path[-1] == 'kernel':
            v = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T
            if se_as_conv and '.se.' in key:
                v = v[:, :, None, None]
        out[key] = np.ascontiguousarray(v)
    return out
