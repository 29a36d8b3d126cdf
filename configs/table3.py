"""Table 3 of the paper: SE in the mobile networks MobileNet (v1, width 1.0) and
ShuffleNet (v1, 1x, g=3), each beside its plain baseline, on ImageNet.

The config argument is `MODEL[,local]`, MODEL one of the four networks below.

  python train.py --config=configs/table3.py:se_mobilenet_v1 --workdir=/tmp/se_mobilenet_v1 \
      --config.data_dir=/path/to/tensorflow_datasets
  python train.py --config=configs/table3.py:mobilenet_v1 --workdir=/tmp/mobilenet_v1
  python train.py --config=configs/table3.py:se_shufflenet_v1_g3 --workdir=/tmp/se_shufflenet
  python train.py --config=configs/table3.py:shufflenet_v1_g3 --workdir=/tmp/shufflenet
  # CPU smoke run: 4 steps of batch 8 on 32x32 fake images, evaluated once:
  python train.py --config=configs/table3.py:se_mobilenet_v1,local --workdir=/tmp/se_mobilenet_local

Recipe (paper Sec. 5.1, "mobile setting"): SGD momentum 0.9, batch 256, initial
lr 0.1, divided by 10 each time the validation loss plateaus, about 400 epochs
in all. `lr_schedule='plateau'` feeds the validation loss of each evaluation
(once per epoch) to optax.contrib.reduce_on_plateau; its scale is part of the
optimizer state, so a resumed run keeps a reduced rate.

What the paper leaves open, and our choices:
  * Plateau rule: the rate is cut after 10 evaluations (epochs) in a row that
    do not beat the best validation loss by 1e-4 (relative); no cooldown, no
    floor. Our choice, close to PyTorch ReduceLROnPlateau's defaults (whose
    patience=10 cuts at the 11th such epoch); the paper gives none. Change with
    --config.plateau_patience=... etc.
  * Weight decay 4e-5. The SENet paper does not state it; it says it uses
    "slightly less aggressive data augmentation and regularisation" as in
    ShuffleNet, whose paper uses weight decay 4e-5 instead of 1e-4 (MobileNet's
    paper asks for little or no decay on the depthwise filters and gives no
    number). Decay applies to every conv and dense kernel here, depthwise ones
    included.
  * Less aggressive scale augmentation: random-size crops of 25-100% of the
    area instead of 8-100%. Neither paper gives the range; 0.25 is our choice.
"""

from configs import common

MODELS = ('mobilenet_v1', 'se_mobilenet_v1', 'shufflenet_v1_g3',
          'se_shufflenet_v1_g3')


def get_config(arg=''):
    values, local = common.split_arg(arg)
    if len(values) != 1:
        raise ValueError(f'give one model of {", ".join(MODELS)} (optionally '
                         f'with ",local"), got {arg!r}')
    c = common.imagenet_config(common.check_choice('model', values[0], MODELS))
    c.batch_size = 256
    c.base_batch_size = 256  # lr = 0.1 at batch 256, scaled linearly otherwise
    c.learning_rate = 0.1
    c.lr_schedule = 'plateau'
    c.plateau_patience = 10
    c.plateau_factor = 0.1
    c.plateau_cooldown = 0
    c.plateau_min_scale = 0.0
    c.num_epochs = 400.0
    c.eval_every_steps = 0  # once per epoch: the plateau rule's clock
    c.weight_decay = 4e-5
    c.min_crop_area = 0.25
    if local:
        common.local_variant(c)
    return c
