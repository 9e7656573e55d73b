"""Image-level detection: does this image hold the finding? For sets with empty masks (SIIM's images
without pneumothorax, LUNA16 slices without nodules).

An image is positive when its truth has a foreground pixel; the model's call is "the predicted mask
is not empty", and its scores for ranking are the predicted mask's area and its maximum foreground
probability. AUROC is rank-based (Mann-Whitney U, tied scores share their mean rank, i.e. count 1/2);
average precision is step-wise, sum over thresholds of (recall gain) x precision, one threshold per
distinct score (as scikit-learn's `average_precision_score`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of `scores`, ties given the mean of the ranks they span."""
    order = np.argsort(scores, kind="mergesort")
    _, inverse, counts = np.unique(scores[order], return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last member of each group of equal scores
    mean_rank = last - (counts - 1) / 2.0
    ranks = np.empty(scores.size, dtype=np.float64)
    ranks[order] = mean_rank[inverse]
    return ranks


def auroc(positive: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative
    (ties count 1/2). NaN unless both classes occur."""
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _ranks(scores)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(positive: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Step-wise AP: sum_k (R_k - R_{k-1}) P_k over the distinct scores, high to low. NaN without positives."""
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    ranked_scores, ranked = scores[order], positive[order]
    # one threshold per distinct score: the last index of each run of equal scores
    last = np.r_[np.flatnonzero(np.diff(ranked_scores) != 0), ranked.size - 1]
    tp = np.cumsum(ranked)[last]
    precision = tp / (last + 1.0)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def detection_report(positive: Sequence[bool] | np.ndarray, predicted_area: Sequence[float] | np.ndarray,
                     max_prob: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """Sensitivity and specificity of "the predicted mask is not empty", AUROC and AP of both scores;
    only where the split holds positive and empty images (otherwise `skipped` says why)."""
    positive = np.asarray(positive, dtype=bool)
    area = np.asarray(predicted_area, dtype=np.float64)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return {"skipped": f"the split holds {n_pos} image(s) with the finding and {n_neg} without; detection "
                           "needs both", "n_positive": n_pos, "n_empty": n_neg}
    called = area > 0
    return {
        "n_positive": n_pos, "n_empty": n_neg,
        "sensitivity": float((called & positive).sum() / n_pos),
        "specificity": float((~called & ~positive).sum() / n_neg),
        "auroc_area": auroc(positive, area), "ap_area": average_precision(positive, area),
        "auroc_max_prob": auroc(positive, max_prob), "ap_max_prob": average_precision(positive, max_prob),
        "call": "the predicted mask is not empty", "scores": "predicted area (pixels); maximum foreground probability",
    }
