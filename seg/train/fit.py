"""fit(cfg): train epoch by epoch, validate, log, and keep the best and last checkpoints."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seg import distributed
from seg.checkpoint import sha256
from seg.engine.loop import EpochStats, evaluate, nonfinite_weights, train_one_epoch
from seg.engine.state import EpochProgress
from seg.errors import SegError, TrainingDiverged
from seg.logger.build import build_loggers
from seg.logger.hparams import run_hparams
from seg.logger.tensorboard import TensorBoardLogger
from seg.search.report import TrialReporter, trial_reporter
from seg.train import parallel
from seg.train.plan import RunPlan, plan_run
from seg.train.run import Run, start_run
from seg.train.signals import GracefulStop

log = logging.getLogger("seg")


def fit(cfg: DictConfig, plan: RunPlan | Path) -> dict[str, Any]:
    """Train the run `plan` describes (a bare folder is planned here: tests and scripts). Once the
    run is built (and restored) `plan.started` is set: from then on a failure is no longer a failed
    start, after which seg-train removes what the invocation created."""
    began = time.monotonic()
    plan = plan if isinstance(plan, RunPlan) else plan_run(cfg, plan)
    run = start_run(cfg, plan)
    plan.started = True
    t, state = cfg.trainer, run.state
    # a job of an Optuna search: its trial (seg/search/report.py); data-parallel, rank 0 reports for all
    trial = parallel.search_trial(cfg, run.mode, trial_reporter)
    # TensorBoard, plus MLflow with logger=mlflow (seg/logger/build.py)
    tb = build_loggers(cfg, run.run_dir, purge_step=state.epoch + 1 if cfg.resume else None,
                       overrides=_task_overrides())
    if state.epoch >= t.epochs:
        log.warning("nothing to train: the run is at epoch %d and trainer.epochs=%d; raise trainer.epochs "
                    "(e.g. trainer.epochs=%d) to train longer", state.epoch, t.epochs, state.epoch + 10)
    tb.text("config", f"```\n{OmegaConf.to_yaml(run.plain_config)}```", state.epoch)  # the resolved config
    try:
        stopped_by = _epochs_or_lost_peer(run, tb, trial)
        if state.best_score is not None:  # the HPARAMS tab: settings beside the best metrics
            best = {f"hparams/best_{t.monitor.replace('/', '_')}": float(state.best_score),
                    "hparams/best_epoch": float(state.best_epoch or 0)}
            tb.hparams(run_hparams(run.plain_config, _task_overrides()), best, state.epoch)
        status = "stopped" if stopped_by else "pruned" if trial and trial.pruned else "finished"
        tb.finish(status, run.ckpt_dir / "best.pt")  # MLflow: FINISHED, or KILLED when stopped or pruned
    except TrainingDiverged as exc:  # nothing of the diverged epoch is saved, nor result.json written
        message = _diverged(run, exc)
        log.error("%s", message)
        raise TrainingDiverged(message, epoch=exc.epoch, step=exc.step) from None
    finally:
        tb.close()  # a logger not finished above records the run as failed
    result = {"best_score": state.best_score if state.best_score is not None else math.nan,
              "best_epoch": state.best_epoch or 0, "epoch": state.epoch, "stopped_by": stopped_by, **state.metrics,
              # what seg.summary ranks and shows a run by
              "status": status, "overrides": _task_overrides(),
              "monitor": t.monitor, "monitor_mode": run.mode, "wall_s": round(time.monotonic() - began, 3),
              "run_dir": str(run.run_dir)}
    if run.dist.main:
        (run.run_dir / "result.json").write_text(json.dumps(result, indent=1))
    best = (f"best {t.monitor}={state.best_score:.4f} at epoch {state.best_epoch}" if state.best_score is not None
            else "no validation yet")
    log.info("%s: %s; checkpoints in %s", f"stopped by {stopped_by}" if stopped_by else "done", best, run.ckpt_dir)
    return result


def _epochs_or_lost_peer(run: Run, tb: TensorBoardLogger, trial: Any) -> str | None:
    """_epochs; data-parallel, a collective that fails because another process stopped becomes one line
    (that process's own error is on the console), so a sweep job records it as failed."""
    try:
        return _epochs(run, tb, trial)
    except RuntimeError as exc:
        if not distributed.lost_peer(exc):
            raise
        raise SegError(f"rank {run.dist.rank}: another process of this run stopped ({str(exc).splitlines()[0][:200]});"
                       " its error is above") from None


def _task_overrides() -> list[str]:
    """This invocation's command-line overrides (a sweep job's own combination among them); none when
    fit is called outside Hydra (tests, scripts)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _epochs(run: Run, tb: TensorBoardLogger, trial: TrialReporter | None = None) -> str | None:
    """The epochs left to train; returns the name of the signal that stopped them, if one did."""
    t, state = run.cfg.trainer, run.state
    with GracefulStop() as signalled:
        # data-parallel: a signal to any process stops all, after the same step
        stop = parallel.agreed(signalled, run.step.device, every=t.progress_every)
        for epoch in range(state.epoch + 1, t.epochs + 1):
            if stop():  # a signal during validation: last.pt is already written or about to be
                _interrupted(run, signalled.requested, epoch)
                return signalled.requested
            stats = _train_epoch(run, epoch, stop)
            state.samples_seen += stats.samples
            if stats.interrupted:
                state.progress = stats.progress
                run.train_metrics.sync(run.step.device)  # rank 0 keeps the sums of every process's part
                state.progress.train_metrics = run.train_metrics.state_dict()
                _interrupted(run, signalled.requested, epoch)
                return signalled.requested
            state.progress = None
            state.epoch = epoch
            stats.loss = parallel.mean_across(stats.loss, run.step.device)  # each process saw its shard
            _log_train(tb, run, stats, epoch)
            if run.scheduler is not None and not run.plateau:
                run.scheduler.step()  # before validate() writes last.pt, so a resume starts at the next lr
            validated = epoch == 1 or epoch % max(1, t.val_every) == 0 or epoch == t.epochs
            if validated:
                validate(run, tb, epoch, trial)
            _summary(epoch, t.epochs, stats, state.metrics if validated else None, t.monitor)
            if t.early_stopping is not None and state.stale_validations >= t.early_stopping:
                log.info("early stopping: %s has not improved for %d validations", t.monitor, t.early_stopping)
                break
            if trial is not None and trial.pruned:  # the search's pruner stopped it, after last.pt was written
                break
            tb.flush()
    return None


def _diverged(run: Run, exc: TrainingDiverged) -> str:
    """The one line for a diverged run: where, what is kept, what to try."""
    t = run.cfg.trainer
    kept = [name for name in ("last.pt", "best.pt") if (run.ckpt_dir / name).is_file()]
    saved = (f"{' and '.join(kept)} in {run.ckpt_dir} keep the last finite state" if kept
             else "no checkpoint had been written yet")
    lr = run.cfg.optimizer.get("lr")
    tips = [f"a lower optimizer.lr (now {lr:g})" if isinstance(lr, (int, float)) else "a lower optimizer.lr"]
    if run.amp.precision != "32":
        tips.append("trainer.precision=32")
    if t.grad_clip_norm is None:
        tips.append("trainer.grad_clip_norm=1.0")
    advice = tips[0] if len(tips) == 1 else f"{', '.join(tips[:-1])} or {tips[-1]}"
    # A resume would bring the stored optimizer state back, its lr included: a new run takes the new settings.
    return f"{exc}. It stopped without saving that state ({saved}). Start a new run with {advice}"


def _train_epoch(run: Run, epoch: int, stop: Callable[[], bool]) -> EpochStats:
    """One epoch, or what is left of it when the run was interrupted in its middle."""
    t, progress = run.cfg.trainer, run.state.progress
    if progress is None or progress.epoch != epoch:
        progress = EpochProgress(epoch)
    run.train_loader.sampler.set_epoch(epoch, start=progress.samples)
    on_epoch = getattr(run.model, "on_train_epoch", None)  # MobileNetUNet: unfreeze the encoder after N epochs
    if callable(on_epoch):
        on_epoch(epoch)
    run.train_metrics.reset()
    if progress.train_metrics and run.dist.main:  # summed over the processes when saved
        run.train_metrics.load_state_dict(progress.train_metrics, run.step.device)
    if progress.samples:
        log.info("epoch %d: continuing after its first %d samples", epoch, progress.samples)
    stats = train_one_epoch(
        run.step_model, run.train_loader, run.loss_fn, run.optimizer, run.step, augment=run.augment,
        metrics=run.train_metrics, progress_every=t.progress_every, desc=f"epoch {epoch}/{t.epochs}",
        should_stop=stop, start=progress, ema=run.ema, accumulate=t.accumulate_grad_batches, processes=run.dist.world,
    )  # fmt: skip
    # Every loss was finite, yet the last steps may have left nan weights (or batch-norm statistics):
    # found here, before validation scores them and a checkpoint could keep them.
    # data-parallel: rank 0's BatchNorm statistics everywhere, so every rank checks, scores and saves one model
    parallel.sync_buffers(run.model, run.ema.module if run.ema is not None else None)
    bad = nonfinite_weights(run.model)
    if bad:
        raise TrainingDiverged(f"training diverged: the model's weights became nan or inf during epoch {epoch} "
                               f"(e.g. {', '.join(bad[:3])})", epoch=epoch)
    return stats


def _interrupted(run: Run, signal_name: str | None, epoch: int) -> None:
    last = run.save("last.pt")
    done = run.state.progress.samples if run.state.progress is not None else 0
    log.warning("%s received during epoch %d: saved %s (after epoch %d%s). Continue exactly from there "
                "with: %s", signal_name or "A stop request", epoch, last, run.state.epoch,
                f" and {done} samples of epoch {epoch}" if done else "", parallel.resume_command(last))


def validate(run: Run, tb: TensorBoardLogger, epoch: int, trial: TrialReporter | None = None) -> None:
    """Score the val split, log scalars and the fixed previews, step a plateau schedule, and write
    last.pt (and best.pt when the monitored metric improved)."""
    t, state = run.cfg.trainer, run.state
    values = evaluate(run.eval_model, run.val_loader, run.loss_fn, run.val_metrics, run.step)  # the EMA when on
    state.metrics = {f"val/{k}": float(v) for k, v in values.items()}
    tb.scalars(state.metrics, epoch)
    if not math.isfinite(state.metrics.get("val/loss", 0.0)):  # finite weights can still output inf/NaN
        raise TrainingDiverged(f"training diverged: the validation loss of epoch {epoch} is "
                               f"{state.metrics['val/loss']}, the model outputs non-finite values", epoch=epoch)
    for split, preview in run.previews.items() if run.dist.main else ():
        panels = preview.render(run.saved_model, run.step)
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
    last = run.save("last.pt")  # first, recording the new best: seg/train/repair.py says why
    if improved:
        best = run.save_best(last)
        if run.dist.main:
            log.info("new best %s=%.4f at epoch %d: %s sha256=%s", t.monitor, score, epoch, best, sha256(best))
    if trial is not None:  # an Optuna search's job: the epoch's value to its trial, which may prune it
        trial.report(epoch, score)


def _log_train(tb: TensorBoardLogger, run: Run, stats: EpochStats, epoch: int) -> None:
    values = {"train/loss": stats.loss, "lr": run.optimizer.param_groups[0]["lr"],
              "perf/images_per_second": stats.images_per_second, "perf/data_wait_fraction": stats.data_wait_fraction}
    run.train_metrics.sync(run.step.device)
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
