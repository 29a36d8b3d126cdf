"""Shared machinery of the ablation configs (Sec. 6 of the paper); not a config.

Each study file maps the value named on the command line to `create_model`
overrides of se_resnet50 and calls `ablation_config`. The config argument is
`VALUE[,local]`:

  VALUE alone  -> the paper's ImageNet recipe for SE-ResNet-50 (configs/common.py)
                  with that one SE option changed;
  VALUE,local  -> the same option on se_resnet_mini, trained on scikit-learn's
                  digits for a few epochs: a CPU run of minutes, for smoke tests
                  and the small-run tables in docs/ablations.md.
"""
from typing import Callable, Dict

import ml_collections

from configs import common

# The small CPU variant: the quickstart's recipe, shorter.
LOCAL_EPOCHS = 10.0


def parse_arg(arg: str, default: str):
    """'8,local' -> ('8', True); '' -> (default, False)."""
    parts = [p.strip() for p in (arg or '').split(',') if p.strip()]
    local = 'local' in parts
    values = [p for p in parts if p != 'local']
    if len(values) > 1:
        raise ValueError(f'one value at a time, got {values!r}')
    return (values[0] if values else default), local


def local_config() -> ml_collections.ConfigDict:
    """se_resnet_mini on digits: the quickstart's recipe, LOCAL_EPOCHS epochs."""
    return common.small_run_config(num_epochs=LOCAL_EPOCHS)


def ablation_config(study: str, arg: str, values: Dict[str, Callable[[], dict]],
                    default: str) -> ml_collections.ConfigDict:
    """The config of one study value; `values` maps each value to its overrides."""
    value, local = parse_arg(arg, default)
    if value not in values:
        raise ValueError(f'{study}: unknown value {value!r}; choose one of '
                         f'{", ".join(values)} (optionally with ",local")')
    c = local_config() if local else common.imagenet_config('se_resnet50')
    c.model_overrides = ml_collections.ConfigDict(values[value]())
    c.ablation = ml_collections.ConfigDict({'study': study, 'value': value})
    return c
