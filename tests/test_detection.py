"""Image-level detection: rank-based AUROC and step-wise AP against hand-computed values and a
brute-force count of pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seg.detection import auroc, average_precision, detection_report


def test_auroc_by_hand() -> None:
    # positives 0.9, 0.8, 0.4; negatives 0.7, 0.3: 5 of the 6 pairs are ordered right
    assert auroc([1, 1, 1, 0, 0], [0.9, 0.8, 0.4, 0.7, 0.3]) == pytest.approx(5 / 6)
    # ties count 1/2: (0.5, 0.5) half, the other three pairs right
    assert auroc([1, 1, 0, 0], [0.5, 0.9, 0.5, 0.1]) == pytest.approx(3.5 / 4)
    assert auroc([1, 0], [0.2, 0.2]) == 0.5
    assert auroc([1, 0], [0.1, 0.9]) == 0.0
    assert math.isnan(auroc([1, 1], [0.1, 0.2]))


def test_auroc_matches_a_count_of_pairs() -> None:
    rng = np.random.default_rng(0)
    positive = rng.random(60) < 0.4
    scores = rng.integers(0, 8, size=60).astype(float)  # many ties
    pos, neg = scores[positive], scores[~positive]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auroc(positive, scores) == pytest.approx(pairs / (pos.size * neg.size))


def test_average_precision_by_hand() -> None:
    # ranked P N P N: precision 1 at recall 1/2, 2/3 at recall 1
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # a tie is one threshold: {P, N} at 0.5 gives precision 1/2 at recall 1/2, then 2/3 at recall 1
    assert average_precision([1, 0, 1], [0.5, 0.5, 0.2]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))


def test_average_precision_matches_its_definition() -> None:
    rng = np.random.default_rng(1)
    positive = rng.random(40) < 0.3
    scores = rng.integers(0, 10, size=40).astype(float)
    total, previous = 0.0, 0.0
    for t in np.unique(scores)[::-1]:  # every distinct score as a threshold, high to low
        called = scores >= t
        recall = (called & positive).sum() / positive.sum()
        total += (recall - previous) * (called & positive).sum() / called.sum()
        previous = recall
    assert average_precision(positive, scores) == pytest.approx(total)


def test_report_needs_both_kinds_of_images() -> None:
    report = detection_report([True, True, False, False], [120, 0, 30, 0], [0.9, 0.4, 0.7, 0.2])
    assert report["sensitivity"] == 0.5 and report["specificity"] == 0.5
    assert report["auroc_max_prob"] == pytest.approx(0.75) and report["n_positive"] == 2
    skipped = detection_report([True, True], [1, 2], [0.5, 0.6])
    assert "skipped" in skipped and "sensitivity" not in skipped and skipped["n_empty"] == 0
