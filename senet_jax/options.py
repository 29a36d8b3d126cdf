"""The rules for model options, each written once.

`validate_options(**options)` checks any option that has a rule and raises
ValueError with one sentence (and the close matches for a misspelt choice).
`SqueezeExcite` and `ResNet` apply it to their own fields when they are built,
so `create_model`, a config's `model_overrides` and a module built by hand are
refused by the same words. This module sits below `layers.py` and imports
nothing of ours, so that every floor above can use it.
"""
import dataclasses
import difflib
from typing import Any, Callable, Dict, Iterable, NamedTuple, Optional, Tuple

# The paper's vocabulary for the SE block and where it sits (see layers.py, models/resnet.py).
SQUEEZES = ('avg', 'max', 'none')
GATES = ('sigmoid', 'tanh', 'relu')
SE_POSITIONS = ('standard', 'pre', 'post', 'identity', '3x3')
STAGES = (2, 3, 4, 5)      # conv2_x .. conv5_x
STEMS = ('7x7', 'deep', 'deep_tiered', 'small')
STEM_POOLS = ('pad', 'ceil', 'avg', None)
KERNELS = ('auto', 'plain', 'cpu')   # how layers compute (cpu_kernels.choose), not what
ACTIVATIONS = ('relu', 'relu6')     # MobileNet's: the paper's ReLU, TF-slim's (timm's) ReLU6


def did_you_mean(given: Any, known: Iterable[Any]) -> str:
    """The sentence ` Did you mean 'x'?` naming the close matches of `given` among `known`, or ''."""
    close = [repr(c) for c in difflib.get_close_matches(str(given), [str(k) for k in known],
                                                        n=3, cutoff=0.5)]
    if not close:
        return ''
    listed = close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}"
    return f' Did you mean {listed}?'


class _Rule(NamedTuple):
    holds: Callable[[Any], bool]
    wanted: str                              # "<option> must be <wanted>"
    choices: Optional[Tuple[Any, ...]] = None


def _one_of(choices):
    return _Rule(lambda v: v in choices, f'one of {choices}', choices)


def _per_stage(v):
    return not isinstance(v, (int, str)) and len(v) == len(STAGES)


_RULES: Dict[str, _Rule] = {
    'reduction': _Rule(lambda r: r >= 1, 'at least 1 (the ratio r)'),
    'squeeze': _one_of(SQUEEZES),
    'gate': _one_of(GATES),
    'se_position': _one_of(SE_POSITIONS),
    'se_stages': _Rule(lambda s: not isinstance(s, (int, str)) and set(s) <= set(STAGES),
                       f'a subset of {STAGES} (conv2_x..conv5_x)'),
    'stem': _one_of(STEMS),
    'stem_pool': _one_of(STEM_POOLS),
    'layers': _Rule(_per_stage, f'one block count per stage ({len(STAGES)} entries)'),
    'widths': _Rule(_per_stage, f'one width per stage ({len(STAGES)} entries)'),
    'num_classes': _Rule(lambda n: n >= 1, 'at least 1'),
    'drop_rate': _Rule(lambda p: 0 <= p < 1, 'in [0, 1)'),
    'drop_path_rate': _Rule(lambda p: 0 <= p < 1, 'in [0, 1)'),
    'kernels': _one_of(KERNELS),
    'activation': _one_of(ACTIVATIONS),
}


def validate_options(**options):
    """Raise ValueError, one sentence, for the first option that breaks its rule."""
    for name, value in options.items():
        rule = _RULES.get(name)
        if rule is None:
            continue
        try:
            ok = bool(rule.holds(value))
        except TypeError:          # e.g. reduction='8' from a hand-written JSON file
            ok = False
        if not ok:
            hint = did_you_mean(value, rule.choices) if rule.choices else ''
            raise ValueError(f'{name} must be {rule.wanted}, got {value!r}.{hint}')


def validate_subset(option: str, value: Any, allowed: Tuple[Any, ...], meaning: str = ''):
    """ValueError, one sentence, unless `value` is a tuple or list drawn from `allowed`:
    the rule of a family's own `se_stages` (which stages, modules or units carry SE)."""
    ok = not isinstance(value, (int, str)) and set(value) <= set(allowed)
    if not ok:
        raise ValueError(f'{option} must be a subset of {tuple(allowed)}{meaning}, got {value!r}.')


def validate_fields(module, exclude: Iterable[str] = ()):
    """`validate_options` on the fields of a (dataclass) module that have a rule,
    but those in `exclude` (a family whose `se_stages` are not conv2_x..conv5_x
    checks them itself, with `validate_subset`)."""
    validate_options(**{f.name: getattr(module, f.name) for f in dataclasses.fields(module)
                        if f.name in _RULES and f.name not in exclude})
