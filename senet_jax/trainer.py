"""Training and evaluation: `train_and_evaluate(config, workdir)`.

Data parallel over a 'data' mesh of every device of every process (see
sharding.py): the batch is sharded, parameters and optimizer state replicated,
one `jax.jit` per step (the steps themselves are in steps.py). The loop reads
as its story:

  (the workdir)    one run per workdir: a lock held for the whole run, see
                   workdir.py, which also checks what a resume must match
  setup            config, mesh, data, model (built once), compiled steps
  evaluate_only    num_train_steps=0: the init_from weights, no checkpoints
  restore_or_init  the newest readable checkpoint, else fresh (or init_from)
  train            steps; at log steps the console line and metrics.jsonl; at
                   eval and checkpoint steps those; a SIGTERM agreed by every
                   process saves and stops.

Between those steps the host never waits for the devices: step metrics stay
on device until a log, eval or checkpoint step fetches them, and batches are
put on the devices two steps ahead.
"""

import collections
import contextlib
import dataclasses
import functools
import itertools
import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from senet_jax import checkpoint as checkpoint_lib
from senet_jax import data as data_lib
from senet_jax import precision
from senet_jax import sharding as sharding_lib
from senet_jax import workdir as workdir_lib
from senet_jax import xla_cpu
from senet_jax.errors import Interrupted, NonFiniteLossError, Preempted, UserError
from senet_jax.mixing import MODES as MIX_MODES
from senet_jax.mixing import Mixing
from senet_jax.metrics_log import MetricsLog  # metrics.jsonl + TensorBoard
from senet_jax.models import IMAGENET, InputFormat, create_model, min_input_size, model_spec, set_overrides
from senet_jax.steps import (LOSSES, TrainState, create_learning_rate_fn,  # noqa: F401
                             create_optimizer, create_train_state, cross_entropy_loss,
                             ema_decay_of, ema_view, eval_step, initial_loss_scale,
                             observe_validation_loss, start_ema, train_step,
                             weight_decay_mask, zero_eval_totals)


# ---------------------------------------------------------------------------
# Config -> model.


def validate_config(config: ml_collections.ConfigDict):
    """Raises UserError, one sentence, for values no run can use."""
    try:
        model_spec(config.model)   # the registry's check, with its suggestions
    except ValueError as e:
        raise UserError(str(e)) from None
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
    ema_decay_of(config)
    if config.get('eval_image_size', 0) < 0:
        raise UserError('eval_image_size must be >= 0 (0 = image_size), got '
                        f'{config.eval_image_size}')
    for field in ('log_every_steps', 'checkpoint_every_steps',
                  'eval_every_steps'):
        if config[field] < 0:
            raise UserError(f'{field} must be >= 0 (0 = once per epoch), got '
                            f'{config[field]}')
    validate_recipe(config)


def validate_recipe(config):
    """The modern-recipe fields (optimizer, loss, Mixup/CutMix, drop path); a
    config without them (an older one) has the defaults, all off."""
    optimizer = config.get('optimizer', 'sgd')
    if optimizer not in ('sgd', 'lamb'):
        raise UserError(f"optimizer must be 'sgd' or 'lamb', got {optimizer!r}")
    if optimizer == 'lamb' and not (0 <= config.lamb_b1 < 1 and 0 <= config.lamb_b2 < 1
                                    and config.lamb_eps > 0):
        raise UserError(f'need 0 <= lamb_b1 < 1, 0 <= lamb_b2 < 1 and lamb_eps > 0, got '
                        f'{config.lamb_b1}, {config.lamb_b2} and {config.lamb_eps}')
    if config.get('loss', 'softmax') not in LOSSES:
        raise UserError(f"loss must be 'softmax' or 'bce', got {config.loss!r}")
    threshold = config.get('bce_target_threshold')
    if threshold is not None and not 0 <= threshold < 1:
        raise UserError(f'bce_target_threshold must be in [0, 1) (or None for off), got {threshold}')
    mixing = mixing_from_config(config)
    if mixing.mixup_alpha < 0 or mixing.cutmix_alpha < 0:
        raise UserError(f'mixup_alpha and cutmix_alpha must be >= 0 (0 = off), got '
                        f'{mixing.mixup_alpha} and {mixing.cutmix_alpha}')
    for field, value in (('mixup_prob', mixing.prob), ('mixup_switch_prob', mixing.switch_prob)):
        if not 0 <= value <= 1:
            raise UserError(f'{field} must be in [0, 1], got {value}')
    if mixing.mode not in MIX_MODES:
        raise UserError(f"mixup_mode must be 'batch', 'pair' or 'elem', got {mixing.mode!r}")
    if mixing.active and config.batch_size % 2:
        raise UserError('Mixup and CutMix pair image i with image N-1-i of the batch (as timm), '
                        f'so batch_size must be even, got {config.batch_size}')
    rate = (config.get('model_overrides') or {}).get('drop_path_rate')
    if rate is not None and not 0 <= rate < 1:
        raise UserError(f'model_overrides.drop_path_rate must be in [0, 1), got {rate}')


def mixing_from_config(config) -> Mixing:
    return Mixing(mixup_alpha=config.get('mixup_alpha', 0.0),
                  cutmix_alpha=config.get('cutmix_alpha', 0.0),
                  prob=config.get('mixup_prob', 1.0),
                  switch_prob=config.get('mixup_switch_prob', 0.5),
                  mode=config.get('mixup_mode', 'batch'))


def create_model_from_config(config, num_classes: int, dtype: str | None = None):
    """The config's zoo model computing in `dtype` (default: the config's, on
    this machine's first device)."""
    overrides = set_overrides(config.get('model_overrides'))
    if config.get('drop_rate') is not None:
        overrides['drop_rate'] = config.drop_rate
    dtype = dtype or precision.compute_dtype(config, jax.devices()[0])
    if dtype != 'float32':
        overrides['dtype'] = precision.DTYPES[dtype]
    try:
        model = create_model(config.model, num_classes=num_classes, **overrides)
    except ValueError as e:
        raise UserError(str(e)) from None
    smallest = min_input_size(model)
    for field, size in (('image_size', config.image_size),
                        ('eval_image_size', data_lib.eval_image_size(config))):
        if size < smallest:
            raise UserError(f'{field} {size} is too small for '
                            f'{config.model}; it needs at least {smallest}')
    return model


# ---------------------------------------------------------------------------
# The compiled steps, as every caller runs them.


class Steps(NamedTuple):
    init: Callable   # rng -> TrainState, replicated
    train: Callable  # (state, batch, dropout_rng) -> (state, metrics); donates state
    eval: Callable   # (state, batch, totals) -> totals
    # lr_schedule='plateau' only: (state, eval_loss) -> state; donates state
    observe: Callable | None = None


def compile_steps(config, model, tx, mesh, *, num_classes, learning_rate_fn,
                  dtype: str) -> Steps:
    """steps.py's functions jitted for `mesh` the way train_and_evaluate runs them.

    The benchmark (`--mode train`) and `analysis.train_small` call these too, so
    the package has one training step. `config` gives image_size and
    label_smoothing; batches are dicts of uint8 'image' and int32 'label' (and
    'mask' for eval) sharded with `sharding_lib.data_sharding(mesh)`.
    """
    replicated = sharding_lib.replicated(mesh)
    compute = precision.DTYPES[dtype]
    # The zoo model's pixel format (Caffe BGR, CIFAR statistics, ...); ImageNet's otherwise.
    input_format = model_spec(config.model).input_format if 'model' in config else IMAGENET
    if config.get('input_mean'):   # a pretrained weight's own statistics (RGB, [0, 1])
        mean = tuple(255 * m for m in config.input_mean)
        std = tuple(255 * s for s in config.input_std)
        input_format = InputFormat(mean[::-1] if input_format.bgr else mean,
                                   std[::-1] if input_format.bgr else std, input_format.bgr)
    init = jax.jit(functools.partial(create_train_state, config=config, model=model,
                                     tx=tx, dtype=dtype),
                   out_shardings=replicated)
    mixing = mixing_from_config(config)
    train = jax.jit(
        functools.partial(train_step, num_classes=num_classes,
                          label_smoothing=config.label_smoothing,
                          learning_rate_fn=learning_rate_fn, dtype=compute,
                          input_format=input_format, loss=config.get('loss', 'softmax'),
                          bce_target_threshold=config.get('bce_target_threshold'),
                          mixing=mixing if mixing.active else None,
                          ema_decay=ema_decay_of(config)),
        in_shardings=(replicated, sharding_lib.data_sharding(mesh), replicated),
        out_shardings=(replicated, replicated), donate_argnums=0,
        compiler_options=xla_cpu.compiler_options())
    evaluate_fn = jax.jit(
        functools.partial(eval_step, num_classes=num_classes, dtype=compute,
                          input_format=input_format),
        out_shardings=replicated, donate_argnums=2,
        compiler_options=xla_cpu.compiler_options())
    observe = None
    if config.get('lr_schedule') == 'plateau':
        observe = jax.jit(functools.partial(observe_validation_loss, config=config),
                          out_shardings=replicated, donate_argnums=0)
    return Steps(init, train, evaluate_fn, observe)


def dropout_key(seed: int, mesh):
    """The dropout key, replicated. Dropout keeps the default generator
    (threefry), whose streams do not depend on how the batch is sharded."""
    key = jax.random.fold_in(jax.random.key(seed), 1)
    return jax.random.wrap_key_data(
        sharding_lib.replicate(jax.random.key_data(key), mesh))


# ---------------------------------------------------------------------------
# Setup: everything fixed for the run, user errors before the data loads.


@dataclasses.dataclass(frozen=True)
class Run:
    config: ml_collections.ConfigDict
    workdir: str
    mesh: Any
    pipeline: data_lib.InputPipeline
    dtype: str
    total_steps: int
    identity: dict
    steps: Steps
    init_rng: Any
    dropout_rng: Any


def setup(config, workdir: str) -> Run:
    validate_config(config)
    mesh = sharding_lib.create_mesh()
    problem = sharding_lib.batch_size_problem(config.batch_size, mesh)
    if problem:
        raise UserError(problem)
    dtype = precision.compute_dtype(config, jax.devices()[0])
    # Built before the data so that a bad model option fails at once; the
    # class count, known from the data, is set after.
    model = create_model_from_config(config, num_classes=1, dtype=dtype)
    pipeline = data_lib.create_input_pipeline(config, jax.process_index(),
                                              jax.process_count())
    model = model.clone(num_classes=pipeline.num_classes)
    if config.num_train_steps >= 0:
        total_steps = config.num_train_steps
    else:
        total_steps = int(math.ceil(config.num_epochs * pipeline.steps_per_epoch))
    learning_rate_fn = create_learning_rate_fn(config, pipeline.steps_per_epoch,
                                               total_steps)
    steps = compile_steps(config, model, create_optimizer(config, learning_rate_fn),
                          mesh, num_classes=pipeline.num_classes,
                          learning_rate_fn=learning_rate_fn, dtype=dtype)
    checkpoint_lib.prepare_workdir(workdir)
    logging.info('compute dtype %s (config dtype=%s)', dtype,
                 config.get('dtype', 'auto'))
    # Parameters are initialised once, replicated: the 'rbg' generator compiles
    # much faster than threefry there.
    return Run(config=config, workdir=workdir, mesh=mesh, pipeline=pipeline,
               dtype=dtype, total_steps=total_steps,
               identity=run_identity(config, pipeline.num_classes), steps=steps,
               init_rng=jax.random.key(config.seed, impl='rbg'),
               dropout_rng=dropout_key(config.seed, mesh))


def run_identity(config, num_classes: int) -> dict:
    """What a checkpoint records of its run: the whole config, and the data's
    class count. A resume must match it but for workdir.MAY_CHANGE (the
    compute dtype and `kernels`, how the layers compute, are among those)."""
    overrides = (config.get('model_overrides') or ml_collections.ConfigDict()).to_dict()
    overrides.pop('kernels', None)
    return {
        'model': config.model, 'num_classes': num_classes,
        'model_overrides': json.loads(json.dumps(overrides, default=str)),
        'dataset': config.dataset, 'batch_size': config.batch_size,
        'image_size': config.image_size, 'seed': config.seed,
        'config': json.loads(json.dumps(config.to_dict(), default=str)),
    }


# ---------------------------------------------------------------------------
# The state: fresh, or restored.


def fresh_state(run: Run) -> TrainState:
    state = run.steps.init(run.init_rng)
    if run.config.init_from:
        num_classes = run.pipeline.num_classes
        state = load_init_from(run.config, jax.device_get(state), num_classes)
        state = sharding_lib.replicate(state, run.mesh)
        logging.info('initialised from %s', run.config.init_from)
        if state.ema is not None:   # the EMA starts from the loaded weights
            state = start_ema(state)
    return state


# TrainState fields that checkpoints of an older version may lack: such a
# checkpoint restores with them None, for restore_or_init to fill (loss_scale:
# a fresh scale under float16; ema: the restored weights, see below), where
# any other change of the state's structure stops the run
# (checkpoint.structure_difference). A field the checkpoint holds but this run
# does not use (a float16 scale resumed in float32, an EMA resumed with
# ema_decay=0) is read and dropped.
MAY_BE_ABSENT = ('loss_scale', 'ema')


def restore_or_init(run: Run, ckpts) -> TrainState:
    """The newest readable checkpoint's state, or a fresh one if there is none.

    A float16 run resumes with the loss scale its checkpoint holds, or a fresh
    one where it holds none; other dtypes drop a saved scale. An EMA run
    resumes its EMA; from a checkpoint without one (written with ema_decay=0
    or by an older version) the EMA starts from the restored weights, as
    timm's train.py starts ModelEmaV2 from the resumed model when the
    checkpoint holds no EMA: the model's own training is unchanged, so
    there is nothing to refuse."""
    replicated = sharding_lib.replicated(run.mesh)
    # Only a float16 run reads a scale; another drops a saved one unread (and
    # says nothing of a checkpoint that has none).
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(run.steps.init, run.init_rng).replace(
            loss_scale=jax.eval_shape(initial_loss_scale) if run.dtype == 'float16' else None))
    allow = bool(run.config.get('allow_config_change', False))
    restored = ckpts.restore_latest(
        abstract, run.identity, MAY_BE_ABSENT,
        check=functools.partial(workdir_lib.check_resume, allow=allow))
    if restored is None:
        return fresh_state(run)
    state, step = restored
    logging.info('resumed from checkpoint step %d in %s%s', step,
                 ckpts.directory, ' (init_from is only used on a fresh start)'
                 if run.config.init_from else '')
    if run.dtype != 'float16':
        state = state.replace(loss_scale=None)
    elif state.loss_scale is None:
        state = state.replace(
            loss_scale=sharding_lib.replicate(initial_loss_scale(), run.mesh))
    if ema_decay_of(run.config) and state.ema is None:
        logging.info('checkpoint %d holds no EMA of the weights; the EMA '
                     '(ema_decay=%g) starts from its weights', step,
                     ema_decay_of(run.config))
        state = start_ema(state)
    return state


# ---------------------------------------------------------------------------
# Evaluation.


def evaluate(eval_fn, state, pipeline, mesh, max_batches: int = 0) -> dict:
    """Top-1/top-5 and loss over every eval example (or the first `max_batches`
    batches, the same count on every process); sums stay on device and are
    fetched once, after the last batch."""
    totals = sharding_lib.replicate(zero_eval_totals(), mesh)
    batches = pipeline.eval_batches()
    for batch in itertools.islice(batches, max_batches or None):
        totals = eval_fn(state, sharding_lib.shard_batch(batch, mesh), totals)
    sums = jax.device_get(totals)
    n = float(sums['count'])
    return {'eval_loss': float(sums['loss']) / n,
            'eval_top1': float(sums['top1']) / n,
            'eval_top5': float(sums['top5']) / n,
            'eval_examples': int(n)}


def evaluate_only(run: Run) -> dict:
    """num_train_steps=0: evaluates the init_from weights; no checkpoints."""
    metrics_log = MetricsLog(run.workdir)
    metrics = evaluate(run.steps.eval, fresh_state(run), run.pipeline, run.mesh,
                       run.config.get('max_eval_batches', 0))
    logging.info('eval of %s: top-1 error %.2f%%, top-5 error %.2f%% on %d '
                 'examples', run.config.init_from, 100 * (1 - metrics['eval_top1']),
                 100 * (1 - metrics['eval_top5']), metrics['eval_examples'])
    metrics_log.write(0, metrics)
    metrics_log.close()
    return metrics


def evaluate_and_log(run: Run, state, metrics_log, step: int) -> dict:
    """The model's eval metrics and, with an EMA, the EMA's as `ema_eval_*`
    (the best checkpoint and the plateau rule go by the model's)."""
    max_batches = run.config.get('max_eval_batches', 0)
    metrics = evaluate(run.steps.eval, state, run.pipeline, run.mesh, max_batches)
    logging.info('eval at step %d: loss %.4f  top1 %.4f  top5 %.4f', step,
                 metrics['eval_loss'], metrics['eval_top1'], metrics['eval_top5'])
    if state.ema is not None:
        ema = evaluate(run.steps.eval, ema_view(state), run.pipeline, run.mesh,
                       max_batches)
        logging.info('eval of the EMA at step %d: loss %.4f  top1 %.4f  top5 %.4f',
                     step, ema['eval_loss'], ema['eval_top1'], ema['eval_top5'])
        metrics.update({f'ema_{k}': v for k, v in ema.items()
                        if k != 'eval_examples'})
    metrics_log.write(step, metrics)
    return metrics


class Throughput:
    """Images per second of training steps only.

    Time spent inside `paused()` (evaluation, checkpoint saves) is left out of
    the elapsed time, so a log interval that holds an eval reports the rate of
    its training steps, not of the steps over the time since the eval.
    """

    def __init__(self, batch_size: int, clock=time.perf_counter):
        self.batch_size = batch_size
        self.clock = clock
        self.reset()

    def reset(self):
        self.steps, self.paused_s, self.start = 0, 0.0, self.clock()

    def add_step(self):
        self.steps += 1

    @contextlib.contextmanager
    def paused(self):
        t = self.clock()
        try:
            yield
        finally:
            self.paused_s += self.clock() - t

    def read(self):
        """(images/sec, seconds/step) since the last read; starts a new interval."""
        elapsed = max(self.clock() - self.start - self.paused_s, 1e-9)
        steps = self.steps
        self.reset()
        return steps * self.batch_size / elapsed, elapsed / max(steps, 1)


def _format_duration(seconds):
    seconds = int(seconds)
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s'


class StepMetrics:
    """Per-step metrics, left on the devices until a log, eval or checkpoint
    step fetches them (a fetch waits for the devices)."""

    def __init__(self, skip_nonfinite: bool, ckpts):
        self.skip_nonfinite = skip_nonfinite
        self.ckpts = ckpts
        self.pending = []  # device metrics not yet fetched
        self.finite = []   # host metrics of finite steps not yet logged
        self.last = None   # host metrics of the newest fetched step
        self.skipped = 0

    def add(self, metrics):
        self.pending.append(metrics)

    def fetch(self, step: int):
        """Fetches the pending steps (`step` = steps done); stops at a
        non-finite one unless told to skip them."""
        got, first = jax.device_get(self.pending), step - len(self.pending)
        self.pending = []
        bad = [first + i + 1 for i, m in enumerate(got) if not m['finite']]
        if bad and not self.skip_nonfinite:
            raise NonFiniteLossError(
                f'non-finite loss or gradient at step {bad[0]}; stopped, keeping '
                f'the checkpoints of finite steps in {self.ckpts.directory} '
                f'(newest: {self.ckpts.latest_step()}); set '
                'skip_nonfinite_steps=True, or lower learning_rate (with '
                'allow_config_change=True to resume)')
        if bad:
            self.skipped += len(bad)
            logging.warning('skipped %d non-finite step(s) (%s); %d so far',
                            len(bad), bad[:5], self.skipped)
        self.finite.extend(m for m in got if m['finite'])
        self.last = got[-1] if got else self.last

    def take(self) -> list:
        finite, self.finite = self.finite, []
        return finite


class ProgressLog:
    """The console line (loss, accuracy, lr, img/s, time left) and the train
    lines of metrics.jsonl / TensorBoard."""

    def __init__(self, metrics_log, total_steps: int, batch_size: int,
                 report_skipped: bool):
        self.metrics_log = metrics_log
        self.total_steps = total_steps
        self.report_skipped = report_skipped
        self.meter = Throughput(batch_size)

    def write(self, step: int, metrics: StepMetrics):
        good = metrics.take()
        rate, step_s = self.meter.read()

        def mean(key):
            return float(np.mean([g[key] for g in good])) if good else float('nan')
        scalars = {'train_loss': mean('loss'), 'train_top1': mean('top1'),
                   'learning_rate': float(metrics.last['learning_rate']),
                   'images_per_sec': rate}
        if self.report_skipped:
            scalars['skipped_steps'] = metrics.skipped
        logging.info('step %d/%d  loss %.4f  top1 %.4f  lr %.5g  %.1f img/s  '
                     '%s left', step, self.total_steps, scalars['train_loss'],
                     scalars['train_top1'], scalars['learning_rate'], rate,
                     _format_duration((self.total_steps - step) * step_s))
        self.metrics_log.write(step, scalars)


class Schedule:
    """Which periodic work a step is due for: (log, eval, checkpoint).

    Intervals of 0 mean once per epoch; the last step does all three; an eval
    step is also a checkpoint step. Steps are counted from 0, so a resumed run
    keeps the uninterrupted run's log, eval and checkpoint steps. (clu's
    PeriodicAction has this arithmetic, but importing clu.periodic_actions
    imports TensorFlow: seconds at every start, and on a GPU a second cuDNN.)
    """

    def __init__(self, config, steps_per_epoch: int, total_steps: int):
        every = lambda n: n if n > 0 else steps_per_epoch  # noqa: E731
        self._every = (every(config.log_every_steps), every(config.eval_every_steps),
                       every(config.checkpoint_every_steps))
        self._last = total_steps

    def __call__(self, step: int):
        log, ev, ckpt = (step % n == 0 or step == self._last for n in self._every)
        return log, ev, ev or ckpt


class Preemption:
    """At each step: has a SIGTERM or a Ctrl-C asked every process to stop here?

    Several processes: jax.distributed's preemption service catches SIGTERM on
    any of them and the coordination service picks the step all stop at
    (`reached_preemption_sync_point`), with no collective in the steady state;
    a Ctrl-C is handed to it as a SIGTERM of this process. One process: the
    handlers set a flag (handlers can only be set from the main thread).

    The first Ctrl-C (SIGINT) is a request like SIGTERM: the loop saves the
    step and stops. A second one raises KeyboardInterrupt at once, wherever
    the main thread is (in the save, too). The previous handlers come back on
    exit, so a notebook's kernel keeps its own.
    """

    def __enter__(self):
        self.flag, self.previous = [], {}
        self.several = jax.process_count() > 1
        if threading.current_thread() is threading.main_thread():
            if not self.several:
                self.previous[signal.SIGTERM] = signal.signal(
                    signal.SIGTERM, lambda *_: self.flag.append('SIGTERM'))
            self.previous[signal.SIGINT] = signal.signal(signal.SIGINT,
                                                         self._interrupt)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _interrupt(self, *_):
        if self.interrupted:
            raise KeyboardInterrupt
        self.flag.append('Ctrl-C')
        logging.warning('Ctrl-C: finishing this step and saving a checkpoint of '
                        'it; press Ctrl-C again to stop at once')
        if self.several:
            os.kill(os.getpid(), signal.SIGTERM)

    @property
    def interrupted(self) -> bool:
        return 'Ctrl-C' in self.flag

    def reached(self, step: int) -> bool:
        if self.several:
            return multihost_utils.reached_preemption_sync_point(step)
        return bool(self.flag)


def prefetch(batches, mesh, depth: int = 2):
    """Host batches -> global arrays on the devices, `depth` batches ahead of
    the one the step is using (the copies overlap the running steps)."""
    queue = collections.deque()

    def put(n):
        for batch in itertools.islice(batches, n):
            queue.append(sharding_lib.shard_batch(batch, mesh))
    put(depth)
    while queue:
        batch = queue.popleft()
        put(1)
        yield batch


def observe(run: Run, state, metrics: dict):
    """lr_schedule='plateau': the plateau rule sees the validation loss,
    before the checkpoint of this step is saved (a resume keeps its rate)."""
    if run.steps.observe is None:
        return state
    loss = sharding_lib.replicate(np.float32(metrics['eval_loss']), run.mesh)
    return run.steps.observe(state, loss)


# ---------------------------------------------------------------------------
# Pretrained weights.


def load_init_from(config, state: TrainState, num_classes: int):
    """Params/batch_stats of `state` replaced by converted weights."""
    from senet_jax import convert, pretrained  # pylint: disable=g-import-not-at-top
    try:   # a converted folder, or a published weight's tag (downloaded and cached once)
        src_model, variables = pretrained.load_pretrained(config.init_from)
    except (convert.ConversionError, OSError, ValueError, UserError) as e:
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
        meta = checkpoint_lib.user_path(config.init_from) / convert.METADATA
        src_name = (json.loads(meta.read_text()).get('model') if meta.exists()
                    else pretrained.weight_config(config.init_from).model)
        raise UserError(f'init_from={config.init_from} holds {src_name} weights, '
                        f'which do not fit {config.model} with this config')
    new = jax.tree.map(lambda x, ref: np.asarray(x, ref.dtype), new, old)
    return state.replace(params=new['params'], batch_stats=new['batch_stats'])


# ---------------------------------------------------------------------------
# The loop.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from workdir when it holds checkpoints) and evaluates.

    Returns the last eval metrics (empty dict when a finished run is rerun).
    One run per workdir: another one holding it is a UserError.
    Raises Preempted (SIGTERM) or Interrupted (a first Ctrl-C) after saving
    the step it stopped at, KeyboardInterrupt at once on a second Ctrl-C,
    WriteFailed when a checkpoint or metrics.jsonl cannot be written.
    """
    validate_config(config)
    with workdir_lib.WorkdirLock(workdir) as lock:
        return _train_and_evaluate(config, workdir, lock)


def _train_and_evaluate(config, workdir: str, lock) -> dict:
    run = setup(config, workdir)
    if run.total_steps == 0:
        return evaluate_only(run)
    ckpts = checkpoint_lib.Checkpoints(workdir, keep=config.keep_checkpoints)
    at_once = False  # a second Ctrl-C: no waiting for the save in flight
    try:
        workdir_lib.check_class_list(workdir, run.pipeline.class_names,
                                     resuming=ckpts.latest_step() is not None,
                                     allow=config.get('allow_config_change', False))
        state = restore_or_init(run, ckpts)
        start_step = int(jax.device_get(state.step))
        if start_step >= run.total_steps:
            logging.info('already trained to step %d of %d in %s; nothing to do',
                         start_step, run.total_steps, workdir)
            return {}
        log_start(run)
        metrics_log = MetricsLog(workdir, after_step=start_step)
        try:
            return train(run, state, start_step, ckpts, metrics_log,
                         guard=lock.check)
        finally:
            metrics_log.close()
    except KeyboardInterrupt:
        at_once = True
        raise
    finally:
        if not at_once:
            ckpts.wait()
            ckpts.close()


def log_start(run: Run):
    config, pipeline = run.config, run.pipeline
    logging.info('training %s on %s: %d classes, %d train / %d eval examples, '
                 '%d steps (%d per epoch), global batch %d on %d devices, '
                 '%d process(es)', config.model, config.dataset,
                 pipeline.num_classes, pipeline.num_train_examples,
                 pipeline.num_eval_examples, run.total_steps,
                 pipeline.steps_per_epoch, config.batch_size,
                 run.mesh.devices.size, jax.process_count())


def train(run: Run, state, start_step: int, ckpts, metrics_log,
          guard=lambda: None) -> dict:
    """Steps start_step+1 .. total_steps with their periodic work; returns the
    last eval metrics. Raises Preempted (Interrupted for Ctrl-C) after saving
    an agreed stop step. `guard()` runs before each save (the workdir lock's
    check)."""
    config = run.config
    progress = ProgressLog(metrics_log, run.total_steps, config.batch_size,
                           config.skip_nonfinite_steps)
    metrics = StepMetrics(config.skip_nonfinite_steps, ckpts)
    due = Schedule(config, run.pipeline.steps_per_epoch, run.total_steps)
    batches = prefetch(run.pipeline.train_batches(start_step), run.mesh)
    last_eval = {}
    with Preemption() as preemption:
        for step in range(start_step + 1, run.total_steps + 1):
            state, step_metrics = run.steps.train(state, next(batches),
                                                  run.dropout_rng)
            metrics.add(step_metrics)
            progress.meter.add_step()
            stop = preemption.reached(step)
            log_now, eval_now, ckpt_now = due(step)
            if stop or log_now or ckpt_now:
                metrics.fetch(step)  # never checkpoint past a non-finite step
            if stop or log_now:
                progress.write(step, metrics)
            if stop or ckpt_now:
                guard()
            if stop:
                ckpts.save(step, state, run.identity)
                ckpts.wait()
                raise (Interrupted if preemption.interrupted else Preempted)(step)
            with progress.meter.paused():  # not training throughput
                if eval_now:
                    last_eval = evaluate_and_log(run, state, metrics_log, step)
                    state = observe(run, state, last_eval)
                if ckpt_now:
                    ckpts.save(step, state, run.identity,
                               metrics={'eval_top1': last_eval['eval_top1']}
                               if eval_now else None)
    ckpts.wait()
    logging.info('finished %d steps; eval top-1 %.4f, top-5 %.4f',
                 run.total_steps, last_eval.get('eval_top1', float('nan')),
                 last_eval.get('eval_top5', float('nan')))
    return last_eval
