"""fit(cfg): build everything from the config, train, validate, log, keep best/last checkpoints."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from seg.checkpoint import load_checkpoint, load_model_state, make_checkpoint, save_checkpoint, sha256
from seg.data.split import write_split
from seg.engine import builders
from seg.engine.loop import EpochStats, StepSettings, evaluate, train_one_epoch
from seg.engine.preview import Preview
from seg.engine.seeding import rng_state, seed_everything, set_rng_state
from seg.engine.signals import GracefulStop
from seg.engine.state import TrainState
from seg.errors import CheckpointError, ConfigError
from seg.logger.tensorboard import TensorBoardLogger
from seg.metrics import SegMetrics

log = logging.getLogger("seg")


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The fully resolved config as plain containers, with dataset.root made absolute so seg-eval finds
    the data from any working directory."""
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    root = plain.get("dataset", {}).get("root")
    if isinstance(root, str) and root:
        plain["dataset"]["root"] = str(Path(root).expanduser().resolve())
    return plain  # type: ignore[return-value]


def find_resume(resume: str | None, run_dir: Path) -> Path | None:
    if not resume:
        return None
    path = run_dir / "checkpoints" / "last.pt" if resume == "auto" else Path(resume).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"resume={resume}: no checkpoint at {path}. Pass resume=PATH/last.pt, or resume=auto together "
            "with hydra.run.dir=<the run directory> to continue that run."
        )
    return path


def fit(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    t = cfg.trainer
    mode = str(t.monitor_mode.value if hasattr(t.monitor_mode, "value") else t.monitor_mode)
    resume_path = find_resume(cfg.resume, run_dir)
    earlier = sorted((run_dir / "checkpoints").glob("*.pt")) if resume_path is None else []
    if earlier:
        raise ConfigError(
            f"{run_dir} already holds checkpoints of an earlier run ({', '.join(p.name for p in earlier)}); "
            "they are kept. Continue that run with resume=auto, or train into another hydra.run.dir."
        )
    if resume_path is not None and cfg.resume != "auto":
        run_dir = resume_path.parent.parent  # continue the same run directory and TensorBoard run
    seed_everything(cfg.seed)
    device = builders.resolve_device(t.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(t.cudnn_benchmark)
    amp = builders.build_amp(str(t.precision), device)
    channels_last = builders.resolve_channels_last(t.channels_last, amp)
    step = StepSettings(device, amp, channels_last, t.grad_clip_norm, t.grad_clip_value)

    data = builders.build_data(cfg.dataset)
    split = data.split_ids()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_split(run_dir / "split.json", split)
    train_ds, val_ds = data.dataset("train"), data.dataset("val")
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise ConfigError(
            f"the {type(data).__name__} split has {len(train_ds)} training and {len(val_ds)} validation "
            "item(s); both need at least one (check dataset.split ratios and the number of cases)"
        )
    log.info("data: %s train / %s val items, %s channel(s), classes %s", len(train_ds), len(val_ds),
             data.in_channels, data.class_names)

    model = builders.build_model(cfg.model, t.weight_init).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = builders.build(cfg.loss, "loss").to(device)
    augment = builders.build(cfg.augmentation, "augmentation").to(device)
    optimizer = builders.build_optimizer(cfg.optimizer, model, device)
    scheduler = builders.build_scheduler(cfg.scheduler, optimizer, t.epochs, mode)
    kaggle = bool(getattr(data, "kaggle_metric", False))
    val_metrics = SegMetrics(n_classes=data.n_classes, class_names=data.class_names, kaggle=kaggle)
    train_metrics = SegMetrics(n_classes=data.n_classes, class_names=data.class_names)
    # The compiled wrapper runs the steps; checkpoints always take the plain module's state_dict.
    step_model = torch.compile(model, backend=t.compile_backend) if t.compile else model

    # Previews before any restore: random-crop datasets draw from the RNG when their items are taken.
    previews = {
        "val": Preview(val_ds, data.preview_indices("val", t.preview_images), data.n_classes),
        "train": Preview(train_ds, data.preview_indices("train", t.preview_images), data.n_classes),
    }
    state = TrainState()
    if resume_path is not None:
        state = _restore(resume_path, model, optimizer, scheduler, amp)
        log.info("resumed from %s at epoch %d (%d samples seen)", resume_path, state.epoch, state.samples_seen)

    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s: %.2fM parameters; device %s, precision %s%s; run dir %s", type(model).__name__,
             n_params / 1e6, device, amp.precision, ", channels-last" if channels_last else "", run_dir)
    tb = TensorBoardLogger(run_dir / "tb", purge_step=state.epoch + 1 if resume_path else None)
    ckpt_dir = run_dir / "checkpoints"
    plain = plain_config(cfg)

    def checkpoint() -> dict[str, Any]:
        return make_checkpoint(
            model=model.state_dict(), optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            scaler=amp.scaler.state_dict() if amp.scaler is not None else None,
            epoch=state.epoch, samples_seen=state.samples_seen, best_score=state.best_score,
            best_epoch=state.best_epoch, stale_validations=state.stale_validations,
            monitor=t.monitor, monitor_mode=mode, metrics=state.metrics, config=plain, rng=rng_state(),
        )  # fmt: skip

    train_loader = builders.build_loader(
        train_ds, batch_size=t.batch_size, num_workers=t.num_workers, device=device, shuffle_seed=cfg.seed,
        drop_last=True, pin_memory=t.pin_memory, prefetch_factor=t.prefetch_factor,
    )  # fmt: skip
    val_loader = builders.build_loader(val_ds, batch_size=t.batch_size, num_workers=t.num_workers, device=device,
                                       pin_memory=t.pin_memory, prefetch_factor=t.prefetch_factor)
    try:
        with GracefulStop() as stop:
            for epoch in range(state.epoch + 1, t.epochs + 1):
                train_loader.sampler.set_epoch(epoch)
                train_metrics.reset()
                stats = train_one_epoch(
                    step_model, train_loader, loss_fn, optimizer, step, augment=augment, metrics=train_metrics,
                    progress_every=t.progress_every, desc=f"epoch {epoch}/{t.epochs}", should_stop=stop,
                )  # fmt: skip
                state.samples_seen += stats.samples
                if stats.interrupted:
                    save_checkpoint(checkpoint(), ckpt_dir / "last.pt")
                    log.warning(
                        "%s received during epoch %d: saved %s (state after epoch %d plus the finished steps). "
                        "Continue with: seg-train resume=%s", stop.requested, epoch, ckpt_dir / "last.pt",
                        state.epoch, ckpt_dir / "last.pt",
                    )  # fmt: skip
                    break
                state.epoch = epoch
                _log_train(tb, stats, train_metrics.compute(), optimizer, epoch)
                validated = epoch == 1 or epoch % max(1, t.val_every) == 0 or epoch == t.epochs
                if validated:
                    values = evaluate(step_model, val_loader, loss_fn, val_metrics,
                                      device=device, amp=amp, channels_last=channels_last)
                    state.metrics = {f"val/{k}": float(v) for k, v in values.items()}
                    tb.scalars(state.metrics, epoch)
                    for split_name, preview in previews.items():
                        panels = preview.render(model, device, amp, channels_last)
                        if panels is not None:
                            tb.panels(f"{split_name}/overlay", panels, epoch, preview.names)
                    score = _monitored(state.metrics, t.monitor)
                    improved = state.improves(score, mode)
                    if improved:
                        state.best_score, state.best_epoch, state.stale_validations = score, epoch, 0
                    else:
                        state.stale_validations += 1
                    if scheduler is not None and isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                        scheduler.step(score)
                    save_checkpoint(checkpoint(), ckpt_dir / "last.pt")
                    if improved:
                        best = save_checkpoint(checkpoint(), ckpt_dir / "best.pt")
                        log.info("new best %s=%.4f at epoch %d: %s sha256=%s", t.monitor, score, epoch, best, sha256(best))
                if scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step()
                _summary(epoch, t.epochs, stats, state.metrics if validated else None, t.monitor)
                if t.early_stopping is not None and state.stale_validations >= t.early_stopping:
                    log.info("early stopping: %s has not improved for %d validations", t.monitor, t.early_stopping)
                    break
                tb.flush()
    finally:
        tb.close()
    result = {"best_score": state.best_score if state.best_score is not None else math.nan,
              "best_epoch": state.best_epoch or 0, "epoch": state.epoch, **state.metrics}
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    log.info("done: best %s=%s at epoch %s; checkpoints in %s", t.monitor, state.best_score, state.best_epoch, ckpt_dir)
    return result


def _monitored(metrics: dict[str, float], monitor: str) -> float:
    if monitor not in metrics:
        raise ConfigError(f"trainer.monitor={monitor!r} is not a validation metric; available: {sorted(metrics)}")
    return metrics[monitor]


def _log_train(tb: TensorBoardLogger, stats: EpochStats, metrics: dict[str, float], optimizer: Any, epoch: int) -> None:
    values = {"train/loss": stats.loss, "lr": optimizer.param_groups[0]["lr"],
              "perf/images_per_second": stats.images_per_second, "perf/data_wait_fraction": stats.data_wait_fraction}
    values.update({f"train/{k}": v for k, v in metrics.items() if k in ("dice", "iou")})
    tb.scalars(values, epoch)
    if stats.data_wait_fraction > 0.10 and stats.steps > 1:
        log.warning("epoch %d: %.0f%% of the time was spent waiting for data; raise trainer.num_workers",
                    epoch, 100 * stats.data_wait_fraction)


def _summary(epoch: int, epochs: int, stats: EpochStats, metrics: dict[str, float] | None, monitor: str) -> None:
    line = f"epoch {epoch}/{epochs}  train/loss {stats.loss:.4f}  {stats.images_per_second:.1f} img/s"
    if metrics:
        shown = [k for k in ("val/loss", "val/dice", "val/iou", monitor) if k in metrics]
        line += "  " + "  ".join(f"{k} {metrics[k]:.4f}" for k in dict.fromkeys(shown))
    log.info(line)


def _restore(path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, amp: Any) -> TrainState:
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt or "rng" not in ckpt:
        raise CheckpointError(f"{path} has no training state to resume from (was it exported for inference only?)")
    load_model_state(model, ckpt["model"], path)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if amp.scaler is not None and ckpt.get("scaler") is not None:
            amp.scaler.load_state_dict(ckpt["scaler"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"cannot resume from {path}: optimizer/scheduler state does not fit ({exc}). "
                              "Resume with the same optimizer, scheduler and model settings.") from None
    set_rng_state(ckpt["rng"])
    return TrainState(epoch=int(ckpt["epoch"]), samples_seen=int(ckpt.get("samples_seen", 0)),
                      best_score=ckpt.get("best_score"), best_epoch=ckpt.get("best_epoch"),
                      stale_validations=int(ckpt.get("stale_validations", 0)), metrics=dict(ckpt.get("metrics", {})))
