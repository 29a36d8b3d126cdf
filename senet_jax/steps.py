"""The training and eval steps, and the optimizer they apply.

Pure functions of (state, batch): the trainer (trainer.py), the benchmark and
the analysis's small runs all jit these same functions (see
`trainer.compile_steps`). Images arrive as uint8 and are normalised on device,
in the compute dtype; parameters, BatchNorm statistics and logits stay float32.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from flax.training.dynamic_scale import DynamicScale

from senet_jax.errors import UserError
from senet_jax.mixing import Mixing, mix
from senet_jax.models import IMAGENET, normalize_images


class TrainState(train_state.TrainState):
    batch_stats: Any
    # float16 compute only: flax's dynamic loss scaling (Micikevicius et al.,
    # 2018), `initial_loss_scale()` at the start. Checkpointed with the rest, as
    # in the Flax ImageNet example; a checkpoint without one (older, or of a
    # run in another dtype) resumes with a fresh scale.
    loss_scale: DynamicScale | None = None
    # ema_decay > 0 only: the exponential moving average of the weights,
    # {'params': ..., 'batch_stats': ...} (timm's ModelEmaV2: over the
    # parameters and the BatchNorm statistics), updated after each applied
    # step. None otherwise, so a run without EMA keeps the state tree (and the
    # checkpoints) it had before.
    ema: Any = None


def initial_loss_scale() -> DynamicScale:
    """Flax's default scale (2^16, grown every 2000 finite steps), its fields
    strongly typed: from Python scalars they would be weak-typed, the step
    would return them strongly typed, and the second step would compile again."""
    return DynamicScale(fin_steps=np.int32(0), scale=np.float32(2.0 ** 16))


# ---------------------------------------------------------------------------
# Config -> schedule, optimizer, initial state.


def create_learning_rate_fn(config, steps_per_epoch: int, total_steps: int):
    """Peak lr scaled linearly with the batch (lr * batch / base_batch_size).

    'plateau' is a constant rate here: its reductions are a factor kept in the
    optimizer state (`scale_by_plateau`), fed the validation loss.
    """
    lr = config.learning_rate
    if config.get('base_batch_size', 0):
        lr = lr * config.batch_size / config.base_batch_size
    warmup_steps = int(config.get('warmup_epochs', 0) * steps_per_epoch)
    total_steps = max(total_steps, 1)
    if config.lr_schedule == 'cosine':
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=lr, warmup_steps=warmup_steps,
            decay_steps=max(total_steps, warmup_steps + 1))
    if config.lr_schedule == 'step':
        boundaries = step_boundaries(config, steps_per_epoch, total_steps)
        decay = optax.piecewise_constant_schedule(
            lr, {b: config.lr_decay_factor for b in boundaries})
    elif config.lr_schedule == 'constant':
        return optax.constant_schedule(lr)
    elif config.lr_schedule == 'plateau':
        decay = optax.constant_schedule(lr)
    else:
        raise UserError(f'lr_schedule must be step, cosine, constant or plateau, '
                        f'got {config.lr_schedule!r}')
    if not warmup_steps:
        return decay
    warmup = optax.linear_schedule(0.0, lr, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def step_boundaries(config, steps_per_epoch: int, total_steps: int) -> list:
    """The steps at which 'step' multiplies the rate by lr_decay_factor:
    lr_boundaries_steps, else lr_boundaries_epochs, else every lr_decay_epochs
    epochs (the paper's ImageNet recipe: /10 every 30)."""
    in_steps = tuple(config.get('lr_boundaries_steps', ()) or ())
    in_epochs = tuple(config.get('lr_boundaries_epochs', ()) or ())
    if in_steps and in_epochs:
        raise UserError('set lr_boundaries_steps or lr_boundaries_epochs, not both')
    if in_steps or in_epochs:
        given = in_steps or in_epochs
        if any(b <= 0 for b in given) or list(given) != sorted(set(given)):
            raise UserError(f'lr boundaries must be positive and increasing, got {given}')
        if in_steps:
            return [int(b) for b in in_steps]
        return sorted({max(int(round(e * steps_per_epoch)), 1) for e in in_epochs})
    every = max(int(config.lr_decay_epochs * steps_per_epoch), 1)
    return list(range(every, total_steps, every))


# ---------------------------------------------------------------------------
# Reduce on plateau: optax.contrib.reduce_on_plateau's state and rule, fed the
# validation loss after each evaluation (not the training loss of each step).


def _is_plateau(node) -> bool:
    return isinstance(node, optax.contrib.ReduceLROnPlateauState)


def reduce_on_plateau(config) -> optax.GradientTransformationExtraArgs:
    """optax's transform with the config's plateau_* fields; raises UserError
    on values it cannot use. Patience and cooldown count evaluations."""
    factor, patience = config.plateau_factor, config.plateau_patience
    cooldown, min_scale = config.plateau_cooldown, config.plateau_min_scale
    rtol = config.get('plateau_rtol', 1e-4)
    if not (0 < factor < 1 and patience >= 1 and cooldown >= 0
            and 0 <= min_scale <= 1 and 0 < rtol <= 1):
        raise UserError(
            'need 0 < plateau_factor < 1, plateau_patience >= 1, plateau_cooldown >= 0, '
            f'0 <= plateau_min_scale <= 1 and 0 < plateau_rtol <= 1, got {factor}, '
            f'{patience}, {cooldown}, {min_scale} and {rtol}')
    return optax.contrib.reduce_on_plateau(
        factor=factor, patience=patience, rtol=rtol, cooldown=cooldown,
        min_scale=min_scale)


def scale_by_plateau(config) -> optax.GradientTransformation:
    """Multiplies the updates by the plateau scale; only `observe_validation_loss`
    changes it. Its state sits in opt_state, so checkpoints keep it."""
    plateau = reduce_on_plateau(config)

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: u * state.scale.astype(u.dtype), updates), state
    return optax.GradientTransformation(plateau.init, update)


def observe_validation_loss(state, eval_loss, *, config):
    """`state` after the plateau rule has seen one evaluation's loss."""
    plateau = reduce_on_plateau(config)

    def feed(node):
        return plateau.update({}, node, value=eval_loss)[1] if _is_plateau(node) else node
    return state.replace(opt_state=jax.tree.map(feed, state.opt_state,
                                                is_leaf=_is_plateau))


def plateau_scale(opt_state):
    """The factor the plateau rule applies now (1 without one)."""
    found = [n.scale for n in jax.tree.leaves(opt_state, is_leaf=_is_plateau)
             if _is_plateau(n)]
    return found[0] if found else 1.0


def weight_decay_mask(params):
    """True for conv and dense kernels; biases and BatchNorm scales are exempt."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


# timm's Lamb clips the global gradient norm at 1 by default; RSB kept it.
LAMB_MAX_GRAD_NORM = 1.0


def lamb(learning_rate_fn, weight_decay: float, b1: float, b2: float, eps: float):
    """timm's Lamb (NVIDIA's NvLAMB form) as ResNet Strikes Back trained with it,
    built from optax.lamb's own parts: the gradient clipped to a global norm of 1,
    Adam's bias-corrected moments, weight decay added to that update, and the
    layer-wise trust ratio ||w|| / ||update||, both on kernels only (timm skips
    the ratio on the parameters it does not decay; optax.lamb adapts every leaf
    and does not clip)."""
    parts = [optax.clip_by_global_norm(LAMB_MAX_GRAD_NORM),
             optax.scale_by_adam(b1=b1, b2=b2, eps=eps)]
    if weight_decay:   # timm: no decay, no trust ratio (always_adapt=False)
        parts += [optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
                  optax.masked(optax.scale_by_trust_ratio(), weight_decay_mask)]
    return optax.chain(*parts, optax.scale_by_learning_rate(learning_rate_fn))


def create_optimizer(config, learning_rate_fn):
    """optimizer='sgd': SGD with momentum and coupled weight decay (added to the
    gradient); 'lamb': see `lamb`. lr_schedule='plateau' multiplies the
    resulting update by the plateau scale, which is the same as scaling the
    learning rate."""
    optimizer = config.get('optimizer', 'sgd')
    if optimizer == 'sgd':
        parts = [optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask),
                 optax.sgd(learning_rate_fn, momentum=config.momentum,
                           nesterov=config.nesterov)]
    elif optimizer == 'lamb':
        parts = [lamb(learning_rate_fn, config.weight_decay, config.lamb_b1,
                      config.lamb_b2, config.lamb_eps)]
    else:
        raise UserError(f"optimizer must be 'sgd' or 'lamb', got {optimizer!r}")
    if config.get('lr_schedule') == 'plateau':
        parts.append(scale_by_plateau(config))
    return optax.chain(*parts)


def ema_decay_of(config) -> float:
    """config.ema_decay, checked: 0 (off) or in (0, 1)."""
    decay = config.get('ema_decay', 0.0) or 0.0
    if not 0 <= decay < 1:
        raise UserError(f'ema_decay must be in [0, 1) (0 = no EMA), got {decay}')
    return decay


def start_ema(state: TrainState) -> TrainState:
    """`state` with its EMA set to (a copy of) its weights: the EMA's start,
    as timm's ModelEmaV2 starts as a copy of the model."""
    return state.replace(ema=jax.tree.map(
        jnp.copy, {'params': state.params, 'batch_stats': state.batch_stats}))


def create_train_state(rng, config, model, tx, dtype='float32') -> TrainState:
    x = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    variables = model.init({'params': rng}, x, train=False)
    state = TrainState.create(
        apply_fn=model.apply, params=variables['params'],
        batch_stats=variables['batch_stats'], tx=tx,
        loss_scale=initial_loss_scale() if dtype == 'float16' else None)
    # flax starts the step at Python's 0, weak-typed; a restored step is strongly
    # typed, and a resumed run would compile another train step than the fresh
    # run's (no persistent compilation cache hit after a preemption).
    state = state.replace(step=jnp.zeros((), jnp.int32))
    return start_ema(state) if ema_decay_of(config) else state


def update_ema(ema, params, batch_stats, decay):
    """timm's ModelEmaV2 step: ema = decay * ema + (1 - decay) * value."""
    return optax.incremental_update({'params': params, 'batch_stats': batch_stats},
                                    ema, step_size=1.0 - decay)


def ema_view(state: TrainState) -> TrainState:
    """`state` with the EMA's weights in place of the model's (to evaluate them)."""
    return state.replace(params=state.ema['params'],
                         batch_stats=state.ema['batch_stats'])


# ---------------------------------------------------------------------------
# Steps.


LOSSES = ('softmax', 'bce')


def soft_targets(labels, num_classes, label_smoothing=0.0):
    """One-hot targets, smoothed: 1 - s + s/K on the label, s/K elsewhere (as
    optax's smooth_labels and timm's mixup_target)."""
    one_hot = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
        one_hot = optax.smooth_labels(one_hot, label_smoothing)
    return one_hot


def cross_entropy_loss(logits, labels, num_classes, label_smoothing=0.0):
    return optax.softmax_cross_entropy(
        logits, soft_targets(labels, num_classes, label_smoothing))


def binary_cross_entropy_loss(logits, targets, target_threshold=None):
    """Per example, timm's BinaryCrossEntropy on soft targets: one sigmoid per
    class, averaged over the classes (so the batch mean is timm's reduction
    'mean'); with `target_threshold`, targets above it count as 1, the rest 0."""
    if target_threshold is not None:
        targets = (targets > target_threshold).astype(logits.dtype)
    return optax.sigmoid_binary_cross_entropy(logits, targets).mean(-1)


def loss_per_example(logits, targets, loss='softmax', target_threshold=None):
    if loss == 'bce':
        return binary_cross_entropy_loss(logits, targets, target_threshold)
    return optax.softmax_cross_entropy(logits, targets)


def _all_finite(tree):
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x))
                                for x in jax.tree.leaves(tree)]))


def train_step(state, batch, dropout_rng, *, num_classes, label_smoothing,
               learning_rate_fn, dtype, input_format=IMAGENET, loss='softmax',
               bce_target_threshold=None, mixing: Mixing | None = None,
               ema_decay=0.0):
    """One optimizer step on the global batch.

    The targets are the smoothed one-hot labels, mixed with the images by
    `mixing` (Mixup / CutMix, when active) after normalisation; the loss is
    `loss` ('softmax' cross-entropy or timm's 'bce') on them.

    A step whose loss or gradient is not finite leaves params, batch_stats and
    optimizer state unchanged (only the step counter advances, it is the data
    position); metrics['finite'] tells the host, which stops or counts it.
    Under float16 loss scaling an overflowing gradient is the scale's business
    (it halves), not a non-finite step; a non-finite loss still is. The EMA
    (state.ema, when there is one) moves only on applied steps.
    """
    rng = jax.random.fold_in(dropout_rng, state.step)
    targets = soft_targets(batch['label'], num_classes, label_smoothing)
    mixed = mixing is not None and mixing.active
    if mixed:
        # Mixed in float32 (as timm mixes its float tensors), then cast to the compute
        # dtype; drawn from the step's key, apart from dropout's: a resume draws the same.
        images = normalize_images(batch['image'], jnp.float32, input_format)
        n, height, width = images.shape[:3]
        draw = mixing.draw(jax.random.fold_in(rng, 1), n, height, width)
        images, targets = mix(images, targets, draw)
        images = images.astype(dtype)
    else:
        images = normalize_images(batch['image'], dtype, input_format)
    scaled = state.loss_scale is not None

    def loss_fn(params):
        logits, new_model_state = state.apply_fn(
            {'params': params, 'batch_stats': state.batch_stats}, images,
            train=True, mutable=['batch_stats'], rngs={'dropout': rng})
        logits = logits.astype(jnp.float32)
        value = loss_per_example(logits, targets, loss, bce_target_threshold).mean()
        return value, (value, new_model_state, logits)  # aux: the loss unscaled

    # float16: the loss scale multiplies the loss and divides the gradient.
    value_and_grad = state.loss_scale.value_and_grad if scaled else jax.value_and_grad
    out = value_and_grad(loss_fn, has_aux=True)(state.params)
    if scaled:
        loss_scale, grads_finite, (_, (loss_value, new_model_state, logits)), grads = out
    else:
        (_, (loss_value, new_model_state, logits)), grads = out
        grads_finite = _all_finite(grads)
    updated = state.apply_gradients(
        grads=grads, batch_stats=new_model_state['batch_stats'])
    if state.ema is not None:
        updated = updated.replace(ema=update_ema(
            state.ema, updated.params, updated.batch_stats, ema_decay))
    apply = jnp.isfinite(loss_value) & grads_finite & _all_finite(updated.params)
    new_state = jax.tree.map(lambda new, old: jnp.where(apply, new, old),
                             updated, state.replace(step=updated.step))
    finite = apply
    if scaled:
        new_state = new_state.replace(loss_scale=loss_scale)
        finite = apply | (jnp.isfinite(loss_value) & ~grads_finite)
    # With mixed targets, the class with the largest share of the target counts
    # as the label (its argmax), as timm's train loop would if it logged top-1.
    labels = jnp.argmax(targets, -1) if mixed else batch['label']
    metrics = {
        'loss': loss_value,
        'top1': jnp.mean(jnp.argmax(logits, -1) == labels),
        'learning_rate': learning_rate_fn(state.step) * plateau_scale(state.opt_state),
        'finite': finite,
    }
    return new_state, metrics


def eval_step(state, batch, totals, *, num_classes, dtype, input_format=IMAGENET):
    """`totals` plus this batch's masked sums (padding rows have mask 0).

    The sums stay on the devices from batch to batch; the host fetches them
    once, after the last batch.
    """
    logits = state.apply_fn(
        {'params': state.params, 'batch_stats': state.batch_stats},
        normalize_images(batch['image'], dtype, input_format), train=False).astype(jnp.float32)
    mask = batch['mask']
    labels = batch['label']
    loss = cross_entropy_loss(logits, labels, num_classes)
    _, top5 = jax.lax.top_k(logits, min(5, num_classes))
    sums = {
        'loss': jnp.sum(loss * mask),
        'top1': jnp.sum((top5[:, 0] == labels) * mask),
        'top5': jnp.sum(jnp.any(top5 == labels[:, None], -1) * mask),
        'count': jnp.sum(mask),
    }
    return jax.tree.map(jnp.add, totals, sums)


def zero_eval_totals():
    """Host zeros for `eval_step`'s first `totals` (no device round trip)."""
    return {k: np.float32(0) for k in ('loss', 'top1', 'top5', 'count')}
