"""RandAugment (Cubuk et al. 2019, arXiv 1909.13719) with timm's semantics, in
TensorFlow on the host: `rand-m9-mstd0.5-inc1` strings, the ops of
timm/data/auto_augment.py (names, level -> argument maps, fill colour).

Each image gets `n` ops drawn uniformly with replacement; each is applied with
probability `p` at magnitude m + N(0, mstd) clipped to [0, mmax] (mstd > 100:
uniform in [0, m], as timm). Every random draw comes from one stateless seed
per example, so the augmented stream is a pure function of (run seed, position).

What differs from timm: the geometric ops interpolate bilinearly (TF's
ImageProjectiveTransform has no bicubic; timm's train transform picks bilinear
or bicubic at random), and edges are blended with the fill colour as TF's
constant fill mode does, while PIL fills a whole pixel.
"""

import dataclasses
import math
import re

import numpy as np

from senet_jax.data import indexing
from senet_jax.data.tf_host import tf
from senet_jax.errors import UserError

# timm's hparams['img_mean'] from the train transform: round(255 * ImageNet mean).
FILL = (124, 116, 104)
TRANSLATE_PCT = 0.45   # timm's default translate_pct
_LEVEL_DENOM = 10.0

RAND_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize',
    'SolarizeAdd', 'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX',
    'ShearY', 'TranslateXRel', 'TranslateYRel')
# inc1: the ops whose severity rises with the magnitude.
RAND_INCREASING_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
    'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing',
    'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY',
    'TranslateXRel', 'TranslateYRel')


@dataclasses.dataclass(frozen=True)
class Policy:
    magnitude: float = 10.0
    num_layers: int = 2
    prob: float = 0.5
    magnitude_std: float = 0.0      # inf: uniform in [0, magnitude]
    magnitude_max: float = _LEVEL_DENOM
    increasing: bool = False

    @property
    def ops(self):
        return RAND_INCREASING_TRANSFORMS if self.increasing else RAND_TRANSFORMS


_SECTION = re.compile(r'^(mstd|mmax|inc|m|n|p)(\d+(\.\d*)?|inf)$')


def parse(spec: str) -> Policy:
    """timm's rand_augment_transform string, e.g. 'rand-m7-mstd0.5-inc1'."""
    parts = spec.split('-')
    if parts[0] != 'rand':
        raise UserError(f'randaugment {spec!r} must start with "rand" '
                        '(timm\'s rand-mN-mstdS-inc1 form)')
    fields = {}
    for part in parts[1:]:
        match = _SECTION.match(part)
        if not match:
            raise UserError(f'randaugment {spec!r}: cannot read the section {part!r} '
                            '(known: mN, nN, pX, mstdX, mmaxN, inc0/inc1)')
        key, value = match.group(1), float(match.group(2))
        if key in ('m', 'n', 'mmax', 'inc') and not value.is_integer():
            raise UserError(f'randaugment {spec!r}: {part!r} needs an integer')
        fields[key] = value
    policy = Policy(
        magnitude=fields.get('m', _LEVEL_DENOM), num_layers=int(fields.get('n', 2)),
        prob=fields.get('p', 0.5),
        magnitude_std=math.inf if fields.get('mstd', 0) > 100 else fields.get('mstd', 0),
        magnitude_max=fields.get('mmax', _LEVEL_DENOM) or _LEVEL_DENOM,
        increasing=bool(fields.get('inc', 0)))
    if policy.num_layers < 1 or policy.prob > 1:
        raise UserError(f'randaugment {spec!r}: n must be >= 1 and p <= 1')
    return policy


# ---------------------------------------------------------------------------
# The ops: uint8 [H, W, 3] -> uint8, computed in float32 as PIL does (its
# blends truncate, its LUTs are integer).


def _u8(x):
    """PIL's float -> uint8: clip, then truncate."""
    return tf.cast(tf.floor(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)


def _lut(image, table):
    """Applies a per-channel lookup table [3, 256] (int32) to `image`."""
    idx = tf.cast(image, tf.int32) + tf.constant([0, 256, 512])
    return tf.cast(tf.gather(tf.reshape(table, [-1]), idx), tf.uint8)


def _histograms(image):
    """[3, 256] int32 pixel counts per channel."""
    flat = tf.cast(tf.reshape(image, [-1, 3]), tf.int32) + tf.constant([0, 256, 512])
    return tf.reshape(tf.math.bincount(tf.reshape(flat, [-1]), minlength=768,
                                       maxlength=768), [3, 256])


def auto_contrast(image):
    """ImageOps.autocontrast: each channel's [lo, hi] stretched to [0, 255]."""
    hist = _histograms(image)
    present = hist > 0
    ix = tf.range(256)
    lo = tf.reduce_min(tf.where(present, ix, 255), axis=1, keepdims=True)
    hi = tf.reduce_max(tf.where(present, ix, 0), axis=1, keepdims=True)
    scale = 255.0 / tf.cast(tf.maximum(hi - lo, 1), tf.float64)
    # PIL's int(ix * scale + offset) in double precision, offset = -lo * scale.
    offset = -tf.cast(lo, tf.float64) * scale
    stretched = tf.cast(tf.clip_by_value(
        tf.cast(ix, tf.float64) * scale + offset, 0, 255), tf.int32)
    return _lut(image, tf.where(hi > lo, stretched, ix[None]))


def equalize(image):
    """ImageOps.equalize: PIL's LUT (n // step, step from all but the last bin)."""
    hist = _histograms(image)
    last = tf.gather(hist, tf.reduce_max(
        tf.where(hist > 0, tf.range(256), 0), axis=1), batch_dims=1)
    step = (tf.reduce_sum(hist, axis=1) - last) // 255
    safe = tf.maximum(step, 1)[:, None]
    before = tf.cumsum(hist, axis=1, exclusive=True)
    table = tf.minimum((safe // 2 + before) // safe, 255)   # point() clips at 255
    return _lut(image, tf.where(step[:, None] > 0, table, tf.range(256)[None]))


def invert(image):
    return 255 - image


def posterize(image, bits):
    """Keeps the top `bits` bits (bits >= 8: unchanged)."""
    shift = tf.cast(8 - tf.minimum(bits, 8), tf.uint8)
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image, thresh):
    """Inverts the pixels >= thresh."""
    return tf.where(tf.cast(image, tf.int32) < thresh, image, 255 - image)


def solarize_add(image, add, thresh=128):
    x = tf.cast(image, tf.int32)
    return tf.cast(tf.where(x < thresh, tf.minimum(x + add, 255), x), tf.uint8)


def _blend(degenerate, image, factor):
    """Image.blend(degenerate, image, factor) (ImageEnhance)."""
    d = tf.cast(degenerate, tf.float32)
    return _u8(d + factor * (tf.cast(image, tf.float32) - d))


def _grey(image):
    """PIL's convert('L'): ITU-R 601-2 luma in 16-bit fixed point, rounded."""
    x = tf.cast(image, tf.int32)
    return tf.bitwise.right_shift(
        x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000, 16)


def color(image, factor):
    grey = tf.cast(_grey(image), tf.uint8)[..., None]
    return _blend(tf.repeat(grey, 3, axis=-1), image, factor)


def contrast(image, factor):
    mean = tf.floor(tf.reduce_mean(tf.cast(_grey(image), tf.float32)) + 0.5)
    return _blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image, factor):
    return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
    """Blend with ImageFilter.SMOOTH (3x3, centre 5, sum 13); PIL keeps the
    border pixels of the smoothed image unfiltered."""
    kernel = tf.constant([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    x = tf.cast(image, tf.float32)
    smooth = tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1], 'VALID')[0]
    smooth = tf.pad(tf.floor(tf.clip_by_value(smooth + 0.5, 0, 255)),
                    [[1, 1], [1, 1], [0, 0]])
    inner = tf.pad(tf.ones_like(smooth[1:-1, 1:-1]), [[1, 1], [1, 1], [0, 0]])
    return _blend(inner * smooth + (1 - inner) * x, image, factor)


def _affine(image, matrix, fill):
    """PIL's Image.transform(AFFINE, matrix) in pixel-centre coordinates: the
    output pixel (x, y) reads the input at matrix @ (x, y, 1), bilinearly, with
    `fill` outside. TF's fill value is one scalar for all channels; bilinear
    sampling is linear, so the image is shifted by the fill colour, transformed
    with fill 0 and shifted back."""
    fill = tf.constant(fill, tf.float32)
    transform = tf.concat([tf.cast(matrix, tf.float32), tf.zeros([2])], axis=0)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=(tf.cast(image, tf.float32) - fill)[None], transforms=transform[None],
        output_shape=tf.shape(image)[:2], fill_value=0.0, interpolation='BILINEAR',
        fill_mode='CONSTANT')[0]
    return _u8(out + fill)


def rotate(image, degrees, fill=FILL):
    """Image.rotate(degrees): counter-clockwise about the image centre."""
    h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    angle = -degrees * math.pi / 180
    cos, sin = tf.cos(angle), tf.sin(angle)
    return _affine(image, [cos, sin, cx - cos * cx - sin * cy,
                           -sin, cos, cy + sin * cx - cos * cy], fill)


def shear_x(image, factor, fill=FILL):
    # PIL's (1, f, 0) at pixel centres is x + f * (y + 0.5) in index coordinates.
    return _affine(image, [1.0, factor, 0.5 * factor, 0.0, 1.0, 0.0], fill)


def shear_y(image, factor, fill=FILL):
    return _affine(image, [1.0, 0.0, 0.0, factor, 1.0, 0.5 * factor], fill)


def translate_x_rel(image, pct, fill=FILL):
    pixels = pct * tf.cast(tf.shape(image)[1], tf.float32)
    return _affine(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0], fill)


def translate_y_rel(image, pct, fill=FILL):
    pixels = pct * tf.cast(tf.shape(image)[0], tf.float32)
    return _affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels], fill)


# ---------------------------------------------------------------------------
# timm's level -> argument maps: `level` in [0, mmax], `sign` +-1 (timm's
# _randomly_negate).


def _enhance(level, sign):
    return level / _LEVEL_DENOM * 1.8 + 0.1


def _enhance_increasing(level, sign):
    return tf.maximum(0.1, 1.0 + sign * level / _LEVEL_DENOM * 0.9)


def _posterize_bits(level):
    return tf.cast(level / _LEVEL_DENOM * 4, tf.int32)     # int(): truncation


def _solarize_thresh(level):
    return tf.minimum(256, tf.cast(level / _LEVEL_DENOM * 256, tf.int32))


# name -> fn(image, level, sign, fill): the op at that level, as timm's AugmentOp.
OPS = {
    'AutoContrast': lambda im, lv, s, f: auto_contrast(im),
    'Equalize': lambda im, lv, s, f: equalize(im),
    'Invert': lambda im, lv, s, f: invert(im),
    'Rotate': lambda im, lv, s, f: rotate(im, s * lv / _LEVEL_DENOM * 30.0, f),
    'Posterize': lambda im, lv, s, f: posterize(im, _posterize_bits(lv)),
    'PosterizeIncreasing': lambda im, lv, s, f: posterize(im, 4 - _posterize_bits(lv)),
    'Solarize': lambda im, lv, s, f: solarize(im, _solarize_thresh(lv)),
    'SolarizeIncreasing': lambda im, lv, s, f: solarize(im, 256 - _solarize_thresh(lv)),
    'SolarizeAdd': lambda im, lv, s, f: solarize_add(
        im, tf.minimum(128, tf.cast(lv / _LEVEL_DENOM * 110, tf.int32))),
    'Color': lambda im, lv, s, f: color(im, _enhance(lv, s)),
    'ColorIncreasing': lambda im, lv, s, f: color(im, _enhance_increasing(lv, s)),
    'Contrast': lambda im, lv, s, f: contrast(im, _enhance(lv, s)),
    'ContrastIncreasing': lambda im, lv, s, f: contrast(im, _enhance_increasing(lv, s)),
    'Brightness': lambda im, lv, s, f: brightness(im, _enhance(lv, s)),
    'BrightnessIncreasing': lambda im, lv, s, f: brightness(im, _enhance_increasing(lv, s)),
    'Sharpness': lambda im, lv, s, f: sharpness(im, _enhance(lv, s)),
    'SharpnessIncreasing': lambda im, lv, s, f: sharpness(im, _enhance_increasing(lv, s)),
    'ShearX': lambda im, lv, s, f: shear_x(im, s * lv / _LEVEL_DENOM * 0.3, f),
    'ShearY': lambda im, lv, s, f: shear_y(im, s * lv / _LEVEL_DENOM * 0.3, f),
    'TranslateXRel': lambda im, lv, s, f: translate_x_rel(
        im, s * lv / _LEVEL_DENOM * TRANSLATE_PCT, f),
    'TranslateYRel': lambda im, lv, s, f: translate_y_rel(
        im, s * lv / _LEVEL_DENOM * TRANSLATE_PCT, f),
}


def apply_op(image, name, level, sign=1.0, fill=FILL):
    """One op at a fixed level (the tests compare these with timm's)."""
    return OPS[name](image, tf.constant(level, tf.float32), tf.constant(sign, tf.float32),
                     fill)


def draws(policy: Policy, seed):
    """(op index [n] int32, applied [n] bool, level [n] float32, sign [n] float32)
    of one example, from its int64 [2] stateless seed."""
    n = policy.num_layers
    s = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    op = tf.random.stateless_uniform([n], s[0], 0, len(policy.ops), tf.int32)
    # timm skips an op when random() > prob.
    applied = tf.random.stateless_uniform([n], s[1]) <= policy.prob
    m = policy.magnitude
    if policy.magnitude_std == math.inf:
        level = tf.random.stateless_uniform([n], s[2], 0.0, m)
    elif policy.magnitude_std > 0:
        level = m + policy.magnitude_std * tf.random.stateless_normal([n], s[2])
    else:
        level = tf.fill([n], tf.constant(m, tf.float32))
    level = tf.clip_by_value(level, 0.0, policy.magnitude_max)
    sign = tf.where(tf.random.stateless_uniform([n], s[3]) > 0.5, -1.0, 1.0)
    return op, applied, level, sign


def from_config(spec: str):
    """The Policy of config.randaugment, None when it is '' (off)."""
    return parse(spec) if spec else None


def augment(image, example_seed, policy: Policy, fill=FILL):
    """RandAugment with a seed of its own folded from the example's (run seed,
    position) seed, so the crop and flip draws of preprocess_train are unchanged."""
    return randaugment(image, tf.random.experimental.stateless_fold_in(
        tf.cast(example_seed, tf.int64), 0x5241), policy, fill)


def example_seeds(seed: int, step: int, shard) -> np.ndarray:
    """int64 [local_batch, 2]: (run seed, stream position) of this process's rows
    at `step`."""
    positions = indexing.step_positions(step, shard)
    return np.stack([np.full_like(positions, seed), positions], -1).astype(np.int64)


def batch_augmenter(spec: str, seed: int, shard):
    """For the numpy sources (digits, fake): a function (uint8 [B, H, W, 3]
    batch, step) -> the batch with each row augmented under its (seed, position)
    seed, as preprocess_train does in tf.data; one traced graph."""
    policy = parse(spec)

    @tf.function
    def run(images, seeds):
        return tf.map_fn(lambda a: augment(a[0], a[1], policy), (images, seeds),
                         fn_output_signature=tf.uint8)
    return lambda images, step: run(images, example_seeds(seed, step, shard)).numpy()


def randaugment(image, seed, policy: Policy, fill=FILL):
    """uint8 [H, W, 3] -> uint8 [H, W, 3]: `policy` with the draws of `seed`."""
    op, applied, level, sign = draws(policy, seed)
    # The last branch is the identity: only the drawn op runs, and only if applied.
    op = tf.where(applied, op, len(policy.ops))
    for i in range(policy.num_layers):
        branches = [lambda fn=OPS[name], im=image, i=i: fn(im, level[i], sign[i], fill)
                    for name in policy.ops] + [lambda im=image: im]
        image = tf.ensure_shape(tf.switch_case(op[i], branches), image.shape)
    return image
