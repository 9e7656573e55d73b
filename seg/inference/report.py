"""What seg-eval measures per batch beyond the pooled metrics, and how it reports them: the masks
(post-processed when a .postprocess.json applies), per-image and per-class values, surface distances
(surface=true), image-level detection, calibration; then metrics.json, per_image.csv,
reliability.png and the printed class x metric table are written by seg.inference.tables.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from seg.calibration import Calibration
from seg.constants import IGNORE_INDEX
from seg.detection import detection_report
from seg.errors import ConfigError
from seg.inference.postprocess import (
    Settings,
    apply,
    check_writable,
    load_postprocess,
    postprocess_path,
    save_postprocess,
)
from seg.inference.tune import TuneData, check_tuning, details, resolve_objective, search
from seg.metrics import SegMetrics, per_image_prediction_stats, prediction
from seg.surface import Surface, class_surfaces, split_spacing, summarise

log = logging.getLogger("seg")

SCORES = ("dice", "iou", "precision", "recall")


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """[B,K,H,W]: sigmoid for one logit, softmax for several (as seg.inference.core)."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


class Collector:
    """`on_batch` of seg.engine.loop.evaluate: one row per image, the post-processed masks' metrics,
    calibration, surface distances and what tuning needs, all from the pass that scores the split."""

    def __init__(self, cfg: DictConfig, data: Any, dataset: Any, settings: Settings | None,
                 objective: tuple[str, str] | None) -> None:
        self.n_classes, self.class_names = int(data.n_classes), [str(c) for c in data.class_names]
        self.kaggle = bool(getattr(data, "kaggle_metric", False))
        self.ids = list(getattr(dataset, "ids", range(len(dataset))))
        self.settings, self.objective = settings, objective
        self.metrics = SegMetrics(self.n_classes, class_names=self.class_names, kaggle=self.kaggle)
        self.calibration = Calibration()
        self.tune_data = TuneData() if objective is not None else None
        self.surface, self.tolerance = bool(cfg.surface), float(cfg.surface_tolerance)
        # A reader that knows its pixel spacing (mm, of the images as served) exposes pixel_spacing(index).
        spacing_of = getattr(dataset, "pixel_spacing", None) if self.surface else None
        self.spacing = split_spacing(spacing_of if callable(spacing_of) else None, len(dataset))
        self.unit = self.spacing.unit
        if 0 < self.spacing.n_spaced < self.spacing.n_images:
            log.warning("surface distances in px for all %d images: only %d have a pixel spacing (mm and px "
                        "do not average)", self.spacing.n_images, self.spacing.n_spaced)
        # Every class of a multi-class set: which id is background differs (Pets' trimap: 1)
        self.classes = [1] if self.n_classes == 1 else list(range(self.n_classes))
        self.rows: list[dict[str, Any]] = []

    def surface_names(self) -> list[str]:
        return [self.class_names[c] for c in self.classes] if self.n_classes > 1 else self.class_names

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any], logits: torch.Tensor, mask: torch.Tensor) -> None:
        probs = probabilities(logits)
        if self.settings is not None:  # the masks the model ships with: scored as such
            # Pixel counts were tuned at one size: scaled to this batch's (as seg-predict does).
            masks = [apply(p, self.settings.scaled(tuple(p.shape[-2:]))) for p in probs.cpu()]
            pred = torch.from_numpy(np.stack(masks)).to(mask.device).long()
            self.metrics.update_prediction(pred, mask)
        else:
            pred = prediction(logits)
        self.calibration.update(probs, mask)
        if self.tune_data is not None:
            self.tune_data.add(probs, mask)
        stats = {k: v.cpu() for k, v in per_image_prediction_stats(pred, mask, self.n_classes).items()}
        max_prob = (probs[:, 0] * (mask != IGNORE_INDEX)).amax(dim=(1, 2)).cpu() if self.n_classes == 1 else None
        pred_host, mask_host = (pred.cpu().numpy(), mask.cpu().numpy()) if self.surface else (None, None)
        for j, index in enumerate(batch["index"].tolist()):
            row: dict[str, Any] = {"id": self.ids[index], "index": index, **{k: float(stats[k][j]) for k in SCORES}}
            row["class"] = {name: {**{k: float(stats[f"class_{k}"][j, c]) for k in SCORES},
                                   "present": bool(stats["present"][j, c])} for c, name in enumerate(self.class_names)}
            if max_prob is not None:
                row.update(pred_pixels=int(stats["n_pred"][j, 0]), true_pixels=int(stats["n_target"][j, 0]),
                           max_prob=float(max_prob[j]))
            if pred_host is not None:
                row["surface"] = self._surfaces(pred_host[j], mask_host[j], index)
            self.rows.append(row)

    def _surfaces(self, pred: np.ndarray, mask: np.ndarray, index: int) -> dict[str, Surface]:
        spacing = self.spacing.of(index)
        valid = mask != IGNORE_INDEX
        truth = (mask != 0).astype(np.int64) if self.n_classes == 1 else mask
        values = class_surfaces(pred, truth, self.classes, valid, spacing, self.tolerance)
        return dict(zip(self.surface_names(), values))

    def values(self, raw: dict[str, float]) -> dict[str, float]:
        """The pooled metrics of the masks as shipped: post-processed ones' when settings apply (the
        loss is the model's either way), else the pass's own."""
        if self.settings is None:
            return raw
        values = self.metrics.compute()
        return {**values, **({"loss": raw["loss"]} if "loss" in raw else {})}


def prepare(cfg: DictConfig, path: Path, digest: str, data: Any, dataset: Any, trainer: Any) -> Collector:
    """Before the pass: tuning's refusals (wrong split, multi-class, a .postprocess.json seg did not
    write for this checkpoint, an unknown objective) and the settings that apply, if any."""
    objective = None
    if not float(cfg.surface_tolerance) >= 0:
        raise ConfigError(f"surface_tolerance must be >= 0 (mm where the data has a spacing, else px), got "
                          f"{cfg.surface_tolerance}")
    if cfg.tune:
        check_tuning(cfg.split, int(data.n_classes))
        check_writable(path, digest)
        objective = resolve_objective(cfg.tune_objective, trainer, bool(getattr(data, "kaggle_metric", False)))
    # Tuning starts from the raw probabilities, whatever an earlier tuning left.
    settings = None if cfg.tune or not cfg.postprocess else load_postprocess(path, digest)
    if settings is not None:
        log.info("post-processing from %s: %s", postprocess_path(path), settings.describe())
    return Collector(cfg, data, dataset, settings, objective)


def finish_tuning(collector: Collector, path: Path, digest: str) -> dict[str, Any] | None:
    """Search, write the settings beside the checkpoint, and say what changed."""
    if collector.tune_data is None or collector.objective is None:
        return None
    key, mode = collector.objective
    result = search(collector.tune_data, key, mode, collector.kaggle)
    record = details(result, key, mode, len(collector.tune_data.probs))
    written = save_postprocess(path, digest, result.settings, record)
    log.info("tuned on val (%d candidates): %s; val/%s %.4f -> %.4f; wrote %s", result.n_candidates,
             result.settings.describe(), key, result.before, result.after, written)
    return {"file": str(written), "settings": result.settings.describe(), **record}


def summary(collector: Collector, raw: dict[str, float], tuning: dict[str, Any] | None) -> dict[str, Any]:
    """The new sections of metrics.json."""
    rows = collector.rows
    out: dict[str, Any] = {
        "postprocess": None if collector.settings is None else collector.settings.describe(),
        "mean_includes_background": collector.n_classes > 1,
        "per_class": per_class(rows, collector.class_names),
        "calibration": {**collector.calibration.compute(), "file": "reliability.png",
                        "confidence": "foreground probability" if collector.n_classes == 1
                        else "max class probability"},
    }
    if collector.settings is not None:
        out["raw"] = raw  # the same model without post-processing, for comparison
    if collector.n_classes == 1:
        out["detection"] = detection_report([r["true_pixels"] > 0 for r in rows], [r["pred_pixels"] for r in rows],
                                            [r["max_prob"] for r in rows])
    if collector.surface:
        out["surface"] = {"distance_unit": collector.unit, "tolerance": collector.tolerance,
                          "classes": {name: summarise([r["surface"][name] for r in rows])
                                      for name in collector.surface_names()},
                          "rules": EMPTY_RULES}
    if tuning is not None:
        out["tuning"] = tuning
    return out


EMPTY_RULES = ("both prediction and truth empty: no value, left out of hd95/assd/surface_dice and counted as "
               "n_both_empty; only one empty: hd95 = assd = inf, left out of their means and counted as n_one_empty, "
               "surface_dice = 0 and averaged in")


def per_class(rows: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per class: mean, std and median over the images where the class is in the truth or the
    prediction (an image with neither says nothing about it), with that count."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        scored = [r["class"][name] for r in rows if r["class"][name]["present"]]
        out[name] = {"n_images": len(scored), "n_both_empty": len(rows) - len(scored)}
        for key in SCORES:
            values = np.array([s[key] for s in scored], dtype=np.float64)
            out[name][key] = _stats(values)
    return out


def _stats(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"mean": None, "std": None, "median": None}
    return {"mean": float(values.mean()), "std": float(values.std()), "median": float(np.median(values))}


def finite(value: Any) -> Any:
    """JSON without NaN/Infinity (not JSON): non-finite floats become null."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
