"""The training-time augmentation module the engine calls on each batch after moving it to the device.

Working on the device batch keeps data loaders simple and lets the GPU do the resampling; every
parameter is drawn per sample as a [B] tensor, with no Python loop over samples.

Randomness: all draws use torch's global generator on the batch's device, so `torch.manual_seed(seed)`
(which seeds CPU and CUDA) makes a run repeatable. The same seed gives different streams on CPU and
CUDA, so results are repeatable per device, not across devices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from seg.augment.geometric import (
    affine_theta,
    apply_dihedral,
    elastic_displacement,
    identity_theta,
    sample_dihedral,
    warp,
)
from seg.augment.intensity import add_noise, adjust_tone, blur_some, chance, on_device
from seg.errors import ConfigError, DatasetError

PADDING_MODES = ("reflection", "border", "zeros")


def _probability(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"augmentation.{name}={value} is not a probability: use a value in [0, 1]")
    return value


def _magnitude(name: str, value: float, upper: float | None = None) -> float:
    value = float(value)
    if value < 0.0 or (upper is not None and value >= upper):
        limit = f"in [0, {upper})" if upper is not None else ">= 0"
        raise ConfigError(f"augmentation.{name}={value} is out of range: use a value {limit} (0 turns it off)")
    return value


def _sigma_range(value: Sequence[float]) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"augmentation.blur_sigma={value!r} must be two numbers [min, max] in pixels, e.g. [0.1, 1.0]"
        ) from err
    if not 0.0 < low <= high:
        raise ConfigError(f"augmentation.blur_sigma=[{low}, {high}] needs 0 < min <= max (pixels)")
    return low, high


class Augment(nn.Module):
    """Random flips, 90-degree turns, affine and elastic warps, and intensity changes for a batch.

    Active only in training mode; in eval mode (and when every op is off) inputs come back untouched.
    Probabilities are per sample. Ranges are symmetric: offset in [-max_offset, max_offset] of the
    size per axis, zoom in [1-max_scale, 1+max_scale], angle in [-max_rotation, max_rotation] degrees
    (180 = any angle), gamma in [1/(1+gamma), 1+gamma], contrast factor in [1-contrast, 1+contrast],
    brightness shift in [-brightness, brightness] (image units). elastic_alpha is the displacement std
    in pixels, elastic_sigma its smoothness length in pixels. Masks are sampled nearest (fast, exact
    labels); with padding_mode "zeros" pixels from outside the image get IGNORE_INDEX.
    """

    def __init__(
        self,
        *,
        hflip_p: float = 0.0,
        vflip_p: float = 0.0,
        rot90_p: float = 0.0,
        affine_p: float = 0.0,
        max_offset: float = 0.0,
        max_scale: float = 0.0,
        max_rotation: float = 0.0,
        elastic_p: float = 0.0,
        elastic_alpha: float = 0.0,
        elastic_sigma: float = 10.0,
        intensity_p: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        gamma: float = 0.0,
        noise_std: float = 0.0,
        blur_p: float = 0.0,
        blur_sigma: Sequence[float] = (0.1, 1.0),
        padding_mode: str = "reflection",
    ) -> None:
        super().__init__()
        self.hflip_p = _probability("hflip_p", hflip_p)
        self.vflip_p = _probability("vflip_p", vflip_p)
        self.rot90_p = _probability("rot90_p", rot90_p)
        self.affine_p = _probability("affine_p", affine_p)
        self.max_offset = _magnitude("max_offset", max_offset, upper=1.0)
        self.max_scale = _magnitude("max_scale", max_scale, upper=1.0)
        self.max_rotation = _magnitude("max_rotation", max_rotation)
        self.elastic_p = _probability("elastic_p", elastic_p)
        self.elastic_alpha = _magnitude("elastic_alpha", elastic_alpha)
        self.elastic_sigma = float(elastic_sigma)
        if self.elastic_sigma <= 0:
            raise ConfigError(f"augmentation.elastic_sigma={elastic_sigma} must be > 0 pixels, e.g. 10")
        self.intensity_p = _probability("intensity_p", intensity_p)
        self.brightness = _magnitude("brightness", brightness)
        self.contrast = _magnitude("contrast", contrast, upper=1.0)
        self.gamma = _magnitude("gamma", gamma)
        self.noise_std = _magnitude("noise_std", noise_std)
        self.blur_p = _probability("blur_p", blur_p)
        self.blur_sigma = _sigma_range(blur_sigma)
        if padding_mode not in PADDING_MODES:
            raise ConfigError(
                f"augmentation.padding_mode={padding_mode!r} is unknown: use one of {list(PADDING_MODES)}"
            )
        self.padding_mode = padding_mode

    # Which ops can change anything: a probability > 0 with an effect > 0.
    @property
    def affine_on(self) -> bool:
        return self.affine_p > 0 and (self.max_offset > 0 or self.max_scale > 0 or self.max_rotation > 0)

    @property
    def elastic_on(self) -> bool:
        return self.elastic_p > 0 and self.elastic_alpha > 0

    @property
    def tone_on(self) -> bool:
        return self.intensity_p > 0 and (self.brightness > 0 or self.contrast > 0 or self.gamma > 0)

    @property
    def noise_on(self) -> bool:
        return self.intensity_p > 0 and self.noise_std > 0

    @property
    def is_identity(self) -> bool:
        """True when no op can change a batch (the engine may skip the call; forward is free anyway)."""
        return not (
            self.hflip_p > 0 or self.vflip_p > 0 or self.rot90_p > 0 or self.affine_on
            or self.elastic_on or self.tone_on or self.noise_on or self.blur_p > 0
        )

    def describe(self) -> list[str]:
        """One line per enabled op, for logs and run summaries."""
        ops = []
        if self.hflip_p > 0:
            ops.append(f"hflip p={self.hflip_p:g}")
        if self.vflip_p > 0:
            ops.append(f"vflip p={self.vflip_p:g}")
        if self.rot90_p > 0:
            ops.append(f"rot90 p={self.rot90_p:g}")
        if self.affine_on:
            ops.append(
                f"affine p={self.affine_p:g} offset±{self.max_offset:g} scale±{self.max_scale:g} "
                f"rotation±{self.max_rotation:g}°"
            )
        if self.elastic_on:
            ops.append(
                f"elastic p={self.elastic_p:g} alpha={self.elastic_alpha:g}px sigma={self.elastic_sigma:g}px"
            )
        if self.tone_on:
            ops.append(
                f"tone p={self.intensity_p:g} brightness±{self.brightness:g} contrast±{self.contrast:g} "
                f"gamma±{self.gamma:g}"
            )
        if self.noise_on:
            ops.append(f"noise p={self.intensity_p:g} std={self.noise_std:g}")
        if self.blur_p > 0:
            ops.append(f"blur p={self.blur_p:g} sigma={self.blur_sigma[0]:g}..{self.blur_sigma[1]:g}px")
        if self.affine_on or self.elastic_on:
            ops.append(f"padding={self.padding_mode}")
        return ops or ["identity"]

    def extra_repr(self) -> str:
        return ", ".join(self.describe())

    @torch.no_grad()
    def forward(
        self, image: Tensor, mask: Tensor, weight: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """image [B,C,H,W] float, mask [B,H,W] integer ids, weight [B,H,W] float or None."""
        if not self.training or self.is_identity:
            return image, mask, weight
        _check_shapes(image, mask, weight)
        channels_last = image.is_contiguous(memory_format=torch.channels_last) and not image.is_contiguous()
        image, mask, weight = self._geometric(image, mask, weight)
        image = self._intensity(image)
        if channels_last:  # keep the layout the engine chose for the model
            image = image.contiguous(memory_format=torch.channels_last)
        return image, mask, weight

    def _geometric(
        self, image: Tensor, mask: Tensor, weight: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        b, _, h, w = image.shape
        if self.hflip_p > 0 or self.vflip_p > 0 or self.rot90_p > 0:
            flags = sample_dihedral(
                b, hflip_p=self.hflip_p, vflip_p=self.vflip_p, rot90_p=self.rot90_p, square=h == w, like=image
            )
            image, mask = apply_dihedral(image, *flags), apply_dihedral(mask, *flags)
            weight = None if weight is None else apply_dihedral(weight, *flags)
        if not (self.affine_on or self.elastic_on):
            return image, mask, weight
        no = torch.zeros(b, dtype=torch.bool)
        use_affine = chance(b, self.affine_p) if self.affine_on else no  # host flags: no device sync
        use_elastic = chance(b, self.elastic_p) if self.elastic_on else no
        picked = (use_affine | use_elastic).nonzero().squeeze(1)
        n = picked.numel()
        if n == 0:  # nothing drawn: skip resampling, the batch stays bitwise as it is
            return image, mask, weight
        chosen = on_device(picked, image)
        theta = identity_theta(n, image)
        if self.affine_on:
            drawn = affine_theta(
                n, (h, w), max_offset=self.max_offset, max_scale=self.max_scale,
                max_rotation=self.max_rotation, like=image,
            )
            theta = torch.where(on_device(use_affine[picked], image).view(-1, 1, 1), drawn, theta)
        displacement = None
        if self.elastic_on:
            field = elastic_displacement(
                n, (h, w), alpha=self.elastic_alpha, sigma=self.elastic_sigma, like=image
            )
            displacement = field * on_device(use_elastic[picked], image).to(field.dtype).view(-1, 1, 1, 1)
        sub_weight = None if weight is None else weight.index_select(0, chosen)
        moved_image, moved_mask, moved_weight = warp(
            image.index_select(0, chosen), mask.index_select(0, chosen), sub_weight,
            theta, displacement, self.padding_mode,
        )
        image = image.index_copy(0, chosen, moved_image)
        mask = mask.index_copy(0, chosen, moved_mask)
        if weight is not None and moved_weight is not None:
            weight = weight.index_copy(0, chosen, moved_weight)
        return image, mask, weight

    def _intensity(self, image: Tensor) -> Tensor:
        """Tone first, blur next, noise last (noise is not blurred away); one draw of who is chosen
        for tone and noise, so intensity_p is the chance a sample gets any of them."""
        b = image.shape[0]
        selected = chance(b, self.intensity_p) if (self.tone_on or self.noise_on) else None
        if self.tone_on and selected is not None:
            image = adjust_tone(
                image, selected, brightness=self.brightness, contrast=self.contrast, gamma=self.gamma
            )
        if self.blur_p > 0:
            image = blur_some(image, chance(b, self.blur_p), self.blur_sigma)
        if self.noise_on and selected is not None:
            image = add_noise(image, selected, self.noise_std)
        return image


def _check_shapes(image: Tensor, mask: Tensor, weight: Tensor | None) -> None:
    """Mismatched sizes usually mean a dataset resized images and masks differently."""
    if image.dim() != 4 or not image.is_floating_point():
        raise DatasetError(
            f"augmentation expects a float image batch [B,C,H,W], got {tuple(image.shape)} {image.dtype}: "
            "convert uint8 images to float before augmenting"
        )
    expected = (image.shape[0], *image.shape[2:])
    if tuple(mask.shape) != expected or mask.is_floating_point():
        raise DatasetError(
            f"augmentation expects an integer mask batch of shape {expected} to match the image, got "
            f"{tuple(mask.shape)} {mask.dtype}: check that the dataset gives masks the image's size"
        )
    if weight is not None and tuple(weight.shape) != expected:
        raise DatasetError(
            f"augmentation expects a weight map of shape {expected} to match the image, got {tuple(weight.shape)}"
        )
