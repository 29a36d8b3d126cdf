"""SENet-154 on ImageNet: the paper recipe plus label smoothing 0.1, dropout 0.2.

  python train.py --config=configs/senet154.py --workdir=/tmp/senet154 \
      --config.data_dir=/path/to/tensorflow_datasets --config.dtype=bfloat16
  python train.py --config=configs/senet154.py:cosine --workdir=/tmp/senet154_cos
"""

from configs import common


def get_config(recipe=''):
    c = common.imagenet_config('senet154', recipe)
    c.label_smoothing = 0.1
    c.drop_rate = 0.2
    return c
