"""se_resnext101_32x4d on ImageNet with the SENet paper recipe.

  python train.py --config=configs/se_resnext101_32x4d.py --workdir=/tmp/se_resnext101_32x4d \
      --config.data_dir=/path/to/tensorflow_datasets
  # warmup + cosine + Nesterov + label smoothing:
  python train.py --config=configs/se_resnext101_32x4d.py:cosine --workdir=/tmp/se_resnext101_32x4d_cosine
"""

from configs import common


def get_config(recipe=''):
    return common.imagenet_config('se_resnext101_32x4d', recipe)
