"""The squeeze operator (Sec. 6.2, Table 11) and the NoSqueeze variant (Sec. 7.1, Table 16).

  python train.py --config=configs/ablations/squeeze.py:max --workdir=/tmp/abl/sq_max \
      --config.data_dir=/path/to/tensorflow_datasets
  # small CPU run: se_resnet_mini on digits, a few epochs
  python train.py --config=configs/ablations/squeeze.py:none,local --workdir=/tmp/abl/sq_none_local

Values: avg (default: global average pooling), max (global max pooling), none
(the excitation's two projections act on every position: 1x1 convolutions
instead of the pooled descriptor, so the gates vary over space).
"""
from configs.ablations import study

VALUES = {s: (lambda s=s: {'squeeze': s}) for s in ('avg', 'max', 'none')}


def get_config(arg=''):
    return study.ablation_config('squeeze', arg, VALUES, default='avg')
