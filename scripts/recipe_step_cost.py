"""What each ResNet Strikes Back ingredient costs the training step, side by side.

    python scripts/recipe_step_cost.py [--model se_resnet50] [--image-size 112]
        [--batch-size 8] [--steps 3] [--rounds 3]

The trainer's own step (`benchmark.jax_step`, one device) with the paper's
recipe (SGD, softmax cross-entropy) and with each ingredient of
configs/rsb.py switched on alone, then all together (A3's step: LAMB, BCE,
Mixup/CutMix per batch). Mixup and CutMix run inside the jitted step, so their
cost is the extra device work: drawing lambda and the box, mixing the batch
and its targets. Rounds alternate the variants so that drift hits all alike;
each ratio to the paper's step is the median of per-round ratios. Prints a
markdown table, then one JSON line.
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax  # noqa: E402

from senet_jax.benchmark import jax_step, time_round  # noqa: E402

LAMB = dict(optimizer='lamb', weight_decay=0.02, lamb_b1=0.9, lamb_b2=0.999, lamb_eps=1e-6)
MIX = dict(mixup_alpha=0.1, cutmix_alpha=1.0, mixup_prob=1.0, mixup_switch_prob=0.5)
VARIANTS = {
    'paper (SGD, softmax)': {},
    'mixup, per batch': dict(mixup_alpha=0.1, mixup_mode='batch'),
    'cutmix, per batch': dict(cutmix_alpha=1.0, mixup_mode='batch'),
    'mixup/cutmix, per element': dict(MIX, mixup_mode='elem'),
    'bce': dict(loss='bce', bce_target_threshold=0.2),
    'lamb': LAMB,
    'A3 (lamb, bce, mixup/cutmix per batch)': dict(
        MIX, **LAMB, mixup_mode='batch', loss='bce', bce_target_threshold=0.2),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--model', default='se_resnet50')
    p.add_argument('--image-size', type=int, default=112)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--steps', type=int, default=3)
    p.add_argument('--rounds', type=int, default=3)
    args = p.parse_args()
    rows = {name: {'run': jax_step(args.model, args.batch_size, args.image_size, 'train',
                                   'float32', recipe=recipe)[0], 'times': []}
            for name, recipe in VARIANTS.items()}
    for _ in range(args.rounds):
        for row in rows.values():
            row['times'].append(time_round(row['run'], args.steps, jax.block_until_ready))
    base = rows['paper (SGD, softmax)']['times']
    print(f'| {args.model}, {args.image_size} px, batch {args.batch_size} | train step (ms) '
          '| vs paper |')
    print('|---|---:|---:|')
    out = {}
    for name, row in rows.items():
        out[name] = {'step_ms': round(statistics.median(row['times']) * 1e3, 1),
                     'vs_paper': round(statistics.median(
                         a / b for a, b in zip(row['times'], base)), 3)}
        print(f"| {name} | {out[name]['step_ms']:.1f} | {out[name]['vs_paper']:.3f} |")
    print(json.dumps(out))


if __name__ == '__main__':
    main()
