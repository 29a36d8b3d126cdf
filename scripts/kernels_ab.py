"""Inference throughput of a zoo model in its two forms: the CPU-trick kernels against plain Flax/XLA.

    python scripts/kernels_ab.py --model se_resnet50 [--batch-size 256] [--image-size 224] \\
        [--dtype bfloat16|float32] [--steps 20] [--rounds 3]

Both forms (`create_model(name, kernels='plain')` and `kernels='cpu'`, which
forces the CPU tricks on any backend) share one set of variables. Each form's
jitted eval-mode apply is timed on one device, in alternating rounds so that
drift hits both alike, and their logits are compared. Prints one JSON line;
`cpu_over_plain` above 1 means the tricks are faster on this device.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repo root
from senet_jax.models import create_model  # noqa: E402

FORMS = ('plain', 'cpu')


def create_forms(name, dtype):
    """{form: model}; a ValueError or TypeError for an unknown model or no kernels= option."""
    return {form: create_model(name, kernels=form, dtype=dtype) for form in FORMS}


def compiled_forms(models, images):
    """{form: compiled eval-mode apply}, and the variables both take."""
    variables = jax.jit(models['plain'].init)(jax.random.key(0), images[:1])
    applies = {form: jax.jit(lambda v, x, m=m: m.apply(v, x, train=False))
               .lower(variables, images).compile() for form, m in models.items()}
    return applies, variables


def seconds_per_step(apply, variables, images, steps):
    jax.block_until_ready(apply(variables, images))
    start = time.perf_counter()
    for _ in range(steps):
        out = apply(variables, images)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def measure(models, args):
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(args.batch_size, args.image_size, args.image_size, 3)),
                         jnp.float32)
    applies, variables = compiled_forms(models, images)
    logits = {form: np.asarray(apply(variables, images), np.float32) for form, apply in applies.items()}
    times = {form: [] for form in FORMS}
    for _ in range(args.rounds):
        for form in FORMS:
            times[form].append(seconds_per_step(applies[form], variables, images, args.steps))
    result = {'model': args.model, 'mode': 'infer', 'dtype': args.dtype,
              'batch_size': args.batch_size, 'image_size': args.image_size,
              'device': jax.devices()[0].device_kind,
              'max_abs_logit_difference': float(np.max(np.abs(logits['cpu'] - logits['plain'])))}
    for form in FORMS:
        result[f'{form}_images_per_sec'] = args.batch_size / statistics.median(times[form])
    result['cpu_over_plain'] = result['cpu_images_per_sec'] / result['plain_images_per_sec']
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='se_resnet50')
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--image-size', type=int, default=224)
    p.add_argument('--dtype', choices=('float32', 'bfloat16'), default='bfloat16')
    p.add_argument('--steps', type=int, default=20, help='steps per timed round')
    p.add_argument('--rounds', type=int, default=3)
    args = p.parse_args(argv)
    if min(args.batch_size, args.image_size, args.steps, args.rounds) < 1:
        print('error: --batch-size, --image-size, --steps and --rounds must be positive.', file=sys.stderr)
        return 1
    try:
        models = create_forms(args.model, jnp.bfloat16 if args.dtype == 'bfloat16' else jnp.float32)
    except (TypeError, ValueError) as e:   # an unknown model, or no kernels= option
        print(f'error: {(str(e).strip().splitlines() or [type(e).__name__])[0]}', file=sys.stderr)
        return 1
    print(json.dumps(measure(models, args)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
