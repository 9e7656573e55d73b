"""Seeded, deterministic splits of case ids into train/val/test."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

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
