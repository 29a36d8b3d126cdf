"""The excitation's final non-linearity (Sec. 6.3, Table 12 of the paper).

  python train.py --config=configs/ablations/gate.py:tanh --workdir=/tmp/abl/gate_tanh \
      --config.data_dir=/path/to/tensorflow_datasets
  # small CPU run: se_resnet_mini on digits, a few epochs
  python train.py --config=configs/ablations/gate.py:relu,local --workdir=/tmp/abl/gate_relu_local

Values: sigmoid (default), tanh, relu.
"""
from configs.ablations import study

VALUES = {g: (lambda g=g: {'gate': g}) for g in ('sigmoid', 'tanh', 'relu')}


def get_config(arg=''):
    return study.ablation_config('gate', arg, VALUES, default='sigmoid')
