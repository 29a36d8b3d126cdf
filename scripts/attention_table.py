"""SE and its successors on ResNet-50, side by side: what each block adds.

    python scripts/attention_table.py [--image-size 112] [--batch-size 8] [--steps 3] [--rounds 3]
        [--digits] [--values none,ge,ge4]

For each value of configs/ablations/attention.py (none, se, ese, eca, ge, ge4, gc,
cbam) on resnet50 (1000 classes): the parameters and multiply-adds (224 x 224,
`python -m senet_jax.models`' count) and what the block adds to the plain
network, and the CPU train-step time of the trainer's own step
(`benchmark.jax_step`) at --image-size, in rounds that alternate the blocks so
that drift hits all alike (its ratio to 'none' is the median of per-round
ratios). --digits also trains each value's `local` config (se_resnet_mini on
scikit-learn's digits, `python train.py --config=configs/ablations/attention.py:VALUE,local`)
and reads its held-out top-1. Prints a markdown table, then one JSON line.
"""
import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import jax  # noqa: E402

from senet_jax.benchmark import jax_step, time_round  # noqa: E402
from senet_jax.models.__main__ import complexity  # noqa: E402


def study_values():
    spec = importlib.util.spec_from_file_location(
        'attention_study', os.path.join(ROOT, 'configs', 'ablations', 'attention.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {value: overrides()['attention'] for value, overrides in module.VALUES.items()}


def digits_top1(value):
    """Held-out top-1 of the value's local run (train.py's last eval line)."""
    with tempfile.TemporaryDirectory() as workdir:
        subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'),
                        f'--config={ROOT}/configs/ablations/attention.py:{value},local',
                        f'--workdir={workdir}'], check=True, capture_output=True)
        with open(os.path.join(workdir, 'metrics.jsonl')) as f:
            evals = [json.loads(line) for line in f if '"eval_top1"' in line]
    return evals[-1]['eval_top1']


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--image-size', type=int, default=112)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--steps', type=int, default=3)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--digits', action='store_true')
    p.add_argument('--values', default='', help="comma-separated subset ('none' is always run)")
    args = p.parse_args()
    values = study_values()
    if args.values:
        keep = {'none', *args.values.split(',')}
        values = {v: a for v, a in values.items() if v in keep}
    rows = {}
    for value, attention in values.items():
        params, gmacs = complexity('resnet50', 224, attention=attention)
        run = jax_step('resnet50', args.batch_size, args.image_size, 'train', 'float32',
                       attention=attention)[0]
        rows[value] = {'params': params, 'gmacs': gmacs, 'run': run, 'times': []}
    for _ in range(args.rounds):
        for row in rows.values():
            row['times'].append(time_round(row['run'], args.steps, jax.block_until_ready))
    plain = rows['none']
    print(f'| block | params | added | GMACs | added | train step (ms, {args.image_size} px, '
          f'batch {args.batch_size}) | vs none |' + (' digits top-1 |' if args.digits else ''))
    print('|---|---:|---:|---:|---:|---:|---:|' + ('---:|' if args.digits else ''))
    out = {}
    for value, row in rows.items():
        step = statistics.median(row['times'])
        ratio = statistics.median(a / b for a, b in zip(row['times'], plain['times']))
        out[value] = {'params': row['params'], 'added_params': row['params'] - plain['params'],
                      'gmacs': round(row['gmacs'], 4),
                      'added_gmacs': round(row['gmacs'] - plain['gmacs'], 4),
                      'step_ms': round(step * 1e3, 1), 'vs_none': round(ratio, 3)}
        if args.digits:
            out[value]['digits_top1'] = digits_top1(value)
        r = out[value]
        print(f"| {value} | {r['params']:,} | {r['added_params']:+,} | {r['gmacs']:.3f} | "
              f"{r['added_gmacs']:+.3f} | {r['step_ms']:.1f} | {r['vs_none']:.3f} |"
              + (f" {r['digits_top1']:.4f} |" if args.digits else ''))
    print(json.dumps(out))


if __name__ == '__main__':
    main()
