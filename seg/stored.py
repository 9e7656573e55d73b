"""A stored config must be complete: a key that seg's own config for the same class sets, missing
from a checkpoint's config, is an error naming it, never the constructor's silent default (a stored
dataset without `image_size` was evaluated at the reader's 64 px).

"What the config sets" comes from the config groups, the one registry of choices: every option file
in configs/<group>/ whose `_target_` is the stored node's sets these keys.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from seg.errors import CheckpointError

NODES = ("dataset", "model", "loss", "augmentation", "optimizer", "scheduler")


def config_dir() -> Path:
    """Installed wheel: seg/configs; source checkout or editable install: <repo>/configs."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "configs", package.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise SystemExit(f"seg: cannot find the configs folder next to {package}; reinstall seg")


@functools.cache
def keys_set_for(group: str, target: str) -> frozenset[str]:
    """The keys every option of `group` that builds `target` sets (empty when none does)."""
    sets = []
    for path in sorted((config_dir() / group).glob("*.yaml")):
        node = yaml.safe_load(path.read_text()) or {}
        if isinstance(node, dict) and node.get("_target_") == target:
            sets.append({str(k) for k in node if k != "defaults"})
    return frozenset(set.intersection(*sets)) if sets else frozenset()


# Keys the configs gained after checkpoints had been written without them, and the value that does what
# seg did before the key existed. Each is its constructor's default (tests/test_stored.py checks), so
# a stored config that lacks one still means what it meant: it is not refused as incomplete.
ADDED_LATER: dict[str, Any] = {
    "dataset.folds": None,  # no cross-validation: the seeded train/val/test split
    "dataset.fold": 0,
    "scheduler.warmup_epochs": 0,  # poly had no warm-up (cosine always had the key)
    "scheduler.warmup_start_factor": None,  # the evenly spaced ramp cosine always used
    "model.unfreeze_after": None,  # a frozen MobileNetV2 encoder stayed frozen
}


def missing_keys(stored: Mapping[str, Any], nodes: Iterable[str] = NODES) -> list[str]:
    """Dotted keys (dataset.image_size) that the stored config lacks, except the ADDED_LATER ones."""
    missing = []
    for name in nodes:
        node = stored.get(name)
        if isinstance(node, Mapping) and isinstance(node.get("_target_"), str):
            lacks = (f"{name}.{k}" for k in sorted(keys_set_for(name, node["_target_"]) - set(node)))
            missing += [key for key in lacks if key not in ADDED_LATER]
    return missing


def require_complete(stored: Mapping[str, Any], path: str | Path, nodes: Iterable[str] = NODES) -> None:
    missing = missing_keys(stored, nodes)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(
            f"{path}: its stored config lacks {shown}, which seg's config for that class always sets; the "
            "checkpoint is damaged or was not written by this seg. Use the checkpoint seg-train wrote."
        )
