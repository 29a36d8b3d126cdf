"""Fine-tune a published weight on an image folder, with a new classifier.

  python train.py --config=configs/finetune.py:se_resnet50.ra2_in1k \
      --workdir=/tmp/finetune --config.data_dir=/data/my_images

`data_dir` holds train/<class>/ and val/<class>/ (dataset=imagefolder). The
backbone starts from the weight (downloaded once and cached); the classifier is
fresh, sized to the folder's classes. Training crops are random-size at the
weight's input size; evaluation uses the weight's own transform and statistics.
Recipe: SGD with Nesterov momentum, 2 warmup epochs then cosine from lr 0.01 per
256 images, 20 epochs, weight decay 1e-4, label smoothing 0.1.
"""

from configs import common


def get_config(tag='se_resnet50.ra2_in1k'):
    c = common.pretrained_config(tag, evaluate=False)
    c.dataset = 'imagefolder'
    c.batch_size = 64
    c.base_batch_size = 256
    c.learning_rate = 0.01
    c.lr_schedule = 'cosine'
    c.warmup_epochs = 2.0
    c.nesterov = True
    c.label_smoothing = 0.1
    c.num_epochs = 20.0
    return c
