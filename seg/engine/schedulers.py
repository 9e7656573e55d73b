"""Learning-rate schedules, stepped once per epoch (plateau: once per validation).

Config files point at these factories with `_partial_: true`; the engine completes them with the
optimizer and the number of epochs, so a schedule never needs the epoch count written twice.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau


def plateau(
    optimizer: Optimizer,
    *,
    epochs: int,
    mode: str = "max",
    factor: float = 0.1,
    patience: int = 5,
    threshold: float = 1e-4,
    min_lr: float = 0.0,
) -> ReduceLROnPlateau:
    return ReduceLROnPlateau(
        optimizer, mode=mode, factor=factor, patience=patience, threshold=threshold, min_lr=min_lr
    )


def cosine(
    optimizer: Optimizer, *, epochs: int, mode: str = "max", warmup_epochs: int = 1, min_lr: float = 0.0
) -> LRScheduler:
    if warmup_epochs < 0 or min_lr < 0:
        raise ValueError(f"warmup_epochs and min_lr must be >= 0, got {warmup_epochs} and {min_lr}")
    base = [g["lr"] for g in optimizer.param_groups]
    ratio = [min_lr / b if b > 0 else 0.0 for b in base]

    def factor(epoch: int, floor: float) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / (warmup_epochs + 1)
        span = max(1, epochs - warmup_epochs)
        progress = min(1.0, (epoch - warmup_epochs) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, [lambda e, f=f: factor(e, f) for f in ratio])


def poly(optimizer: Optimizer, *, epochs: int, mode: str = "max", power: float = 0.9) -> LRScheduler:
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power}")
    return LambdaLR(optimizer, lambda e: max(0.0, 1 - e / max(1, epochs)) ** power)
