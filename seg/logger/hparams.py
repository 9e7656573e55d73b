"""What a run shows in TensorBoard's HPARAMS tab: its overrides and main settings beside its best
metrics, so `tensorboard --logdir <sweep>` compares the jobs there."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# The resolved keys every run shows, whatever its command line named (dotted paths into the config).
MAIN_KEYS = ("dataset._target_", "dataset.image_size", "model._target_", "loss._target_", "optimizer._target_",
             "optimizer.lr", "optimizer.weight_decay", "scheduler._target_", "augmentation._target_",
             "trainer.epochs", "trainer.batch_size", "trainer.precision", "seed")


def _select(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _value(value: Any) -> int | float | str | bool:
    """HPARAMS takes numbers, strings and booleans: anything else is shown as its text."""
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def run_hparams(config: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, int | float | str | bool]:
    """The main resolved settings, then each command-line override (`model=segnet` as model: segnet)."""
    params = {key: _value(_select(config, key)) for key in MAIN_KEYS}
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        # not settings of the run: Hydra's, the invocation's, an Optuna trial's bookkeeping (search.trial=3)
        if key and not key.startswith(("hydra.", "search.")) and key not in ("resume", "run_dir"):
            params[f"override/{key}"] = value
    return params
