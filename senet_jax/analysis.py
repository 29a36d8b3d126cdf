"""What the excitations do: per-class gate statistics, class specificity, SE-guided pruning.

Sec. 7.2 of Hu et al. (TPAMI 2019) plots the mean excitation s of each channel
for a few classes and for all of ImageNet at several depths (Fig. 6) and finds
the early SE blocks class-agnostic and the late ones class-specific. This
module measures that for any SE model and dataset:

  stats = collect_gate_stats(model, variables, (images, labels), num_classes=10)
  class_specificity(stats)              # {block: eta^2}, one number per depth
  plot_gate_curves(stats, 'gates.png')  # Fig. 6-style curves
  pruning_table(model, variables, (images, labels), stats=stats)
      # accuracy vs fraction of channels pruned, ranked by the gates or by |W|

From the command line (se_resnet_mini on scikit-learn's digits, trained here
for a few hundred steps, or loaded from a `train.py` workdir):

  python -m senet_jax.analysis --steps 300 --png /tmp/gates.png
  python -m senet_jax.analysis --workdir /tmp/quickstart

Images may be uint8 (normalised here in the model's own input format, as the
trainer does: ImageNet's mean and std, the CIFAR statistics, Caffe's BGR means
or Inception's [-1, 1]) or float (used as they are). Data are arrays `(images, labels)`,
or an iterable of such pairs / of dicts with 'image', 'label' and optionally
'mask' (the trainer's eval batches); they are re-batched to a fixed size so one
compiled function serves every batch.
"""
import argparse
import dataclasses
import functools
import sys
from collections.abc import Mapping
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from senet_jax import xla_cpu
from senet_jax.attention import parse_attention
from senet_jax.checkpoint import user_path
from senet_jax.errors import WriteFailed, write_error_kind
from senet_jax.models import create_model, input_format, normalize_images, set_overrides

CRITERIA = ('se_gate', 'l1_weight', 'random')
# The blocks Fig. 6 of the paper shows for SE-ResNet-50: SE_2_3, SE_3_4, SE_4_6, SE_5_1..3.
FIG6_BLOCKS = ('stage2_block2', 'stage3_block3', 'stage4_block5', 'stage5_block0',
               'stage5_block1', 'stage5_block2')


# ---------------------------------------------------------------------------
# Data.


def digits_data(image_size: int = 16, split: str = 'test'):
    """scikit-learn's digits exactly as the trainer serves them (`senet_jax.data`):
    uint8 (N, S, S, 3) images and int32 labels of the fixed 80/20 split, so a model
    trained with `configs/quickstart.py` is analysed on its own held-out set."""
    from senet_jax.data import load_digits_split
    if split not in ('train', 'test'):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    train_x, train_y, test_x, test_y = load_digits_split(image_size)
    return (train_x, train_y) if split == 'train' else (test_x, test_y)


def prepare(images, model):
    """uint8 images -> float32 in `model`'s input format (as the trainer); floats unchanged."""
    if jnp.issubdtype(images.dtype, jnp.integer):
        return normalize_images(images, input_format=input_format(model))
    return images


def fixed_batches(data, batch_size: int):
    """(images, labels, mask) numpy batches of exactly `batch_size` rows; padding has mask 0."""
    if isinstance(data, tuple) and len(data) == 2 and hasattr(data[0], 'shape'):
        data = [data]
    for item in data:
        if isinstance(item, dict):
            x, y = np.asarray(item['image']), np.asarray(item['label'])
            m = np.asarray(item.get('mask', np.ones(len(y))), np.float32)
        else:
            x, y = np.asarray(item[0]), np.asarray(item[1])
            m = np.ones(len(y), np.float32)
        for i in range(0, len(y), batch_size):
            xs, ys, ms = x[i:i + batch_size], y[i:i + batch_size], m[i:i + batch_size]
            pad = batch_size - len(ys)
            if pad:
                xs = np.concatenate([xs, np.zeros((pad,) + xs.shape[1:], xs.dtype)])
                ys = np.concatenate([ys, np.zeros(pad, ys.dtype)])
                ms = np.concatenate([ms, np.zeros(pad, np.float32)])
            yield xs, ys.astype(np.int32), ms


# ---------------------------------------------------------------------------
# Gate statistics.


def se_blocks(variables, model=None) -> List[str]:
    """Names of the units that carry an SE block, in depth order.

    A name is the path of the SE block's unit, '/'-joined ('stage3_block1',
    'inception_4a'; see `_block_name`). With `model`, the
    order is the order in which the forward pass calls the blocks (any family);
    without, the residual families' 'stage{s}_block{b}' names are sorted by
    (s, b).
    """
    if model is not None:
        return _se_call_order(model, variables)

    def depth(name):
        stage, block = name[len('stage'):].split('_block')
        return int(stage), int(block)
    names = [n for n, p in variables['params'].items() if isinstance(p, Mapping) and 'se' in p]
    return sorted(names, key=depth)


def _block_name(se_path) -> str:
    """A unit's name from its SE module's path: the parent of a module named 'se'
    ('stage3_block1'), else the SE module itself ('se1_1')."""
    se_path = tuple(se_path)
    return '/'.join(se_path[:-1] if se_path[-1] == 'se' else se_path)


def _se_call_order(model, variables) -> List[str]:
    """The parent paths of the attention blocks (SqueezeExcite or any other of
    `attention.ATTENTIONS`), in the order a forward pass calls them."""
    import flax.linen as nn
    from senet_jax.attention import ATTENTIONS
    blocks = tuple(ATTENTIONS.values())
    calls = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, blocks) and context.method_name == '__call__':
            path = _block_name(context.module.path)
            if path not in calls:
                calls.append(path)
        return next_fun(*args, **kwargs)

    side = max(model.min_input_size(), 32) if hasattr(model, 'min_input_size') else 32
    x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    params = {k: v for k, v in variables.items() if k in ('params', 'batch_stats')}
    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), params, x)
    return calls


def gates_and_logits(model, variables, images):
    """(logits, {block: gates (N, C)}); squeeze='none' gates are averaged over space.

    Blocks are named as in `se_blocks`."""
    from flax import traverse_util
    variables = {k: v for k, v in variables.items() if k != 'intermediates'}
    logits, state = model.apply(variables, prepare(images, model), train=False,
                                mutable=['intermediates'])
    gates = {}
    for path, sown in traverse_util.flatten_dict(dict(state['intermediates'])).items():
        if path[-1] == 'gate':      # the attention blocks sow 'gate' (senet_jax.attention)
            g = sown[0].astype(jnp.float32)
            gates[_block_name(path[:-1])] = g.mean(axis=(1, 2)) if g.ndim == 4 else g
    return logits.astype(jnp.float32), gates


@dataclasses.dataclass
class GateStats:
    """Excitation statistics of every SE block over a dataset.

    class_mean[b]: (K, C) mean gate of each channel over the examples of each
      class (NaN for a class without examples); mean[b]: (C,) over all
      examples; var[b]: (C,) variance over all examples; counts: (K,).
    """
    blocks: List[str]
    class_mean: Dict[str, np.ndarray]
    mean: Dict[str, np.ndarray]
    var: Dict[str, np.ndarray]
    counts: np.ndarray
    accuracy: float


# Cached per (model, classes): repeated analyses of one architecture compile once.
@functools.lru_cache(maxsize=16)
def _stats_step(model, num_classes):
    @functools.partial(jax.jit, compiler_options=xla_cpu.compiler_options())
    def step(variables, images, labels, mask):
        logits, gates = gates_and_logits(model, variables, images)
        onehot = jax.nn.one_hot(labels, num_classes) * mask[:, None]
        sums = {b: onehot.T @ g for b, g in gates.items()}
        squares = {b: mask @ (g * g) for b, g in gates.items()}
        correct = jnp.sum((jnp.argmax(logits, -1) == labels) * mask)
        return sums, squares, onehot.sum(0), correct
    return step


def collect_gate_stats(model, variables, data, num_classes: int,
                       batch_size: int = 256) -> GateStats:
    """Mean gate per (class, channel) and over all data, for each SE block (one jitted pass)."""
    step = _stats_step(model, num_classes)
    totals = None
    for images, labels, mask in fixed_batches(data, batch_size):
        out = jax.device_get(step(variables, images, labels, mask))
        out = jax.tree.map(lambda a: np.asarray(a, np.float64), out)
        totals = out if totals is None else jax.tree.map(np.add, totals, out)
    if totals is None:
        raise ValueError('collect_gate_stats got no data.')
    sums, squares, counts, correct = totals
    n = counts.sum()
    blocks = se_blocks(variables, model)
    with np.errstate(invalid='ignore', divide='ignore'):
        class_mean = {b: sums[b] / counts[:, None] for b in blocks}
    mean = {b: sums[b].sum(0) / n for b in blocks}
    var = {b: np.maximum(squares[b] / n - mean[b] ** 2, 0.0) for b in blocks}
    return GateStats(blocks, class_mean, mean, var, counts, float(correct / n))


def class_specificity(stats: GateStats, measure: str = 'eta2') -> Dict[str, float]:
    """How class-specific each SE block's excitations are: one number per depth.

    'eta2': the share of the gates' variance over examples that the class
      explains, sum_c sum_k p_k (m_kc - m_c)^2 / sum_c var_c (the correlation
      ratio, pooled over channels); 0 for class-agnostic gates, 1 when the class
      fixes every gate. A finite sample of class-agnostic gates still gives
      about (K - 1) / N.
    'distance': mean over classes of ||m_k - m|| / ||m||, the distance of a
      class's mean excitation from the overall one, relative to the latter.
    """
    present = stats.counts > 0
    p = stats.counts[present] / stats.counts.sum()
    scores = {}
    for b in stats.blocks:
        dev = stats.class_mean[b][present] - stats.mean[b]
        if measure == 'eta2':
            total = stats.var[b].sum()
            scores[b] = float((p[:, None] * dev ** 2).sum() / total) if total > 0 else 0.0
        elif measure == 'distance':
            norm = np.linalg.norm(stats.mean[b])
            scores[b] = float(np.linalg.norm(dev, axis=1).mean() / max(norm, 1e-12))
        else:
            raise ValueError(f"measure must be 'eta2' or 'distance', got {measure!r}.")
    return scores


def specificity_table(stats: GateStats) -> str:
    """Both specificity measures per SE block, as text."""
    eta2, dist = class_specificity(stats, 'eta2'), class_specificity(stats, 'distance')
    lines = [f"{'SE block':16s} {'channels':>8s} {'mean gate':>9s} {'eta^2':>7s} {'distance':>8s}"]
    for b in stats.blocks:
        lines.append(f'{b:16s} {len(stats.mean[b]):8d} {stats.mean[b].mean():9.3f} '
                     f'{eta2[b]:7.3f} {dist[b]:8.3f}')
    return '\n'.join(lines)


def plot_gate_curves(stats: GateStats, path: Optional[str] = None,
                     blocks: Optional[Sequence[str]] = None,
                     classes: Optional[Sequence[int]] = None,
                     class_names: Optional[Sequence[str]] = None):
    """Mean excitation per channel index, for a few classes and for all data (Fig. 6).

    One panel per SE block (default: the paper's six for a ResNet-50 layout, else
    all, or 8 spread over the depth). Uses the
    Agg canvas directly, so it never changes the pyplot backend of a notebook.
    Writes a PNG when `path` is given; returns the matplotlib Figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if blocks is None and set(FIG6_BLOCKS) <= set(stats.blocks):
        blocks = list(FIG6_BLOCKS)
    elif blocks is None:
        blocks = stats.blocks
        if len(blocks) > 8:
            blocks = [blocks[i] for i in np.linspace(0, len(blocks) - 1, 8).round().astype(int)]
    if classes is None:
        classes = [k for k in range(len(stats.counts)) if stats.counts[k] > 0][:4]
    names = class_names or [str(k) for k in range(len(stats.counts))]
    eta2 = class_specificity(stats)
    cols = min(4, len(blocks))
    rows = -(-len(blocks) // cols)
    fig = Figure(figsize=(4 * cols, 3 * rows))
    FigureCanvasAgg(fig)
    for i, b in enumerate(blocks):
        ax = fig.add_subplot(rows, cols, i + 1)
        channels = np.arange(len(stats.mean[b]))
        for k in classes:
            ax.plot(channels, stats.class_mean[b][k], lw=0.8, label=f'class {names[k]}')
        ax.plot(channels, stats.mean[b], 'k--', lw=1.2, label='all')
        ax.set_title(f'{b}  (eta^2 = {eta2[b]:.2f})', fontsize=9)
        ax.set_xlabel('channel index', fontsize=8)
        ax.set_ylabel('mean activation', fontsize=8)
        ax.tick_params(labelsize=7)
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=100)
    return fig


# ---------------------------------------------------------------------------
# SE-guided channel pruning.


def check_prunable(model):
    """ValueError, one sentence, unless pruning by gate applies: a residual-family
    network (whose gated channels leave a BN that pruning zeroes) with a block
    that gives each channel one gate (not Gather-Excite's gather over a
    neighbourhood, which gates each channel differently at each position)."""
    if not hasattr(model, 'se_position'):
        raise ValueError(f'pruning by gate zeroes the BatchNorm before a residual block\'s gate, '
                         f'which only the residual family (ResNet, ResNeXt, SENet) has; '
                         f'{type(model).__name__} has none.')
    name, options = parse_attention(model.attention)
    if name == 'ge' and options.get('extent', 0):
        raise ValueError(f"pruning by gate needs one gate per channel; Gather-Excite with "
                         f"extent {options['extent']} gates each position separately.")


def gated_norm(model, block_params) -> str:
    """The BatchNorm whose output channels the block's SE gates (and pruning zeroes).

    'standard': the residual branch's last BN (bn3 of a bottleneck, bn2 of a
    basic block); '3x3': the BN after the 3x3 conv (bn2 / bn1). Other positions
    gate the block input, the sum or the shortcut, which has no BN of its own to zero.
    """
    check_prunable(model)
    bottleneck = 'bn3' in block_params
    if model.se_position == 'standard':
        return 'bn3' if bottleneck else 'bn2'
    if model.se_position == '3x3':
        if getattr(model, 'selective_kernel', None) is not None:
            raise ValueError("pruning at se_position '3x3' needs the BN after the 3x3 conv, which a "
                             'Selective Kernel conv splits over its paths.')
        return 'bn2' if bottleneck else 'bn1'
    raise ValueError(f"pruning needs se_position 'standard' or '3x3', got {model.se_position!r}.")


def channel_scores(model, variables, criterion: str, stats: Optional[GateStats] = None,
                   seed: int = 0) -> Dict[str, np.ndarray]:
    """Per SE block, a score per channel; the lowest are pruned first.

    'se_gate': the channel's mean excitation over the data (needs `stats`).
    'l1_weight': L1 norm of the filter of the conv before the gated BN (Li et
      al., "Pruning Filters for Efficient ConvNets"), the weight-magnitude baseline.
    'random': uniform, a floor for both.
    """
    rng = np.random.default_rng(seed)
    scores = {}
    for b in se_blocks(variables):
        params = variables['params'][b]
        conv = 'conv' + gated_norm(model, params)[len('bn'):]
        kernel = np.asarray(params[conv]['kernel'])
        if criterion == 'se_gate':
            if stats is None:
                raise ValueError("criterion 'se_gate' needs the GateStats of the data.")
            scores[b] = np.asarray(stats.mean[b])
        elif criterion == 'l1_weight':
            scores[b] = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(0)
        elif criterion == 'random':
            scores[b] = rng.random(kernel.shape[-1])
        else:
            raise ValueError(f'criterion must be one of {CRITERIA}, got {criterion!r}.')
    return scores


def channels_to_prune(scores: Dict[str, np.ndarray], fraction: float) -> Dict[str, np.ndarray]:
    """The round(fraction * C) lowest-scoring channels of each block (stable order on ties)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f'fraction must be in [0, 1], got {fraction}.')
    return {b: np.sort(np.argsort(s, kind='stable')[:int(round(fraction * len(s)))])
            for b, s in scores.items()}


def prune_channels(model, variables, channels: Dict[str, np.ndarray]):
    """A copy of `variables` with the chosen channels' branch output zeroed.

    Sets the gated BN's scale and bias to 0 for those channels, so the channel
    is 0 before the SE scale: it no longer reaches the sum, nor the squeeze.
    """
    params = dict(variables['params'])  # blocks are copied before they change
    for b, idx in channels.items():
        if len(idx) == 0:
            continue
        block = dict(params[b])
        bn = gated_norm(model, block)
        block[bn] = {k: (jnp.asarray(v).at[idx].set(0) if k in ('scale', 'bias') else v)
                     for k, v in block[bn].items()}
        params[b] = block
    return {**variables, 'params': params}


@functools.lru_cache(maxsize=16)
def _accuracy_fn(model):
    @functools.partial(jax.jit, compiler_options=xla_cpu.compiler_options())
    def correct(variables, images, labels, mask):
        logits, _ = gates_and_logits(model, variables, images)
        return jnp.sum((jnp.argmax(logits, -1) == labels) * mask), jnp.sum(mask)
    return correct


def accuracy(model, variables, data, batch_size: int = 256, _fn=None) -> float:
    """Top-1 accuracy of `model` on `data`."""
    fn = _fn or _accuracy_fn(model)
    right = total = 0.0
    for images, labels, mask in fixed_batches(data, batch_size):
        c, n = fn(variables, images, labels, mask)
        right, total = right + float(c), total + float(n)
    return right / total


def pruning_table(model, variables, data, num_classes: Optional[int] = None,
                  fractions: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 0.75),
                  criteria: Sequence[str] = CRITERIA, stats: Optional[GateStats] = None,
                  batch_size: int = 256, seed: int = 0) -> List[dict]:
    """Top-1 accuracy after pruning each fraction of every SE block's channels, per criterion.

    The gate statistics come from `data` unless `stats` is given (pass stats of
    a training split to rank on data the evaluation does not see). Returns rows
    {'fraction', 'pruned' (channels in all blocks), <criterion>: accuracy}.
    """
    check_prunable(model)
    if not isinstance(data, (tuple, list)):
        data = list(data)  # one-shot iterators are read several times
    if stats is None and 'se_gate' in criteria:
        if num_classes is None:
            raise ValueError('pass num_classes (or stats) to rank channels by their gates.')
        stats = collect_gate_stats(model, variables, data, num_classes, batch_size)
    fn = _accuracy_fn(model)
    scores = {c: channel_scores(model, variables, c, stats, seed) for c in criteria}
    rows = []
    for f in fractions:
        row = {'fraction': float(f)}
        for c in criteria:
            chosen = channels_to_prune(scores[c], f)
            row['pruned'] = int(sum(len(i) for i in chosen.values()))
            row[c] = accuracy(model, prune_channels(model, variables, chosen), data,
                              batch_size, fn)
        rows.append(row)
    return rows


def format_pruning_table(rows: List[dict]) -> str:
    criteria = [k for k in rows[0] if k not in ('fraction', 'pruned')]
    lines = [f"{'pruned':>8s} {'channels':>8s} " + ' '.join(f'{c:>10s}' for c in criteria)]
    for r in rows:
        lines.append(f"{r['fraction']:8.0%} {r['pruned']:8d} "
                     + ' '.join(f'{r[c]:10.4f}' for c in criteria))
    return '\n'.join(lines)


# ---------------------------------------------------------------------------
# Models to analyse: a short training run here, or a train.py workdir.


def train_small(model, images, labels, steps: int = 300, batch_size: int = 64,
                learning_rate: float = 0.1, weight_decay: float = 5e-4, seed: int = 0):
    """A short run through the trainer's own step, for tests and quick analyses;
    returns variables.

    `images` are uint8 (N, S, S, 3) as the trainer's pipelines serve them. The
    step, optimizer and jit options are train.py's (`trainer.compile_steps`,
    `trainer.create_optimizer`): SGD with momentum 0.9, weight decay on the
    kernels, a cosine schedule from `learning_rate` to 0, fp32, one device.
    Batches are `batch_size` examples drawn without replacement each step.
    """
    from senet_jax import sharding, trainer
    config = ml_collections.ConfigDict(dict(
        image_size=int(images.shape[1]), weight_decay=weight_decay, momentum=0.9,
        nesterov=False, label_smoothing=0.0))
    learning_rate_fn = optax.cosine_decay_schedule(learning_rate, max(steps, 1))
    mesh = sharding.create_mesh(jax.devices()[:1])
    compiled = trainer.compile_steps(
        config, model, trainer.create_optimizer(config, learning_rate_fn), mesh,
        num_classes=model.num_classes, learning_rate_fn=learning_rate_fn, dtype='float32')
    state = compiled.init(jax.random.key(seed, impl='rbg'))
    dropout_rng = trainer.dropout_key(seed, mesh)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(len(labels), batch_size, replace=False)
        batch = {'image': np.asarray(images[idx]), 'label': np.asarray(labels[idx], np.int32)}
        state, _ = compiled.train(state, sharding.shard_batch(batch, mesh), dropout_rng)
    return {'params': state.params, 'batch_stats': state.batch_stats}


def load_workdir(workdir: str, step: Optional[int] = None):
    """(model, variables, meta) from the newest (or given) checkpoint of a train.py workdir."""
    import orbax.checkpoint as ocp

    directory = user_path(workdir) / 'checkpoints'
    if not directory.is_dir():
        raise FileNotFoundError(f'no checkpoints in {directory}')
    with ocp.CheckpointManager(directory) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f'no checkpoints in {directory}')
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    meta, state = restored['meta'], restored['state']
    model = create_model(meta['model'], num_classes=meta['num_classes'],
                         **set_overrides(meta.get('model_overrides')))
    variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
    return model, variables, meta


# ---------------------------------------------------------------------------
# Command line.


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m senet_jax.analysis',
        description='Per-class SE gate statistics, class specificity per depth and '
                    'SE-guided channel pruning, on scikit-learn digits.')
    parser.add_argument('--workdir', help='a train.py workdir trained on digits; '
                        'default: train se_resnet_mini here for --steps steps')
    parser.add_argument('--model', default='se_resnet_mini')
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--image-size', type=int, default=16)
    parser.add_argument('--fractions', default='0,0.1,0.25,0.5,0.75')
    parser.add_argument('--png', help='write the Fig. 6-style gate curves here')
    args = parser.parse_args(argv)

    if args.workdir:
        try:
            model, variables, meta = load_workdir(args.workdir)
        except FileNotFoundError as e:
            print(f'error: {e} (give a train.py --workdir, local or gs://)', file=sys.stderr)
            return 1
        if meta.get('dataset') != 'digits':
            print(f"error: {args.workdir} was trained on {meta.get('dataset')!r}; "
                  'the command line analyses digits runs only (use the functions for others)',
                  file=sys.stderr)
            return 1
        image_size = meta.get('image_size', args.image_size)
        print(f"loaded {meta['model']} from {args.workdir}")
    else:
        image_size = args.image_size
        model = create_model(args.model, num_classes=10)
        variables = train_small(model, *digits_data(image_size, 'train'), steps=args.steps,
                                seed=args.seed)
        print(f'trained {args.model} on digits for {args.steps} steps (seed {args.seed})')
    train, test = digits_data(image_size, 'train'), digits_data(image_size, 'test')
    # Rank channels on the training split; measure on the held-out one.
    train_stats = collect_gate_stats(model, variables, train, 10)
    stats = collect_gate_stats(model, variables, test, 10)
    print(f'held-out top-1: {stats.accuracy:.4f} ({int(stats.counts.sum())} images)\n')
    print('Class specificity of the excitations (held-out digits):')
    print(specificity_table(stats), '\n')
    fractions = [float(f) for f in args.fractions.split(',')]
    try:
        check_prunable(model)
    except ValueError as e:
        print(f'no pruning table: {e}')
    else:
        rows = pruning_table(model, variables, test, fractions=fractions, stats=train_stats,
                             seed=args.seed)
        print('Held-out top-1 after pruning a fraction of every SE block\'s channels:')
        print(format_pruning_table(rows))
    if args.png:
        try:
            write_figure(stats, args.png)
        except WriteFailed as e:
            print(f'error: {e}', file=sys.stderr)
            return 1
        print(f'\nwrote {args.png}')
    return 0


def write_figure(stats, path):
    """plot_gate_curves into `path` (local or gs://), whole or not at all: a
    failed write (full disk, permission) removes the partial file and raises
    WriteFailed."""
    path = user_path(path)
    try:
        with path.open('wb') as f:
            plot_gate_curves(stats, f)
    except Exception as e:  # pylint: disable=broad-except
        if not isinstance(e, OSError) and write_error_kind(e) is None:
            raise
        try:
            path.unlink(missing_ok=True)
        except Exception:  # pylint: disable=broad-except
            pass
        raise WriteFailed('the figure', path, e, kept='no partial file is left') from None


if __name__ == '__main__':
    sys.exit(main())
