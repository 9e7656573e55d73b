"""seg-eval split=val tune=true: search post-processing (seg.inference.postprocess) on the validation
split and store the best settings beside the checkpoint.

The probabilities are collected once, during the evaluation pass, as uint8 (1/255 steps: one byte
per pixel, plus one byte of truth; refused past TUNE_MAX_BYTES). For each candidate threshold every
image's connected components are labelled once, and each component's area, scored pixels and true
positives are kept; min-size and keep-largest only choose components, and the empty rule only zeroes
images, so every candidate is scored from per-image counts, through SegMetrics' own rules, without
labelling again. Binary models only: a multi-class model is refused in one line (its masks are
the argmax, with no post-processing).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from seg.constants import IGNORE_INDEX
from seg.errors import ConfigError
from seg.inference.postprocess import EIGHT, Settings
from seg.metrics import SegMetrics

TUNE_MAX_BYTES = 4 << 30  # 2 bytes per validation pixel: ~8000 images of 512x512
THRESHOLDS = tuple(round(0.30 + 0.05 * i, 2) for i in range(9))  # 0.30 .. 0.70
EMPTY_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
AREA_QUANTILES = (0.1, 0.25, 0.5, 0.75)  # of the component areas at 0.5: candidate min sizes
COUNT_QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75)  # of the per-image counts above an empty threshold
MINIMISED = ("loss", "percent_fn", "percent_fp")


def check_tuning(split: str, n_classes: int) -> None:
    """Refuse, before the evaluation pass, what tuning cannot do."""
    if split == "test":
        raise ConfigError("tune=true on split=test would choose the post-processing on the data that is meant to "
                          "judge it; tune on split=val, then evaluate split=test")
    if split != "val":
        raise ConfigError(f"tune=true searches on the validation split; got split={split}, use split=val")
    if n_classes != 1:
        raise ConfigError(f"tune=true tunes binary models only; this one has {n_classes} classes and its masks are "
                          "the argmax, with no post-processing")


def resolve_objective(objective: str | None, trainer: Any, kaggle: bool) -> tuple[str, str]:
    """(metric key, "max"/"min"): `tune_objective`, else the training's `trainer.monitor`."""
    monitor = str(trainer.get("monitor", "val/dice"))
    name = str(objective or monitor)
    key = name.split("/", 1)[1] if name.startswith("val/") else name
    available = SegMetrics(1, kaggle=kaggle).compute().keys()
    if key == "loss":
        raise ConfigError(f"the objective {name} does not depend on post-processing; name a thresholded metric, "
                          "e.g. tune_objective=val/dice")
    if key not in available:
        raise ConfigError(f"tune_objective={name} is not a metric of this model; choose one of "
                          f"{', '.join('val/' + k for k in available)}")
    if name == monitor:
        mode = str(getattr(trainer.get("monitor_mode", "max"), "value", trainer.get("monitor_mode", "max")))
    else:
        mode = "min" if key in MINIMISED else "max"
    return key, mode


@dataclass
class TuneData:
    """The validation split's foreground probabilities (uint8, round(255 p)) and truths (0, 1, 255 not scored)."""

    probs: list[np.ndarray] = field(default_factory=list)
    truth: list[np.ndarray] = field(default_factory=list)
    nbytes: int = 0
    max_bytes: int = TUNE_MAX_BYTES

    @torch.no_grad()
    def add(self, probs: torch.Tensor, mask: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> None:
        """probs [B,1,H,W] foreground probabilities, mask [B,H,W] class ids."""
        self.nbytes += 2 * probs[:, 0].numel()
        if self.nbytes > self.max_bytes:
            raise ConfigError(f"tune=true keeps the validation probabilities in memory and this split needs more than "
                              f"{self.max_bytes >> 20} MiB; tune on a smaller image_size or fewer validation images")
        quantised = (probs[:, 0].float() * 255).round().to(torch.uint8).cpu().numpy()
        truth = torch.where(mask == ignore_index, 255, (mask != 0).long()).to(torch.uint8).cpu().numpy()
        self.probs.extend(quantised)
        self.truth.extend(truth)


@dataclass
class Components:
    """Every image's components at one threshold, concatenated: owning image, area, scored pixels,
    true positives, and whether it is its image's largest."""

    image: np.ndarray
    area: np.ndarray
    scored: np.ndarray
    tp: np.ndarray
    largest: np.ndarray


def _image_components(q: np.ndarray, truth: np.ndarray, bound: int) -> tuple[np.ndarray, ...]:
    fg = q > bound
    labels, n = ndimage.label(fg, structure=EIGHT)
    owner, seen = labels[fg], truth[fg]  # foreground pixels only: the counts below need no weights
    area = np.bincount(owner, minlength=n + 1)[1:]
    scored = np.bincount(owner[seen != 255], minlength=n + 1)[1:]
    tp = np.bincount(owner[seen == 1], minlength=n + 1)[1:]
    largest = np.zeros(n, dtype=bool)
    if n:
        largest[int(np.argmax(area))] = True  # the first among equals, as postprocess.keep_components
    return area, scored, tp, largest


def level(threshold: float) -> int:
    """q > level(t) <=> q / 255 > t for q = round(255 p): p > t to within 1/510 (an integer bound, so
    that a threshold on the 1/255 grid, 0.4 = 102/255, compares as `apply` does)."""
    return int(np.floor(255.0 * threshold + 1e-9))


def components(data: TuneData, threshold: float) -> Components:
    parts = [_image_components(q, t, level(threshold)) for q, t in zip(data.probs, data.truth)]
    image = np.concatenate([np.full(len(p[0]), i) for i, p in enumerate(parts)]) if parts else np.zeros(0, int)
    cat = [np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in range(4)]
    return Components(image.astype(np.int64), cat[0], cat[1], cat[2], cat[3].astype(bool))


def candidate_min_sizes(areas: np.ndarray) -> list[int]:
    if areas.size == 0:
        return [0]
    return [0, *sorted({int(np.quantile(areas, q)) + 1 for q in AREA_QUANTILES} - {0, 1})]


def candidate_empty_rules(data: TuneData, has_both: bool) -> list[tuple[float, int, np.ndarray]]:
    """(threshold, min pixels, per-image "kept" flags); only for splits with empty and non-empty images."""
    if not has_both:
        return []
    rules = []
    for high in EMPTY_THRESHOLDS:
        counts = np.array([int((q > level(high)).sum()) for q in data.probs])
        positive = counts[counts > 0]
        if positive.size:
            for n in sorted({max(1, int(np.quantile(positive, q))) for q in COUNT_QUANTILES}):
                rules.append((high, n, counts >= n))
    return rules


@dataclass
class TuneResult:
    settings: Settings
    before: float
    after: float
    n_candidates: int
    searched: dict[str, Any]


class _Scorer:
    """One metric of per-image counts, by SegMetrics' rules."""

    def __init__(self, data: TuneData, key: str, kaggle: bool) -> None:
        self.key, self.kaggle = key, kaggle
        self.target = torch.tensor([int((t == 1).sum()) for t in data.truth], dtype=torch.int64)
        self.valid = torch.tensor([int((t != 255).sum()) for t in data.truth], dtype=torch.int64)

    def __call__(self, tp: np.ndarray, pred: np.ndarray) -> float:
        metrics = SegMetrics(1, kaggle=self.kaggle)
        as_counts = lambda a: torch.from_numpy(a.round().astype(np.int64))[:, None]  # noqa: E731
        metrics.update_counts(as_counts(tp), as_counts(pred), self.target[:, None], self.valid)
        return metrics.compute()[self.key]


def search(data: TuneData, key: str, mode: str, kaggle: bool = False) -> TuneResult:
    """The best candidate by `key` ("max"/"min" by `mode`); the defaults (0.5, nothing else) are the
    first candidate and stay unless another is strictly better, so after >= before always."""
    n = len(data.probs)
    score = _Scorer(data, key, kaggle)
    better = (lambda a, b: a > b + 1e-12) if mode == "max" else (lambda a, b: a < b - 1e-12)
    has_both = bool((score.target > 0).any() and (score.target == 0).any())
    rules = candidate_empty_rules(data, has_both)
    sizes = candidate_min_sizes(components(data, 0.5).area)
    thresholds = sorted(THRESHOLDS, key=lambda t: t != 0.5)  # the default first
    best, before, count = Settings(), float("nan"), 0
    best_score = float("nan")
    for threshold in thresholds:
        comps = components(data, threshold)
        for min_size, largest in itertools.product(sizes, (False, True)):
            kept = (comps.area >= min_size) & (comps.largest if largest else True)
            tp = np.bincount(comps.image[kept], weights=comps.tp[kept], minlength=n)
            pred = np.bincount(comps.image[kept], weights=comps.scored[kept], minlength=n)
            for rule in [None, *(r for r in rules if r[0] > threshold)]:
                on = np.ones(n) if rule is None else rule[2]
                value = score(tp * on, pred * on)
                count += 1
                if count == 1:
                    before = best_score = value
                elif better(value, best_score):
                    best_score = value
                    best = Settings(threshold, min_size, largest, None if rule is None else rule[0],
                                    0 if rule is None else rule[1])
    shapes = {q.shape for q in data.probs}
    best = replace(best, pixels_at=next(iter(shapes)) if len(shapes) == 1 else None)
    searched = {"thresholds": list(THRESHOLDS), "min_sizes": sizes, "keep_largest": [False, True],
                "empty_rules": sorted({(r[0], r[1]) for r in rules}), "n_candidates": count}
    return TuneResult(best, before, best_score, count, searched)


def details(result: TuneResult, key: str, mode: str, n_images: int, split: str = "val") -> dict[str, Any]:
    """What the .postprocess.json records beside the settings."""
    return {"objective": f"val/{key}", "mode": mode, "split": split, "n_images": n_images,
            "score_before": result.before, "score_after": result.after, "searched": result.searched,
            "scored_on": "validation probabilities rounded to 1/255 (before: threshold 0.5, no post-processing)"}
