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
from senet_jax.models import IMAGENET, normalize_images


class TrainState(train_state.TrainState):
    batch_stats: Any
    # float16 compute only: flax's dynamic loss scaling (Micikevicius et al.,
    # 2018). Never checkpointed; a resume starts a fresh scale.
    loss_scale: DynamicScale | None = None


# ---------------------------------------------------------------------------
# Config -> schedule, optimizer, initial state.


def create_learning_rate_fn(config, steps_per_epoch: int, total_steps: int):
    """Peak lr scaled linearly with the batch (lr * batch / base_batch_size)."""
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
        # /10 every lr_decay_epochs epochs (paper: 30).
        every = max(int(config.lr_decay_epochs * steps_per_epoch), 1)
        boundaries = {b: config.lr_decay_factor
                      for b in range(every, total_steps, every)}
        decay = optax.piecewise_constant_schedule(lr, boundaries)
        if not warmup_steps:
            return decay
        warmup = optax.linear_schedule(0.0, lr, warmup_steps)
        return optax.join_schedules([warmup, decay], [warmup_steps])
    if config.lr_schedule == 'constant':
        return optax.constant_schedule(lr)
    raise UserError(f'lr_schedule must be step, cosine or constant, got '
                    f'{config.lr_schedule!r}')


def weight_decay_mask(params):
    """True for conv and dense kernels; biases and BatchNorm scales are exempt."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def create_optimizer(config, learning_rate_fn):
    """SGD with momentum and coupled weight decay (added to the gradient)."""
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask),
        optax.sgd(learning_rate_fn, momentum=config.momentum,
                  nesterov=config.nesterov))


def create_train_state(rng, config, model, tx, dtype='float32') -> TrainState:
    x = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    variables = model.init({'params': rng}, x, train=False)
    return TrainState.create(
        apply_fn=model.apply, params=variables['params'],
        batch_stats=variables['batch_stats'], tx=tx,
        loss_scale=DynamicScale() if dtype == 'float16' else None)


# ---------------------------------------------------------------------------
# Steps.


def cross_entropy_loss(logits, labels, num_classes, label_smoothing=0.0):
    one_hot = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
        one_hot = optax.smooth_labels(one_hot, label_smoothing)
    return optax.softmax_cross_entropy(logits, one_hot)


def _all_finite(tree):
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x))
                                for x in jax.tree.leaves(tree)]))


def train_step(state, batch, dropout_rng, *, num_classes, label_smoothing,
               learning_rate_fn, dtype, input_format=IMAGENET):
    """One SGD step on the global batch.

    A step whose loss or gradient is not finite leaves params, batch_stats and
    optimizer state unchanged (only the step counter advances, it is the data
    position); metrics['finite'] tells the host, which stops or counts it.
    Under float16 loss scaling an overflowing gradient is the scale's business
    (it halves), not a non-finite step; a non-finite loss still is.
    """
    rng = jax.random.fold_in(dropout_rng, state.step)
    images = normalize_images(batch['image'], dtype, input_format)
    scaled = state.loss_scale is not None

    def loss_fn(params):
        logits, new_model_state = state.apply_fn(
            {'params': params, 'batch_stats': state.batch_stats}, images,
            train=True, mutable=['batch_stats'], rngs={'dropout': rng})
        logits = logits.astype(jnp.float32)
        loss = cross_entropy_loss(logits, batch['label'], num_classes,
                                  label_smoothing).mean()
        return loss, (loss, new_model_state, logits)  # aux: the loss unscaled

    # float16: the loss scale multiplies the loss and divides the gradient.
    value_and_grad = state.loss_scale.value_and_grad if scaled else jax.value_and_grad
    out = value_and_grad(loss_fn, has_aux=True)(state.params)
    if scaled:
        loss_scale, grads_finite, (_, (loss, new_model_state, logits)), grads = out
    else:
        (_, (loss, new_model_state, logits)), grads = out
        grads_finite = _all_finite(grads)
    updated = state.apply_gradients(
        grads=grads, batch_stats=new_model_state['batch_stats'])
    apply = jnp.isfinite(loss) & grads_finite & _all_finite(updated.params)
    new_state = jax.tree.map(lambda new, old: jnp.where(apply, new, old),
                             updated, state.replace(step=updated.step))
    finite = apply
    if scaled:
        new_state = new_state.replace(loss_scale=loss_scale)
        finite = apply | (jnp.isfinite(loss) & ~grads_finite)
    metrics = {
        'loss': loss,
        'top1': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
        'learning_rate': learning_rate_fn(state.step),
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
