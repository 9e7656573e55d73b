"""Which callables a config may name in `_target_`, checked before anything is instantiated.

`hydra.utils.instantiate` calls whatever a `_target_` names, and chains of harmless-looking callables
(builtins.open, torch.load, seg's own file writers) are enough to run code or write files. So seg builds
only the exact names its config groups use (`SEG_TARGETS`), plus the user's own ones from this command:
the `allowed_targets=[...]` config key or the SEG_ALLOWED_TARGETS environment variable.

A checkpoint is data. Its stored config never extends the list (a stored `allowed_targets` is dropped),
and it may hold no interpolation or resolver (`${...}`) and nothing but plain values.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from seg.errors import CheckpointError, ConfigError

ENV_VAR = "SEG_ALLOWED_TARGETS"
CONFIG_KEY = "allowed_targets"
TARGET = "_target_"

# Every `_target_` of configs/ (tests/test_allowlist.py checks the two agree). Exact names only: a
# prefix such as "seg." would also admit seg's own writers (checkpoints, splits, PNGs).
SEG_TARGETS = frozenset({
    # dataset
    "seg.data.folder.FolderData", "seg.data.isbi.ISBI2012Data", "seg.data.luna.Luna16Data",
    "seg.data.pets.PetsData", "seg.data.ph2.PH2Data", "seg.data.siim.SIIMData", "seg.data.synthetic.SyntheticData",
    # model
    "seg.models.MobileNetUNet", "seg.models.SegNet", "seg.models.UNet", "seg.models.UNetWrapper",
    # loss
    "seg.losses.BCELoss", "seg.losses.CELoss", "seg.losses.DiceBCELoss", "seg.losses.DiceCELoss",
    "seg.losses.DiceLoss", "seg.losses.DiceRecallLoss", "seg.losses.WeightedBCELoss",
    # augmentation
    "seg.augment.Augment",
    # optimizer
    "torch.optim.Adam", "torch.optim.AdamW", "torch.optim.RMSprop", "torch.optim.SGD",
    # scheduler
    "seg.engine.schedulers.cosine", "seg.engine.schedulers.plateau", "seg.engine.schedulers.poly",
    # logger
    "seg.logger.tensorboard.TensorBoardLogger", "seg.logger.mlflow_logger.MLflowLogger",
})  # fmt: skip

HINT = "to use your own class, add it to allowed_targets=[...] or SEG_ALLOWED_TARGETS (comma-separated)"


def user_targets(extra: Iterable[str] | None = ()) -> frozenset[str]:
    """The user's own names: `extra` (this command's allowed_targets) and SEG_ALLOWED_TARGETS."""
    names = [n.strip() for n in os.environ.get(ENV_VAR, "").split(",")]
    names += [str(n).strip() for n in extra or ()]
    return frozenset(n for n in names if n)


def allowed(extra: Iterable[str] | None = ()) -> frozenset[str]:
    return SEG_TARGETS | user_targets(extra)


def config_targets(node: Any) -> list[str]:
    """`allowed_targets` of the command config that `node` sits in (a group node such as cfg.model).
    Stored configs reach here with theirs replaced by the command's (safe_stored_config)."""
    if not isinstance(node, (DictConfig, ListConfig)):
        return []
    root = node._get_root()
    if root is node or not isinstance(root, DictConfig) or CONFIG_KEY not in root:
        return []  # a loose node's own `allowed_targets` would only be a keyword for its target
    value = root.get(CONFIG_KEY)
    return [str(v) for v in value] if isinstance(value, (ListConfig, list)) else []


def _shown(value: Any) -> str:
    """A value fit for a one-line message (a crafted one may hold newlines or be huge)."""
    text = value if isinstance(value, str) and value.isprintable() and value == value.strip() else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _child(path: str, key: Any) -> str:
    return f"{path}.{_shown(key)}" if path else _shown(key)


def walk(node: Any, where: str) -> Iterator[tuple[str, Any, Any]]:
    """(key path, key, value) of every entry of a config, nested dicts and lists included; OmegaConf
    nodes are resolved first, as instantiate resolves them. Iterative: a deep crafted nesting cannot
    overflow the stack."""
    stack: list[tuple[str, Any, Any]] = [(where, None, node)]
    while stack:
        path, key, value = stack.pop()
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True, throw_on_missing=False)
        if key is not None:
            yield path, key, value
        if isinstance(value, Mapping):
            stack += [(_child(path, k), k, v) for k, v in reversed(list(value.items()))]
        elif isinstance(value, (list, tuple)):
            stack += [(f"{path}[{i}]", i, v) for i, v in reversed(list(enumerate(value)))]


def check_targets(node: Any, where: str, extra: Iterable[str] | None = ()) -> None:
    """Refuse any `_target_` in `node` (nested nodes, `_args_` and list values included) that is not a
    plain string on the allowlist. `where`: the node's key in the config, e.g. "model"."""
    names = allowed(extra)
    for path, key, value in walk(node, where):
        if key != TARGET:
            continue
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a dotted name (a string), got {type(value).__name__}; {HINT}")
        if value not in names:
            raise ConfigError(f"{path}={_shown(value)} is not a callable seg builds (its datasets, models, losses, "
                              f"augmentation, schedulers and torch.optim optimizers); {HINT}")


PLAIN_LEAVES = (str, int, float, bool, type(None))
NODES = ("trainer", "dataset", "model", "loss", "augmentation", "optimizer", "scheduler")
FLAGS = ("_recursive_", "_partial_")  # Hydra's instantiate flags: booleans only
MAX_DEPTH = 32  # OmegaConf.create recurses: a crafted 150-level nesting would end in a RecursionError


def safe_stored_config(ckpt: Mapping[str, Any], path: str | Path, allowed_targets: Iterable[str] | None = ()
                       ) -> dict[str, Any]:
    """The training config stored in a checkpoint, checked as data before OmegaConf or Hydra see it:
    plain values only, no `${...}` (OmegaConf would resolve it, e.g. ${oc.env:...} copies environment
    variables), and every `_target_` allowed. Its own `allowed_targets` is replaced by this command's
    (`allowed_targets`), which the nodes built from it then use."""
    config = ckpt.get("config") if isinstance(ckpt, Mapping) else None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} carries no training config; was it written by seg-train?")
    config = {k: v for k, v in config.items() if k != CONFIG_KEY}
    for node in NODES:  # each a mapping (or absent): a crafted string or list would crash later
        if node in config and not (isinstance(config[node], dict) or (node == "scheduler" and config[node] is None)):
            raise CheckpointError(f"{path}: its stored config key {node} holds a {type(config[node]).__name__}, "
                                  "expected a mapping of settings; the checkpoint is damaged or was not written by seg")
    names = allowed(allowed_targets)
    for key_path, key, value in walk(config, ""):
        where = f"{path}: its stored config key {key_path}"
        if not isinstance(key, PLAIN_LEAVES) or key is None:
            raise CheckpointError(f"{where} has a key of type {type(key).__name__}; a seg checkpoint holds plain "
                                  "values only")
        if key_path.count(".") + key_path.count("[") > MAX_DEPTH:
            raise CheckpointError(f"{path}: its stored config nests deeper than {MAX_DEPTH} levels at {key_path[:80]}; "
                                  "a seg config is a few levels deep")
        if key in FLAGS and not isinstance(value, bool):
            raise CheckpointError(f"{where}={_shown(value)} must be true or false")
        if key == TARGET:
            if not isinstance(value, str) or value not in names:
                raise CheckpointError(f"{where}={_shown(value)} is not a callable seg builds, and a checkpoint cannot "
                                      f"add one; {HINT}")
        elif isinstance(value, str) and "${" in value:
            raise CheckpointError(f"{where}={_shown(value)} is an interpolation or resolver; a checkpoint's config "
                                  "is data and is never resolved (seg-train stores resolved values)")
        elif not isinstance(value, (*PLAIN_LEAVES, dict, list, tuple)):
            raise CheckpointError(f"{where} holds a {type(value).__name__}; a seg checkpoint's config holds plain "
                                  "values only (strings, numbers, lists, dicts)")
    return {**config, CONFIG_KEY: [str(n) for n in allowed_targets or ()]}
