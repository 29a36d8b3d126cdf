"""Quickstart: se_resnet_mini on scikit-learn's digits, offline, CPU, minutes.

  python train.py --config=configs/quickstart.py --workdir=/tmp/quickstart

Reaches >= 97% top-1 on the fixed held-out 20% (360 images) of load_digits.
"""

from configs import common


def get_config():
    c = common.base_config()
    c.model = 'se_resnet_mini'
    c.dataset = 'digits'
    c.image_size = 16
    c.digits_max_shift = 1  # random translation by up to 1 pixel
    c.batch_size = 64
    c.base_batch_size = 0  # no linear scaling: learning_rate is the peak rate
    c.learning_rate = 0.1
    c.lr_schedule = 'cosine'
    c.warmup_epochs = 1.0
    c.weight_decay = 5e-4
    c.num_epochs = 15.0
    c.log_every_steps = 50
    c.eval_every_steps = 0  # once per epoch
    c.checkpoint_every_steps = 0  # once per epoch
    c.preemption_check_every_steps = 1
    return c
