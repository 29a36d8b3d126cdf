"""ResNet-50 baseline (no SE), same recipe as the SE models.

  python train.py --config=configs/resnet50.py --workdir=/tmp/resnet50 \
      --config.data_dir=/path/to/tensorflow_datasets
  # warmup + cosine + Nesterov + label smoothing:
  python train.py --config=configs/resnet50.py:cosine --workdir=/tmp/resnet50_cosine
"""

from configs import common


def get_config(recipe=''):
    return common.imagenet_config('resnet50', recipe)
