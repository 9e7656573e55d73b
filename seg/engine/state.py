"""Training state that a checkpoint carries and a resume restores."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class EpochProgress:
    """How far an interrupted epoch got: a resume skips the `samples` already trained on and carries
    on summing the loss, so the epoch ends as if it had never stopped."""

    epoch: int
    steps: int = 0
    samples: int = 0
    loss_sum: float = 0.0
    train_metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochProgress:
        return cls(epoch=int(d["epoch"]), steps=int(d["steps"]), samples=int(d["samples"]),
                   loss_sum=float(d["loss_sum"]), train_metrics=dict(d.get("train_metrics") or {}))


@dataclass
class TrainState:
    epoch: int = 0  # last completed epoch
    samples_seen: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    stale_validations: int = 0  # validations since the last improvement (early stopping)
    metrics: dict[str, float] = field(default_factory=dict)
    progress: EpochProgress | None = None  # set while an epoch is unfinished (interrupted)

    def improves(self, score: float, mode: str) -> bool:
        if math.isnan(score):
            return False
        if self.best_score is None:
            return True
        return score > self.best_score if mode == "max" else score < self.best_score
