"""The GPU checks of the performance issue, end to end, in under 8 minutes on one GPU.

    python scripts/gpu_checks.py [--out gpu_checks.jsonl] [--budget 450]
    python scripts/gpu_checks.py --smoke     # the same runs at toy sizes, on any backend

Each check is one `python -m senet_jax.benchmark ... --json` in a process of
its own (so each starts with the whole GPU), stopped when the time budget runs
out. Every benchmark's JSON line goes to --out; a table of each figure against
its target follows. Targets (one H100; other GPUs are named in the table):

- se_resnet50 bf16 training: >= 4,500 images/s, and >= 1.3x timm's seresnet50
  (channels_last, bf16 autocast, torch.compile) on the same GPU;
- se_resnext101_32x4d bf16 training: >= 1,700 images/s.

The SE overhead against resnet50 is printed beside the paper's GPU figure
(+10% training time), and inference beside timm, without targets. Needs a JAX
with GPU support (pip install -r requirements.txt "jax[cuda12]==0.10.2"); the
timm comparisons also need torch and timm, and are left out, with a note, when
those do not import.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = [sys.executable, '-m', 'senet_jax.benchmark', '--json']
# (name, benchmark arguments, [(result key, target, 'min' or 'info', label)])
CHECKS = [
    ('se_resnet50 training, bf16',
     ['--model', 'se_resnet50', '--mode', 'train', '--dtype', 'bfloat16', '--batch-size', '256',
      '--steps', '20', '--rounds', '3', '--compare', 'timm', '--baseline', 'resnet50'],
     [('images_per_sec', 4500, 'min', 'images/s (H100)'),
      ('speedup_vs_timm', 1.3, 'min', 'x timm'),
      ('overhead_vs_baseline', 1.10, 'info', 'x resnet50 (paper: +10%)')]),
    ('se_resnext101_32x4d training, bf16',
     ['--model', 'se_resnext101_32x4d', '--mode', 'train', '--dtype', 'bfloat16',
      '--batch-size', '128', '--steps', '10', '--rounds', '3'],
     [('images_per_sec', 1700, 'min', 'images/s (H100)')]),
    ('se_resnet50 inference, bf16',
     ['--model', 'se_resnet50', '--mode', 'infer', '--dtype', 'bfloat16', '--batch-size', '256',
      '--steps', '20', '--rounds', '3', '--compare', 'timm'],
     [('images_per_sec', None, 'info', 'images/s'),
      ('speedup_vs_timm', None, 'info', 'x timm')]),
]
SMOKE = ['--batch-size', '2', '--image-size', '32', '--steps', '1', '--rounds', '1', '--warmup', '1']


def _backend():
    """JAX's default backend, asked in a process of its own that takes no GPU memory."""
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE='false')
    probe = subprocess.run([sys.executable, '-c', 'import jax; print(jax.default_backend())'],
                           capture_output=True, text=True, env=env)
    return probe.stdout.strip() or 'none'


def _timm_imports():
    probe = subprocess.run([sys.executable, '-c', 'import torch, timm'], capture_output=True)
    return probe.returncode == 0


def _without_compare(args):
    i = args.index('--compare')
    return args[:i] + args[i + 2:]


def run_check(args, seconds):
    """(result dict or None, a line saying why not)."""
    if seconds <= 0:
        return None, 'not run: the time budget was spent'
    # A session of its own, so that a stop also ends torch.compile's worker processes.
    proc = subprocess.Popen(BENCH + args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, f'stopped at the time limit ({seconds:.0f} s were left for it)'
    if proc.returncode != 0:
        lines = (stderr or stdout).strip().splitlines()
        return None, f'failed (exit {proc.returncode}): {lines[-1] if lines else "no output"}'
    return json.loads(stdout.strip().splitlines()[-1]), ''


def verdict(value, target, kind):
    if value is None:
        return 'not measured'
    if kind == 'info' or target is None:
        return ''
    return 'met' if value >= target else 'MISSED'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default='gpu_checks.jsonl', help='one JSON line per benchmark run')
    p.add_argument('--budget', type=float, default=450, help='seconds for all checks together')
    p.add_argument('--smoke', action='store_true', help='toy sizes, to check the plumbing on any backend')
    a = p.parse_args(argv)
    if a.budget <= 0:
        print('error: --budget must be positive.', file=sys.stderr)
        return 1
    deadline = time.monotonic() + a.budget
    backend = _backend()
    if backend != 'gpu' and not a.smoke:
        print(f'error: JAX sees no GPU here (backend: {backend}); install a JAX with GPU support '
              '(pip install -r requirements.txt "jax[cuda12]==0.10.2"), or pass --smoke for the '
              'toy-sized run.', file=sys.stderr)
        return 1
    compare = _timm_imports()
    if not compare:
        print('note: torch and timm do not import here, so the timm comparisons are left out.')
    rows, failures = [], 0
    with open(a.out, 'w') as out:
        for name, args, targets in CHECKS:
            if not compare and '--compare' in args:
                args = _without_compare(args)
            if a.smoke:
                args = args + SMOKE   # later flags win in argparse
            result, why = run_check(args, deadline - time.monotonic())
            if result is None:
                failures += 1
                print(f'{name}: {why}')
            else:
                out.write(json.dumps(result) + '\n')
            for key, target, kind, label in targets:
                value = None if result is None else result.get(key)
                if value is None and result is not None:
                    continue   # a figure this run did not make (no timm)
                rows.append((name, result and result['device'], label, value, target, kind))
    print(f'\n{"check":36s} {"device":22s} {"figure":>10s} {"target":>8s}  unit / verdict')
    for name, device, label, value, target, kind in rows:
        shown = '-' if value is None else f'{value:.4g}'
        limit = '' if target is None else ('>= ' if kind == 'min' else '~ ') + f'{target:g}'
        print(f'{name:36s} {str(device or "-"):22s} {shown:>10s} {limit:>8s}  {label} {verdict(value, target, kind)}')
    print(f'\nresults in {a.out}; {len(CHECKS) - failures} of {len(CHECKS)} checks ran.')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
