"""se_resnet50 on ImageNet with the SENet paper recipe.

  python train.py --config=configs/se_resnet50.py --workdir=/tmp/se_resnet50 \
      --config.data_dir=/path/to/tensorflow_datasets
  # warmup + cosine + Nesterov + label smoothing:
  python train.py --config=configs/se_resnet50.py:cosine --workdir=/tmp/se_resnet50_cosine
"""

from configs import common


def get_config(recipe=''):
    return common.imagenet_config('se_resnet50', recipe)
