"""Training state that a checkpoint carries and a resume restores."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class TrainState:
    epoch: int = 0  # last completed epoch
    samples_seen: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    stale_validations: int = 0  # validations since the last improvement (early stopping)
    metrics: dict[str, float] = field(default_factory=dict)

    def improves(self, score: float, mode: str) -> bool:
        if math.isnan(score):
            return False
        if self.best_score is None:
            return True
        return score > self.best_score if mode == "max" else score < self.best_score
