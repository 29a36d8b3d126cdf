"""Reduction ratio r of the excitation bottleneck (Sec. 6.1, Table 10 of the paper).

  python train.py --config=configs/ablations/reduction.py:8 --workdir=/tmp/abl/r8 \
      --config.data_dir=/path/to/tensorflow_datasets
  # small CPU run: se_resnet_mini on digits, a few epochs
  python train.py --config=configs/ablations/reduction.py:8,local --workdir=/tmp/abl/r8_local

Values: 2, 4, 8, 16 (default, the paper's choice), 32.
"""
from configs.ablations import study

VALUES = {str(r): (lambda r=r: {'reduction': r}) for r in (2, 4, 8, 16, 32)}


def get_config(arg=''):
    return study.ablation_config('reduction', arg, VALUES, default='16')
