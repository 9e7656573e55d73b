"""Learning-rate schedules, stepped once per epoch (plateau: once per validation).

Config files point at these factories with `_partial_: true`; the engine completes them with the
optimizer and the number of epochs, so a schedule never needs the epoch count written twice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

log = logging.getLogger("seg")


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


def _check_warmup(warmup_epochs: int, start_factor: float | None, epochs: int) -> None:
    if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs}")
    if start_factor is not None and (isinstance(start_factor, bool) or not 0 < start_factor <= 1):
        raise ValueError(f"warmup_start_factor must be in (0, 1] (the share of the lr the first epoch trains "
                         f"with) or null, got {start_factor}")
    if warmup_epochs >= epochs > 0:
        log.warning("scheduler.warmup_epochs=%d with trainer.epochs=%d: the run ends during the warm-up, never at "
                    "the full lr nor decaying; lower warmup_epochs", warmup_epochs, epochs)


def _ramp(epoch: int, warmup_epochs: int, start: float | None) -> float:
    """The linear warm-up's factor for an epoch < warmup_epochs: from `start` at epoch 0 towards 1 at
    epoch `warmup_epochs`, the schedule's first at the full lr. start=None: the warm-up epochs step
    evenly, (epoch + 1) / (warmup_epochs + 1) (0.5 for one epoch; 1/3 and 2/3 for two)."""
    if start is None:
        return (epoch + 1) / (warmup_epochs + 1)
    return start + (1 - start) * epoch / warmup_epochs


def _warmed(decay: Callable[[float], float], warmup_epochs: int, start: float | None,
            epochs: int) -> Callable[[int], float]:
    """An epoch's lr factor: the warm-up ramp, then `decay(progress)` with progress going from 0 at the
    first full-lr epoch to 1 at the last epoch (held at 1 after it)."""
    span = max(1, epochs - warmup_epochs)

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return _ramp(epoch, warmup_epochs, start)
        return decay(min(1.0, (epoch - warmup_epochs) / span))

    return factor


def cosine(
    optimizer: Optimizer,
    *,
    epochs: int,
    mode: str = "max",
    warmup_epochs: int = 1,
    min_lr: float = 0.0,
    warmup_start_factor: float | None = None,
) -> LRScheduler:
    """Linear warm-up, then cosine from the full lr to min_lr over the remaining epochs."""
    if min_lr < 0 or (isinstance(warmup_epochs, (int, float)) and warmup_epochs < 0):
        raise ValueError(f"warmup_epochs and min_lr must be >= 0, got {warmup_epochs} and {min_lr}")
    _check_warmup(warmup_epochs, warmup_start_factor, epochs)
    base = [g["lr"] for g in optimizer.param_groups]
    ratio = [min_lr / b if b > 0 else 0.0 for b in base]

    def decay(floor: float) -> Callable[[float], float]:
        return lambda progress: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, [_warmed(decay(f), warmup_epochs, warmup_start_factor, epochs) for f in ratio])


def poly(
    optimizer: Optimizer,
    *,
    epochs: int,
    mode: str = "max",
    power: float = 0.9,
    warmup_epochs: int = 0,
    warmup_start_factor: float | None = None,
) -> LRScheduler:
    """Linear warm-up (none by default), then lr * (1 - progress)^power over the remaining epochs."""
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power}")
    _check_warmup(warmup_epochs, warmup_start_factor, epochs)

    return LambdaLR(optimizer, _warmed(lambda progress: (1 - progress) ** power, warmup_epochs,
                                       warmup_start_factor, epochs))
