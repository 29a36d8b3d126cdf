"""Print every zoo model: parameters, multiply-adds at its input size, the paper's figures
and the reference it matches.

    python -m senet_jax.models [NAME ...] [--image-size 224] [--xla]

Each model is measured at the resolution it is meant for (224 for most ImageNet
models, 299 for Inception-ResNet-v2, 32 for the CIFAR networks, 16 for the
`*_mini` ones), or at `--image-size` for all.

GMACs are multiply-adds counted as fvcore and timm's tables count them
(senet_jax.models.macs): every convolution tap, zero padding included, and
every dense multiply-add; no elementwise work. The paper's "GFLOPs" are
multiply-adds too, counted on its Caffe networks. `--xla` adds XLA's own
figure for the compiled forward pass (cost_analysis flops / 2), which leaves
out taps on zero padding and adds the elementwise work.
"""
import argparse
import sys

import jax
import jax.numpy as jnp

from senet_jax.models import create_model, list_models, model_spec
from senet_jax.models.macs import count_macs


def _shapes(name: str, image_size: int, overrides):
    model = create_model(name, **{'kernels': 'plain', **overrides})
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    return model, x, jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape)))


def complexity(name: str, image_size: int = 224, **overrides):
    """(parameters, GMACs) of one model for a single image (GMACs: `macs.count_macs`)."""
    model, _, variables = _shapes(name, image_size, overrides)
    params = sum(v.size for v in jax.tree.leaves(variables['params']))
    return params, count_macs(model, image_size, variables) / 1e9


def xla_gmacs(name: str, image_size: int = 224, **overrides) -> float:
    """XLA's cost analysis of the compiled forward pass: flops / 2, in G."""
    model, x, variables = _shapes(name, image_size, overrides)
    compiled = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost['flops'] / 2e9


def _paper_columns(name: str) -> str:
    paper = model_spec(name).paper
    if paper is None:
        return f"{'-':>9s} {'-':>7s} {'-':>8s}"
    gflops = '-' if paper.gflops is None else f'{paper.gflops:.{3 if paper.gflops < 1 else 2}f}'
    params = f'{paper.params_m:.1f}' if paper.params_m is not None else '-'
    return f'{paper.table:>9s} {gflops:>7s} {params:>8s}'


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m senet_jax.models', description=__doc__.split('\n\n')[0])
    parser.add_argument('names', nargs='*', help='models to show (default: all)')
    parser.add_argument('--image-size', type=int, default=None,
                        help="input side for every model (default: each model's own)")
    parser.add_argument('--xla', action='store_true',
                        help="add XLA's cost analysis of the compiled forward pass (slower)")
    args = parser.parse_args(argv)
    names = args.names or list_models()
    try:
        for n in names:
            model_spec(n)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    xla = f" {'XLA':>6s}" if args.xla else ''
    print(f"{'model':28s} {'size':>5s} {'params (M)':>10s} {'GMACs':>7s}{xla} "
          f"{'paper':>9s} {'GFLOPs':>7s} {'params':>8s}  reference")
    for n in names:
        spec = model_spec(n)
        size = args.image_size or spec.input_size
        params, gmacs = complexity(n, size)
        xla = f' {xla_gmacs(n, size):6.2f}' if args.xla else ''
        reference = f'{spec.source}:{spec.reference}' if spec.reference else '-'
        print(f'{n:28s} {size:5d} {params / 1e6:10.2f} {gmacs:7.3f}{xla} {_paper_columns(n)}  '
              f'{reference}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
