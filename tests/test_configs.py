"""configs/: every file runs as its docstring says, with the values the recipes name."""
import glob
import os
import re

import pytest
from absl import flags
from ml_collections import config_flags

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
