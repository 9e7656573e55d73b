"""Seeded, deterministic splits of case ids into train/val/test."""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seg.errors import ConfigError

SPLITS = ("train", "val", "test")


RATIO_TOLERANCE = 1e-6


def check_ratios(ratios: Mapping[str, float]) -> dict[str, float]:
    """Ratios must name known splits, be >= 0 and sum to 1: `dataset.split.train=0.9` with the default
    val 0.1 and test 0.2 is a mistake to report, not something to rescale silently."""
    unknown = set(ratios) - set(SPLITS)
    if unknown:
        raise ConfigError(f"unknown split name(s) {sorted(unknown)}: expected keys among {list(SPLITS)}")
    values = {s: float(ratios.get(s, 0.0)) for s in SPLITS}
    if any(v < 0 for v in values.values()) or sum(values.values()) <= 0:
        raise ConfigError(f"split ratios must be >= 0 and not all zero, got {dict(values)}")
    total = sum(values.values())
    if abs(total - 1.0) > RATIO_TOLERANCE:
        shown = ", ".join(f"{s}: {float(ratios[s]):g}" for s in SPLITS if s in ratios)
        raise ConfigError(
            f"dataset.split ratios {{{shown}}} sum to {total:.6g}; they must sum to 1 "
            "(e.g. dataset.split.train=0.7 dataset.split.val=0.1 dataset.split.test=0.2)"
        )
    return values


def split_counts(n: int, ratios: Mapping[str, float]) -> dict[str, int]:
    """Turn ratios into counts that add up to n; a split with a positive ratio gets at least one case
    when there are enough cases, so a small dataset still has something to validate on."""
    values = check_ratios(ratios)
    total = sum(values.values())
    counts = {s: int(round(n * values[s] / total)) for s in ("val", "test")}
    positive = [s for s in SPLITS if values[s] > 0]
    if n >= len(positive):
        for s in ("val", "test"):
            if values[s] > 0 and counts[s] == 0:
                counts[s] = 1
    counts["train"] = n - counts["val"] - counts["test"]
    if counts["train"] < 0 or (values["train"] > 0 and counts["train"] == 0 and n > 0):
        raise ConfigError(f"{n} case(s) are too few for split ratios {dict(values)}")
    return counts


def seeded_split(ids: Sequence[str], ratios: Mapping[str, float], seed: int) -> dict[str, list[str]]:
    """Shuffle the sorted ids with `seed` and cut them by `ratios`: the same ids and seed always give
    the same split, whatever order the files were listed in."""
    ordered = sorted(ids)
    counts = split_counts(len(ordered), ratios)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    shuffled = [ordered[i] for i in perm]
    n_train, n_val = counts["train"], counts["val"]
    return {
        "train": sorted(shuffled[:n_train]),
        "val": sorted(shuffled[n_train : n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val :]),
    }


def write_split(path: str | Path, split: Mapping[str, Sequence[str]]) -> None:
    Path(path).write_text(json.dumps({k: list(v) for k, v in split.items()}, indent=1))


# A separate random stream for the folds, so fold 0's val is not simply the seeded split's val.
FOLD_STREAM = 1


def check_folds(folds: Any, fold: Any) -> tuple[int | None, int]:
    """`dataset.folds` (K) and `dataset.fold` (k) checked at construction, before any decoding."""
    if folds is None:
        if fold not in (None, 0):
            raise ConfigError(f"dataset.fold={fold!r} needs dataset.folds=K (null keeps the plain seeded split)")
        return None, 0
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"dataset.folds={folds!r}: expected an integer >= 2 (or null for no folds)")
    fold = 0 if fold is None else fold
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise ConfigError(f"dataset.fold={fold!r}: expected an integer with 0 <= fold < folds={folds}")
    return folds, fold


def refuse_folds(folds: int | None, why: str) -> None:
    """One line for a reader (or layout) whose train/val split is fixed rather than seeded."""
    if folds is not None:
        raise ConfigError(f"dataset.folds={folds} is not available here: {why}; set dataset.folds=null")


def fold_split(
    ids: Sequence[str],
    test_ids: Sequence[str],
    folds: int,
    fold: int,
    seed: int,
    strata: Mapping[str, Hashable] | None = None,
) -> dict[str, list[str]]:
    """Fold `fold` of `folds` over the ids not in `test_ids` (the test split is left untouched): those
    are shuffled with `seed` (per stratum when `strata` maps id -> label, e.g. mask empty or not) and
    dealt round-robin, so fold sizes differ by at most one overall and per stratum. Depends only on the
    pool of ids, the seed and K, not on list order."""
    test = set(test_ids)
    pool = sorted({i for i in ids if i not in test})
    if len(pool) < folds:
        raise ConfigError(f"dataset.folds={folds}: only {len(pool)} train+val case(s), so a fold would be empty")
    rng = np.random.default_rng([int(seed), FOLD_STREAM])
    groups: dict[Hashable, list[str]] = {}
    for case in pool:
        groups.setdefault(strata.get(case) if strata else None, []).append(case)
    dealt: list[str] = []
    for label in sorted(groups, key=repr):  # a fixed order of strata, whatever their labels
        members = groups[label]
        dealt.extend(members[i] for i in rng.permutation(len(members)))
    val = {case for position, case in enumerate(dealt) if position % folds == fold}
    return {"train": [c for c in pool if c not in val], "val": sorted(val), "test": sorted(test)}
