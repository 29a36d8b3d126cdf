"""SE beside its successors: the same network and recipe with each attention block.

  python train.py --config=configs/ablations/attention.py:eca --workdir=/tmp/abl/attention_eca \
      --config.data_dir=/path/to/tensorflow_datasets
  # small CPU run: se_resnet_mini on digits, a few epochs
  python train.py --config=configs/ablations/attention.py:cbam,local --workdir=/tmp/abl/attention_cbam_local

Values: none (the plain ResNet-50), se (default), ese, eca, ge (Gather-Excite's
parameter-free global form, GE-θ−), ge4 (GE-θ− gathering over extent 4), gc,
cbam: `senet_jax.attention`'s blocks, each where SE sits (every stage, after
the residual branch's last BN). The ImageNet runs use the paper's recipe for
SE-ResNet-50 with the block swapped; docs/attention.md has the costs and the
small runs.
"""
from configs.ablations import study

VALUES = {
    'none': lambda: {'attention': None},
    'se': lambda: {'attention': 'se'},
    'ese': lambda: {'attention': 'ese'},
    'eca': lambda: {'attention': 'eca'},
    # GE-θ−: no excitation MLP (timm's GatherExcite adds one by default)
    'ge': lambda: {'attention': ('ge', {'use_mlp': False})},
    'ge4': lambda: {'attention': ('ge', {'extent': 4, 'use_mlp': False})},
    'gc': lambda: {'attention': 'gc'},
    'cbam': lambda: {'attention': 'cbam'},
}


def get_config(arg=''):
    return study.ablation_config('attention', arg, VALUES, default='se')
