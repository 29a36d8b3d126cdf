"""Table 6 of the paper: SE-ResNet-152 and its ResNet-152 baseline on Places365
(scene classification, 365 classes), tfds `places365_small`.

The config argument is `[se_resnet152|resnet152][,local]` (se_resnet152 by default).

  python train.py --config=configs/places365.py:se_resnet152 --workdir=/tmp/places_se152 \
      --config.data_dir=/path/to/tensorflow_datasets
  python train.py --config=configs/places365.py:resnet152 --workdir=/tmp/places_r152
  # CPU smoke run: 4 steps of batch 8 on 32x32 fake images (365 classes), evaluated once:
  python train.py --config=configs/places365.py:se_resnet152,local --workdir=/tmp/places_local

Recipe: the paper's ImageNet one (configs/common.py: batch 1024, lr 0.6 divided
by 10 every 30 epochs, 100 epochs, weight decay 1e-4, random-size crops to 224;
eval on the 224 centre crop of the 256x256 images). Prepare the data once with
`tfds build places365_small`; its labelled eval split is 'validation' (36,500).

Data caveat: the paper trained on Places365-Challenge (about 8M training
images); tfds' places365_small is Places365-Standard (about 1.8M training
images, 256x256), so errors are not directly comparable to Table 6.
"""

from configs import common

MODELS = ('se_resnet152', 'resnet152')


def get_config(arg=''):
    values, local = common.split_arg(arg)
    if len(values) > 1:
        raise ValueError(f'give one model of {", ".join(MODELS)} (optionally '
                         f'with ",local"), got {arg!r}')
    model = common.check_choice('model', values[0] if values else 'se_resnet152',
                                MODELS)
    c = common.imagenet_config(model)
    c.dataset = 'places365_small'
    c.train_split, c.eval_split = 'train', 'validation'
    if local:
        common.local_variant(c, num_classes=365)
    return c
