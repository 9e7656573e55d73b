"""Restoring a run from its checkpoint: the weights (and the EMA's), the optimizer, scheduler and
scaler states, every process's random streams, and the lr a changed trainer.epochs gives the epoch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from seg.checkpoint import ema_state, load_model_state
from seg.engine.state import EpochProgress, TrainState
from seg.errors import CheckpointError
from seg.train import parallel
from seg.train.plan import RunPlan

if TYPE_CHECKING:
    from seg.train.run import Run

log = logging.getLogger("seg")


def restore(run: Run, plan: RunPlan) -> TrainState:
    ckpt, path = plan.checkpoint(), plan.resume_from
    _restore_weights(run, ckpt, path)
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
        if run.scheduler is not None and ckpt.get("scheduler") is not None:
            run.scheduler.load_state_dict(ckpt["scheduler"])
        if run.amp.scaler is not None and ckpt.get("scaler") is not None:
            run.amp.scaler.load_state_dict(ckpt["scaler"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"cannot resume from {path}: optimizer/scheduler state does not fit ({exc}). "
                              "Resume with the same optimizer, scheduler and model settings.") from None
    _replan_schedule(run, ckpt)
    parallel.restore_rng(ckpt, path)
    progress = ckpt.get("epoch_progress")
    return TrainState(epoch=int(ckpt["epoch"]), samples_seen=int(ckpt.get("samples_seen", 0)),
                      best_score=ckpt.get("best_score"), best_epoch=ckpt.get("best_epoch"),
                      stale_validations=int(ckpt.get("stale_validations", 0)), metrics=dict(ckpt.get("metrics", {})),
                      progress=EpochProgress.from_dict(progress) if progress else None)


def _restore_weights(run: Run, ckpt: dict[str, Any], path: Path) -> None:
    """The trained weights (and the EMA's, when on). Turning the EMA on or off at a resume is allowed,
    with a warning, not refused: the optimizer's state belongs to the raw weights, which both checkpoint
    kinds hold, so training goes on correctly; only the average starts anew, or is dropped."""
    raw, updates = ema_state(ckpt, path)
    if run.ema is None:
        load_model_state(run.model, ckpt["model"] if raw is None else raw, path)
        if raw is not None:
            log.warning("resume: %s kept an EMA of its weights, but trainer.ema_decay is null: training goes on from "
                        "its raw weights (train_model), and checkpoints now keep those, without the average", path.name)
        return
    if raw is None:
        load_model_state(run.model, ckpt["model"], path)
        run.ema.restart()
        log.warning("resume: %s kept no EMA of its weights: the average (trainer.ema_decay=%g) starts from the "
                    "restored weights at epoch %s, its warm-up anew", path.name, run.ema.decay, ckpt.get("epoch"))
        return
    load_model_state(run.model, raw, path)
    load_model_state(run.ema.module, ckpt["model"], path)
    run.ema.updates = updates


def _replan_schedule(run: Run, ckpt: dict[str, Any]) -> None:
    """Epoch-based schedules (cosine, poly) are functions of (epoch, trainer.epochs): set the lr the
    restored epoch has under this run's trainer.epochs, which may have been raised to train longer
    (the optimizer state holds the lr the stored schedule ended on)."""
    scheduler = run.scheduler
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(run.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr() reports
    before = (ckpt.get("config") or {}).get("trainer", {}).get("epochs")
    if before is not None and int(before) != int(run.cfg.trainer.epochs):
        log.info("trainer.epochs %s -> %s: the lr schedule now spans %s epochs (lr %.3g for epoch %d)", before,
                 run.cfg.trainer.epochs, run.cfg.trainer.epochs, lrs[0], scheduler.last_epoch + 1)
