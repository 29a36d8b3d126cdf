"""Published weights by tag: `load_pretrained('se_resnet50.ra2_in1k')`, `list_pretrained('*se_resnext*')`.

A tag is our model name, a dot and the publisher's tag (`se_resnet50.ra2_in1k`
is timm's `seresnet50.ra2_in1k`); a model name alone takes its first listed
weight, as timm's default. Each `Weight` says where the file is (a Hugging Face
hub repo, or a release URL whose name carries a hash prefix), the state_dict
layout `convert.py` reads it in, and the preprocessing it was evaluated with.

Files come through the Hugging Face cache: hub files by `hf_hub_download`
(which honours HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE), release files into
`$HF_HOME/senet_jax/downloads` (a `.part` name first, resumed, hash-checked,
then renamed). The converted variables are kept as one safetensors file per
tag in `$HF_HOME/senet_jax/converted`, so a second load reads that file and
touches neither the network nor the converter. Nothing here needs torch, and
no pickled code is ever run (see convert.read_weights).
"""
import fnmatch
import hashlib
import http.client
import os
import pathlib
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from senet_jax import convert
from senet_jax.checkpoint import user_path
from senet_jax.errors import UserError
from senet_jax.models import InputFormat, create_model, list_models, model_spec
from senet_jax.options import did_you_mean

HUB = 'hf-hub:timm/'
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CIFAR_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))   # imgclsmob's
TIMM_RESULTS = 'timm results/results-imagenet.csv'
PYTORCHCV_RESULTS = 'pytorchcv model_metainfos.csv (100 - error)'


class PretrainedError(UserError):
    """An unknown tag, an unreachable or corrupt file: one sentence."""


class Weight(NamedTuple):
    """One published weight: where it is and how it wants its pixels."""
    model: str                          # our zoo name
    source: str                         # 'hf-hub:<owner>/<repo>' or a release URL
    input_size: int = 224
    crop_pct: float = 0.875             # eval: resize the short side to input_size / crop_pct
    interpolation: str = 'bilinear'     # ... with this filter, then the central crop
    mean: Tuple[float, float, float] = IMAGENET_MEAN   # of RGB in [0, 1]
    std: Tuple[float, float, float] = IMAGENET_STD
    test_input_size: Optional[int] = None   # the publisher's larger test size, if any
    test_crop_pct: Optional[float] = None
    num_classes: int = 1000
    labels: str = 'imagenet'            # senet_jax/labels/<labels>.txt
    bgr: bool = False                   # channels reversed before normalising (Caffe)
    layout: Optional[str] = None        # convert.py layout; None: the model's own
    sha1: str = ''                      # pytorchcv: the full sha1 of the unzipped file
    filename: str = 'model.safetensors'  # hub file
    top1: Optional[float] = None        # published top-1 at input_size, not measured here
    top1_source: str = ''

    def input_format(self) -> InputFormat:
        """The normalisation as `models.normalize_images` takes it ([0, 255] units)."""
        mean, std = tuple(m * 255 for m in self.mean), tuple(s * 255 for s in self.std)
        return InputFormat(mean[::-1] if self.bgr else mean, std[::-1] if self.bgr else std,
                           bgr=self.bgr)

    def label_names(self):
        """The class names, in class-index order (first name of each ImageNet synset)."""
        text = (pathlib.Path(__file__).parent / 'labels' / f'{self.labels}.txt').read_text()
        return [line.split('\t')[-1].split(',')[0] for line in text.splitlines()]


def _w(model, source, size=224, crop=0.875, interp='bilinear', mean_std=None, test=None,
       top1=None, top1_source=TIMM_RESULTS, **fields):
    mean, std = mean_std or (IMAGENET_MEAN, IMAGENET_STD)
    return Weight(model, source, size, crop, interp, mean, std, *(test or (None, None)),
                  top1=top1, top1_source=top1_source if top1 is not None else '', **fields)


_TV = 'https://github.com/rwightman/pytorch-image-models/releases/download/'
_PCV = 'https://github.com/osmr/imgclsmob/releases/download/'


def _pcv(model, name, error, sha1, release, cifar=None):
    """A pytorchcv weight: `<name>-<error>-<sha1[:8]>.pth.zip` in imgclsmob's releases."""
    url = f'{_PCV}{release}/{name}-{error}-{sha1[:8]}.pth.zip'
    if cifar is None:      # ImageNet: its file name carries the top-5 error, not the top-1
        return _w(model, url, sha1=sha1)
    return _w(model, url, size=32, crop=1.0, mean_std=CIFAR_MEAN_STD, sha1=sha1,
              num_classes=cifar, labels=f'cifar{cifar}', top1=round(100 - int(error) / 100, 2),
              top1_source=PYTORCHCV_RESULTS)


# Tag -> weight. Sources, configs and published top-1 from timm 1.0.31
# (`pretrained_cfg` and results/results-imagenet.csv, the row at input_size),
# pytorchcv 0.0.74 (model_metainfos.csv) and Cadene's pretrainedmodels 0.7.4.
# The first weight listed for a model is its default.
WEIGHTS = {
    'se_resnet50.a1_in1k': _w('se_resnet50', HUB + 'seresnet50.a1_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=80.012),
    'se_resnet50.a2_in1k': _w('se_resnet50', HUB + 'seresnet50.a2_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=80.102),
    'se_resnet50.a3_in1k': _w('se_resnet50', HUB + 'seresnet50.a3_in1k', size=160, crop=0.95, interp='bicubic', test=(224, 0.95), top1=75.104),
    'se_resnet50.ra2_in1k': _w('se_resnet50', HUB + 'seresnet50.ra2_in1k', interp='bicubic', test=(288, 0.95), top1=80.26),
    'se_resnext50_32x4d.racm_in1k': _w('se_resnext50_32x4d', HUB + 'seresnext50_32x4d.racm_in1k', interp='bicubic', test=(288, 0.95), top1=81.268),
    'se_resnext50_32x4d.gluon_in1k': _w('se_resnext50_32x4d', HUB + 'seresnext50_32x4d.gluon_in1k', interp='bicubic', top1=79.916),
    'se_resnext101_32x4d.gluon_in1k': _w('se_resnext101_32x4d', HUB + 'seresnext101_32x4d.gluon_in1k', interp='bicubic', top1=80.886),
    'legacy_se_resnet18.in1k': _w('legacy_se_resnet18', _TV + 'v0.1-weights/seresnet18-4bb0ce65.pth', interp='bicubic', top1=71.742),
    'legacy_se_resnet34.in1k': _w('legacy_se_resnet34', _TV + 'v0.1-weights/seresnet34-a4004e63.pth', top1=74.788),
    'legacy_se_resnet50.in1k': _w('legacy_se_resnet50', _TV + 'v0.1-cadene/se_resnet50-ce0d4300.pth', top1=77.65),
    'legacy_se_resnet101.in1k': _w('legacy_se_resnet101', _TV + 'v0.1-cadene/se_resnet101-7e38fcc6.pth', top1=78.37),
    'legacy_se_resnet152.in1k': _w('legacy_se_resnet152', _TV + 'v0.1-cadene/se_resnet152-d17c99b7.pth', top1=78.662),
    'legacy_se_resnext50_32x4d.in1k': _w('legacy_se_resnext50_32x4d', _TV + 'v0.1-weights/legacy_se_resnext50_32x4d-f3651bad.pth', top1=79.08),
    'legacy_se_resnext101_32x4d.in1k': _w('legacy_se_resnext101_32x4d', _TV + 'v0.1-weights/legacy_se_resnext101_32x4d-37725eac.pth', top1=80.274),
    # our senet154 is timm's legacy_senet154 (the Caffe layout)
    'senet154.in1k': _w('senet154', _TV + 'v0.1-weights/legacy_senet154-e9eb9fe6.pth', top1=81.32),
    # The ResNet-D family, the wider ResNeXts and GluonCV's SENet-154 (the torchvision layout).
    'se_resnet152d.ra2_in1k': _w('se_resnet152d', HUB + 'seresnet152d.ra2_in1k', size=256, crop=0.95, interp='bicubic', test=(320, 1.0), top1=83.702),
    'se_resnext26d_32x4d.bt_in1k': _w('se_resnext26d_32x4d', HUB + 'seresnext26d_32x4d.bt_in1k', interp='bicubic', test=(288, 0.95), top1=77.592),
    'se_resnext26t_32x4d.bt_in1k': _w('se_resnext26t_32x4d', HUB + 'seresnext26t_32x4d.bt_in1k', interp='bicubic', test=(288, 0.95), top1=77.98),
    'se_resnext101_32x8d.ah_in1k': _w('se_resnext101_32x8d', HUB + 'seresnext101_32x8d.ah_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=83.618),
    'se_resnext101d_32x8d.ah_in1k': _w('se_resnext101d_32x8d', HUB + 'seresnext101d_32x8d.ah_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=83.702),
    'se_resnextaa101d_32x8d.sw_in12k_ft_in1k_288': _w('se_resnextaa101d_32x8d', HUB + 'seresnextaa101d_32x8d.sw_in12k_ft_in1k_288', size=288, crop=0.95, interp='bicubic', test=(320, 1.0), top1=86.53),
    'se_resnextaa101d_32x8d.sw_in12k_ft_in1k': _w('se_resnextaa101d_32x8d', HUB + 'seresnextaa101d_32x8d.sw_in12k_ft_in1k', interp='bicubic', test=(288, 1.0), top1=85.956),
    'se_resnextaa201d_32x8d.sw_in12k_ft_in1k_384': _w('se_resnextaa201d_32x8d', HUB + 'seresnextaa201d_32x8d.sw_in12k_ft_in1k_384', size=384, crop=1.0, interp='bicubic', top1=87.304),
    'se_resnextaa201d_32x8d.sw_in12k': _w('se_resnextaa201d_32x8d', HUB + 'seresnextaa201d_32x8d.sw_in12k', size=320, crop=0.95, interp='bicubic', test=(384, 1.0), num_classes=11821, labels='imagenet12k'),
    'se_resnextaa101d_32x8d.sw_in12k': _w('se_resnextaa101d_32x8d', HUB + 'seresnextaa101d_32x8d.sw_in12k', crop=0.95, interp='bicubic', test=(288, 1.0), num_classes=11821, labels='imagenet12k'),
    'se_resnextaa101d_32x8d.ah_in1k': _w('se_resnextaa101d_32x8d', HUB + 'seresnextaa101d_32x8d.ah_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=83.9),
    'se_resnext101_64x4d.gluon_in1k': _w('se_resnext101_64x4d', HUB + 'seresnext101_64x4d.gluon_in1k', interp='bicubic', top1=80.884),
    'gluon_senet154.gluon_in1k': _w('gluon_senet154', HUB + 'senet154.gluon_in1k', interp='bicubic', top1=81.258),
    'legacy_se_resnext26_32x4d.in1k': _w('legacy_se_resnext26_32x4d', _TV + 'v0.1-weights/seresnext26_32x4d-65ebdb501.pth', interp='bicubic', top1=77.1),
    # The plain baselines.
    'resnet18.a1_in1k': _w('resnet18', HUB + 'resnet18.a1_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=71.504),
    'resnet18.a2_in1k': _w('resnet18', HUB + 'resnet18.a2_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=70.634),
    'resnet18.a3_in1k': _w('resnet18', HUB + 'resnet18.a3_in1k', size=160, crop=0.95, interp='bicubic', test=(224, 0.95), top1=65.67),
    'resnet18.tv_in1k': _w('resnet18', HUB + 'resnet18.tv_in1k', top1=69.752),
    'resnet18.fb_ssl_yfcc100m_ft_in1k': _w('resnet18', HUB + 'resnet18.fb_ssl_yfcc100m_ft_in1k', top1=72.636),
    'resnet18.fb_swsl_ig1b_ft_in1k': _w('resnet18', HUB + 'resnet18.fb_swsl_ig1b_ft_in1k', top1=73.286),
    'resnet18.gluon_in1k': _w('resnet18', HUB + 'resnet18.gluon_in1k', interp='bicubic', top1=70.844),
    'resnet34.a1_in1k': _w('resnet34', HUB + 'resnet34.a1_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=76.42),
    'resnet34.a2_in1k': _w('resnet34', HUB + 'resnet34.a2_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=75.52),
    'resnet34.a3_in1k': _w('resnet34', HUB + 'resnet34.a3_in1k', size=160, crop=0.95, interp='bicubic', test=(224, 0.95), top1=70.58),
    'resnet34.bt_in1k': _w('resnet34', HUB + 'resnet34.bt_in1k', interp='bicubic', test=(288, 0.95), top1=75.176),
    'resnet34.ra4_e3600_r224_in1k': _w('resnet34', HUB + 'resnet34.ra4_e3600_r224_in1k', crop=0.9, interp='bicubic', mean_std=INCEPTION, test=(288, 1.0), top1=77.492),
    'resnet34.tv_in1k': _w('resnet34', HUB + 'resnet34.tv_in1k', top1=73.298),
    'resnet34.gluon_in1k': _w('resnet34', HUB + 'resnet34.gluon_in1k', interp='bicubic', top1=74.574),
    'resnet50.a1_in1k': _w('resnet50', HUB + 'resnet50.a1_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=80.382),
    'resnet50.a1h_in1k': _w('resnet50', HUB + 'resnet50.a1h_in1k', size=176, crop=0.9, interp='bicubic', test=(224, 1.0), top1=79.264),
    'resnet50.a2_in1k': _w('resnet50', HUB + 'resnet50.a2_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=79.828),
    'resnet50.a3_in1k': _w('resnet50', HUB + 'resnet50.a3_in1k', size=160, crop=0.95, interp='bicubic', test=(224, 0.95), top1=75.994),
    'resnet50.b1k_in1k': _w('resnet50', HUB + 'resnet50.b1k_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=79.564),
    'resnet50.b2k_in1k': _w('resnet50', HUB + 'resnet50.b2k_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=79.388),
    'resnet50.c1_in1k': _w('resnet50', HUB + 'resnet50.c1_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=79.766),
    'resnet50.c2_in1k': _w('resnet50', HUB + 'resnet50.c2_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=79.868),
    'resnet50.d_in1k': _w('resnet50', HUB + 'resnet50.d_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=79.904),
    'resnet50.ram_in1k': _w('resnet50', HUB + 'resnet50.ram_in1k', interp='bicubic', test=(288, 0.95), top1=79.034),
    'resnet50.am_in1k': _w('resnet50', HUB + 'resnet50.am_in1k', interp='bicubic', top1=79.004),
    'resnet50.ra_in1k': _w('resnet50', HUB + 'resnet50.ra_in1k', interp='bicubic', test=(288, 0.95), top1=78.82),
    'resnet50.bt_in1k': _w('resnet50', HUB + 'resnet50.bt_in1k', interp='bicubic', test=(288, 0.95), top1=78.444),
    'resnet50.tv_in1k': _w('resnet50', HUB + 'resnet50.tv_in1k', top1=76.156),
    'resnet50.tv2_in1k': _w('resnet50', HUB + 'resnet50.tv2_in1k', size=176, test=(224, 0.965), top1=79.434),
    'resnet50.fb_ssl_yfcc100m_ft_in1k': _w('resnet50', HUB + 'resnet50.fb_ssl_yfcc100m_ft_in1k', top1=79.252),
    'resnet50.fb_swsl_ig1b_ft_in1k': _w('resnet50', HUB + 'resnet50.fb_swsl_ig1b_ft_in1k', top1=81.146),
    'resnet50.gluon_in1k': _w('resnet50', HUB + 'resnet50.gluon_in1k', interp='bicubic', top1=77.58),
    'resnet101.a1h_in1k': _w('resnet101', HUB + 'resnet101.a1h_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=81.95),
    'resnet101.a1_in1k': _w('resnet101', HUB + 'resnet101.a1_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=81.494),
    'resnet101.a2_in1k': _w('resnet101', HUB + 'resnet101.a2_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=81.344),
    'resnet101.a3_in1k': _w('resnet101', HUB + 'resnet101.a3_in1k', size=160, crop=0.95, interp='bicubic', test=(224, 0.95), top1=77.928),
    'resnet101.tv_in1k': _w('resnet101', HUB + 'resnet101.tv_in1k', top1=77.404),
    'resnet101.tv2_in1k': _w('resnet101', HUB + 'resnet101.tv2_in1k', size=176, test=(224, 0.965), top1=79.908),
    'resnet101.gluon_in1k': _w('resnet101', HUB + 'resnet101.gluon_in1k', interp='bicubic', top1=79.306),
    'resnet152.a1h_in1k': _w('resnet152', HUB + 'resnet152.a1h_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=82.818),
    'resnet152.a1_in1k': _w('resnet152', HUB + 'resnet152.a1_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=81.998),
    'resnet152.a2_in1k': _w('resnet152', HUB + 'resnet152.a2_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=81.764),
    'resnet152.a3_in1k': _w('resnet152', HUB + 'resnet152.a3_in1k', size=160, crop=0.95, interp='bicubic', test=(224, 0.95), top1=78.896),
    'resnet152.tv_in1k': _w('resnet152', HUB + 'resnet152.tv_in1k', top1=78.33),
    'resnet152.tv2_in1k': _w('resnet152', HUB + 'resnet152.tv2_in1k', size=176, test=(224, 0.965), top1=80.222),
    'resnet152.gluon_in1k': _w('resnet152', HUB + 'resnet152.gluon_in1k', interp='bicubic', top1=79.712),
    'resnext50_32x4d.a1h_in1k': _w('resnext50_32x4d', HUB + 'resnext50_32x4d.a1h_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=81.14),
    'resnext50_32x4d.a1_in1k': _w('resnext50_32x4d', HUB + 'resnext50_32x4d.a1_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=80.526),
    'resnext50_32x4d.a2_in1k': _w('resnext50_32x4d', HUB + 'resnext50_32x4d.a2_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=80.444),
    'resnext50_32x4d.a3_in1k': _w('resnext50_32x4d', HUB + 'resnext50_32x4d.a3_in1k', size=160, crop=0.95, interp='bicubic', test=(224, 0.95), top1=77.732),
    'resnext50_32x4d.ra_in1k': _w('resnext50_32x4d', HUB + 'resnext50_32x4d.ra_in1k', interp='bicubic', test=(288, 0.95), top1=79.8),
    'resnext50_32x4d.tv_in1k': _w('resnext50_32x4d', HUB + 'resnext50_32x4d.tv_in1k', top1=77.632),
    'resnext50_32x4d.tv2_in1k': _w('resnext50_32x4d', HUB + 'resnext50_32x4d.tv2_in1k', size=176, test=(224, 0.965), top1=79.384),
    'resnext50_32x4d.fb_ssl_yfcc100m_ft_in1k': _w('resnext50_32x4d', HUB + 'resnext50_32x4d.fb_ssl_yfcc100m_ft_in1k', top1=80.316),
    'resnext50_32x4d.fb_swsl_ig1b_ft_in1k': _w('resnext50_32x4d', HUB + 'resnext50_32x4d.fb_swsl_ig1b_ft_in1k', top1=82.162),
    'resnext50_32x4d.gluon_in1k': _w('resnext50_32x4d', HUB + 'resnext50_32x4d.gluon_in1k', interp='bicubic', top1=79.354),
    'resnext101_32x4d.fb_ssl_yfcc100m_ft_in1k': _w('resnext101_32x4d', HUB + 'resnext101_32x4d.fb_ssl_yfcc100m_ft_in1k', top1=80.936),
    'resnext101_32x4d.fb_swsl_ig1b_ft_in1k': _w('resnext101_32x4d', HUB + 'resnext101_32x4d.fb_swsl_ig1b_ft_in1k', top1=83.268),
    'resnext101_32x4d.gluon_in1k': _w('resnext101_32x4d', HUB + 'resnext101_32x4d.gluon_in1k', interp='bicubic', top1=80.336),
    'resnet50d.ra2_in1k': _w('resnet50d', HUB + 'resnet50d.ra2_in1k', interp='bicubic', test=(288, 0.95), top1=80.546),
    'resnet50d.ra4_e3600_r224_in1k': _w('resnet50d', HUB + 'resnet50d.ra4_e3600_r224_in1k', crop=0.95, interp='bicubic', mean_std=INCEPTION, test=(288, 1.0), top1=80.956),
    'resnet50d.a1_in1k': _w('resnet50d', HUB + 'resnet50d.a1_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=80.73),
    'resnet50d.a2_in1k': _w('resnet50d', HUB + 'resnet50d.a2_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=80.268),
    'resnet50d.a3_in1k': _w('resnet50d', HUB + 'resnet50d.a3_in1k', size=160, crop=0.95, interp='bicubic', test=(224, 0.95), top1=77.222),
    'resnet152d.ra2_in1k': _w('resnet152d', HUB + 'resnet152d.ra2_in1k', size=256, crop=0.95, interp='bicubic', test=(320, 1.0), top1=83.16),
    'resnext101_64x4d.c1_in1k': _w('resnext101_64x4d', HUB + 'resnext101_64x4d.c1_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=82.446),
    'resnext101_32x8d.tv_in1k': _w('resnext101_32x8d', HUB + 'resnext101_32x8d.tv_in1k', top1=79.308),
    'resnext101_64x4d.tv_in1k': _w('resnext101_64x4d', HUB + 'resnext101_64x4d.tv_in1k', top1=82.978),
    'resnext101_32x8d.tv2_in1k': _w('resnext101_32x8d', HUB + 'resnext101_32x8d.tv2_in1k', size=176, test=(224, 0.965), top1=81.99),
    'resnext101_32x8d.fb_wsl_ig1b_ft_in1k': _w('resnext101_32x8d', HUB + 'resnext101_32x8d.fb_wsl_ig1b_ft_in1k', top1=82.72),
    'resnext101_32x8d.fb_ssl_yfcc100m_ft_in1k': _w('resnext101_32x8d', HUB + 'resnext101_32x8d.fb_ssl_yfcc100m_ft_in1k', top1=81.62),
    'resnext101_32x8d.fb_swsl_ig1b_ft_in1k': _w('resnext101_32x8d', HUB + 'resnext101_32x8d.fb_swsl_ig1b_ft_in1k', top1=84.276),
    'resnet50d.gluon_in1k': _w('resnet50d', HUB + 'resnet50d.gluon_in1k', interp='bicubic', top1=79.08),
    'resnet152d.gluon_in1k': _w('resnet152d', HUB + 'resnet152d.gluon_in1k', interp='bicubic', top1=80.476),
    'resnext101_64x4d.gluon_in1k': _w('resnext101_64x4d', HUB + 'resnext101_64x4d.gluon_in1k', interp='bicubic', top1=80.64),
    # SE's successors in the residual family: timm's ECA-Net ResNets (ResNet-D layouts, ECA where
    # SE sits) and SK ResNets (Selective Kernel 3x3 convs).
    'eca_resnet26t.ra2_in1k': _w('eca_resnet26t', HUB + 'ecaresnet26t.ra2_in1k', size=256, interp='bicubic', test=(320, 0.95), top1=78.894),
    'eca_resnet50d.miil_in1k': _w('eca_resnet50d', HUB + 'ecaresnet50d.miil_in1k', interp='bicubic', test=(288, 0.95), top1=80.634),
    'eca_resnet50t.ra2_in1k': _w('eca_resnet50t', HUB + 'ecaresnet50t.ra2_in1k', size=256, interp='bicubic', test=(320, 0.95), top1=81.45),
    'eca_resnet50t.a1_in1k': _w('eca_resnet50t', HUB + 'ecaresnet50t.a1_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=81.282),
    'eca_resnet50t.a2_in1k': _w('eca_resnet50t', HUB + 'ecaresnet50t.a2_in1k', crop=0.95, interp='bicubic', test=(288, 1.0), top1=80.884),
    'eca_resnet50t.a3_in1k': _w('eca_resnet50t', HUB + 'ecaresnet50t.a3_in1k', size=160, crop=0.95, interp='bicubic', test=(224, 0.95), top1=77.786),
    'eca_resnet101d.miil_in1k': _w('eca_resnet101d', HUB + 'ecaresnet101d.miil_in1k', interp='bicubic', test=(288, 0.95), top1=82.18),
    'eca_resnet269d.ra2_in1k': _w('eca_resnet269d', HUB + 'ecaresnet269d.ra2_in1k', size=320, crop=0.95, interp='bicubic', test=(352, 1.0), top1=84.724),
    'eca_resnetlight.miil_in1k': _w('eca_resnetlight', HUB + 'ecaresnetlight.miil_in1k', interp='bicubic', test=(288, 0.95), top1=80.454),
    'sk_resnet18.ra_in1k': _w('sk_resnet18', HUB + 'skresnet18.ra_in1k', interp='bicubic', top1=73.02),
    'sk_resnet34.ra_in1k': _w('sk_resnet34', HUB + 'skresnet34.ra_in1k', interp='bicubic', top1=76.956),
    'sk_resnext50_32x4d.ra_in1k': _w('sk_resnext50_32x4d', HUB + 'skresnext50_32x4d.ra_in1k', interp='bicubic', top1=80.168),
    'vgg16_bn.tv_in1k': _w('vgg16_bn', HUB + 'vgg16_bn.tv_in1k', top1=73.354),
    'inception_resnet_v2.tf_in1k': _w('inception_resnet_v2', HUB + 'inception_resnet_v2.tf_in1k', size=299, crop=0.8975, interp='bicubic', mean_std=INCEPTION, top1=80.434),
    'inception_resnet_v2.tf_ens_adv_in1k': _w('inception_resnet_v2', HUB + 'inception_resnet_v2.tf_ens_adv_in1k', size=299, crop=0.8975, interp='bicubic', mean_std=INCEPTION, top1=79.998),
    # Cadene's BN-Inception: BGR in [0, 255] minus 104/117/128 (B, G, R), as pretrainedmodels.
    'bn_inception.cadene_in1k': _w('bn_inception', 'http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth',
                                   mean_std=((128 / 255, 117 / 255, 104 / 255), (1 / 255,) * 3), bgr=True),
    'mobilenet_v1.pytorchcv_in1k': _pcv('mobilenet_v1', 'mobilenet_w1', '0895', '7e1d739f0fd4b95c16eef077c5dc0a5bb1da8ad5', 'v0.0.155'),
    # timm's MobileNet v1 (ReLU6, Inception input): the zoo's mobilenetv1_100, in timm's layout.
    'mobilenetv1_100.ra4_e3600_r224_in1k': _w('mobilenetv1_100', HUB + 'mobilenetv1_100.ra4_e3600_r224_in1k', interp='bicubic', mean_std=INCEPTION, test=(256, 0.95), top1=75.388),
    'shufflenet_v1_g3.pytorchcv_in1k': _pcv('shufflenet_v1_g3', 'shufflenet_g3_w1', '1348', 'ce54f64ecff87556a4303380f46abaaf649eb308', 'v0.0.244'),
    'resnet110_cifar.pytorchcv_cifar10': _pcv('resnet110_cifar', 'resnet110_cifar10', '0369', '4d6ca1fc02eaeed724f4f596011e391528536049', 'v0.0.163', 10),
    'resnet110_cifar.pytorchcv_cifar100': _pcv('resnet110_cifar', 'resnet110_cifar100', '2280', 'd8d397a767db6d22af040223ec8ae342a088c3e5', 'v0.0.190', 100),
    'se_resnet110_cifar.pytorchcv_cifar10': _pcv('se_resnet110_cifar', 'seresnet110_cifar10', '0363', '1ddec2309ff61c2c0e14c96d51a1b846afdc2acc', 'v0.0.362', 10),
    'se_resnet110_cifar.pytorchcv_cifar100': _pcv('se_resnet110_cifar', 'seresnet110_cifar100', '2086', 'a82c30938028a172dd6a124152bc0952b55a2f49', 'v0.0.362', 100),
    'resnet164_cifar.pytorchcv_cifar10': _pcv('resnet164_cifar', 'resnet164bn_cifar10', '0368', '74ae9f4bccb7fb6a8f3f603fdabe8d8632c46b2f', 'v0.0.179', 10),
    'resnet164_cifar.pytorchcv_cifar100': _pcv('resnet164_cifar', 'resnet164bn_cifar100', '2044', '8fa07b7264a075fa5add58f4c676b99a98fb1c89', 'v0.0.182', 100),
    'se_resnet164_cifar.pytorchcv_cifar10': _pcv('se_resnet164_cifar', 'seresnet164bn_cifar10', '0339', '1085dab6467cb18e554123663816094f080fc626', 'v0.0.362', 10),
    'se_resnet164_cifar.pytorchcv_cifar100': _pcv('se_resnet164_cifar', 'seresnet164bn_cifar100', '1995', '97dd4ab630f6277cf7b07cbdcbf4ae8ddce4d401', 'v0.0.362', 100),
}


def list_pretrained(pattern: str = '*'):
    """The tags matching a shell-style pattern (`'*se_resnext*'`), in table order."""
    return [tag for tag in WEIGHTS if fnmatch.fnmatch(tag, pattern)]


def resolve(name: str) -> Tuple[str, Weight]:
    """(tag, weight) for a tag, a model name (its default) or 'hf-hub:owner/repo'."""
    if name in WEIGHTS:
        return name, WEIGHTS[name]
    for tag, weight in WEIGHTS.items():
        if name in (weight.model, weight.source):
            return tag, weight
    hint = did_you_mean(name, WEIGHTS) or did_you_mean(name, known_models())
    raise PretrainedError(f"No pretrained weight '{name}'.{hint} `senet_jax.list_pretrained()` "
                          'lists them all (other hub repos and files load with model=).')


def weight_config(name: str) -> Weight:
    return resolve(name)[1]


# --- Files ------------------------------------------------------------------------

def cache_dir() -> pathlib.Path:
    """Where release downloads and converted variables go: $HF_HOME/senet_jax."""
    from huggingface_hub import constants
    return pathlib.Path(constants.HF_HOME) / 'senet_jax'


def _offline() -> bool:
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE)


def _no_network(what: str, where) -> PretrainedError:
    return PretrainedError(f'Cannot fetch {what}: the network is unreachable (or HF_HUB_OFFLINE '
                           f'is set) and nothing is cached in {where}.')


def _sha(path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _hub_file(tag: str, weight: Weight) -> str:
    """The hub file, through huggingface_hub's cache; a blob whose sha256 is not its
    ETag (the hub's LFS ETag is the sha256) is deleted and refused."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    repo = weight.source[len('hf-hub:'):]
    try:
        path = hf_hub_download(repo, weight.filename)
    except LocalEntryNotFoundError:
        raise _no_network(f'{tag} ({repo}/{weight.filename})', constants.HF_HUB_CACHE) from None
    except Exception as e:   # HTTP errors, a connection cut mid-file (httpx's own types)
        raise PretrainedError(f'Cannot download {tag} from {repo}/{weight.filename} '
                              f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}); '
                              'nothing complete was cached, run again to resume.') from None
    blob = os.path.realpath(path)
    etag = os.path.basename(blob)
    if re.fullmatch(r'[0-9a-f]{64}', etag) and _sha(blob, 'sha256') != etag:
        _forget(path, blob)
        raise PretrainedError(f'The download of {tag} is corrupt (its sha256 is not the '
                              "hub's); it was deleted, run again to fetch it anew.")
    return path


def _forget(*paths):
    for p in paths:
        try:
            os.remove(p)
        except OSError:
            pass


def _url_file(tag: str, url: str, sha1: str, directory: pathlib.Path) -> pathlib.Path:
    """A release file in `directory`/downloads, fetched once: `.part` first (resumed
    by an HTTP Range request), its hash checked, then renamed."""
    downloads = directory / 'downloads'
    name = url.rsplit('/', 1)[-1]
    final = downloads / (name[:-len('.zip')] if name.endswith('.zip') else name)
    if final.is_file():
        return final
    if _offline():
        raise _no_network(f'{tag} ({url})', downloads)
    downloads.mkdir(parents=True, exist_ok=True)
    part = downloads / (name + '.part')
    _http_get(url, part, tag, downloads)
    if name.endswith('.zip'):          # pytorchcv: one .pth inside, checked by its full sha1
        try:
            with zipfile.ZipFile(part) as archive:
                inner = archive.read(archive.namelist()[0])
        except (zipfile.BadZipFile, IndexError, OSError):
            _forget(part)
            raise PretrainedError(f'The download of {tag} from {url} is not a readable zip; '
                                  'it was deleted, run again to fetch it anew.') from None
        part.write_bytes(inner)
    expected = sha1 or _hash_prefix(name)
    algorithm = 'sha1' if sha1 else 'sha256'
    if expected and not _sha(part, algorithm).startswith(expected):
        _forget(part)
        raise PretrainedError(f'The download of {tag} from {url} does not match its '
                              f'{algorithm} {expected}; it was deleted, run again to fetch it anew.')
    os.replace(part, final)
    return final


def _hash_prefix(name: str) -> str:
    """torch.hub's convention: `name-<sha256 prefix>.ext`."""
    match = re.search(r'-([a-f0-9]*)\.', name)
    return match.group(1) if match else ''


def _http_get(url: str, part: pathlib.Path, tag: str, downloads) -> None:
    from huggingface_hub.utils import tqdm
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={'Range': f'bytes={have}-'} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            if have and response.status != 206:    # the server ignored Range: start over
                have = 0
            total = response.headers.get('Content-Length')
            total = int(total) + have if total is not None else None
            with open(part, 'ab' if have else 'wb') as f, tqdm(
                    total=total, initial=have, unit='B', unit_scale=True,
                    desc=url.rsplit('/', 1)[-1]) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b''):
                    f.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise PretrainedError(f'Cannot download {tag} from {url}: HTTP {e.code}.') from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        if isinstance(e, urllib.error.URLError) or not part.exists():
            raise _no_network(f'{tag} ({url})', downloads) from None
        raise PretrainedError(f'The download of {tag} from {url} broke off '
                              f'({type(e).__name__}); run again to resume it.') from None
    if total is not None and part.stat().st_size < total:
        raise PretrainedError(f'The download of {tag} from {url} ended early '
                              f'({part.stat().st_size} of {total} bytes); run again to resume it.')


# --- Converted variables ------------------------------------------------------------

def _converted_path(key: str, directory) -> pathlib.Path:
    return pathlib.Path(directory) / 'converted' / (re.sub(r'[^A-Za-z0-9_.-]+', '_', key)
                                                    + '.safetensors')


def _save_variables(path: pathlib.Path, model_name: str, variables) -> None:
    from safetensors.numpy import save
    flat = traverse_util.flatten_dict(variables, sep='/')
    data = save({k: np.ascontiguousarray(v) for k, v in flat.items()}, metadata={'model': model_name})
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix='.tmp', delete=False) as f:
        f.write(data)
    os.replace(f.name, path)


def _load_variables(path: pathlib.Path):
    from safetensors import safe_open
    with safe_open(str(path), 'numpy') as f:
        flat = {k: f.get_tensor(k) for k in f.keys()}
        name = f.metadata()['model']
    return name, traverse_util.unflatten_dict(flat, sep='/')


def _read_source(tag: str, weight: Weight, directory: pathlib.Path) -> dict:
    if weight.source.startswith('hf-hub:'):
        path = _hub_file(tag, weight)
        try:
            return convert.read_weights(path)
        except convert.ConversionError:
            _forget(path, os.path.realpath(path))
            raise PretrainedError(f'The download of {tag} is not a readable weights file; '
                                  'it was deleted, run again to fetch it anew.') from None
    path = _url_file(tag, weight.source, weight.sha1, directory)
    try:
        return convert.read_weights(str(path))
    except convert.ConversionError as e:
        _forget(path)
        raise PretrainedError(f'The download of {tag} is not a readable weights file ({e}); '
                              'it was deleted, run again to fetch it anew.') from None


def load_pretrained(name: str, model: Optional[str] = None, num_classes: Optional[int] = None,
                    rng=None, cache: Optional[str] = None):
    """(model, variables) for a tag, a model name (its default weight), a hub repo
    'hf-hub:owner/repo', a URL or a local .safetensors/.pth (these three with `model=`
    when they are not in the table), or a folder written by `python -m senet_jax.convert`.

    `num_classes` different from the weight's gives a freshly initialised classifier
    (from `rng`, default key 0) on the pretrained backbone, for fine-tuning. Downloads
    and converted variables are cached in `cache` (default: $HF_HOME/senet_jax).
    """
    remote = name.startswith(('http://', 'https://', 'hf-hub:'))
    if not remote and name not in WEIGHTS and model is None and user_path(name).is_dir():
        return convert.load_pretrained(name, num_classes=num_classes, rng=rng)
    if not remote and name not in WEIGHTS and (model is not None or user_path(name).is_file()):
        if model is None:
            raise PretrainedError(f'{name} is a weights file: name its network with model=, '
                                  "e.g. load_pretrained(path, model='se_resnet50').")
        if not user_path(name).is_file():
            raise PretrainedError(f'No weights file at {name}.')
        variables = convert.torch_to_flax(model, convert.read_weights(name))
        return _with_head(model, variables, num_classes, rng)
    known = name in WEIGHTS or any(name == w.source for w in WEIGHTS.values())
    if remote and model is not None and not known:
        model_spec(model)                           # an unknown model: its own sentence
        tag, weight = name, Weight(model, name)
    else:
        tag, weight = resolve(name)
    directory = pathlib.Path(cache) if cache else cache_dir()
    converted = _converted_path(tag, directory)
    if converted.is_file():                         # converted before: no download, no converter
        _, variables = _load_variables(converted)
    else:
        variables = convert.torch_to_flax(weight.model, _read_source(tag, weight, directory),
                                          layout=weight.layout)
        _save_variables(converted, weight.model, variables)
    return _with_head(weight.model, variables, num_classes, rng)


def _with_head(name: str, variables, num_classes, rng):
    variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
    classes = int(variables['params']['fc']['bias'].shape[0])
    model = create_model(name, num_classes=classes)
    if num_classes is not None and num_classes != classes:
        model = create_model(name, num_classes=num_classes)
        features = variables['params']['fc']['kernel'].shape[0]
        fresh = nn.Dense(num_classes).init(rng if rng is not None else jax.random.key(0),
                                           jnp.zeros((1, features)))   # the head alone
        variables['params'] = {**variables['params'], 'fc': fresh['params']}
    return model, jax.tree.map(jnp.asarray, variables)


def known_models():
    """The zoo models that have at least one published weight."""
    return [m for m in list_models() if any(w.model == m for w in WEIGHTS.values())]


# --- The weight's own preprocessing ---------------------------------------------------

def eval_transform(image, weight: Weight, size: Optional[int] = None) -> np.ndarray:
    """timm's eval transform of a PIL image, as PIL computes it: the short side resized
    to floor(size / crop_pct) with the weight's interpolation, then the central square.
    Returns uint8 [size, size, 3] RGB; `models.normalize_images(x, input_format=
    weight.input_format())` then gives the network's input."""
    from PIL import Image
    size = size or weight.input_size
    scale = int(size / weight.crop_pct)
    image = image.convert('RGB')
    w, h = image.size
    new = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    resample = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}[weight.interpolation]
    image = image.resize(new, resample)
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)))


# --- The table, printed --------------------------------------------------------------

def table_rows(pattern: str = '*'):
    """(tag, model, parameters, GMACs at input_size, input size, published top-1, source)."""
    from senet_jax.models.macs import count_macs
    measured = {}
    for tag in list_pretrained(pattern):
        w = WEIGHTS[tag]
        key = (w.model, w.input_size, w.num_classes)
        if key not in measured:
            model = create_model(w.model, num_classes=w.num_classes, kernels='plain')
            shapes = jax.eval_shape(lambda m=model, s=w.input_size: m.init(
                jax.random.key(0), jnp.zeros((1, s, s, 3))))
            measured[key] = (sum(v.size for v in jax.tree.leaves(shapes['params'])),
                             count_macs(model, w.input_size, shapes) / 1e9)
        yield (tag, w.model, *measured[key], w.input_size, w.top1, w.top1_source)


def main(argv=None) -> int:
    """`python -m senet_jax.pretrained [PATTERN]`: the table as docs/pretrained.md shows it."""
    import sys
    args = sys.argv[1:] if argv is None else argv
    print('| tag | model | parameters | GMACs | input | published top-1 |')
    print('|---|---|---:|---:|---:|---:|')
    for tag, model, params, gmacs, size, top1, _ in table_rows(args[0] if args else '*'):
        top1 = f'{top1:.2f}' if top1 is not None else '—'
        print(f'| `{tag}` | `{model}` | {params / 1e6:.2f}M | {gmacs:.2f} | {size} | {top1} |')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
