"""What the first GPU or TPU session runs: the accelerator figures, in under 8 minutes on one host.

    python scripts/accelerator_checks.py [--out accelerator_checks.jsonl] [--budget 470]
                                         [--checks train,timm,kernels]
    python scripts/accelerator_checks.py --smoke   # every check at toy sizes, on any backend

Each check runs in a process of its own (so each starts with the whole device),
in this order (the most wanted figure, se_resnet50 training images/s, first; nothing
but the backend probe before it), and is stopped when the time budget runs out;
what the budget left out is named at the end. Each per-device batch is the
check's own (256 or 128) where the device's memory holds it (`memory_stats()`'s
bytes_limit against an estimate of the step's memory per image), smaller where not:
a 16 GiB TPU v5e chip then trains se_resnet50 at 96 per chip.

- train: `train.py` end to end on fake ImageNet-shaped data (224x224, 1000
  classes) on all local devices with the default precision, for se_resnet50
  and se_resnext101_32x4d. Images/s come from the run's metrics.jsonl, leaving
  out the first log interval (it holds the compilation); the single eval and
  checkpoint come after the last timed interval.
- timm: se_resnet50 bf16 training beside timm's seresnet50 (torch.compile,
  channels_last, bf16 autocast), through `python -m senet_jax.benchmark
  --compare timm`; later, inference the same way. Needs torch and timm with a
  CUDA GPU.
- kernels: the CPU-trick form of se_resnet50 against the plain Flax/XLA form
  on this device: training through `train.py --config.model_overrides.kernels=`,
  inference through scripts/kernels_ab.py.

Every result goes to --out as a JSON line; a table of each figure against its
target follows. Targets, per device on one H100 or H200: se_resnet50 bf16
training >= 4,500 images/s and >= 1.3x timm; se_resnext101_32x4d >= 1,700
images/s. On a TPU v4 or v5e the same figures are printed per chip (one JAX
device per chip), without a target. The compilation cache is shared by the
checks' processes, so a program compiled by one is not compiled again.
"""
import argparse
import dataclasses
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_DEVICES = ('H100', 'H200')   # the devices the targets are set for
GROUPS = ('train', 'timm', 'kernels')
SMOKE_MODEL = 'se_resnet_mini'      # stands in for the big models with --smoke

# Backend, devices, their memory (None where memory_stats() is, as on a CPU) and
# whether create_model takes `kernels`, asked in a process of its own that takes
# no GPU memory and lets go of a TPU when it ends.
PROBE = r'''
import json, jax
from senet_jax.models import create_model
devices = jax.local_devices()
bytes_limit = (devices[0].memory_stats() or {}).get('bytes_limit')
try:
    create_model('se_resnet_mini', kernels='plain')
    missing = ''
except (TypeError, ValueError) as e:
    missing = (str(e).strip().split(';')[0].splitlines() or [type(e).__name__])[0]
print(json.dumps({'backend': jax.default_backend(), 'device_kind': devices[0].device_kind,
                  'num_devices': len(devices), 'kernels_missing': missing,
                  'bytes_limit': bytes_limit}))
'''
TIMM_PROBE = 'import torch, timm; print(torch.cuda.is_available())'

# Training memory per device, as an estimate: a fixed part, then so much per image.
# se_resnet50: XLA's memory analysis of train.py's bfloat16 step compiled for the
# CPU, whose temporaries grow by 115 MiB per image (1,110 MiB at batch 8, 649 MiB
# at 4) over 430 MiB of arguments and outputs (the fixed part is rounded up to
# 2 GiB for the libraries' workspaces); se_resnext101_32x4d: twice that per image,
# as the activations its backward pass keeps are 2.0x se_resnet50's (traced at
# batch 1). GPUs and TPUs fuse more than the CPU, so these should overstate the need.
FIXED_BYTES = 2 << 30
PER_IMAGE_BYTES = {'se_resnet50': 115 << 20, 'se_resnext101_32x4d': 230 << 20}
MEMORY_SHARE = 0.9   # of the device's bytes_limit


class CheckFailed(Exception):
    """A check that ran and did not give its figures; the message says why, in one line."""


class OutOfTime(CheckFailed):
    """A check stopped, or not started, because the time budget was spent."""


class Skipped(Exception):
    """A check that cannot run here; the message says why."""


@dataclasses.dataclass
class Context:
    smoke: bool
    backend: str
    device_kind: str
    num_devices: int
    kernels_missing: str   # '' when create_model takes kernels=
    timm: Callable[[], str]   # '' when the timm comparison can run, else why not
    workroot: str
    env: dict
    deadline: float
    bytes_limit: Optional[int] = None   # one device's memory_stats(); None where unknown

    def seconds_left(self):
        return self.deadline - time.monotonic()


@dataclasses.dataclass
class Check:
    group: str
    name: str
    model: str
    batch: int      # per device, where the device's memory holds it
    run: Callable[[Context, str, int], dict]   # (ctx, model, batch) -> result
    figures: list   # (result key, target or None, label)


def run_process(cmd, ctx):
    """stdout of `cmd` run from the repository root, or CheckFailed in one line."""
    seconds = ctx.seconds_left()
    if seconds <= 0:
        raise OutOfTime('not run: the time budget was spent')
    # A session of its own, so that a stop also ends torch.compile's workers.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ctx.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise OutOfTime(f'stopped at the time limit ({seconds:.0f} s were left for it)') from None
    if proc.returncode != 0:
        lines = (stderr or stdout).strip().splitlines()
        errors = [line for line in lines if line.startswith('error:')]
        last = (errors or lines or ['no output'])[-1]
        raise CheckFailed(f'failed (exit {proc.returncode}): {last}')
    return stdout


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# train.py on fake data.


def timed_rate(metrics_path):
    """Images/s over a run's log intervals after the first (which holds the
    compilation): all their images over all their time."""
    with open(metrics_path) as f:
        rates = [r['images_per_sec'] for r in map(json.loads, f) if 'images_per_sec' in r]
    if len(rates) < 2:
        raise CheckFailed(f'metrics.jsonl has {len(rates)} log interval(s); the first is '
                          'left out, so at least two are needed')
    timed = rates[1:]
    return len(timed) / sum(1 / r for r in timed)   # the intervals are equally long


def train_run(ctx, model, per_device_batch, steps, log_every, overrides=()):
    """One `train.py` run on fake data; its images/s (all devices, and per device)."""
    batch = per_device_batch * ctx.num_devices
    workdir = tempfile.mkdtemp(prefix=f'{model}_', dir=ctx.workroot)
    cmd = [sys.executable, 'train.py', f'--config=configs/{model}.py', f'--workdir={workdir}',
           '--config.dataset=fake', f'--config.batch_size={batch}',
           f'--config.fake_num_examples={4 * batch}',   # so that the eval is one batch
           f'--config.num_train_steps={steps}', f'--config.log_every_steps={log_every}',
           f'--config.eval_every_steps={steps}', f'--config.checkpoint_every_steps={steps}']
    if ctx.smoke:
        cmd += [f'--config.model={SMOKE_MODEL}', '--config.image_size=32']
    cmd += [f'--config.model_overrides.{k}={v}' for k, v in overrides]
    try:
        run_process(cmd, ctx)
        rate = timed_rate(os.path.join(workdir, 'metrics.jsonl'))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {'model': SMOKE_MODEL if ctx.smoke else model,
            'images_per_sec': rate, 'images_per_sec_per_device': rate / ctx.num_devices,
            'global_batch': batch, 'steps': steps, 'log_every_steps': log_every}


def train_check(ctx, model, per_device_batch):
    steps, log_every = (3, 1) if ctx.smoke else (100, 20)
    return {'precision': 'default',
            **train_run(ctx, model, 2 if ctx.smoke else per_device_batch, steps, log_every)}


# ---------------------------------------------------------------------------
# The CPU-trick form against the plain form.


def _kernels_available(ctx):
    if ctx.kernels_missing:
        raise Skipped('create_model has no kernels= option in this checkout '
                      f'({ctx.kernels_missing})')


def kernels_train_check(ctx, model, per_device_batch):
    _kernels_available(ctx)
    steps, log_every = (3, 1) if ctx.smoke else (60, 20)
    batch = 2 if ctx.smoke else per_device_batch
    result = {'model': SMOKE_MODEL if ctx.smoke else model}
    for form in ('plain', 'cpu'):
        r = train_run(ctx, model, batch, steps, log_every, overrides=[('kernels', form)])
        result[f'{form}_images_per_sec_per_device'] = r['images_per_sec_per_device']
    result['cpu_over_plain'] = (result['cpu_images_per_sec_per_device']
                                / result['plain_images_per_sec_per_device'])
    return result


def kernels_infer_check(ctx, model, batch):
    """On one device, at the default precision's compute dtype."""
    _kernels_available(ctx)
    cmd = [sys.executable, os.path.join('scripts', 'kernels_ab.py')]
    if ctx.smoke:
        cmd += ['--model', SMOKE_MODEL, '--batch-size', '2', '--image-size', '32',
                '--steps', '1', '--rounds', '1', '--dtype', 'float32']
    else:
        cmd += ['--model', model, '--batch-size', str(batch), '--steps', '20', '--rounds', '3',
                '--dtype', 'float32' if ctx.backend == 'cpu' else 'bfloat16']
    return last_json(run_process(cmd, ctx))


# ---------------------------------------------------------------------------
# Beside timm, through the benchmark.


def timm_check(mode):
    """On one device, through the benchmark's interleaved rounds."""
    def run(ctx, model, batch):
        if ctx.timm():
            raise Skipped(ctx.timm())
        cmd = [sys.executable, '-m', 'senet_jax.benchmark', '--json', '--model', model,
               '--mode', mode, '--dtype', 'bfloat16', '--compare', 'timm']
        if ctx.smoke:
            cmd += ['--batch-size', '2', '--image-size', '32', '--steps', '1', '--rounds', '1',
                    '--warmup', '1']
        else:
            cmd += ['--batch-size', str(batch), '--steps', '20', '--rounds', '3']
        return last_json(run_process(cmd, ctx))
    return run


def make_checks():
    per_device, all_devices = 'images/s per device', 'images/s, all local devices'
    versus = 'x plain (> 1: the tricks win here)'
    return [
        Check('train', 'se_resnet50 training (train.py)', 'se_resnet50', 256, train_check,
              [('images_per_sec_per_device', 4500, per_device), ('images_per_sec', None, all_devices)]),
        Check('train', 'se_resnext101_32x4d training (train.py)', 'se_resnext101_32x4d', 128,
              train_check,
              [('images_per_sec_per_device', 1700, per_device), ('images_per_sec', None, all_devices)]),
        Check('timm', 'se_resnet50 bf16 training beside timm', 'se_resnet50', 256, timm_check('train'),
              [('speedup_vs_timm', 1.3, 'x timm'), ('images_per_sec', None, 'images/s, one device'),
               ('timm_images_per_sec', None, 'timm images/s')]),
        Check('kernels', 'se_resnet50 training, CPU tricks vs plain', 'se_resnet50', 256,
              kernels_train_check,
              [('plain_images_per_sec_per_device', None, 'plain: ' + per_device),
               ('cpu_images_per_sec_per_device', None, 'CPU tricks: ' + per_device),
               ('cpu_over_plain', None, versus)]),
        Check('kernels', 'se_resnet50 inference, CPU tricks vs plain', 'se_resnet50', 256,
              kernels_infer_check,
              [('plain_images_per_sec', None, 'plain: images/s, one device'),
               ('cpu_images_per_sec', None, 'CPU tricks: images/s, one device'),
               ('cpu_over_plain', None, versus)]),
        Check('timm', 'se_resnet50 bf16 inference beside timm', 'se_resnet50', 256, timm_check('infer'),
              [('images_per_sec', None, 'images/s, one device'), ('speedup_vs_timm', None, 'x timm')]),
    ]


CHECKS = make_checks()


# ---------------------------------------------------------------------------
# The run and its table.


def per_device_batch(model, wanted, bytes_limit):
    """`wanted`, or the largest multiple of 16 below it whose estimated training
    memory fits in MEMORY_SHARE of the device's `bytes_limit` (at least 16); `wanted`
    when the device does not say (memory_stats() is None, as on a CPU)."""
    if not bytes_limit or model not in PER_IMAGE_BYTES:
        return wanted
    fits = int((MEMORY_SHARE * bytes_limit - FIXED_BYTES) // PER_IMAGE_BYTES[model])
    return min(wanted, max(16, fits // 16 * 16))


def probe(env):
    """The backend probe's dict, or {'backend': 'none', ...} when JAX does not start."""
    env = dict(env, XLA_PYTHON_CLIENT_PREALLOCATE='false')
    out = subprocess.run([sys.executable, '-c', PROBE], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    try:
        return last_json(out.stdout)
    except (ValueError, IndexError):
        return {'backend': 'none', 'device_kind': '-', 'num_devices': 0, 'kernels_missing': 'no JAX'}


def timm_unavailable(env, smoke):
    """'' when the timm comparison can run here, else why not."""
    out = subprocess.run([sys.executable, '-c', TIMM_PROBE], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        return 'torch and timm do not import here'
    if out.stdout.strip() != 'True' and not smoke:
        return 'torch sees no CUDA GPU here, and timm on the host CPU is no reference'
    return ''


def jax_pin():
    with open(os.path.join(ROOT, 'requirements.txt')) as f:
        pins = re.findall(r'^jax==(\S+)', f.read(), re.M)
    return pins[0] if pins else ''


def verdict(value, target, device_kind):
    if value is None:
        return 'not measured'
    if target is None:
        return ''
    if not any(kind in device_kind for kind in TARGET_DEVICES):
        return '(target set for one H100/H200)'
    return 'met' if value >= target else 'MISSED'


def print_table(rows, ctx):
    per = 'chip' if ctx.backend == 'tpu' else 'device'
    print(f'\n{ctx.num_devices} x {ctx.device_kind} ({ctx.backend})')
    if ctx.smoke:
        print(f'--smoke: {SMOKE_MODEL} at 32x32, batch 2 per device, stood in for the big models '
              '(timm: the named model at 32x32); the figures only show that the plumbing works')
    print(f'{"check":44s} {"figure":>10s} {"target":>8s}  unit / verdict')
    for name, key, label, value, target in rows:
        shown = '-' if value is None else f'{value:.4g}'
        limit = '' if target is None else f'>= {target:g}'
        label = label.replace('per device', f'per {per}')
        print(f'{name:44s} {shown:>10s} {limit:>8s}  {label} {verdict(value, target, ctx.device_kind)}')


def run_checks(ctx, groups, out_path):
    """Runs the chosen checks, writing results to out_path; (table rows, failures, ran,
    the checks the time budget stopped or left out)."""
    rows, failures, ran, out_of_time = [], 0, 0, []
    with open(out_path, 'w') as out:
        for check in CHECKS:
            if check.group not in groups:
                continue
            batch = per_device_batch(check.model, check.batch, ctx.bytes_limit)
            if batch != check.batch:
                print(f'{check.name}: batch {batch} per device, not {check.batch}: the device '
                      f'has {ctx.bytes_limit / 2**30:.1f} GiB')
            try:
                result = check.run(ctx, check.model, batch)
            except Skipped as e:
                print(f'{check.name}: skipped: {e}')
                continue
            except CheckFailed as e:
                failures += 1
                print(f'{check.name}: {e}')
                if isinstance(e, OutOfTime):
                    out_of_time.append(check)
                result = None
            else:
                ran += 1
                result = {'check': check.name, 'device': ctx.device_kind,
                          'num_devices': ctx.num_devices, 'per_device_batch': batch,
                          'bytes_limit': ctx.bytes_limit, **result}
                out.write(json.dumps(result) + '\n')
                out.flush()
            rows += [(check.name, key, label, None if result is None else result.get(key), target)
                     for key, target, label in check.figures]
    return rows, failures, ran, out_of_time


def out_of_time_line(checks, budget):
    """What the time budget left out, and the command that runs it."""
    if not checks:
        return 'Nothing was left out for lack of time.'
    groups = ','.join(dict.fromkeys(c.group for c in checks))
    return (f'Left out for lack of time: {"; ".join(c.name for c in checks)}. Run them with '
            f'python scripts/accelerator_checks.py --checks {groups} --budget {budget:g}')


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default='accelerator_checks.jsonl', help='one JSON line per check')
    p.add_argument('--budget', type=float, default=470, help='seconds for all checks together')
    p.add_argument('--checks', default=','.join(GROUPS),
                   help=f'comma-separated groups to run, of {",".join(GROUPS)}')
    p.add_argument('--smoke', action='store_true',
                   help=f'toy sizes ({SMOKE_MODEL} for the big models), to check the plumbing on any backend')
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    groups = [g for g in a.checks.split(',') if g]
    if a.budget <= 0 or not groups or set(groups) - set(GROUPS):
        print(f'error: need --budget > 0 and --checks from {",".join(GROUPS)}.', file=sys.stderr)
        return 1
    deadline = time.monotonic() + a.budget
    env = dict(os.environ)
    info = probe(env)
    if info['backend'] not in ('gpu', 'tpu') and not a.smoke:
        pin = jax_pin()
        print(f'error: JAX sees neither a GPU nor a TPU here (backend: {info["backend"]}); install '
              f'the JAX for the accelerator with the requirements (pip install -r requirements.txt '
              f'"jax[cuda12]=={pin}" or "jax[tpu]=={pin}"), or pass --smoke for the toy-sized run.',
              file=sys.stderr)
        return 1
    # Asked when a timm check comes up (importing torch takes a while), not before
    # the first figure.
    timm = functools.lru_cache(maxsize=None)(lambda: timm_unavailable(env, a.smoke))
    with tempfile.TemporaryDirectory(prefix='accelerator_checks_') as workroot:
        env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(workroot, 'jax_cache'))
        ctx = Context(smoke=a.smoke, backend=info['backend'], device_kind=info['device_kind'],
                      num_devices=info['num_devices'], kernels_missing=info['kernels_missing'],
                      timm=timm, workroot=workroot, env=env, deadline=deadline,
                      bytes_limit=info.get('bytes_limit'))
        rows, failures, ran, out_of_time = run_checks(ctx, groups, a.out)
    print_table(rows, ctx)
    chosen = sum(c.group in groups for c in CHECKS)
    print(f'\nresults in {a.out}; {ran} of {chosen} checks ran.')
    print(out_of_time_line(out_of_time, a.budget))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
