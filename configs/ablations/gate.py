"""The excitation's final non-linearity (Sec. 6.3, Table 12 of the paper).

  python train.py --config=configs/ablations/gate.py:tanh --workdir=/tmp/abl/gate_tanh \
      --config.data_dir=/path/to/tensorflow_datasets
  # small CPU run: se_resnet_mini on digits, a few epochs
  python train.py --config=configs/ablations/gate.py:relu,local --workdir=/tmp/abl/gate_relu_local

Values: sigmoid (default), tanh, relu.

Every value here starts the residual branch's last BN scale at 1, as the
paper's networks did, so the three gates start from the same initialisation.
(With a zero scale the branch output U is 0 at initialisation and tanh(0) =
relu(0) = 0, so U * s would have zero gradient in both factors; the model
therefore never zero-initialises a branch that ends in such a gate.)
"""
from configs.ablations import study

VALUES = {g: (lambda g=g: {'gate': g, 'zero_init_last': False})
          for g in ('sigmoid', 'tanh', 'relu')}


def get_config(arg=''):
    return study.ablation_config('gate', arg, VALUES, default='sigmoid')
