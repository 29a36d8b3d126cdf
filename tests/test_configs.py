"""configs/: every file runs as its docstring says, with the values the recipes name."""
import glob
import os
import re

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

import test_train_utils as tu
from configs import common
from configs.ablations import study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Helpers that the config files build on; not configs themselves.
NOT_CONFIGS = {'configs/common.py', 'configs/ablations/study.py'}
CONFIG_FILES = sorted(
    os.path.relpath(p, ROOT).replace(os.sep, '/')
    for p in glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True)
    if os.path.relpath(p, ROOT).replace(os.sep, '/') not in NOT_CONFIGS
    and not p.endswith('__init__.py'))
IMAGENET_MODELS = ('se_resnet50', 'se_resnet101', 'se_resnet152', 'se_resnext50_32x4d',
                   'se_resnext101_32x4d', 'senet154', 'resnet50')
# The paper's ImageNet recipe (Sec. 5 of the paper), in the config's terms.
PAPER = dict(dataset='imagenet2012', image_size=224, min_crop_area=0.08,
             eval_crop_fraction=0.875, batch_size=1024, base_batch_size=1024,
             learning_rate=0.6, lr_schedule='step', lr_decay_epochs=30,
             lr_decay_factor=0.1, warmup_epochs=0.0, momentum=0.9, nesterov=False,
             weight_decay=1e-4, label_smoothing=0.0, num_epochs=100.0)
COSINE = dict(lr_schedule='cosine', warmup_epochs=5.0, nesterov=True, label_smoothing=0.1)
SMALL_RUN = dict(model='se_resnet_mini', dataset='digits', image_size=16,
                 digits_max_shift=1, batch_size=64, base_batch_size=0,
                 learning_rate=0.1, lr_schedule='cosine', warmup_epochs=1.0,
                 weight_decay=5e-4, log_every_steps=50, eval_every_steps=0,
                 checkpoint_every_steps=0)


def load(config_arg, monkeypatch):
    """`--config=<config_arg>` parsed as train.py parses it, from the repo root."""
    monkeypatch.chdir(ROOT)
    values = flags.FlagValues()
    config_flags.DEFINE_config_file('config', None, flag_values=values)
    values(['train.py', f'--config={config_arg}'])
    return values.config


def docstring_configs(path):
    """The --config=... arguments of the file's docstring commands."""
    with open(os.path.join(ROOT, path)) as f:
        source = f.read()
    doc = re.match(r'\s*"""(.*?)"""', source, re.S)
    assert doc, f'{path} has no docstring'
    return re.findall(r'python train\.py --config=(\S+)', doc.group(1))


def assert_fields(config, expected):
    got = {k: config[k] for k in expected}
    assert got == expected
    for k, v in expected.items():  # 15 == 15.0 above; the types must match too
        assert type(config[k]) is type(v), (k, config[k], v)


@pytest.mark.parametrize('path', CONFIG_FILES)
def test_docstring_commands_load(path, monkeypatch):
    commands = docstring_configs(path)
    assert any(c == path or c.startswith(path + ':') for c in commands), commands
    for arg in commands:
        assert load(arg, monkeypatch).model


@pytest.mark.parametrize('model', IMAGENET_MODELS)
@pytest.mark.parametrize('recipe', ['', 'cosine'])
def test_imagenet_configs(model, recipe, monkeypatch):
    config = load(f'configs/{model}.py' + (f':{recipe}' if recipe else ''), monkeypatch)
    expected = dict(PAPER, model=model, **(COSINE if recipe else {}))
    if model == 'senet154':  # the paper's SENet-154 adds both
        expected.update(label_smoothing=0.1, drop_rate=0.2)
    assert_fields(config, expected)
    # Nothing but the model and the named fields sets it apart from the shared recipe.
    shared = common.imagenet_config('se_resnet50', recipe).to_dict()
    differs = {k for k, v in config.to_dict().items() if shared.get(k) != v}
    assert differs <= {'model', 'label_smoothing', 'drop_rate'}


def test_quickstart_and_ablation_local_share_the_small_run(monkeypatch):
    quickstart = load('configs/quickstart.py', monkeypatch)
    assert_fields(quickstart, dict(SMALL_RUN, num_epochs=15.0))
    local = load('configs/ablations/reduction.py:8,local', monkeypatch)
    assert_fields(local, dict(SMALL_RUN, num_epochs=study.LOCAL_EPOCHS))
    assert study.LOCAL_EPOCHS == 10.0
    apart = {k for k, v in local.to_dict().items() if quickstart.to_dict().get(k) != v}
    assert apart == {'num_epochs', 'model_overrides', 'ablation'}


def test_unknown_recipe(monkeypatch):
    with pytest.raises(flags.IllegalFlagValueError, match="unknown recipe 'foo'"):
        load('configs/se_resnet50.py:foo', monkeypatch)


# ---------------------------------------------------------------------------
# The paper's other tables: configs/table2.py, table3.py, cifar.py, places365.py.

from configs import cifar, places365, rsb, table2, table3  # noqa: E402

TABLE3 = dict(batch_size=256, base_batch_size=256, learning_rate=0.1, lr_schedule='plateau',
              plateau_patience=10, plateau_factor=0.1, plateau_cooldown=0,
              plateau_min_scale=0.0, num_epochs=400.0, eval_every_steps=0, weight_decay=4e-5,
              momentum=0.9, nesterov=False, min_crop_area=0.25, dataset='imagenet2012',
              image_size=224)
CIFAR = dict(image_size=32, preprocess='cifar', train_split='train', eval_split='test',
             batch_size=128, base_batch_size=128, learning_rate=0.1, lr_schedule='step',
             momentum=0.9, label_smoothing=0.0)
RESNET_CIFAR = dict(CIFAR, lr_decay_factor=0.1, lr_boundaries_steps=(32_000, 48_000),
                    lr_boundaries_epochs=(), num_train_steps=64_000, weight_decay=1e-4,
                    nesterov=False)
WRN_CIFAR = dict(CIFAR, lr_decay_factor=0.2, lr_boundaries_epochs=(60, 120, 160),
                 lr_boundaries_steps=(), num_epochs=200.0, num_train_steps=-1,
                 weight_decay=5e-4, nesterov=True)
LOCAL = dict(dataset='fake', fake_num_examples=32, batch_size=8, num_train_steps=4,
             log_every_steps=1, eval_every_steps=4, checkpoint_every_steps=4)


@pytest.mark.parametrize('model', table2.MODELS)
def test_table2_is_the_imagenet_recipe(model, monkeypatch):
    config = load(f'configs/table2.py:{model}', monkeypatch)
    expected = dict(PAPER, model=model)
    if 'inception_resnet_v2' in model:  # 299 crops; eval: 299 centre of a 352 resize
        expected.update(image_size=299, eval_crop_fraction=299 / 352)
    assert_fields(config, expected)


@pytest.mark.parametrize('model', table3.MODELS)
def test_table3_is_the_mobile_recipe(model, monkeypatch):
    assert_fields(load(f'configs/table3.py:{model}', monkeypatch), dict(TABLE3, model=model))


@pytest.mark.parametrize('model', cifar.MODELS)
@pytest.mark.parametrize('dataset', ['', 'cifar10', 'cifar100'])
def test_cifar_recipes(model, dataset, monkeypatch):
    config = load(f'configs/cifar.py:{model}' + (f',{dataset}' if dataset else ''), monkeypatch)
    recipe = WRN_CIFAR if model.startswith(('wrn', 'se_wrn')) else RESNET_CIFAR
    assert_fields(config, dict(recipe, model=model, dataset=dataset or 'cifar10'))


@pytest.mark.parametrize('model', places365.MODELS)
def test_places365_is_the_imagenet_recipe(model, monkeypatch):
    config = load(f'configs/places365.py:{model}', monkeypatch)
    assert_fields(config, dict(PAPER, model=model, dataset='places365_small',
                               eval_split='validation'))
    assert load('configs/places365.py', monkeypatch).model == 'se_resnet152'


@pytest.mark.parametrize('arg,message', [
    ('configs/table2.py:se_vgg16', "unknown model 'se_vgg16'"),
    ('configs/table2.py:local', 'give one model'),
    ('configs/table3.py:mobilenet_v1,se_mobilenet_v1', 'give one model'),
    ('configs/cifar.py:se_resnet110_cifar,cifar1000', "unknown dataset 'cifar1000'"),
    ('configs/places365.py:se_resnet50', "unknown model 'se_resnet50'"),
    ('configs/rsb.py:a4', "unknown procedure 'a4'"),
    ('configs/rsb.py', 'give a procedure of a1, a2, a3'),
    ('configs/rsb.py:a3,local,digits', 'optionally a model and ",local" or ",digits"'),
    ('configs/rsb.py:a1,se_resnt50', "Unknown model 'se_resnt50'. Did you mean 'se_resnet50'")])
def test_bad_table_arguments(arg, message, monkeypatch):
    with pytest.raises(flags.IllegalFlagValueError, match=message):
        load(arg, monkeypatch)


LOCAL_RUNS = ([f'configs/table2.py:{m},local' for m in table2.MODELS]
              + [f'configs/table3.py:{m},local' for m in table3.MODELS]
              + [f'configs/cifar.py:{m},{d},local' for m in cifar.MODELS
                 for d in ('cifar10', 'cifar100')]
              + [f'configs/places365.py:{m},local' for m in places365.MODELS]
              + [f'configs/rsb.py:{p},local' for p in rsb.PROCEDURES])


@pytest.mark.parametrize('arg', LOCAL_RUNS)
def test_local_variant_fields(arg, monkeypatch):
    """`local` keeps the model and the recipe's schedule; only data and length shrink."""
    config = load(arg, monkeypatch)
    full = load(arg.replace(',local', ''), monkeypatch)
    size = 75 if 'inception_resnet_v2' in arg else 32
    if '/rsb.py:' in arg:   # the procedure's train/test ratio: A3's 160 -> 224
        assert config.eval_image_size == (45 if ':a3' in arg else 32)
    num_classes = (365 if 'places365' in arg else 100 if 'cifar100' in arg
                   else 10 if 'cifar10' in arg else 1000)
    batch = 12 if ':a1' in arg or ':a2' in arg else 8   # RSB A1/A2: 4 images x 3 repeats
    assert_fields(config, dict(LOCAL, model=full.model, image_size=size,
                               num_classes=num_classes, batch_size=batch))
    for field in ('lr_schedule', 'lr_boundaries_steps', 'lr_boundaries_epochs',
                  'plateau_patience', 'weight_decay', 'nesterov', 'preprocess'):
        assert config[field] == full[field]


def _train_locally(config, workdir):
    from senet_jax import trainer
    result = trainer.train_and_evaluate(config, workdir)
    assert 0 <= result['eval_top1'] <= 1 and np.isfinite(result['eval_loss'])
    lines = [m for m in tu.metrics(workdir) if 'train_loss' in m]
    assert [m['step'] for m in lines] == [1, 2, 3, 4]
    assert all(m['learning_rate'] > 0 and np.isfinite(m['train_loss']) for m in lines)
    assert tu.checkpoint_steps(workdir) == [4]
    return result


# The local runs that train: one per table config, each recipe through the
# trainer with its own data, preprocessing and input format (IRv2's 0.5 / 0.5 at
# 75 px, MobileNet's, CIFAR's, Places365's). The networks train at their
# shallowest (one unit per stage, `SHALLOW`): depth adds compile time, not a
# code path; every zoo network's training step, at full depth where it is
# cheap, is checked elsewhere (test_models, test_nnx, test_parity, test_kernels).
# The plain baselines are the same modules with no SE, whose recipe fields
# test_local_variant_fields checks; CIFAR-100 differs from CIFAR-10 in the head.
SHALLOW = {'se_inception_resnet_v2': {'repeats': (1, 1, 1)},
           'se_resnet164_cifar': {'units': (1, 1, 1)},
           'se_resnet152': {'layers': (1, 1, 1, 1)},
           'se_resnet50': {'layers': (1, 1, 1, 1)}}
TRAINED_LOCALLY = ['configs/table2.py:se_inception_resnet_v2,local',
                   'configs/table3.py:se_mobilenet_v1,local',
                   'configs/cifar.py:se_resnet164_cifar,cifar100,local',
                   'configs/places365.py:se_resnet152,local',
                   'configs/rsb.py:a3,local']


def test_every_table_config_trains_locally():
    assert set(TRAINED_LOCALLY) <= set(LOCAL_RUNS)
    for config in ('table2', 'table3', 'cifar', 'places365', 'rsb'):
        assert any(f'/{config}.py:' in arg for arg in TRAINED_LOCALLY), config


@pytest.mark.slow
@pytest.mark.no_cover   # coverage's tracer would slow it by ~40% (docs/architecture.md, "Tests")
@pytest.mark.parametrize('arg', TRAINED_LOCALLY)
def test_local_variant_trains(arg, tmp_path, monkeypatch):
    """A table config's `local` variant trains 4 steps and evaluates, in process."""
    config = load(arg, monkeypatch)
    with config.unlocked():
        config.model_overrides.update(SHALLOW.get(config.model, {}))
    _train_locally(config, str(tmp_path / 'run'))


@pytest.mark.slow
def test_cifar_config_trains_on_mock_cifar_data(tmp_path, monkeypatch):
    """The CIFAR config's own data path (preprocess='cifar' on tfds cifar100,
    mocked offline) through the trainer, with se_resnet_mini for the network."""
    import tensorflow_datasets as tfds
    from unittest import mock
    config = load('configs/cifar.py:se_resnet110_cifar,cifar100', monkeypatch)
    config.update(model='se_resnet_mini', data_dir='/nonexistent', batch_size=8,
                  num_train_steps=4, log_every_steps=1, eval_every_steps=4,
                  checkpoint_every_steps=4)
    with tfds.testing.mock_data(num_examples=16), mock.patch.object(
            tfds.core.DatasetBuilder, 'is_prepared', return_value=True):
        _train_locally(config, str(tmp_path / 'run'))


def test_places365_config_reads_places365_small(monkeypatch):
    """tfds places365_small (mocked offline): 365 classes, and its supervised
    keys (image, label, filename) are read as image and label."""
    import tensorflow_datasets as tfds
    from unittest import mock
    from senet_jax import data
    config = load('configs/places365.py:se_resnet152', monkeypatch)
    config.update(data_dir='/nonexistent', batch_size=4, image_size=32)
    with tfds.testing.mock_data(num_examples=8), mock.patch.object(
            tfds.core.DatasetBuilder, 'is_prepared', return_value=True):
        pipeline = data.create_input_pipeline(config)
        batch = next(pipeline.train_batches(0))
        assert pipeline.num_classes == 365
        assert batch['image'].shape == (4, 32, 32, 3) and batch['image'].dtype == np.uint8
        assert len(list(pipeline.eval_batches())) == 2


# ---------------------------------------------------------------------------
# ResNet Strikes Back: configs/rsb.py, Table 1 of arXiv 2110.00476.

RSB = dict(dataset='imagenet2012', batch_size=2048, base_batch_size=2048, optimizer='lamb',
           lr_schedule='cosine', warmup_epochs=5.0, loss='bce', bce_target_threshold=0.2,
           cutmix_alpha=1.0, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode='batch',
           eval_image_size=224, eval_crop_fraction=0.95, eval_interpolation='bicubic',
           ema_decay=0.0)
RSB_TABLE = {   # A1 / A2 / A3 columns of Table 1
    'a1': dict(num_epochs=600.0, learning_rate=5e-3, weight_decay=0.01, label_smoothing=0.1,
               mixup_alpha=0.2, randaugment='rand-m7-mstd0.5-inc1', repeated_augmentation=3,
               image_size=224),
    'a2': dict(num_epochs=300.0, learning_rate=5e-3, weight_decay=0.02, label_smoothing=0.0,
               mixup_alpha=0.1, randaugment='rand-m7-mstd0.5-inc1', repeated_augmentation=3,
               image_size=224),
    'a3': dict(num_epochs=100.0, learning_rate=8e-3, weight_decay=0.02, label_smoothing=0.0,
               mixup_alpha=0.1, randaugment='rand-m6-mstd0.5-inc1', repeated_augmentation=0,
               image_size=160),
}
RSB_DROP_PATH = {'a1': 0.05, 'a2': 0.05, 'a3': None}


@pytest.mark.parametrize('procedure', rsb.PROCEDURES)
def test_rsb_procedures_are_table_1(procedure, monkeypatch):
    config = load(f'configs/rsb.py:{procedure}', monkeypatch)
    assert_fields(config, dict(RSB, model='se_resnet50', **RSB_TABLE[procedure]))
    assert config.model_overrides.get('drop_path_rate') == RSB_DROP_PATH[procedure]
    other = load(f'configs/rsb.py:{procedure},resnet50', monkeypatch)
    assert other.model == 'resnet50'
    assert_fields(other, dict(RSB, **RSB_TABLE[procedure]))


@pytest.mark.parametrize('procedure', rsb.PROCEDURES)
def test_rsb_digits_variant_is_the_recipe_on_the_quickstart(procedure, monkeypatch):
    """The procedure's optimizer, loss, mixing and augmentation; the quickstart's
    network, data, batch, schedule length and logging."""
    config = load(f'configs/rsb.py:{procedure},digits', monkeypatch)
    quick = load('configs/quickstart.py', monkeypatch)
    recipe = {k: v for k, v in RSB.items() if not k.startswith(('eval_', 'dataset', 'batch'))
              and k not in ('base_batch_size', 'warmup_epochs')}
    table = {k: v for k, v in RSB_TABLE[procedure].items()
             if k not in ('num_epochs', 'learning_rate', 'image_size')}
    assert_fields(config, dict(recipe, **table, learning_rate=rsb.DIGITS_LR, eval_image_size=0))
    same = ('model', 'dataset', 'image_size', 'digits_max_shift', 'base_batch_size',
            'warmup_epochs', 'num_epochs', 'log_every_steps', 'eval_every_steps',
            'checkpoint_every_steps')
    assert_fields(config, {k: quick[k] for k in same})
    # A1/A2: whole groups of 3 copies and an even batch for Mixup's pairs.
    assert config.batch_size == (60 if procedure != 'a3' else 64)
    assert load(f'configs/rsb.py:{procedure},resnet18,digits', monkeypatch).model == 'resnet18'
