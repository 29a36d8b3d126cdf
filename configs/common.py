"""Shared config pieces; every config file in this folder builds on them.

Not a config itself: base_config() holds every field, imagenet_config() the
paper's ImageNet recipe of the per-model files (configs/se_resnet50.py, ...),
small_run_config() the CPU-sized run of configs/quickstart.py and of the
ablations' `local` variants. Every field here can be overridden on the command line,
e.g. `--config.batch_size=256 --config.data_dir=/data/tfds`.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Fields every run has, with ImageNet-scale defaults."""
    c = ml_collections.ConfigDict()
    c.model = 'se_resnet50'
    # create_model options; the paper's SE options are placeholders (None = the
    # model's default) so that e.g. --config.model_overrides.reduction=8 works.
    c.model_overrides = ml_collections.ConfigDict({
        'reduction': ml_collections.config_dict.placeholder(float),
        'squeeze': ml_collections.config_dict.placeholder(str),
        'gate': ml_collections.config_dict.placeholder(str),
        'se_position': ml_collections.config_dict.placeholder(str),
        'se_stages': ml_collections.config_dict.placeholder(tuple),
        # the residual family's block by name (senet_jax.attention), e.g. 'eca'.
        'attention': ml_collections.config_dict.placeholder(str),
        # 'plain' or 'cpu' forces how the layers are computed (None: by platform).
        'kernels': ml_collections.config_dict.placeholder(str),
    })
    # None = the model's own default (0.2 for senet154); a placeholder so that
    # --config.drop_rate=0.3 works.
    c.drop_rate = ml_collections.config_dict.placeholder(float)

    # Data. dataset: a tfds name, 'imagefolder', 'digits' or 'fake'.
    c.dataset = 'imagenet2012'
    c.data_dir = ''  # tfds data_dir / image folder root; '' = tfds default
    c.train_split = 'train'
    c.eval_split = 'validation'
    c.image_size = 224
    c.min_crop_area = 0.08        # random-size crop: 8%..100% of the area
    c.eval_crop_fraction = 0.875  # 224/256: centre crop of a 256 resize
    # '' crops eval_crop_fraction of the short side and resizes it to image_size;
    # 'bilinear' / 'bicubic' is a pretrained weight's transform (timm's): the short side
    # resized to image_size / eval_crop_fraction with that filter, then the centre crop.
    c.eval_interpolation = ''
    # The pixel normalisation, RGB in [0, 1] units; () = the model's own.
    c.input_mean = ()
    c.input_std = ()
    # tfds only: 'inception' (the random-size crop above + flip; eval centre
    # crop) or 'cifar' (zero-pad 4, random crop at the image's own size, flip;
    # eval: the image as it is).
    c.preprocess = 'inception'
    c.shuffle_buffer = 16 * 1024
    c.num_classes = 0             # dataset=fake only (0 -> 1000)
    c.fake_num_examples = 0       # dataset=fake only (0 -> 100 batches)
    c.digits_max_shift = 0        # dataset=digits only: random shift, pixels
    # Repeated augmentation (timm's RepeatAugSampler, ResNet Strikes Back A1/A2:
    # 3): each global batch holds batch_size / R distinct images, each R times
    # with its own augmentation, the copies spread over processes; an epoch keeps
    # its steps (so sees ~1/R of the images). 0 or 1 = off. tfds datasets keep
    # the copies within each process's batch (each process reads its own records).
    c.repeated_augmentation = 0

    # Optimisation: SGD + momentum, lr scaled linearly with the global batch.
    c.batch_size = 1024  # global, over all devices and processes
    c.base_batch_size = 1024  # lr = learning_rate * batch_size / base_batch_size
    c.learning_rate = 0.6
    c.lr_schedule = 'step'  # 'step' | 'cosine' | 'constant' | 'plateau'
    c.lr_decay_epochs = 30
    c.lr_decay_factor = 0.1
    # 'step': x lr_decay_factor at these steps (or epochs) instead of every
    # lr_decay_epochs; at most one of the two is set.
    c.lr_boundaries_steps = ()
    c.lr_boundaries_epochs = ()
    # 'plateau': x plateau_factor when the validation loss has not improved (by
    # plateau_rtol, relative) for plateau_patience evaluations, then
    # plateau_cooldown evaluations without counting; never below
    # plateau_min_scale times the rate (optax.contrib.reduce_on_plateau).
    c.plateau_patience = 10
    c.plateau_factor = 0.1
    c.plateau_cooldown = 0
    c.plateau_min_scale = 0.0
    c.plateau_rtol = 1e-4
    c.warmup_epochs = 0.0
    c.momentum = 0.9
    c.nesterov = False
    c.weight_decay = 1e-4  # conv and dense kernels only
    c.label_smoothing = 0.0
    c.num_epochs = 100.0
    c.num_train_steps = -1  # > 0 replaces num_epochs; 0 = evaluate init_from only
    # Compute dtype: 'auto' = bfloat16 on TPU and GPUs of compute capability
    # >= 8.0, float16 with loss scaling on older GPUs, float32 on CPU; or
    # 'float32' / 'bfloat16' / 'float16'. Params, BN statistics, logits: fp32.
    c.dtype = 'auto'
    c.half_precision = False  # older spelling of dtype='bfloat16'
    c.seed = 0

    # Bookkeeping; 0 = once per epoch.
    c.log_every_steps = 100
    c.eval_every_steps = 0
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3  # the newest few, plus the best by eval top-1
    c.skip_nonfinite_steps = False  # True: skip NaN/Inf steps instead of stopping
    # Converted weights: a folder of `python -m senet_jax.convert`, or a published
    # weight's tag (`senet_jax.list_pretrained()`), downloaded and cached once.
    c.init_from = ''
    c.max_eval_batches = 0  # > 0: evaluate on the first N batches only (a quick look)
    # A resume refuses a config that changes the run (model, data, optimiser,
    # schedule; docs/reliability.md lists what may change); True resumes anyway
    # and logs each changed field.
    c.allow_config_change = False

    # Modern recipes (ResNet Strikes Back): optimizer, loss, mixing, drop path.
    # 'sgd' (the paper's) | 'lamb': timm's Lamb as RSB ran it (Adam moments, weight
    # decay and the layer-wise trust ratio on kernels only, global gradient norm
    # clipped at 1), with the rate of lr_schedule and the decay of weight_decay.
    c.optimizer = 'sgd'
    c.lamb_b1 = 0.9
    c.lamb_b2 = 0.999
    c.lamb_eps = 1e-6
    # 'softmax' (cross-entropy) | 'bce': timm's BinaryCrossEntropy, one sigmoid per
    # class on the (smoothed, mixed) targets; bce_target_threshold (None = off)
    # turns each target above it into 1 and the rest into 0 (RSB: 0.2).
    c.loss = 'softmax'
    c.bce_target_threshold = ml_collections.config_dict.placeholder(float)
    # Mixup / CutMix on the device, as timm's Mixup: on when an alpha is > 0; a
    # batch is mixed with probability mixup_prob, by CutMix with probability
    # mixup_switch_prob when both alphas are set; 'batch' | 'pair' | 'elem' draws
    # one lambda per batch, per pair or per image. label_smoothing goes into the
    # mixed targets.
    c.mixup_alpha = 0.0
    c.cutmix_alpha = 0.0
    c.mixup_prob = 1.0
    c.mixup_switch_prob = 0.5
    c.mixup_mode = 'batch'
    # RandAugment on the host after the crop and flip, as timm's
    # rand_augment_transform string (e.g. RSB's 'rand-m7-mstd0.5-inc1': magnitude
    # 7 with noise std 0.5, timm's increasing ops, n=2 ops per image, each with
    # probability 0.5); '' = off. See docs/training.md for what differs from timm.
    c.randaugment = ''
    # Stochastic depth (residual family): the rate of the last block, rising
    # linearly from 0 at the first (timm's drop_path_rate); None = the model's 0.
    c.model_overrides.drop_path_rate = ml_collections.config_dict.placeholder(float)

    # Modern recipes (ResNet Strikes Back): EMA and test-time resolution.
    # ema_decay > 0: an exponential moving average of the parameters and the
    # BatchNorm statistics, ema = decay * ema + (1 - decay) * weights after each
    # applied step (timm's ModelEmaV2), evaluated beside the model (ema_eval_*)
    # and checkpointed; 0 = off.
    c.ema_decay = 0.0
    # The side of the eval images (the test resolution); 0 = image_size. The
    # eval crop is eval_crop_fraction of the short side, resized to this.
    c.eval_image_size = 0
    return c


def imagenet_config(model: str, recipe: str = '') -> ml_collections.ConfigDict:
    """The paper's ImageNet recipe for `model`, or a named variant.

    recipe '' (paper): SGD momentum 0.9, lr 0.6 per 1024 images, /10 every 30
      epochs, 100 epochs, weight decay 1e-4.
    recipe 'cosine': 5 warmup epochs + cosine decay, Nesterov momentum, label
      smoothing 0.1.
    """
    c = base_config()
    c.model = model
    if recipe == 'cosine':
        c.lr_schedule = 'cosine'
        c.warmup_epochs = 5.0
        c.nesterov = True
        c.label_smoothing = 0.1
    elif recipe:
        raise ValueError(f"unknown recipe {recipe!r}; use '' or 'cosine'")
    return c


def small_run_config(num_epochs: float) -> ml_collections.ConfigDict:
    """se_resnet_mini on scikit-learn's digits (16x16): offline, CPU, minutes.

    Cosine schedule with one warmup epoch, peak lr 0.1 at batch 64; eval and
    checkpoint once per epoch.
    """
    c = base_config()
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
    c.num_epochs = num_epochs
    c.log_every_steps = 50
    c.eval_every_steps = 0  # once per epoch
    c.checkpoint_every_steps = 0  # once per epoch
    return c


def split_arg(arg: str) -> tuple[list, bool]:
    """'se_vgg16_bn,local' -> (['se_vgg16_bn'], True): the config argument's
    values, and whether `local` is among them."""
    parts = [p.strip() for p in (arg or '').split(',') if p.strip()]
    return [p for p in parts if p != 'local'], 'local' in parts


def check_choice(what: str, value: str, choices) -> str:
    if value not in choices:
        raise ValueError(f'unknown {what} {value!r}; choose one of '
                         f'{", ".join(choices)} (optionally with ",local")')
    return value


def local_variant(c: ml_collections.ConfigDict, num_classes: int = 1000,
                  image_size: int = 32) -> ml_collections.ConfigDict:
    """`c` shrunk to a CPU smoke run: the same model and schedule, 4 steps of
    batch 8 on fake images, evaluated once (at the end) on 8 of them.

    Fake data keeps it offline; image_size is the smallest side the model
    takes comfortably (Inception-ResNet-v2 needs 75).
    """
    c.dataset = 'fake'
    c.num_classes = num_classes
    c.fake_num_examples = 32
    c.image_size = image_size
    c.batch_size = 8
    c.num_train_steps = 4
    c.log_every_steps = 1
    c.eval_every_steps = 4
    c.checkpoint_every_steps = 4
    return c


def pretrained_config(tag: str, evaluate: bool) -> ml_collections.ConfigDict:
    """A published weight's model, init_from and eval preprocessing (its own input
    size, crop_pct, interpolation, mean and std); `evaluate`: no training steps."""
    from senet_jax import pretrained   # the table only; nothing is downloaded here
    tag, weight = pretrained.resolve(tag)
    c = base_config()
    c.model = weight.model
    c.init_from = tag
    c.image_size = weight.input_size
    c.eval_crop_fraction = weight.crop_pct
    c.eval_interpolation = weight.interpolation
    c.input_mean, c.input_std = tuple(weight.mean), tuple(weight.std)
    if evaluate:
        c.num_train_steps = 0
        c.batch_size = 250
    return c
