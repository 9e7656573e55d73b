"""What `seg-train resume=...` continues: the run's own config, stored in its checkpoint.

A resumed run keeps the settings it was started with; the command line only changes the keys it
names (`trainer.epochs=40` to train longer, `dataset.root=/moved` after moving the data). Group
choices (`model=segnet`, `experiment=...`) may be repeated but not changed: they would build a
different run.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seg.allowlist import safe_stored_config
from seg.config import TrainerConfig
from seg.errors import CheckpointError, ConfigError
from seg.stored import require_complete
from seg.train.plan import RunPlan, plan_run

log = logging.getLogger("seg")

# Keys that describe how this invocation runs, not what the run is.
INVOCATION_KEYS = ("resume", "run_dir")
# Changing these on resume is routine (train longer, another machine, moved data): logged, not warned.
ROUTINE = ("trainer.epochs", "trainer.num_workers", "trainer.device", "trainer.progress_every", "trainer.pin_memory",
           "trainer.prefetch_factor", "trainer.early_stopping", "trainer.compile", "trainer.compile_backend",
           "trainer.cudnn_benchmark", "trainer.deterministic", "dataset.root", "dataset.cache_dir",
           "inference",  # how seg-eval/seg-predict run the model later, not how it trains
           "logger", "search")  # where the curves go (logger=mlflow turned on), an Optuna trial's bookkeeping
RUN_GROUPS = ("dataset", "model", "loss", "augmentation", "optimizer", "scheduler")
_ABSENT = object()
SINK_GROUPS = ("logger",)  # where a run's curves go, not how it trains: a resume may choose anew
CHANGES_SHOWN = 4


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The fully resolved config as plain containers, with dataset.root made absolute so seg-eval finds
    the data from any working directory."""
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    root = plain.get("dataset", {}).get("root")
    if isinstance(root, str) and root:
        plain["dataset"]["root"] = str(Path(root).expanduser().resolve())
    return plain  # type: ignore[return-value]


def override_key(override: str) -> str:
    """`trainer.epochs=40` -> `trainer.epochs` (Hydra's `+`/`++` prefixes dropped)."""
    key = override.split("=", 1)[0].strip()
    if key.startswith("~"):
        raise ConfigError(f"resume: deleting a key ({override}) cannot apply to a stored run; start a new run")
    return key.lstrip("+")


def flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted keys of a nested config; lists are leaves."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from flatten(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def differences(a: Mapping[str, Any], b: Mapping[str, Any], skip: Collection[str] = ()) -> list[str]:
    """`key (a -> b)` for keys present in both with different values; `skip` drops keys and subtrees."""
    fa, fb = dict(flatten(a)), dict(flatten(b))
    skipped = lambda k: k in skip or any(k.startswith(f"{s}.") for s in skip)  # noqa: E731
    return [f"{k} ({fa[k]!r} -> {fb[k]!r})" for k in fa if k in fb and fa[k] != fb[k] and not skipped(k)]


def _shown(items: list[str]) -> str:
    more = f" and {len(items) - CHANGES_SHOWN} more" if len(items) > CHANGES_SHOWN else ""
    return ", ".join(items[:CHANGES_SHOWN]) + more


def resumed_config(
    cfg: DictConfig, plan: RunPlan | Path, overrides: Sequence[str], groups: Collection[str]
) -> DictConfig:
    """The checkpoint's stored config with the command line's `key=value` overrides on top.

    `cfg` is the config composed from this command line, `plan` the invocation's RunPlan (or the
    folder to plan it from), `overrides` its override strings and `groups` the config-group names (so
    `model=segnet` is told apart from `seed=3`). The checkpoint is read here, before anything is
    written, so a wrong file fails first."""
    plan = plan if isinstance(plan, RunPlan) else plan_run(cfg, plan)
    if plan.resume_from is None:
        raise ValueError("resumed_config() is for configs with resume set")
    path, stored = plan.resume_from, plan.checkpoint().get("config")
    if not isinstance(stored, dict) or "trainer" not in stored:
        raise CheckpointError(f"{path} has no training config to resume (was it written by seg-train?)")
    # Data, never code: plain values, no ${...}, allowed targets; its allowed_targets are this command's.
    stored = safe_stored_config(plan.checkpoint(), path, cfg.get("allowed_targets") or [])
    composed = plain_config(cfg)
    given = OmegaConf.create(composed)
    keys = [override_key(o) for o in overrides]
    merged = OmegaConf.create(stored)
    # trainer keys added since the checkpoint was written (trainer.ema_decay, accumulate_grad_batches)
    # take the schema's defaults (not a recipe's), which do what the older seg did
    defaults = dict(flatten(OmegaConf.to_container(OmegaConf.structured(TrainerConfig), enum_to_str=True), "trainer."))
    added = [key for key in defaults if OmegaConf.select(merged, key, default=_ABSENT) is _ABSENT]
    for key in added:
        OmegaConf.update(merged, key, defaults[key], force_add=True)
    if added:
        log.info("resume: %s stored no %s (an older seg): the defaults, which do what it did", path.name,
                 ", ".join(added))
    for key in (k for k in keys if k not in groups):
        OmegaConf.update(merged, key, OmegaConf.select(given, key), force_add=True)
    for group in SINK_GROUPS:  # chosen on the command line, they take effect (logger=mlflow from here on)
        if group in keys and group in composed:
            merged[group] = composed[group]
    # The cache is this machine's (SEG_CACHE_DIR or dataset.cache_dir now), not the one that trained.
    # null (the default) means this machine's default_cache_dir(), so it is copied too.
    dataset = merged.get("dataset")
    if isinstance(dataset, DictConfig) and "cache_dir" in dataset and "cache_dir" in composed.get("dataset", {}):
        merged.dataset.cache_dir = composed["dataset"]["cache_dir"]
    require_complete(OmegaConf.to_container(merged), path)  # type: ignore[arg-type]
    # The encoder's weights come from the checkpoint: a stored `pretrained` (a path, or `imagenet`) is not
    # opened or downloaded again. The freezing it went with stays.
    model = merged.get("model")
    if isinstance(model, DictConfig) and model.get("pretrained") is not None:
        model.pretrained = None
    chosen = [o for o, k in zip(overrides, keys) if k in groups]
    if chosen:
        # What a choice selects is its nodes' `_target_`s (a recipe selects them all): those must match
        # the run. Their other values are the stored run's (its own key=value overrides included).
        nodes = {n for k in keys if k in groups for n in (RUN_GROUPS if k == "experiment" else (k,))}
        others = [k for k in composed if k not in nodes]
        merged_plain = OmegaConf.to_container(merged)
        changed = differences(merged_plain, composed, skip=(*others, *ROUTINE))  # type: ignore[arg-type]
        targets = [c for c in changed if c.split(" ", 1)[0].endswith("._target_")]
        if targets:
            raise ConfigError(
                f"resume continues the run with the config stored in {path.name}; {' '.join(chosen)} would change "
                f"{_shown(targets)}. Drop the group choices (keep key=value overrides such as trainer.epochs=40), "
                "or start a new run"
            )
        if changed:
            log.warning("resume: %s selects settings that differ from the stored run's; the stored ones are kept: "
                        "%s (name a key=value to change one)", " ".join(chosen), _shown(changed))
    changed = differences(stored, OmegaConf.to_container(merged), skip=INVOCATION_KEYS)  # type: ignore[arg-type]
    if changed:
        notable = differences(stored, OmegaConf.to_container(merged), skip=(*INVOCATION_KEYS, *ROUTINE))  # type: ignore[arg-type]
        report = log.warning if notable else log.info
        report("resuming with settings changed from the stored run: %s", _shown(changed))
    return merged
