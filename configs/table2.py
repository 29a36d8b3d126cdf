"""Table 2 of the paper: SE in BN-Inception, Inception-ResNet-v2 and VGG-16 (with
BN), each beside its plain baseline, on ImageNet with the paper's recipe.

The config argument is `MODEL[,local]`, MODEL one of the six networks below.

  python train.py --config=configs/table2.py:se_bn_inception --workdir=/tmp/se_bn_inception \
      --config.data_dir=/path/to/tensorflow_datasets
  python train.py --config=configs/table2.py:bn_inception --workdir=/tmp/bn_inception
  python train.py --config=configs/table2.py:se_inception_resnet_v2 --workdir=/tmp/se_irv2
  python train.py --config=configs/table2.py:inception_resnet_v2 --workdir=/tmp/irv2
  python train.py --config=configs/table2.py:se_vgg16_bn --workdir=/tmp/se_vgg16_bn
  python train.py --config=configs/table2.py:vgg16_bn --workdir=/tmp/vgg16_bn
  # CPU smoke run: 4 steps of batch 8 on fake images (32x32; 75x75 for
  # Inception-ResNet-v2, its smallest input), evaluated once:
  python train.py --config=configs/table2.py:se_vgg16_bn,local --workdir=/tmp/se_vgg16_bn_local

Recipe (paper Sec. 5, as for the ResNets): SGD momentum 0.9, batch 1024, lr 0.6
divided by 10 every 30 epochs, 100 epochs, weight decay 1e-4, random-size crops
with flips (configs/common.py). Inception-ResNet-v2 trains on 299x299 crops and
is evaluated, as in Table 2, on the 299 centre crop of the image resized to 352
(eval_crop_fraction = 299/352); the others at 224 (centre crop of a 256 resize).
The pixel format (e.g. BN-Inception's Caffe BGR means) comes with the model.
"""

from configs import common

MODELS = ('bn_inception', 'se_bn_inception', 'inception_resnet_v2',
          'se_inception_resnet_v2', 'vgg16_bn', 'se_vgg16_bn')
# Inception-ResNet-v2: 299 crops, the 299 centre of a 352 resize.
AT_299 = ('inception_resnet_v2', 'se_inception_resnet_v2')
# The local variant's image side: the smallest each network takes (IRv2's
# valid-padded stem and reductions need 75).
LOCAL_SIZE = {'inception_resnet_v2': 75, 'se_inception_resnet_v2': 75}


def get_config(arg=''):
    values, local = common.split_arg(arg)
    if len(values) != 1:
        raise ValueError(f'give one model of {", ".join(MODELS)} (optionally '
                         f'with ",local"), got {arg!r}')
    model = common.check_choice('model', values[0], MODELS)
    c = common.imagenet_config(model)
    if model in AT_299:
        c.image_size = 299
        c.eval_crop_fraction = 299 / 352
    if local:
        common.local_variant(c, image_size=LOCAL_SIZE.get(model, 32))
    return c
