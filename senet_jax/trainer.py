"""Training and evaluation: TrainState, train_step, eval_step, train_and_evaluate.

Data parallel over a 'data' mesh of every device of every process (see
sharding.py): the batch is sharded, parameters and optimizer state replicated,
one `jax.jit` per step. Images arrive as uint8 and are normalised on device.
"""

import difflib
import functools
import json
import math
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from flax.training import train_state
from jax.experimental import multihost_utils

from senet_jax import checkpoint as checkpoint_lib
from senet_jax import data as data_lib
from senet_jax import sharding as sharding_lib
from senet_jax import xla_cpu
from senet_jax.errors import NonFiniteLossError, Preempted, UserError
from senet_jax.models import (create_model, list_models, min_input_size, normalize_images,
                              set_overrides)


class TrainState(train_state.TrainState):
    batch_stats: Any


# ---------------------------------------------------------------------------
# Config -> model, schedule, optimizer.


def validate_config(config: ml_collections.ConfigDict):
    """Raises UserError, one sentence, for values no run can use."""
    if config.model not in list_models():
        close = difflib.get_close_matches(config.model, list_models(), n=3)
        hint = f' (did you mean {", ".join(close)}?)' if close else ''
        raise UserError(f'unknown model {config.model!r}{hint}; known models: '
                        f'{", ".join(list_models())}')
    if not config.learning_rate > 0:
        raise UserError(f'learning_rate must be positive, got '
                        f'{config.learning_rate}')
    if config.batch_size <= 0:
        raise UserError(f'batch_size must be positive, got {config.batch_size}')
    if config.num_train_steps < 0 and config.num_epochs <= 0:
        raise UserError('set num_epochs > 0 or num_train_steps > 0 '
                        f'(got num_epochs={config.num_epochs}, '
                        f'num_train_steps={config.num_train_steps})')
    if config.num_train_steps == 0 and not config.init_from:
        raise UserError('num_train_steps=0 only evaluates; give the weights to '
                        'evaluate with --config.init_from=<converted weights dir>')
    if not 0 <= config.label_smoothing < 1:
        raise UserError(f'label_smoothing must be in [0, 1), got '
                        f'{config.label_smoothing}')
    if config.weight_decay < 0 or not 0 <= config.momentum < 1:
        raise UserError(f'need weight_decay >= 0 and 0 <= momentum < 1, got '
                        f'{config.weight_decay} and {config.momentum}')
    if config.keep_checkpoints < 1:
        raise UserError('keep_checkpoints must be at least 1 (resuming needs a '
                        f'checkpoint), got {config.keep_checkpoints}')
    for field in ('log_every_steps', 'checkpoint_every_steps',
                  'eval_every_steps'):
        if config[field] < 0:
            raise UserError(f'{field} must be >= 0 (0 = once per epoch), got '
                            f'{config[field]}')


def create_model_from_config(config, num_classes: int):
    overrides = set_overrides(config.get('model_overrides'))
    if config.get('drop_rate') is not None:
        overrides['drop_rate'] = config.drop_rate
    if config.half_precision:
        overrides['dtype'] = jnp.bfloat16
    try:
        model = create_model(config.model, num_classes=num_classes, **overrides)
    except ValueError as e:
        raise UserError(str(e)) from None
    smallest = min_input_size(model)
    if config.image_size < smallest:
        raise UserError(f'image_size {config.image_size} is too small for '
                        f'{config.model}; it needs at least {smallest}')
    return model


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


def create_train_state(rng, config, model, tx) -> TrainState:
    x = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    variables = model.init({'params': rng}, x, train=False)
    return TrainState.create(apply_fn=model.apply, params=variables['params'],
                             batch_stats=variables['batch_stats'], tx=tx)


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
               learning_rate_fn, dtype):
    """One SGD step on the global batch.

    A step whose loss or gradient is not finite leaves params, batch_stats and
    optimizer state unchanged (only the step counter advances, it is the data
    position); metrics['finite'] tells the host, which stops or counts it.
    """
    rng = jax.random.fold_in(dropout_rng, state.step)
    images = normalize_images(batch['image'], dtype)

    def loss_fn(params):
        logits, new_model_state = state.apply_fn(
            {'params': params, 'batch_stats': state.batch_stats}, images,
            train=True, mutable=['batch_stats'], rngs={'dropout': rng})
        logits = logits.astype(jnp.float32)
        loss = cross_entropy_loss(logits, batch['label'], num_classes,
                                  label_smoothing).mean()
        return loss, (new_model_state, logits)

    (loss, (new_model_state, logits)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updated = state.apply_gradients(
        grads=grads, batch_stats=new_model_state['batch_stats'])
    finite = (jnp.isfinite(loss) & _all_finite(grads)
              & _all_finite(updated.params))
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                             updated, state.replace(step=updated.step))
    metrics = {
        'loss': loss,
        'top1': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
        'learning_rate': learning_rate_fn(state.step),
        'finite': finite,
    }
    return new_state, metrics


def eval_step(state, batch, *, num_classes, dtype):
    """Masked sums over the global batch (padding rows have mask 0)."""
    logits = state.apply_fn(
        {'params': state.params, 'batch_stats': state.batch_stats},
        normalize_images(batch['image'], dtype), train=False).astype(jnp.float32)
    mask = batch['mask']
    labels = batch['label']
    loss = cross_entropy_loss(logits, labels, num_classes)
    _, top5 = jax.lax.top_k(logits, min(5, num_classes))
    return {
        'loss': jnp.sum(loss * mask),
        'top1': jnp.sum((top5[:, 0] == labels) * mask),
        'top5': jnp.sum(jnp.any(top5 == labels[:, None], -1) * mask),
        'count': jnp.sum(mask),
    }


def evaluate(eval_fn, state, pipeline, mesh) -> dict:
    sums = None
    for batch in pipeline.eval_batches():
        out = eval_fn(state, sharding_lib.shard_batch(batch, mesh))
        out = jax.device_get(out)
        sums = out if sums is None else jax.tree.map(np.add, sums, out)
    n = float(sums['count'])
    return {'eval_loss': float(sums['loss']) / n,
            'eval_top1': float(sums['top1']) / n,
            'eval_top5': float(sums['top5']) / n,
            'eval_examples': int(n)}


# ---------------------------------------------------------------------------
# Metrics output: console, TensorBoard (clu) and metrics.jsonl; process 0 only.


class MetricsLog:

    def __init__(self, workdir):
        self.primary = jax.process_index() == 0
        self.jsonl = os.path.join(workdir, 'metrics.jsonl')
        # The console line is ours (see the loop); clu writes TensorBoard events.
        self.writer = (metric_writers.AsyncWriter(
            metric_writers.SummaryWriter(workdir)) if self.primary else None)

    def write(self, step: int, scalars: dict):
        if not self.primary:
            return
        self.writer.write_scalars(step, scalars)
        with open(self.jsonl, 'a') as f:
            f.write(json.dumps({'step': step, **scalars}) + '\n')

    def close(self):
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def _format_duration(seconds):
    seconds = int(seconds)
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s'


# ---------------------------------------------------------------------------
# Pretrained weights.


def load_init_from(config, state: TrainState, num_classes: int):
    """Params/batch_stats of `state` replaced by converted weights."""
    from senet_jax import convert  # pylint: disable=g-import-not-at-top
    try:
        src_model, variables = convert.load_pretrained(config.init_from)
    except (convert.ConversionError, OSError, ValueError) as e:
        raise UserError(f'cannot load init_from={config.init_from}: {e}') from None
    params = dict(variables['params'])
    if src_model.num_classes != num_classes:
        logging.info('init_from: %s has %d classes, the dataset %d: keeping the '
                     'backbone, re-initialising the classifier (fc)',
                     config.init_from, src_model.num_classes, num_classes)
        params['fc'] = state.params['fc']
    new = {'params': params, 'batch_stats': variables['batch_stats']}
    old = {'params': state.params, 'batch_stats': state.batch_stats}
    same = (jax.tree.structure(new) == jax.tree.structure(old) and all(
        a.shape == b.shape for a, b in zip(jax.tree.leaves(new),
                                           jax.tree.leaves(old))))
    if not same:
        with open(os.path.join(config.init_from, convert.METADATA)) as f:
            src_name = json.load(f).get('model')
        raise UserError(f'init_from={config.init_from} holds {src_name} weights, '
                        f'which do not fit {config.model} with this config')
    new = jax.tree.map(lambda x, ref: np.asarray(x, ref.dtype), new, old)
    return state.replace(params=new['params'], batch_stats=new['batch_stats'])


# ---------------------------------------------------------------------------
# The loop.


def _every(n, default):
    return n if n > 0 else default


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from workdir when it holds checkpoints) and evaluates.

    Returns the last eval metrics (empty dict when a finished run is rerun).
    """
    validate_config(config)
    mesh = sharding_lib.create_mesh()
    problem = sharding_lib.batch_size_problem(config.batch_size, mesh)
    if problem:
        raise UserError(problem)
    create_model_from_config(config, num_classes=1)  # model errors before data
    pipeline = data_lib.create_input_pipeline(config, jax.process_index(),
                                              jax.process_count())
    num_classes = pipeline.num_classes
    steps_per_epoch = pipeline.steps_per_epoch
    if config.num_train_steps >= 0:
        total_steps = config.num_train_steps
    else:
        total_steps = int(math.ceil(config.num_epochs * steps_per_epoch))
    model = create_model_from_config(config, num_classes)
    dtype = jnp.bfloat16 if config.half_precision else jnp.float32
    learning_rate_fn = create_learning_rate_fn(config, steps_per_epoch, total_steps)
    tx = create_optimizer(config, learning_rate_fn)
    identity = {
        'model': config.model, 'num_classes': num_classes,
        # kernels changes how the layers are computed, not what: a run may
        # resume under another.
        'model_overrides': json.loads(json.dumps(
            {k: v for k, v in (config.get('model_overrides') or ml_collections.ConfigDict())
             .to_dict().items() if k != 'kernels'}, default=str)),
        'dataset': config.dataset, 'batch_size': config.batch_size,
        'image_size': config.image_size, 'seed': config.seed,
    }

    os.makedirs(workdir, exist_ok=True)
    replicated = sharding_lib.replicated(mesh)
    # Parameters are initialised once, replicated: the 'rbg' generator compiles
    # much faster than threefry there. Dropout keeps the default (threefry),
    # whose streams do not depend on how the batch is sharded.
    init_rng = jax.random.key(config.seed, impl='rbg')
    dropout_rng = jax.random.fold_in(jax.random.key(config.seed), 1)
    init_fn = jax.jit(functools.partial(create_train_state, config=config,
                                        model=model, tx=tx),
                      out_shardings=replicated)
    abstract_state = jax.eval_shape(init_fn, init_rng)
    abstract_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        abstract_state)

    def fresh_state():
        state = init_fn(init_rng)
        if config.init_from:
            state = load_init_from(config, jax.device_get(state), num_classes)
            state = sharding_lib.replicate(state, mesh)
            logging.info('initialised from %s', config.init_from)
        return state

    eval_fn = jax.jit(functools.partial(eval_step, num_classes=num_classes,
                                        dtype=dtype),
                      compiler_options=xla_cpu.compiler_options())
    if total_steps == 0:  # eval-only: the init_from weights, no checkpoints
        metrics_log = MetricsLog(workdir)
        metrics = evaluate(eval_fn, fresh_state(), pipeline, mesh)
        logging.info('eval of %s: top-1 error %.2f%%, top-5 error %.2f%% on %d '
                     'examples', config.init_from, 100 * (1 - metrics['eval_top1']),
                     100 * (1 - metrics['eval_top5']), metrics['eval_examples'])
        metrics_log.write(0, metrics)
        metrics_log.close()
        return metrics

    ckpts = checkpoint_lib.Checkpoints(workdir, keep=config.keep_checkpoints)
    restored = ckpts.restore_latest(abstract_state, identity)
    if restored is not None:
        state, step = restored
        logging.info('resumed from checkpoint step %d in %s%s', step,
                     ckpts.directory,
                     ' (init_from is only used on a fresh start)'
                     if config.init_from else '')
    else:
        state = fresh_state()
    start_step = int(jax.device_get(state.step))
    if start_step >= total_steps:
        logging.info('already trained to step %d of %d in %s; nothing to do',
                     start_step, total_steps, workdir)
        ckpts.close()
        return {}
    metrics_log = MetricsLog(workdir)

    p_train_step = jax.jit(
        functools.partial(train_step, num_classes=num_classes,
                          label_smoothing=config.label_smoothing,
                          learning_rate_fn=learning_rate_fn, dtype=dtype),
        in_shardings=(replicated, sharding_lib.data_sharding(mesh), replicated),
        out_shardings=(replicated, replicated), donate_argnums=0,
        compiler_options=xla_cpu.compiler_options())
    dropout_rng = sharding_lib.replicate(jax.random.key_data(dropout_rng), mesh)
    dropout_rng = jax.random.wrap_key_data(dropout_rng)

    log_every = _every(config.log_every_steps, steps_per_epoch)
    eval_every = _every(config.eval_every_steps, steps_per_epoch)
    ckpt_every = _every(config.checkpoint_every_steps, steps_per_epoch)
    check_every = max(config.get('preemption_check_every_steps', 1), 1)

    # SIGTERM only sets a flag; the loop agrees on a step across processes.
    # (Signal handlers can only be set from the main thread.)
    sigterm = []
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = (signal.signal(signal.SIGTERM,
                                      lambda *_: sigterm.append(True))
                        if in_main_thread else None)

    logging.info('training %s on %s: %d classes, %d train / %d eval examples, '
                 '%d steps (%d per epoch), global batch %d on %d devices, '
                 '%d process(es)', config.model, config.dataset, num_classes,
                 pipeline.num_train_examples, pipeline.num_eval_examples,
                 total_steps, steps_per_epoch, config.batch_size,
                 mesh.devices.size, jax.process_count())
    pending = []  # per-step device metrics not yet fetched
    fetched = []  # host metrics of finite steps since the last console line
    skipped = 0
    last_eval = {}
    t_log, steps_since_log = time.time(), 0

    def flush(step):
        """Fetches pending step metrics into `fetched`; stops at a non-finite
        step unless told to skip them. `step` is the number of steps done."""
        nonlocal skipped, pending
        got = jax.device_get(pending)
        first = step - len(pending)
        pending = []
        bad = [first + i + 1 for i, m in enumerate(got) if not m['finite']]
        if bad and not config.skip_nonfinite_steps:
            raise NonFiniteLossError(
                f'non-finite loss or gradient at step {bad[0]}; stopped, keeping '
                f'the checkpoints of finite steps in {ckpts.directory} (newest: '
                f'{ckpts.latest_step()}); lower learning_rate or set '
                'skip_nonfinite_steps=True')
        if bad:
            skipped += len(bad)
            logging.warning('skipped %d non-finite step(s) (%s); %d so far',
                            len(bad), bad[:5], skipped)
        fetched.extend(m for m in got if m['finite'])

    try:
        batches = pipeline.train_batches(start_step)
        step = start_step
        while step < total_steps:
            batch = sharding_lib.shard_batch(next(batches), mesh)
            state, m = p_train_step(state, batch, dropout_rng)
            pending.append(m)
            step += 1
            steps_since_log += 1
            preempted = ((step % check_every == 0 or step == total_steps)
                         and _agree(bool(sigterm)))
            if preempted or step % log_every == 0 or step == total_steps:
                flush(step)
                good, fetched[:] = list(fetched), []
                elapsed = time.time() - t_log
                rate = steps_since_log * config.batch_size / max(elapsed, 1e-9)
                scalars = {
                    'train_loss': float(np.mean([g['loss'] for g in good]))
                                  if good else float('nan'),
                    'train_top1': float(np.mean([g['top1'] for g in good]))
                                  if good else float('nan'),
                    'learning_rate': float(m['learning_rate']),
                    'images_per_sec': rate,
                }
                if config.skip_nonfinite_steps:
                    scalars['skipped_steps'] = skipped
                left = (total_steps - step) * elapsed / max(steps_since_log, 1)
                logging.info('step %d/%d  loss %.4f  top1 %.4f  lr %.5g  %.1f img/s  '
                             '%s left', step, total_steps, scalars['train_loss'],
                             scalars['train_top1'], scalars['learning_rate'], rate,
                             _format_duration(left))
                metrics_log.write(step, scalars)
                t_log, steps_since_log = time.time(), 0
            if preempted:
                ckpts.save(step, state, identity)
                ckpts.wait()
                raise Preempted(step)

            do_eval = step % eval_every == 0 or step == total_steps
            do_ckpt = do_eval or step % ckpt_every == 0 or step == total_steps
            if do_eval or do_ckpt:
                flush(step)  # never checkpoint past a non-finite step
            if do_eval:
                last_eval = evaluate(eval_fn, state, pipeline, mesh)
                logging.info('eval at step %d: loss %.4f  top1 %.4f  top5 %.4f',
                             step, last_eval['eval_loss'], last_eval['eval_top1'],
                             last_eval['eval_top5'])
                metrics_log.write(step, last_eval)
                t_log = time.time()  # keep eval time out of images/sec
            if do_ckpt:
                ckpts.save(step, state, identity,
                           metrics={'eval_top1': last_eval['eval_top1']}
                           if do_eval else None)
        ckpts.wait()
        logging.info('finished %d steps; eval top-1 %.4f, top-5 %.4f',
                     total_steps, last_eval.get('eval_top1', float('nan')),
                     last_eval.get('eval_top5', float('nan')))
        return last_eval
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
        ckpts.wait()
        ckpts.close()
        metrics_log.close()


def _agree(flag: bool) -> bool:
    """True on every process if any process saw `flag` (one tiny all-gather)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))
