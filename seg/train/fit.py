"""fit(cfg): train epoch by epoch, validate, log, and keep the best and last checkpoints."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from seg.checkpoint import sha256
from seg.engine.loop import EpochStats, evaluate, train_one_epoch
from seg.engine.state import EpochProgress
from seg.logger.tensorboard import TensorBoardLogger
from seg.train.plan import RunPlan, plan_run
from seg.train.run import Run, start_run
from seg.train.signals import GracefulStop

log = logging.getLogger("seg")


def fit(cfg: DictConfig, plan: RunPlan | Path) -> dict[str, Any]:
    """Train the run `plan` describes (a bare folder is planned here: tests and scripts). Once the
    run is built (and restored) `plan.started` is set: from then on a failure is no longer a failed
    start, after which seg-train removes what the invocation created."""
    plan = plan if isinstance(plan, RunPlan) else plan_run(cfg, plan)
    run = start_run(cfg, plan)
    plan.started = True
    t, state = cfg.trainer, run.state
    tb = TensorBoardLogger(run.run_dir / "tb", purge_step=state.epoch + 1 if cfg.resume else None)
    if state.epoch >= t.epochs:
        log.warning("nothing to train: the run is at epoch %d and trainer.epochs=%d; raise trainer.epochs "
                    "(e.g. trainer.epochs=%d) to train longer", state.epoch, t.epochs, state.epoch + 10)
    stopped_by = None
    try:
        with GracefulStop() as stop:
            for epoch in range(state.epoch + 1, t.epochs + 1):
                if stop():  # a signal during validation: last.pt is already written or about to be
                    stopped_by = stop.requested
                    _interrupted(run, stop.requested, epoch)
                    break
                stats = _train_epoch(run, epoch, stop)
                state.samples_seen += stats.samples
                if stats.interrupted:
                    state.progress = stats.progress
                    state.progress.train_metrics = run.train_metrics.state_dict()
                    stopped_by = stop.requested
                    _interrupted(run, stop.requested, epoch)
                    break
                state.progress = None
                state.epoch = epoch
                _log_train(tb, run, stats, epoch)
                if run.scheduler is not None and not run.plateau:
                    run.scheduler.step()  # before validate() writes last.pt, so a resume starts at the next lr
                validated = epoch == 1 or epoch % max(1, t.val_every) == 0 or epoch == t.epochs
                if validated:
                    validate(run, tb, epoch)
                _summary(epoch, t.epochs, stats, state.metrics if validated else None, t.monitor)
                if t.early_stopping is not None and state.stale_validations >= t.early_stopping:
                    log.info("early stopping: %s has not improved for %d validations", t.monitor, t.early_stopping)
                    break
                tb.flush()
    finally:
        tb.close()
    result = {"best_score": state.best_score if state.best_score is not None else math.nan,
              "best_epoch": state.best_epoch or 0, "epoch": state.epoch, "stopped_by": stopped_by, **state.metrics}
    (run.run_dir / "result.json").write_text(json.dumps(result, indent=1))
    best = (f"best {t.monitor}={state.best_score:.4f} at epoch {state.best_epoch}" if state.best_score is not None
            else "no validation yet")
    log.info("%s: %s; checkpoints in %s", f"stopped by {stopped_by}" if stopped_by else "done", best, run.ckpt_dir)
    return result


def _train_epoch(run: Run, epoch: int, stop: GracefulStop) -> EpochStats:
    """One epoch, or what is left of it when the run was interrupted in its middle."""
    t, progress = run.cfg.trainer, run.state.progress
    if progress is None or progress.epoch != epoch:
        progress = EpochProgress(epoch)
    run.train_loader.sampler.set_epoch(epoch, start=progress.samples)
    run.train_metrics.reset()
    if progress.train_metrics:
        run.train_metrics.load_state_dict(progress.train_metrics, run.step.device)
    if progress.samples:
        log.info("epoch %d: continuing after its first %d samples", epoch, progress.samples)
    return train_one_epoch(
        run.step_model, run.train_loader, run.loss_fn, run.optimizer, run.step, augment=run.augment,
        metrics=run.train_metrics, progress_every=t.progress_every, desc=f"epoch {epoch}/{t.epochs}",
        should_stop=stop, start=progress,
    )  # fmt: skip


def _interrupted(run: Run, signal_name: str | None, epoch: int) -> None:
    last = run.save("last.pt")
    done = run.state.progress.samples if run.state.progress is not None else 0
    log.warning("%s received during epoch %d: saved %s (after epoch %d%s). Continue exactly from there "
                "with: seg-train resume=%s", signal_name or "A stop request", epoch, last, run.state.epoch,
                f" and {done} samples of epoch {epoch}" if done else "", last)


def validate(run: Run, tb: TensorBoardLogger, epoch: int) -> None:
    """Score the val split, log scalars and the fixed previews, step a plateau schedule, and write
    last.pt (and best.pt when the monitored metric improved)."""
    t, state = run.cfg.trainer, run.state
    values = evaluate(run.step_model, run.val_loader, run.loss_fn, run.val_metrics, run.step)
    state.metrics = {f"val/{k}": float(v) for k, v in values.items()}
    tb.scalars(state.metrics, epoch)
    for split, preview in run.previews.items():
        panels = preview.render(run.model, run.step)
        if panels is not None:
            tb.panels(f"{split}/overlay", panels, epoch, preview.names)
    # start_run checked that trainer.monitor is among these names
    score = state.metrics[t.monitor]
    improved = state.improves(score, run.mode)
    if improved:
        state.best_score, state.best_epoch, state.stale_validations = score, epoch, 0
    else:
        state.stale_validations += 1
    if run.plateau:
        run.scheduler.step(score)
    run.save("last.pt")
    if improved:
        best = run.save("best.pt")
        log.info("new best %s=%.4f at epoch %d: %s sha256=%s", t.monitor, score, epoch, best, sha256(best))


def _log_train(tb: TensorBoardLogger, run: Run, stats: EpochStats, epoch: int) -> None:
    values = {"train/loss": stats.loss, "lr": run.optimizer.param_groups[0]["lr"],
              "perf/images_per_second": stats.images_per_second, "perf/data_wait_fraction": stats.data_wait_fraction}
    values.update({f"train/{k}": v for k, v in run.train_metrics.compute().items() if k in ("dice", "iou")})
    tb.scalars(values, epoch)
    if stats.data_wait_fraction > 0.10 and stats.steps > 1:
        if stats.steady_data_wait_fraction > 0.10:
            advice = f"raise trainer.num_workers (now {run.train_loader.num_workers})"
        else:  # more workers cannot shorten the first batch's wait; longer epochs spread it
            advice = (f"the epoch's first batch (the loader starting or refilling its queues) took "
                      f"{stats.first_batch_seconds / stats.data_seconds:.0%} of it, the rest is under 10%")
        log.warning("epoch %d: %.0f%% of the time was spent waiting for data; %s", epoch,
                    100 * stats.data_wait_fraction, advice)


def _summary(epoch: int, epochs: int, stats: EpochStats, metrics: dict[str, float] | None, monitor: str) -> None:
    line = f"epoch {epoch}/{epochs}  train/loss {stats.loss:.4f}  {stats.images_per_second:.1f} img/s"
    if metrics:
        shown = [k for k in ("val/loss", "val/dice", "val/iou", monitor) if k in metrics]
        line += "  " + "  ".join(f"{k} {metrics[k]:.4f}" for k in dict.fromkeys(shown))
    log.info(line)
