"""Evaluate a published weight on ImageNet validation with its own preprocessing.

  python train.py --config=configs/eval_pretrained.py:se_resnet50.ra2_in1k \
      --workdir=/tmp/eval_se50 --config.data_dir=/path/to/tensorflow_datasets
  # a quick look on a CPU: the first 4 batches of 50
  python train.py --config=configs/eval_pretrained.py:se_resnet50.ra2_in1k \
      --workdir=/tmp/eval_se50 --config.data_dir=... --config.batch_size=50 \
      --config.max_eval_batches=4

The argument is a tag of `senet_jax.list_pretrained()` (or a model name, for its
default weight). The weight is downloaded once and cached; its config sets the
eval transform (the short side resized to input_size / crop_pct with its
interpolation, the central crop) and the mean and std. Nothing is trained.
"""

from configs import common


def get_config(tag='se_resnet50.ra2_in1k'):
    return common.pretrained_config(tag, evaluate=True)
