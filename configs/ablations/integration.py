"""Where the SE block sits in the residual unit (Sec. 6.5, Fig. 5, Tables 14 and 15).

  python train.py --config=configs/ablations/integration.py:pre --workdir=/tmp/abl/se_pre \
      --config.data_dir=/path/to/tensorflow_datasets
  # small CPU run: se_resnet_mini on digits, a few epochs
  python train.py --config=configs/ablations/integration.py:identity,local \
      --workdir=/tmp/abl/se_identity_local

Values: standard (default: on the branch, before the addition), pre (before the
branch), post (after the addition and its ReLU), identity (on the shortcut, in
parallel to the branch), 3x3 (after the 3x3 conv of the bottleneck; after the
first conv of a basic block).
"""
from configs.ablations import study

VALUES = {p: (lambda p=p: {'se_position': p})
          for p in ('standard', 'pre', 'post', 'identity', '3x3')}


def get_config(arg=''):
    return study.ablation_config('integration', arg, VALUES, default='standard')
