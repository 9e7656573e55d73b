"""Thresholded segmentation metrics, accumulated on the device and read back once per `compute()`.

Conventions (binary = one logit, foreground when sigmoid(logit) > threshold; multi-class = argmax):
- Pixels equal to `ignore_index` count nowhere. A binary mask's non-zero ids are foreground.
- Ratios whose denominator is 0 never give NaN: Dice and IoU of "nothing predicted, nothing there"
  are 1; precision with no predicted positives is 1 if the target has none either, else 0; recall
  with no target positives is 1 if nothing was predicted, else 0; F1 is 0 when precision + recall is 0.
- Multi-class means (`dice`, `iou`, `precision`, `recall`, `f1`) average over the classes present
  in the target or the prediction (absent classes would otherwise add free 1s); with none present
  they are 1. Per-class `dice_<name>`/`iou_<name>` of an absent class are 1.
- Per-image Dice: one score per image (multi-class: mean over the classes present in that image),
  an image with empty mask and empty prediction scores 1; `dice_per_image` is the mean over images
  (this is the SIIM Kaggle score, also reported as `dice_kaggle` when `kaggle=True`).
- `percent_tp/fn/fp` (binary) are TP, FN, FP as % of labelled foreground pixels, as in the LUNA
  chapter (a count of 0 labelled pixels is treated as 1, so FP% may exceed 100).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from seg.constants import IGNORE_INDEX
from seg.errors import ConfigError


def prediction(logits: Tensor, threshold: float = 0.5) -> Tensor:
    """Class ids [B,H,W]: binary sigmoid > threshold, multi-class argmax."""
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits[:, 0].float()) > threshold).long()
    return logits.argmax(dim=1)


def _counts(logits: Tensor, mask: Tensor, threshold: float, ignore_index: int) -> tuple[Tensor, ...]:
    """Per image and class: TP, predicted count, target count ([B,K'] int64, K' = 1 for binary)
    and labelled pixels per image ([B])."""
    if logits.dim() != 4 or mask.dim() != 3 or logits.shape[0] != mask.shape[0] or logits.shape[2:] != mask.shape[1:]:
        raise ConfigError(
            f"metrics expect logits [B,C,H,W] and mask [B,H,W] of the same B, H, W; got logits "
            f"{tuple(logits.shape)} and mask {tuple(mask.shape)}"
        )
    return _prediction_counts(prediction(logits, threshold), mask, logits.shape[1], ignore_index)


def _prediction_counts(pred: Tensor, mask: Tensor, channels: int, ignore_index: int) -> tuple[Tensor, ...]:
    """`_counts` of predicted class ids [B,H,W] (binary: 1 = foreground) for a model of `channels`
    outputs; the one place both the logits path and the post-processed masks' path count."""
    valid = mask != ignore_index
    if channels == 1:
        pred_on = ((pred == 1) & valid).unsqueeze(1)
        target_on = ((mask != 0) & valid).unsqueeze(1)
    else:
        classes = torch.arange(channels, device=pred.device).view(1, -1, 1, 1)
        pred_on = (pred.unsqueeze(1) == classes) & valid.unsqueeze(1)
        target_on = (mask.unsqueeze(1) == classes) & valid.unsqueeze(1)
    dims = (2, 3)
    tp = (pred_on & target_on).sum(dims)
    return tp, pred_on.sum(dims), target_on.sum(dims), valid.sum((1, 2))


def _ratio(num: Tensor, den: Tensor, empty: Tensor | float) -> Tensor:
    """num / den where den > 0, else `empty`."""
    num, den = num.double(), den.double()
    if isinstance(empty, Tensor):
        empty = empty.to(num)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), empty)


def _scores(tp: Tensor, fp: Tensor, fn: Tensor) -> dict[str, Tensor]:
    dice = _ratio(2 * tp, 2 * tp + fp + fn, 1.0)
    iou = _ratio(tp, tp + fp + fn, 1.0)
    precision = _ratio(tp, tp + fp, (fn == 0).double())
    recall = _ratio(tp, tp + fn, (fp == 0).double())
    f1 = _ratio(2 * precision * recall, precision + recall, 0.0)
    return {"dice": dice, "iou": iou, "precision": precision, "recall": recall, "f1": f1}


def _mean_present(values: Tensor, present: Tensor) -> Tensor:
    """Mean over the last axis restricted to `present` entries; 1 where none is present."""
    return _ratio((values * present).sum(-1), present.sum(-1), 1.0)


def per_image_stats(
    logits: Tensor, mask: Tensor, threshold: float = 0.5, ignore_index: int = IGNORE_INDEX
) -> dict[str, Tensor]:
    """Per-image `dice`, `iou`, `precision`, `recall` (float64 [B], on the logits' device), with the
    module's conventions; multi-class values are means over the classes present in each image."""
    tp, n_pred, n_target, _ = _counts(logits, mask, threshold, ignore_index)
    fp, fn = n_pred - tp, n_target - tp
    scores = _scores(tp, fp, fn)
    present = ((tp + fp + fn) > 0).double()
    return {key: _mean_present(scores[key], present) for key in ("dice", "iou", "precision", "recall")}


def per_image_prediction_stats(pred: Tensor, mask: Tensor, n_classes: int,
                               ignore_index: int = IGNORE_INDEX) -> dict[str, Tensor]:
    """`per_image_stats` of predicted class ids [B,H,W] (binary: 1 = foreground), e.g. post-processed
    masks, plus the per-class values behind the means: `class_<key>` [B,K'] and `present` [B,K']
    (the class is in the truth or the prediction), `n_pred`/`n_target` [B,K'] pixel counts."""
    channels = 1 if int(n_classes) == 1 else int(n_classes)
    tp, n_pred, n_target, _ = _prediction_counts(pred, mask, channels, ignore_index)
    fp, fn = n_pred - tp, n_target - tp
    scores = _scores(tp, fp, fn)
    present = (tp + fp + fn) > 0
    out = {key: _mean_present(scores[key], present.double()) for key in ("dice", "iou", "precision", "recall")}
    out.update({f"class_{key}": scores[key] for key in ("dice", "iou", "precision", "recall")})
    return {**out, "present": present, "n_pred": n_pred, "n_target": n_target}


class SegMetrics:
    """Confusion counts per class and per-image Dice, summed over `update` calls."""

    def __init__(
        self,
        n_classes: int,
        threshold: float = 0.5,
        ignore_index: int = IGNORE_INDEX,
        class_names: Sequence[str] | None = None,
        kaggle: bool = False,
    ) -> None:
        self.n_classes = int(n_classes)
        if self.n_classes < 1:
            raise ConfigError(f"n_classes must be >= 1 (1 = binary), got {n_classes!r}")
        self.threshold = float(threshold)
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"the metric threshold must lie in (0, 1), got {threshold!r}")
        self.ignore_index = int(ignore_index)
        n_names = 1 if self.n_classes == 1 else self.n_classes
        names = [str(i) for i in range(n_names)] if class_names is None else [str(c) for c in class_names]
        if len(names) != n_names:
            raise ConfigError(
                f"class_names has {len(names)} name(s) {names} but n_classes={self.n_classes} needs {n_names}"
            )
        self.class_names = names
        self.kaggle = bool(kaggle)
        self.reset()

    def reset(self) -> None:
        self._state: dict[str, Tensor] | None = None
        self.n_images = 0
        self.n_losses = 0

    def _init_state(self, device: torch.device) -> dict[str, Tensor]:
        k = 1 if self.n_classes == 1 else self.n_classes
        zeros = lambda dtype, *shape: torch.zeros(*shape, dtype=dtype, device=device)  # noqa: E731
        return {
            "tp": zeros(torch.int64, k), "fp": zeros(torch.int64, k), "fn": zeros(torch.int64, k),
            "tn": zeros(torch.int64, k), "valid": zeros(torch.int64, ()),
            "dice_image_sum": zeros(torch.float64, ()), "loss_sum": zeros(torch.float64, ()),
        }

    @torch.no_grad()
    def update(self, logits: Tensor, mask: Tensor, loss: Tensor | None = None) -> None:
        channels = 1 if self.n_classes == 1 else self.n_classes
        if logits.dim() != 4 or logits.shape[1] != channels:
            raise ConfigError(
                f"metrics were set up for n_classes={self.n_classes} ({channels} output channel(s)) but got "
                f"logits of shape {tuple(logits.shape)}; check dataset.n_classes against the model"
            )
        self.update_counts(*_counts(logits, mask, self.threshold, self.ignore_index), loss=loss)

    @torch.no_grad()
    def update_prediction(self, pred: Tensor, mask: Tensor, loss: Tensor | None = None) -> None:
        """`update` from predicted class ids [B,H,W] (binary: 1 = foreground), e.g. post-processed
        masks, instead of logits; the same counting rules."""
        if pred.dim() != 3 or mask.dim() != 3 or pred.shape != mask.shape:
            raise ConfigError(f"metrics expect a prediction [B,H,W] and mask [B,H,W] of one shape; got "
                              f"{tuple(pred.shape)} and {tuple(mask.shape)}")
        channels = 1 if self.n_classes == 1 else self.n_classes
        self.update_counts(*_prediction_counts(pred, mask, channels, self.ignore_index), loss=loss)

    @torch.no_grad()
    def update_counts(self, tp: Tensor, n_pred: Tensor, n_target: Tensor, n_valid: Tensor,
                      loss: Tensor | None = None) -> None:
        """Add per-image counts (TP, predicted, target: [B,K'] int64; labelled pixels [B]), as `_counts`
        gives them; tuning scores its candidates through here, so they follow the same rules."""
        if self._state is None:
            self._state = self._init_state(tp.device)
        s = self._state
        fp, fn = n_pred - tp, n_target - tp
        s["tp"] += tp.sum(0)
        s["fp"] += fp.sum(0)
        s["fn"] += fn.sum(0)
        s["tn"] += (n_valid.unsqueeze(1) - tp - fp - fn).sum(0)
        s["valid"] += n_valid.sum()
        present = ((tp + fp + fn) > 0).double()
        s["dice_image_sum"] += _mean_present(_scores(tp, fp, fn)["dice"], present).sum()
        self.n_images += int(tp.shape[0])
        if loss is not None:  # weighted by the batch's images: a smaller last batch (or shard) counts less
            images = int(tp.shape[0])
            s["loss_sum"] += loss.detach().double().reshape(()) * images
            self.n_losses += images

    def sync(self, device: torch.device) -> None:
        """Sum the counts of every process of a data-parallel run (each scored its own shard), so
        compute() gives every rank the metrics one process would give on all the data. A no-op alone."""
        from seg import distributed

        if not distributed.current().enabled:
            return
        if self._state is None:
            self._state = self._init_state(device)
        totals = torch.tensor([self.n_images, self.n_losses], dtype=torch.int64, device=device)
        distributed.sum_([*self._state.values(), totals])
        self.n_images, self.n_losses = (int(v) for v in totals.tolist())

    def state_dict(self) -> dict[str, Any]:
        """The running sums (a checkpoint of an interrupted epoch keeps them)."""
        sums = {} if self._state is None else {k: v.detach().cpu().clone() for k, v in self._state.items()}
        return {"sums": sums, "n_images": self.n_images, "n_losses": self.n_losses}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        sums = state.get("sums") or {}
        self._state = {k: v.to(device) for k, v in sums.items()} if sums else None
        self.n_images, self.n_losses = int(state.get("n_images", 0)), int(state.get("n_losses", 0))

    def counts(self) -> dict[str, Tensor]:
        """Summed per-class TP/FP/FN/TN (int64, on the device; binary: the foreground class)."""
        if self._state is None:
            self._state = self._init_state(torch.device("cpu"))
        return {key: self._state[key].clone() for key in ("tp", "fp", "fn", "tn")}

    def compute(self) -> dict[str, float]:
        """All metrics as floats (one device-to-host copy)."""
        k = 1 if self.n_classes == 1 else self.n_classes
        if self._state is None:
            self._state = self._init_state(torch.device("cpu"))
        order = ("tp", "fp", "fn", "tn", "valid", "dice_image_sum", "loss_sum")
        flat = torch.cat([self._state[key].double().reshape(-1) for key in order]).cpu()
        tp, fp, fn = flat[:k], flat[k : 2 * k], flat[2 * k : 3 * k]
        valid, dice_image_sum, loss_sum = flat[4 * k], flat[4 * k + 1], flat[4 * k + 2]
        scores = _scores(tp, fp, fn)
        out: dict[str, float] = {}
        if self.n_classes == 1:
            out.update({key: float(value[0]) for key, value in scores.items()})
            labelled = max(float(tp[0] + fn[0]), 1.0)
            out["percent_tp"] = 100.0 * float(tp[0]) / labelled
            out["percent_fn"] = 100.0 * float(fn[0]) / labelled
            out["percent_fp"] = 100.0 * float(fp[0]) / labelled
        else:
            present = ((tp + fp + fn) > 0).double()
            for key in ("dice", "iou", "precision", "recall", "f1"):
                out[key] = float(_mean_present(scores[key], present))
            for i, name in enumerate(self.class_names):
                out[f"dice_{name}"] = float(scores["dice"][i])
                out[f"iou_{name}"] = float(scores["iou"][i])
            out["pixel_accuracy"] = float(tp.sum() / valid) if valid > 0 else 1.0
        out["dice_per_image"] = float(dice_image_sum) / self.n_images if self.n_images else 1.0
        if self.kaggle:
            out["dice_kaggle"] = out["dice_per_image"]
        if self.n_losses:
            out["loss"] = float(loss_sum) / self.n_losses
        return out
