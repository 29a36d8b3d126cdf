"""Print every zoo model: parameters, GMACs at its input size and the reference it matches.

    python -m senet_jax.models [NAME ...] [--image-size 224]

Each model is measured at the resolution it is meant for (224 for the ImageNet
models, 16 for the `*_mini` ones), or at `--image-size` for all.

GMACs are XLA's own count for the compiled forward pass (cost_analysis flops / 2),
not a hand count: convolutions and matmuls as multiply-adds (taps that fall on
zero padding are not counted), plus the elementwise work (BN, ReLU, SE scale).
"""
import argparse
import sys

import jax
import jax.numpy as jnp

from senet_jax.models import create_model, list_models, model_spec


def complexity(name: str, image_size: int = 224, **overrides):
    """(parameters, GMACs) of one model for a single image, from the compiled forward pass."""
    model = create_model(name, **overrides)
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape)))
    params = sum(v.size for v in jax.tree.leaves(variables['params']))
    compiled = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return params, cost['flops'] / 2e9


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m senet_jax.models', description=__doc__.split('\n\n')[0])
    parser.add_argument('names', nargs='*', help='models to show (default: all)')
    parser.add_argument('--image-size', type=int, default=None,
                        help="input side for every model (default: each model's own)")
    args = parser.parse_args(argv)
    names = args.names or list_models()
    try:
        for n in names:
            model_spec(n)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f"{'model':28s} {'size':>5s} {'params (M)':>10s} {'GMACs':>8s}  reference (timm)")
    for n in names:
        size = args.image_size or model_spec(n).input_size
        params, gmacs = complexity(n, size)
        print(f'{n:28s} {size:5d} {params / 1e6:10.2f} {gmacs:8.2f}  {model_spec(n).reference or "-"}',
              flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
