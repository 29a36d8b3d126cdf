"""Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019) on the device, inside the
jitted training step, with the semantics of timm's `timm.data.Mixup`.

Each image i is mixed with its partner in the flipped batch, image N - 1 - i (timm's
`x.flip(0)`): Mixup blends the two, lam * x_i + (1 - lam) * x_{N-1-i}; CutMix pastes the
partner's pixels inside a box whose area is about 1 - lam of the image, and lam is then
corrected to the pasted area where the box is clipped at the border (timm's
`correct_lam=True`). The targets (one-hot, label smoothing folded in as timm's
`mixup_target` does) are mixed with the same lam.

Two halves, so that a test can give timm and this module the same lambda and box:
`draw` makes the random choices (from a jax key, which the step derives from its
number, so a resumed run draws the same), `mix` applies them.
"""
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

MODES = ('batch', 'pair', 'elem')   # one lambda per batch, per pair (i, N-1-i), per image


class MixParams(NamedTuple):
    """One entry per image of the batch."""
    lam: jax.Array          # (N,) float32: the share of the image's own target (CutMix: corrected)
    use_cutmix: jax.Array   # (N,) bool: CutMix, else Mixup
    box: jax.Array          # (N, 4) int32: the CutMix box, rows [yl, yh) and columns [xl, xh)


@dataclasses.dataclass(frozen=True)
class Mixing:
    """timm's Mixup arguments (mixup_alpha, cutmix_alpha, prob, switch_prob, mode);
    correct_lam is always on, as in timm's training script."""
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: str = 'batch'

    @property
    def active(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def draw(self, key, batch_size: int, height: int, width: int) -> MixParams:
        """timm's `_params_per_batch` / `_params_per_elem` and `rand_bbox`, drawn
        with jax.random: each draw (the batch, a pair or an image) is mixed with
        probability `prob`, by CutMix with probability `switch_prob` when both
        alphas are set, with lam ~ Beta(alpha, alpha) of the method chosen."""
        n = {'batch': 1, 'pair': batch_size // 2, 'elem': batch_size}[self.mode]
        k_apply, k_switch, k_mixup, k_cutmix, k_y, k_x = jax.random.split(key, 6)
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = jax.random.uniform(k_switch, (n,)) < self.switch_prob
        else:
            use_cutmix = jnp.full((n,), self.cutmix_alpha > 0)
        # An alpha of 0 is never used; 1 keeps Beta's sampler away from it.
        lam_mixup = jax.random.beta(k_mixup, self.mixup_alpha or 1.0, self.mixup_alpha or 1.0, (n,))
        lam_cutmix = jax.random.beta(k_cutmix, self.cutmix_alpha or 1.0, self.cutmix_alpha or 1.0, (n,))
        apply = jax.random.uniform(k_apply, (n,)) < self.prob
        lam = jnp.where(apply, jnp.where(use_cutmix, lam_cutmix, lam_mixup), 1.0)
        use_cutmix = use_cutmix & apply
        cy = jax.random.randint(k_y, (n,), 0, height)
        cx = jax.random.randint(k_x, (n,), 0, width)
        box, cut_lam = cutmix_box(lam, cy, cx, height, width)
        params = MixParams(jnp.where(use_cutmix, cut_lam, lam).astype(jnp.float32), use_cutmix, box)
        if self.mode == 'batch':
            return jax.tree.map(lambda p: jnp.repeat(p, batch_size, axis=0), params)
        if self.mode == 'pair':   # image N-1-i takes the draw of image i
            return jax.tree.map(lambda p: jnp.concatenate([p, p[::-1]]), params)
        return params


def cutmix_box(lam, cy, cx, height: int, width: int):
    """timm's `rand_bbox` around the centre (cy, cx) and `cutmix_bbox_and_lam`'s
    correction: a box of int(side * sqrt(1 - lam)) on each side, clipped at the
    border, and lam = 1 - (its area) / (the image's). Returns ((N, 4) box, lam)."""
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = (height * ratio).astype(jnp.int32)
    cut_w = (width * ratio).astype(jnp.int32)
    yl = jnp.clip(cy - cut_h // 2, 0, height)
    yh = jnp.clip(cy + (cut_h + 1) // 2, 0, height)
    xl = jnp.clip(cx - cut_w // 2, 0, width)
    xh = jnp.clip(cx + (cut_w + 1) // 2, 0, width)
    area = (yh - yl) * (xh - xl)
    return jnp.stack([yl, yh, xl, xh], axis=-1), 1.0 - area / (height * width)


def mix(images, targets, params: MixParams):
    """Images (N, H, W, C) and soft targets (N, K), each mixed with its partner in
    the flipped batch as `params` says; the images keep their dtype."""
    partner, partner_targets = images[::-1], targets[::-1]
    height, width = images.shape[1:3]
    yl, yh, xl, xh = (params.box[:, k, None, None] for k in range(4))
    rows = jnp.arange(height)[None, :, None]
    cols = jnp.arange(width)[None, None, :]
    in_box = (rows >= yl) & (rows < yh) & (cols >= xl) & (cols < xh)      # (N, H, W)
    lam = params.lam.astype(images.dtype)[:, None, None, None]
    blended = images * lam + partner * (1 - lam)
    pasted = jnp.where(in_box[..., None], partner, images)
    mixed = jnp.where(params.use_cutmix[:, None, None, None], pasted, blended)
    lam_t = params.lam.astype(targets.dtype)[:, None]
    return mixed, targets * lam_t + partner_targets * (1 - lam_t)
