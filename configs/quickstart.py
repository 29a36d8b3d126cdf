"""Quickstart: se_resnet_mini on scikit-learn's digits, offline, CPU, minutes.

  python train.py --config=configs/quickstart.py --workdir=/tmp/quickstart

Reaches >= 97% top-1 on the fixed held-out 20% (360 images) of load_digits.
The recipe is configs/common.py's small_run_config, shared with the ablations'
`local` variants; this run trains it for 15 epochs.
"""

from configs import common


def get_config():
    return common.small_run_config(num_epochs=15.0)
