"""Times se_resnet50's 3x3 convolutions alone: forward, input gradient, weight gradient.

    python scripts/bench_conv3x3.py            # with senet_jax.xla_cpu.compiler_options()
    python scripts/bench_conv3x3.py --default  # XLA's defaults (YNNPACK convolutions on CPU)

Batch 8, fp32, NHWC, padding 1; milliseconds, the median of 5 rounds of 5 calls
(`senet_jax.benchmark.time_round`). 'input grad' is XLA's gradient of the
convolution; 'conv3x3' is the input gradient the models use
(`senet_jax.cpu_kernels.conv3x3`), which is XLA's at stride 1 on maps larger than
7x7. Prefix `taskset -c 0` for one thread.
"""
import os
import statistics
import sys

import jax
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repo root
from senet_jax import cpu_kernels, xla_cpu  # noqa: E402
from senet_jax.benchmark import time_round  # noqa: E402

# (spatial size of the input, channels, stride): conv2_x .. conv5_x, and the strided first blocks.
SHAPES = [(56, 64, 1), (28, 128, 1), (14, 256, 1), (7, 512, 1), (56, 128, 2), (28, 256, 2), (14, 512, 2)]


def _ms(fn, *args):
    return statistics.median(
        time_round(lambda: fn(*args), 5, jax.block_until_ready) for _ in range(5)) * 1e3


def main(argv):
    options = None if '--default' in argv else xla_cpu.compiler_options()
    print(f'compiler_options: {options}')
    for size, channels, stride in SHAPES:
        def conv(x, w):
            return lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                            dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        x = jax.random.normal(jax.random.key(0), (8, size, size, channels))
        w = jax.random.normal(jax.random.key(1), (3, 3, channels, channels))
        g = jax.random.normal(jax.random.key(2), jax.eval_shape(conv, x, w).shape)
        jit = lambda f: jax.jit(f, compiler_options=options)
        input_grad = lambda f: jit(lambda x, w, g: jax.vjp(lambda x: f(x, w), x)[1](g)[0])
        forward = _ms(jit(conv), x, w)
        dgrad = _ms(input_grad(conv), x, w, g)
        ours = _ms(input_grad(lambda x, w: cpu_kernels.conv3x3(x, w, stride)), x, w, g)
        wgrad = _ms(jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]), x, w, g)
        print(f'{size}x{size}x{channels} stride {stride}: forward {forward:6.2f}  '
              f'input grad {dgrad:6.2f}  conv3x3 {ours:6.2f}  weight grad {wgrad:6.2f} ms')


if __name__ == '__main__':
    main(sys.argv[1:])
