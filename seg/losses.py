"""Segmentation losses, called as `loss(logits, mask)` or `loss(logits, mask, weight=weight)`.

logits: [B,1,H,W] (binary, one logit) or [B,K,H,W] (K classes); mask: [B,H,W] long class ids, binary
masks use {0,1} (any non-zero id counts as foreground). Pixels equal to `ignore_index` are left out
of every term and receive no gradient. `weight` ([B,H,W]) scales pixel-wise terms (BCE, CE); Dice
terms are overlap ratios and do not use it. Everything runs on the logits' device in float32, with
no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg.constants import IGNORE_INDEX
from seg.errors import ConfigError
from seg.weightmap import unet_weight_map

__all__ = [
    "BCELoss", "CELoss", "DiceBCELoss", "DiceCELoss", "DiceLoss", "DiceRecallLoss", "WeightedBCELoss",
    "unet_weight_map",
]


def _check(logits: Tensor, mask: Tensor, weight: Tensor | None, name: str, binary: bool | None) -> None:
    """Shape and channel checks (shapes are host values: no synchronisation)."""
    if logits.dim() != 4 or mask.dim() != 3 or logits.shape[0] != mask.shape[0] or logits.shape[2:] != mask.shape[1:]:
        raise ConfigError(
            f"loss={name} expects logits [B,C,H,W] and mask [B,H,W] of the same B, H, W; got logits "
            f"{tuple(logits.shape)} and mask {tuple(mask.shape)} (does the model keep the input size?)"
        )
    k = logits.shape[1]
    if binary is True and k != 1:
        alt = {"dice_bce": "dice_ce"}.get(name, "ce or dice_ce")
        raise ConfigError(
            f"loss={name} is for binary data (one output channel, n_classes=1) but the model gives {k} "
            f"channels; use loss={alt} for {k}-class data"
        )
    if binary is False and k == 1:
        alt = {"dice_ce": "dice_bce"}.get(name, "bce")
        raise ConfigError(
            f"loss={name} needs a multi-class model (n_classes > 1) but the model gives one channel "
            f"(binary data); use loss={alt}"
        )
    if weight is not None and weight.shape != mask.shape:
        raise ConfigError(
            f"loss={name}: the weight map must have the mask's shape {tuple(mask.shape)}, got {tuple(weight.shape)}"
        )


def _positive(name: str, value: float | None, allow_zero: bool = False) -> float | None:
    if value is None:
        return None
    v = float(value)
    if not (v > 0 or (allow_zero and v == 0)):
        raise ConfigError(f"loss.{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def _binary_target(mask: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    valid = mask != ignore_index
    return ((mask != 0) & valid).float(), valid.float()


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den with 0 where den == 0 (a batch with every pixel ignored contributes nothing)."""
    return num / torch.where(den > 0, den, torch.ones_like(den))


def _soft_dice(prob: Tensor, target: Tensor, dims: tuple[int, ...], smooth: float) -> Tensor:
    inter = (prob * target).sum(dims)
    return (2 * inter + smooth) / (prob.sum(dims) + target.sum(dims) + smooth)


class BCELoss(nn.Module):
    """Binary cross-entropy on logits, mean over labelled pixels (weighted mean with a weight map)."""

    name = "bce"

    def __init__(self, pos_weight: float | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.pos_weight = _positive("pos_weight", pos_weight)
        self.ignore_index = int(ignore_index)

    def forward(self, logits: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
        _check(logits, mask, weight, self.name, binary=True)
        x = logits[:, 0].float()
        target, valid = _binary_target(mask, self.ignore_index)
        # new_full fills on the device: no host-to-device copy, so no stream synchronisation
        pw = None if self.pos_weight is None else x.new_full((), self.pos_weight)
        per_pixel = F.binary_cross_entropy_with_logits(x, target, reduction="none", pos_weight=pw)
        w = valid if weight is None else valid * weight.float()
        return _safe_div((per_pixel * w).sum(), w.sum())


class WeightedBCELoss(BCELoss):
    """BCE weighted by the batch's per-pixel map (U-Net paper): the weight map is required."""

    name = "weighted_bce"

    def forward(self, logits: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
        if weight is None:
            raise ConfigError(
                "loss=weighted_bce needs per-pixel weight maps in the batch, but the dataset gives none; "
                "use a dataset that provides them (e.g. dataset=isbi2012 with dataset.weight_map=true) "
                "or choose loss=bce"
            )
        return super().forward(logits, mask, weight)


class DiceLoss(nn.Module):
    """1 - soft Dice. Binary: sigmoid. Multi-class: softmax vs one-hot target, Dice per class, mean
    over classes. By default sums run over the whole batch (a stable ratio even when some images have
    little foreground); `per_image=True` computes one Dice per image and averages, as the LUNA
    chapter does. `smooth` keeps empty-vs-empty at Dice 1 (loss 0)."""

    name = "dice"

    def __init__(
        self,
        smooth: float = 1.0,
        per_image: bool = False,
        include_background: bool = True,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.smooth = _positive("smooth", smooth)
        self.per_image = bool(per_image)
        self.include_background = bool(include_background)
        self.ignore_index = int(ignore_index)

    def forward(self, logits: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
        _check(logits, mask, weight, self.name, binary=None)
        if logits.shape[1] == 1:
            target, valid = _binary_target(mask, self.ignore_index)
            prob = torch.sigmoid(logits[:, 0].float()) * valid
            dims = (1, 2) if self.per_image else (0, 1, 2)
            return (1 - _soft_dice(prob, target, dims, self.smooth)).mean()
        k = logits.shape[1]
        valid = (mask != self.ignore_index).unsqueeze(1).float()
        prob = torch.softmax(logits.float(), dim=1) * valid
        classes = torch.arange(k, device=mask.device).view(1, k, 1, 1)
        target = (mask.unsqueeze(1) == classes).float() * valid
        dims = (2, 3) if self.per_image else (0, 2, 3)
        dice = _soft_dice(prob, target, dims, self.smooth)  # [B,K] or [K]
        if not self.include_background:
            dice = dice[..., 1:]
        return (1 - dice).mean()


class DiceBCELoss(nn.Module):
    """bce_weight * BCE + dice_weight * Dice (binary): BCE gives smooth per-pixel gradients, Dice
    counters the imbalance of small foreground."""

    name = "dice_bce"

    def __init__(
        self,
        smooth: float = 1.0,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        pos_weight: float | None = None,
        per_image: bool = False,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.bce = BCELoss(pos_weight=pos_weight, ignore_index=ignore_index)
        self.dice = DiceLoss(smooth=smooth, per_image=per_image, ignore_index=ignore_index)
        self.bce_weight = _positive("bce_weight", bce_weight, allow_zero=True)
        self.dice_weight = _positive("dice_weight", dice_weight, allow_zero=True)

    def forward(self, logits: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
        _check(logits, mask, weight, self.name, binary=True)
        return self.bce_weight * self.bce(logits, mask, weight) + self.dice_weight * self.dice(logits, mask)


class DiceRecallLoss(nn.Module):
    """Soft Dice + recall_weight x Dice(prediction * label, label), after the LUNA chapter.

    The second term only sees labelled pixels, so only missed foreground (false negatives) costs
    anything there: the loss prefers a few false positives over one miss. Per image then averaged
    (`per_image=True`, the chapter's choice) so that every crop's nodule counts equally.
    """

    name = "dice_recall"

    def __init__(
        self,
        smooth: float = 1.0,
        recall_weight: float = 8.0,
        per_image: bool = True,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.smooth = _positive("smooth", smooth)
        self.recall_weight = _positive("recall_weight", recall_weight, allow_zero=True)
        self.per_image = bool(per_image)
        self.ignore_index = int(ignore_index)

    def forward(self, logits: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
        _check(logits, mask, weight, self.name, binary=True)
        target, valid = _binary_target(mask, self.ignore_index)
        prob = torch.sigmoid(logits[:, 0].float()) * valid
        dims = (1, 2) if self.per_image else (0, 1, 2)
        dice = 1 - _soft_dice(prob, target, dims, self.smooth)
        missed = 1 - _soft_dice(prob * target, target, dims, self.smooth)
        return dice.mean() + self.recall_weight * missed.mean()


class CELoss(nn.Module):
    """Cross-entropy over K > 1 classes; with class weights the mean is weighted like torch's
    (sum of weighted losses / sum of the target pixels' weights), a weight map multiplies both."""

    name = "ce"

    def __init__(
        self,
        class_weights: Sequence[float] | None = None,
        ignore_index: int = IGNORE_INDEX,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        if self.class_weights is not None and not all(w >= 0 for w in self.class_weights):
            raise ConfigError(f"loss.class_weights must be non-negative numbers, got {list(class_weights)}")
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self._weights_on: dict[torch.device, Tensor] = {}  # copied once per device, not every step

    def forward(self, logits: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
        _check(logits, mask, weight, self.name, binary=False)
        k = logits.shape[1]
        valid = mask != self.ignore_index
        safe = torch.where(valid, mask, torch.zeros_like(mask))
        cw = None
        pixel_w = valid.float()
        if self.class_weights is not None:
            if len(self.class_weights) != k:
                raise ConfigError(
                    f"loss.class_weights has {len(self.class_weights)} value(s) but the model has {k} classes"
                )
            if logits.device not in self._weights_on:
                self._weights_on[logits.device] = torch.tensor(self.class_weights, device=logits.device)
            cw = self._weights_on[logits.device]
            pixel_w = pixel_w * cw[safe]
        per_pixel = F.cross_entropy(
            logits.float(), safe, weight=cw, reduction="none", label_smoothing=self.label_smoothing
        )
        if weight is not None:
            per_pixel = per_pixel * weight.float()
            pixel_w = pixel_w * weight.float()
        return _safe_div((per_pixel * valid).sum(), pixel_w.sum())


class DiceCELoss(nn.Module):
    """ce_weight * CE + dice_weight * multi-class soft Dice."""

    name = "dice_ce"

    def __init__(
        self,
        smooth: float = 1.0,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        class_weights: Sequence[float] | None = None,
        include_background: bool = True,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.ce = CELoss(class_weights=class_weights, ignore_index=ignore_index)
        self.dice = DiceLoss(smooth=smooth, include_background=include_background, ignore_index=ignore_index)
        self.ce_weight = _positive("ce_weight", ce_weight, allow_zero=True)
        self.dice_weight = _positive("dice_weight", dice_weight, allow_zero=True)

    def forward(self, logits: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
        _check(logits, mask, weight, self.name, binary=False)
        return self.ce_weight * self.ce(logits, mask, weight) + self.dice_weight * self.dice(logits, mask)
