"""Throughput of a zoo model's inference or training step, optionally beside timm.

    python -m senet_jax.benchmark --model se_resnet50 --batch-size 8 --image-size 224 \\
        --mode train [--dtype float32|bfloat16|float16] [--steps 20] [--compare timm] \\
        [--baseline resnet50] [--json]
    python -m senet_jax.benchmark --input-pipeline DIR [--image-size 224] \\
        [--randaugment rand-m7-mstd0.5-inc1]

The training step is the trainer's own (`senet_jax.trainer.compile_steps`), called
as `train.py` calls it: uint8 images normalised on device, softmax cross-entropy,
backward, SGD with momentum and weight decay, BatchNorm statistics updated, the
state donated. Times are medians over `--rounds` rounds
of `--steps` steps after compilation; with `--compare timm` the two frameworks
run in alternating rounds in the same process, so drift hits both alike.
`--baseline resnet50` times a second zoo model the same way, which is how the
cost of the SE blocks is measured: `overhead_vs_baseline` is our step time over the
baseline's. Each comparison is printed twice: as the ratio of the two medians, and
('_paired') as the median of the ratios of adjacent rounds.
"""
import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import optax

from senet_jax import precision, xla_cpu
from senet_jax.errors import UserError
from senet_jax.models import create_model, model_spec, normalize_images

# Dense bf16 peak FLOP/s by device kind, for MFU (public spec sheets).
PEAK_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'TPU v4': 275e12,
              'TPU v5 lite': 197e12, 'TPU v5e': 197e12, 'TPU v5p': 459e12, 'TPU v6 lite': 918e12}


# JAX's GPU memory fraction, by its current name and its deprecated one.
GPU_MEMORY_FRACTION_VARS = ('XLA_CLIENT_MEM_FRACTION', 'XLA_PYTHON_CLIENT_MEM_FRACTION')


def _peak_flops(device):
    for kind, peak in PEAK_FLOPS.items():
        if kind.lower() in device.device_kind.lower():
            return peak
    return None


def jax_step(model_name, batch_size, image_size, mode, dtype, recipe=None, **overrides):
    """(step_fn, forward_flops_per_image, compile_seconds) on the first device;
    `overrides` go to `create_model`, `recipe` (config fields: optimizer, loss,
    mixup_alpha, ...) to the training step's config.

    'train' is the trainer's own step (`trainer.compile_steps`), called as
    train_and_evaluate calls it: a uint8 batch normalised on device, the state
    donated, the trainer's optax chain (SGD momentum 0.9, weight decay 1e-4 on
    kernels), the finite guard and the same jit options.
    """
    from senet_jax import sharding, trainer
    model = create_model(model_name, dtype=None if dtype == 'float32' else precision.DTYPES[dtype],
                         **overrides)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, image_size, image_size, 3), np.uint8)
    labels = rng.integers(0, 1000, batch_size).astype(np.int32)
    forward = jax.jit(lambda v, x: model.apply(v, x)).lower(
        jax.eval_shape(model.init, jax.random.key(0), images[:1].astype(np.float32)),
        images[:1].astype(np.float32)).compile()
    cost = forward.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if mode == 'infer':
        run, compile_s = _infer_step(model, images)
    else:
        mesh = sharding.create_mesh(jax.devices()[:1])
        config = ml_collections.ConfigDict({
            **dict(image_size=image_size, weight_decay=1e-4, momentum=0.9, nesterov=False,
                   label_smoothing=0.0), **(recipe or {})})
        learning_rate_fn = optax.constant_schedule(0.1)
        steps = trainer.compile_steps(config, model, trainer.create_optimizer(config, learning_rate_fn),
                                      mesh, num_classes=1000, learning_rate_fn=learning_rate_fn,
                                      dtype=dtype)
        holder = {'state': steps.init(jax.random.key(0, impl='rbg'))}
        batch = sharding.shard_batch({'image': images, 'label': labels}, mesh)
        dropout_rng = trainer.dropout_key(0, mesh)

        def run():
            holder['state'], metrics = steps.train(holder['state'], batch, dropout_rng)
            return metrics
        start = time.perf_counter()
        jax.block_until_ready(run())   # the compile, and one step
        compile_s = time.perf_counter() - start
    return run, cost['flops'], compile_s


def _infer_step(model, images):
    """(run, compile_seconds) of the eval-mode forward pass on normalised images."""
    x = jnp.asarray(normalize_images(images))
    variables = model.init(jax.random.key(0), x[:1])
    start = time.perf_counter()
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False),
                       compiler_options=xla_cpu.compiler_options()).lower(variables, x).compile()
    compile_s = time.perf_counter() - start
    return (lambda: compiled(variables, x)), compile_s


def _import_timm():
    """(torch, timm), or a ValueError that says in one sentence why they do not import."""
    try:
        import torch
        import timm
    except Exception as e:   # not installed, or a torchvision built for another torch
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f'--compare timm needs torch and timm, and importing them failed ({reason}); '
                         'install them with a torchvision built for that torch '
                         '(pip install torch torchvision timm).') from e
    return torch, timm


def torch_step(reference, batch_size, image_size, mode, dtype):
    torch, timm = _import_timm()
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    # As many threads as XLA:CPU uses: the cores this process may run on.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    torch.set_num_threads(cores)
    model = timm.create_model(reference).to(device)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    y = torch.randint(0, 1000, (batch_size,), device=device)
    if device == 'cuda':   # timm at its fastest: channels_last, torch.compile
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        model = torch.compile(model)
    autocast = torch.autocast(device, dtype=torch.float16 if dtype == 'float16' else torch.bfloat16,
                              enabled=dtype != 'float32')
    if mode == 'infer':
        model.eval()

        @torch.no_grad()
        def run():
            with autocast:
                return model(x)
    else:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def run():
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)

    def timed():
        out = run()
        sync()
        return out
    return timed


def time_round(run, steps, block):
    """Seconds per call of `run` over `steps` calls, after one untimed call;
    `block(out)` waits for the last result."""
    # Let the other framework's worker threads stop spinning before the clock starts:
    # XLA's and PyTorch's thread pools busy-wait for a while after their last task.
    time.sleep(0.5)
    block(run())
    start = time.perf_counter()
    for _ in range(steps):
        out = run()
    block(out)
    return (time.perf_counter() - start) / steps


def benchmark(args):
    if args.compare == 'timm':
        spec = model_spec(args.model)
        reference = spec.reference
        if reference is None or spec.source != 'timm':
            built_by = f' (its reference is {spec.source} {reference})' if reference else ''
            raise ValueError(f'{args.model} has no timm reference to compare with{built_by}.')
        _import_timm()   # fail before compiling anything
    run, flops, compile_s = jax_step(args.model, args.batch_size, args.image_size, args.mode, args.dtype)
    block = jax.block_until_ready
    for _ in range(args.warmup):
        block(run())
    others = {}   # name -> (run, block), timed in rounds alternating with ours
    if args.compare == 'timm':
        others['timm'] = (torch_step(reference, args.batch_size, args.image_size, args.mode, args.dtype),
                          lambda out: None)
    if args.baseline:
        model_spec(args.baseline)   # an unknown name fails here, before anything is timed
        others[args.baseline] = (jax_step(args.baseline, args.batch_size, args.image_size,
                                          args.mode, args.dtype)[0], block)
    for fn, done in others.values():
        for _ in range(args.warmup):
            done(fn())
    times = {'jax': [], **{k: [] for k in others}}
    for _ in range(args.rounds):
        times['jax'].append(time_round(run, args.steps, block))
        for k, (fn, done) in others.items():
            times[k].append(time_round(fn, args.steps, done))
    step = statistics.median(times['jax'])
    device = jax.devices()[0]
    flops_per_step = flops * args.batch_size * (3 if args.mode == 'train' else 1)
    peak = _peak_flops(device)
    mem = (device.memory_stats() or {}).get('peak_bytes_in_use') if hasattr(device, 'memory_stats') else None
    result = {
        'model': args.model, 'mode': args.mode, 'dtype': args.dtype, 'batch_size': args.batch_size,
        'image_size': args.image_size, 'device': device.device_kind, 'num_devices': 1,
        'images_per_sec': args.batch_size / step, 'step_time_ms': step * 1e3,
        'compile_time_s': compile_s, 'gmacs_per_image': flops / 2e9,
        'peak_memory_gb': mem / 2**30 if mem else None,
        'mfu': flops_per_step / step / peak if peak else None,
    }
    # Each ratio also as the median of per-round ratios ('_paired'): adjacent
    # rounds share the machine's drift, which medians taken apart do not cancel.
    if 'timm' in others:
        result['timm_images_per_sec'] = args.batch_size / statistics.median(times['timm'])
        result['speedup_vs_timm'], result['speedup_vs_timm_paired'] = _ratios(times['timm'], times['jax'])
    if args.baseline:
        result['baseline'] = args.baseline
        result['baseline_images_per_sec'] = args.batch_size / statistics.median(times[args.baseline])
        result['overhead_vs_baseline'], result['overhead_vs_baseline_paired'] = _ratios(
            times['jax'], times[args.baseline])
    return result


def _ratios(numerator, denominator):
    """(ratio of the medians, median of the per-round ratios) of two lists of round times."""
    return (statistics.median(numerator) / statistics.median(denominator),
            statistics.median(a / b for a, b in zip(numerator, denominator)))


def _cpu_seconds():
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def input_pipeline_benchmark(directory, image_size, num_images, randaugment=''):
    """JPEG decode + random-size crop + flip (+ RandAugment when `randaugment`,
    a config.randaugment string), as in training, from image bytes in memory.

    'Per core' is images per CPU-second of this process (user + system), which
    holds on a shared machine where wall-clock figures drift.
    """
    from senet_jax.data.tf_host import tf
    from senet_jax.data import preprocess
    from senet_jax.data import randaugment as ra
    policy = ra.from_config(randaugment)
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs
                   if f.lower().endswith(('.jpg', '.jpeg', '.png')))
    if not files:
        raise ValueError(f'no .jpg/.jpeg/.png images under {directory}.')
    blobs = [tf.io.read_file(f).numpy() for f in files]   # time decode and crop, not the disk
    ds = tf.data.Dataset.from_tensor_slices(blobs).repeat().take(num_images).enumerate()
    ds = preprocess.tpu_host_options(ds)   # the trainer's threading: one thread per core
    ds = ds.map(lambda i, b: preprocess.preprocess_train(
        b, tf.stack([tf.constant(0, tf.int64), i]), image_size, randaugment=policy),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.batch(64).prefetch(2)
    for _ in ds.take(1):
        pass
    cpu, start = _cpu_seconds(), time.perf_counter()
    n = sum(int(b.shape[0]) for b in ds)
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    return {'images_per_sec': n / wall, 'images_per_sec_per_core': n / cpu,
            'cpu_seconds': cpu, 'cores': preprocess.host_cores(), 'num_files': len(files),
            'image_size': image_size, 'randaugment': randaugment}


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m senet_jax.benchmark', description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='se_resnet50')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--image-size', type=int, default=224)
    p.add_argument('--mode', choices=('train', 'infer'), default='infer')
    p.add_argument('--dtype', choices=tuple(precision.DTYPES), default='float32')
    p.add_argument('--steps', type=int, default=10, help='steps per timed round')
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--compare', choices=('timm',), default=None)
    p.add_argument('--baseline', metavar='MODEL', default=None,
                   help='a second zoo model (e.g. resnet50) timed in alternating rounds')
    p.add_argument('--input-pipeline', metavar='DIR', default=None)
    p.add_argument('--num-images', type=int, default=2000)
    p.add_argument('--randaugment', metavar='SPEC', default='',
                   help="with --input-pipeline: RandAugment too (e.g. rand-m7-mstd0.5-inc1)")
    p.add_argument('--json', action='store_true', help='print one JSON object')
    args = p.parse_args(argv)
    if min(args.batch_size, args.image_size, args.steps, args.rounds) < 1:
        print('error: --batch-size, --image-size, --steps and --rounds must be positive.', file=sys.stderr)
        return 1
    if args.compare and not any(os.environ.get(v) for v in GPU_MEMORY_FRACTION_VARS):
        # On a GPU, JAX takes 75% of the memory when it starts (read once, at the
        # first JAX operation): leave PyTorch the other half.
        os.environ[GPU_MEMORY_FRACTION_VARS[0]] = '0.5'
    try:
        if args.input_pipeline:
            result = input_pipeline_benchmark(args.input_pipeline, args.image_size,
                                              args.num_images, args.randaugment)
        else:
            result = benchmark(args)
    except (ValueError, UserError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f'{k:24s} {v:.4g}' if isinstance(v, float) else f'{k:24s} {v}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
