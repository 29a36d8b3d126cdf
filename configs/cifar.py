"""Tables 4 and 5 of the paper: SE in CIFAR ResNet-110, ResNet-164 and WRN-16-8,
each beside its plain baseline, on tfds cifar10 or cifar100.

The config argument is `MODEL[,cifar10|cifar100][,local]` (cifar10 by default).

  python train.py --config=configs/cifar.py:se_resnet110_cifar --workdir=/tmp/se_resnet110_c10 \
      --config.data_dir=/path/to/tensorflow_datasets
  python train.py --config=configs/cifar.py:resnet110_cifar,cifar100 --workdir=/tmp/resnet110_c100
  python train.py --config=configs/cifar.py:se_resnet164_cifar,cifar100 --workdir=/tmp/se_r164_c100
  python train.py --config=configs/cifar.py:resnet164_cifar --workdir=/tmp/resnet164_c10
  python train.py --config=configs/cifar.py:se_wrn16_8_cifar,cifar100 --workdir=/tmp/se_wrn_c100
  python train.py --config=configs/cifar.py:wrn16_8_cifar --workdir=/tmp/wrn_c10
  # CPU smoke run: 4 steps of batch 8 on 32x32 fake images, evaluated once:
  python train.py --config=configs/cifar.py:se_resnet110_cifar,cifar100,local --workdir=/tmp/c100_local

Data (the paper's CIFAR experiments: the standard augmentation): each training image is
zero-padded by 4 pixels on every side, a random 32x32 crop taken and flipped
horizontally at random; evaluation sees the test images as they are. The
mean/std normalisation is the model's (its CIFAR input format). Prepare the data
once with `tfds build cifar10` (or cifar100); the eval split is 'test'.

Recipes, from each baseline's own paper (the SENet paper trains each SE network
as its baseline was trained):
  ResNet-110 / ResNet-164 (He et al. 2016, "Deep residual learning" Sec. 4.2,
    and "Identity mappings in deep residual networks"): batch 128, SGD momentum 0.9, weight decay
    1e-4, lr 0.1 divided by 10 at 32k and 48k iterations, stopping at 64k
    (about 164 epochs). Left out: both papers start with lr 0.01 for about
    400 iterations (ResNet-110 only converged that way in the first paper); the
    config has no constant warm-up, and the BN networks here train from 0.1.
  WRN-16-8 (Zagoruyko & Komodakis 2016, "Wide residual networks"): batch 128, SGD with Nesterov
    momentum 0.9, weight decay 5e-4, lr 0.1 multiplied by 0.2 at epochs 60, 120
    and 160 of 200, no dropout.
The trainer decays conv and dense kernels only (the Torch originals decayed
every parameter, BN's included).
"""

from configs import common

RESNETS = ('resnet110_cifar', 'se_resnet110_cifar', 'resnet164_cifar',
           'se_resnet164_cifar')
WRNS = ('wrn16_8_cifar', 'se_wrn16_8_cifar')
MODELS = RESNETS + WRNS
DATASETS = {'cifar10': 10, 'cifar100': 100}


def get_config(arg=''):
    values, local = common.split_arg(arg)
    if not 1 <= len(values) <= 2:
        raise ValueError(f'give MODEL[,cifar10|cifar100][,local], got {arg!r}')
    model = common.check_choice('model', values[0], MODELS)
    dataset = common.check_choice(
        'dataset', values[1] if len(values) > 1 else 'cifar10', tuple(DATASETS))
    c = common.base_config()
    c.model = model
    c.dataset, c.train_split, c.eval_split = dataset, 'train', 'test'
    c.image_size = 32
    c.preprocess = 'cifar'
    c.shuffle_buffer = 50_000  # the whole training set
    c.batch_size = c.base_batch_size = 128
    c.learning_rate = 0.1
    c.lr_schedule = 'step'
    c.momentum = 0.9
    if model in RESNETS:
        c.lr_decay_factor = 0.1
        c.lr_boundaries_steps = (32_000, 48_000)
        c.num_train_steps = 64_000
        c.weight_decay = 1e-4
    else:
        c.lr_decay_factor = 0.2
        c.lr_boundaries_epochs = (60, 120, 160)
        c.num_epochs = 200.0
        c.nesterov = True
        c.weight_decay = 5e-4
    c.log_every_steps = 100
    c.eval_every_steps = 0  # once per epoch (390 steps)
    c.checkpoint_every_steps = 0
    if local:
        common.local_variant(c, num_classes=DATASETS[dataset])
    return c
