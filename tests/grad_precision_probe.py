"""Counts the all-reduces of the trainer's train step, by element type, as XLA's
SPMD partitioner leaves them, on 4 CPU devices.

    python tests/grad_precision_probe.py MODEL:DTYPE:KERNELS ...

prints one JSON object {'MODEL:DTYPE:KERNELS': {element type: count}}. MODEL
is 'se_resnet_mini', 'se_resnext_block' (one SE-ResNeXt bottleneck, 32
groups) or 'attention_block/NAME' (one ResNet bottleneck with the attention
block NAME of senet_jax.attention). It runs in a process of its own because the device count is fixed
when JAX starts.
"""

import collections
import glob
import json
import os
import re
import sys
import tempfile

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SIZE, BATCH, CLASSES = 16, 8, 10


def all_reduce_types(model_name, dtype, kernels):
    import jax  # pylint: disable=g-import-not-at-top
    import ml_collections  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top
    from senet_jax import precision, sharding, trainer  # pylint: disable=g-import-not-at-top
    from senet_jax.models import create_model  # pylint: disable=g-import-not-at-top

    kw = dict(num_classes=CLASSES, dtype=precision.DTYPES[dtype], kernels=kernels)
    if model_name == 'se_resnext_block':
        model = create_model('se_resnext50_32x4d', layers=(1, 0, 0, 0), stem='small',
                             stem_width=16, stem_pool=None, **kw)
    elif model_name.startswith('attention_block/'):
        model = create_model('resnet50', attention=model_name.split('/')[1], layers=(1, 0, 0, 0),
                             stem='small', stem_width=16, stem_pool=None, **kw)
    else:
        model = create_model(model_name, **kw)
    mesh = sharding.create_mesh()
    assert mesh.size == 4, mesh
    config = ml_collections.ConfigDict(dict(image_size=SIZE, weight_decay=1e-4, momentum=0.9,
                                            nesterov=False, label_smoothing=0.0))
    lr = optax.constant_schedule(0.1)
    steps = trainer.compile_steps(config, model, trainer.create_optimizer(config, lr), mesh,
                                  num_classes=CLASSES, learning_rate_fn=lr, dtype=dtype)
    data = sharding.data_sharding(mesh)
    batch = {'image': jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), np.uint8, sharding=data),
             'label': jax.ShapeDtypeStruct((BATCH,), np.int32, sharding=data)}
    lowered = steps.train.lower(jax.eval_shape(steps.init, jax.random.key(0, impl='rbg')),
                                batch, trainer.dropout_key(0, mesh))
    with tempfile.TemporaryDirectory() as dump:
        # Only the partitioned HLO is read: the backend's code generation after it is
        # made cheap (level 0, the elemental emitters; 13.8 -> 7.4 s of CPU for 3 cases).
        lowered.compile(compiler_options={'xla_dump_to': dump,
                                          'xla_dump_hlo_pass_re': 'spmd-partitioning',
                                          'xla_backend_optimization_level': 0,
                                          'xla_cpu_use_fusion_emitters': False})
        [path] = glob.glob(os.path.join(dump, '*train_step*after_spmd-partitioning*.txt'))
        with open(path) as f:
            text = f.read()
    # e.g. "%all-reduce.3 = bf16[3,3,16,16]{3,2,1,0} all-reduce(...)"
    return collections.Counter(re.findall(r'= (\w+)\[[^\]]*\]\S* all-reduce\(', text))


if __name__ == '__main__':
    print(json.dumps({case: all_reduce_types(*case.split(':')) for case in sys.argv[1:]}))
