"""SE blocks in one stage only, or in all (Sec. 6.4, Table 13 of the paper).

  python train.py --config=configs/ablations/stages.py:4 --workdir=/tmp/abl/stage4 \
      --config.data_dir=/path/to/tensorflow_datasets
  # small CPU run: se_resnet_mini on digits, a few epochs
  python train.py --config=configs/ablations/stages.py:4,local --workdir=/tmp/abl/stage4_local

Values (paper stage numbering, conv2_x..conv5_x): 2, 3, 4, 5, all (default),
and none (no SE block: the ResNet baseline row of Table 13).
"""
from configs.ablations import study

VALUES = {str(s): (lambda s=s: {'se_stages': (s,)}) for s in (2, 3, 4, 5)}
VALUES['all'] = lambda: {'se_stages': (2, 3, 4, 5)}
VALUES['none'] = lambda: {'se_stages': ()}


def get_config(arg=''):
    return study.ablation_config('stages', arg, VALUES, default='all')
