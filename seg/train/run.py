"""A training run's objects, built once from the config: what fit() drives, checkpoints and restores."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from seg import distributed
from seg.checkpoint import make_checkpoint, publish_copy, save_checkpoint
from seg.config import check_train_config
from seg.data.base import SegDataModule
from seg.data.split import write_split
from seg.distributed import Dist
from seg.engine import builders
from seg.engine.amp import Amp
from seg.engine.ema import ModelEma
from seg.engine.loop import StepSettings, nonfinite_weights
from seg.engine.preview import Preview
from seg.engine.seeding import rng_state, seed_everything
from seg.engine.state import TrainState
from seg.errors import ConfigError, TrainingDiverged
from seg.metrics import SegMetrics
from seg.provenance import provenance_differences, split_sha256
from seg.train import parallel
from seg.train.plan import RunPlan
from seg.train.repair import repair_run_folder
from seg.train.restore import restore
from seg.train.resume import plain_config

log = logging.getLogger("seg")


@dataclass
class Run:
    cfg: DictConfig
    run_dir: Path
    mode: str
    amp: Amp
    step: StepSettings
    data: SegDataModule
    model: torch.nn.Module
    step_model: torch.nn.Module  # torch.compile's wrapper, or the model itself
    loss_fn: torch.nn.Module
    augment: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: DataLoader
    val_loader: DataLoader
    train_metrics: SegMetrics
    val_metrics: SegMetrics
    previews: dict[str, Preview]
    state: TrainState = field(default_factory=TrainState)
    provenance: dict[str, Any] = field(default_factory=dict)  # data fingerprint and split hash: taken once
    ema: ModelEma | None = None  # trainer.ema_decay: the average of `model`'s weights
    ema_step_model: torch.nn.Module | None = None  # torch.compile's wrapper of ema.module
    dist: Dist = field(default_factory=Dist)  # this process's place in a data-parallel run

    def __post_init__(self) -> None:
        self.plain_config = plain_config(self.cfg)  # what every checkpoint stores: resolved once

    @property
    def saved_model(self) -> torch.nn.Module:
        """The weights validation scores, previews show and checkpoints keep as `model` (so seg-eval,
        seg-predict and seg-export read them unchanged): the EMA when on, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def eval_model(self) -> torch.nn.Module:
        """saved_model as validation runs it: through torch.compile's wrapper when trainer.compile is on."""
        if self.ema is None:  # DDP's forward would sync buffers with ranks scoring shards of other sizes
            return self.model if self.dist.enabled else self.step_model
        return self.ema_step_model if self.ema_step_model is not None else self.ema.module

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def plateau(self) -> bool:
        return isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    def save(self, name: str) -> Path:
        """Write checkpoints/<name>; never for weights that turned nan or inf (raises TrainingDiverged),
        so a kept checkpoint is always one to resume from."""
        bad = nonfinite_weights(self.model)  # one host read per save (two with an EMA)
        bad += [f"ema {k}" for k in nonfinite_weights(self.ema.module)] if self.ema is not None else []
        if bad:
            raise TrainingDiverged(f"training diverged: the model's weights became nan or inf by epoch "
                                   f"{self.state.epoch} (e.g. {', '.join(bad[:3])})", epoch=self.state.epoch)
        s, ranks = self.state, parallel.rank_fields()  # collective: every rank saves, rank 0 writes
        path = self.ckpt_dir / name
        if not self.dist.main:
            return path
        return save_checkpoint(make_checkpoint(
            model=self.saved_model.state_dict(), **self._ema_fields(), **ranks, optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            scaler=self.amp.scaler.state_dict() if self.amp.scaler is not None else None,
            epoch=s.epoch, samples_seen=s.samples_seen, best_score=s.best_score, best_epoch=s.best_epoch,
            stale_validations=s.stale_validations, monitor=self.cfg.trainer.monitor, monitor_mode=self.mode,
            metrics=s.metrics, config=self.plain_config, rng=rng_state(),
            epoch_progress=s.progress.to_dict() if s.progress is not None else None, provenance=self.provenance,
        ), path)  # fmt: skip

    def _ema_fields(self) -> dict[str, Any]:
        """With an EMA, `model` is the average: the raw weights the optimizer steps, and the average's
        update count (its warm-up), are kept beside it so a resume continues both exactly."""
        if self.ema is None:
            return {}
        return {"train_model": self.model.state_dict(), "ema_steps": self.ema.updates}

    def save_best(self, last: Path) -> Path:
        """best.pt after a validation that improved: the last.pt just written holds the same state, so
        best.pt becomes a hard link to it (a copy without them). last.pt goes first, recording the new
        best: seg/train/repair.py says why that order, and how a start repairs a kill between the two."""
        return publish_copy(last, self.ckpt_dir / "best.pt") if self.dist.main else self.ckpt_dir / "best.pt"


def start_run(cfg: DictConfig, plan: RunPlan) -> Run:
    """Check the config, build data, loss, model, augmentation, optimizer, scheduler, loaders and
    metrics (any of them can still refuse the config), restore the checkpoint when resuming, and only
    then write the split: a failure before that point leaves the run folder untouched."""
    check_train_config(cfg)
    t = cfg.trainer
    mode = str(getattr(t.monitor_mode, "value", t.monitor_mode))
    seed_everything(cfg.seed)  # before anything draws: weight init, previews of random-crop items
    device = builders.resolve_device(t.device)
    d = distributed.join(device.type)  # torchrun's processes: one process group (else a no-op)
    device = parallel.rank_device(device, d)
    builders.set_determinism(bool(t.deterministic), bool(t.cudnn_benchmark), device)
    amp = builders.build_amp(str(t.precision), device)
    channels_last = builders.resolve_channels_last(t.channels_last, amp)
    data, split, loss_fn, val_metrics = _build_data(cfg)
    provenance = {"data": getattr(data, "source_fingerprint", lambda: None)(), "split_sha256": split_sha256(split)}
    if plan.resuming:
        _check_same_split(plan.run_dir / "split.json", split)
        _warn_provenance(plan, provenance["data"], split)
    train_ds, val_ds = data.dataset("train"), data.dataset("val")
    parallel.check_shards(len(train_ds), t)
    with warnings.catch_warnings():
        if plan.resuming:  # the frozen encoder's weights come from the checkpoint, not from `pretrained`
            warnings.filterwarnings("ignore", message=".*freeze_encoder=True without pretrained weights")
        model = builders.build_model(cfg.model, t.weight_init)
    model = parallel.prepare(model.to(device), t, d, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = builders.build_optimizer(cfg.optimizer, model, device)
    workers = builders.resolve_num_workers(t.num_workers, device)
    loaders = {"pin_memory": t.pin_memory, "prefetch_factor": t.prefetch_factor, "num_workers": workers,
               "rank": d.rank, "world": d.world}
    run = Run(
        cfg=cfg, run_dir=plan.run_dir, mode=mode, amp=amp,
        step=StepSettings(device, amp, channels_last, t.grad_clip_norm, t.grad_clip_value),
        data=data, model=model,
        # DDP's and the compiled wrapper run the steps; checkpoints always take the plain module's state_dict.
        step_model=parallel.wrap(model, t, d, device), dist=d,
        loss_fn=loss_fn.to(device),
        augment=builders.build_module(cfg.augmentation, "augmentation").to(device),
        optimizer=optimizer, scheduler=builders.build_scheduler(cfg.scheduler, optimizer, t.epochs, mode),
        train_loader=builders.build_loader(train_ds, batch_size=t.batch_size, device=device, shuffle_seed=cfg.seed,
                                           drop_last=True, **loaders),
        val_loader=builders.build_loader(val_ds, batch_size=t.batch_size, device=device, **loaders),
        train_metrics=SegMetrics(n_classes=data.n_classes, class_names=data.class_names),
        val_metrics=val_metrics,
        # Previews before any restore: random-crop datasets draw from the RNG when their items are taken.
        # TensorBoard previews at native size without the legend: upscaled and labelled they cost 0.24 s
        # instead of 0.03 s a set at every validation (15% of the default run); TensorBoard zooms itself.
        previews={name: Preview(ds, data.preview_indices(name, t.preview_images), data.n_classes,
                                class_names=data.class_names, min_side=0, legend=False)
                  for name, ds in (("val", val_ds), ("train", train_ds))},
        provenance=provenance, **_build_ema(model, t),
    )  # fmt: skip
    parallel.seed_rank(cfg.seed, d)
    if plan.resuming:  # reads only: a checkpoint that does not fit still leaves the folder as it was
        run.state = restore(run, plan)
        log.info("resumed from %s at epoch %d (%d samples seen)", plan.resume_from, run.state.epoch,
                 run.state.samples_seen)
    # Everything is built: only now does the run folder get its first file (rank 0 alone writes it).
    if d.main:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        repair_run_folder(plan, run.state)
        write_split(plan.run_dir / "split.json", split)
    _log_start(run, workers)
    return run


def _build_data(cfg: DictConfig) -> tuple[SegDataModule, dict[str, list[str]], torch.nn.Module, SegMetrics]:
    """The data, its split, the loss and the validation metrics, each checked against the others."""
    data = builders.build_data(cfg.dataset)
    split = data.split_ids()
    train_ds, val_ds = data.dataset("train"), data.dataset("val")
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise ConfigError(
            f"the {type(data).__name__} split has {len(train_ds)} training and {len(val_ds)} validation "
            "item(s); both need at least one (check dataset.split ratios and the number of cases)"
        )
    loss_fn = builders.build_module(cfg.loss, "loss")
    _check_loss_fits(loss_fn, train_ds[0], data.n_classes)
    kaggle = bool(getattr(data, "kaggle_metric", False))
    val_metrics = SegMetrics(n_classes=data.n_classes, class_names=data.class_names, kaggle=kaggle)
    monitors = sorted({f"val/{k}" for k in val_metrics.compute()} | {"val/loss"})  # the names, from no data
    val_metrics.reset()  # compute() on no data set up CPU counters; the first update picks the device
    if cfg.trainer.monitor not in monitors:
        raise ConfigError(f"trainer.monitor={cfg.trainer.monitor!r} is not a validation metric; available: {monitors}")
    log.info("data: %s train / %s val items, %s channel(s), classes %s", len(train_ds), len(val_ds),
             data.in_channels, data.class_names)
    return data, split, loss_fn, val_metrics


def _build_ema(model: torch.nn.Module, t: DictConfig) -> dict[str, Any]:
    """Run's EMA fields: the average of the plain module (never of torch.compile's wrapper, whose
    state_dict keys carry `_orig_mod.`), compiled like the model for validation when trainer.compile is on."""
    decay = t.get("ema_decay")  # absent from the stored config of a run from before the option
    if decay is None:
        return {}
    ema = ModelEma(source=model, decay=float(decay))
    compiled = torch.compile(ema.module, backend=t.compile_backend) if t.compile else None
    return {"ema": ema, "ema_step_model": compiled}


def _log_start(run: Run, workers: int) -> None:
    t, model = run.cfg.trainer, run.model
    log.info("model %s: %.2fM parameters; device %s, precision %s%s, %d loader worker(s); run dir %s",
             type(model).__name__, sum(p.numel() for p in model.parameters()) / 1e6, run.step.device,
             run.amp.precision, ", channels-last" if run.step.channels_last else "", workers, run.run_dir)
    processes, accumulate = run.dist.world, t.accumulate_grad_batches
    if processes > 1 or accumulate > 1:  # trainer.batch_size is per process and per batch
        log.info("batch per optimizer step: %d = %d process(es) x trainer.batch_size=%d x %d accumulated batch(es)",
                 processes * t.batch_size * accumulate, processes, t.batch_size, accumulate)
    if t.compile:  # an H100 took 30-105 s for the models here (docs/benchmarks.md): say it is not stuck
        log.info("torch.compile (%s): the first training steps compile the model, which can take a minute "
                 "or more; the first epoch's img/s includes it", t.compile_backend)


def _check_same_split(path: Path, split: dict[str, list[str]]) -> None:
    """A resume must train on the cases the run was trained on: changed dataset settings that move
    cases between train/val/test would make its curves and best.pt meaningless."""
    if not path.is_file():
        return
    before = json.loads(path.read_text())
    if {k: list(v) for k, v in before.items()} != {k: list(v) for k, v in split.items()}:
        sizes = lambda d: "/".join(str(len(d.get(k, []))) for k in ("train", "val", "test"))  # noqa: E731
        raise ConfigError(
            f"resume: the dataset settings give another split than the run's {path} (train/val/test "
            f"{sizes(before)} before, {sizes(split)} now). Resume with the run's dataset settings, or start a new run"
        )


def _warn_provenance(plan: RunPlan, data: dict[str, Any] | None, split: dict[str, list[str]]) -> None:
    """A resume on changed source files (or, for a loose copy without the run's split.json, another split)
    may be intended (files re-exported, a cleaned label): said in one line, not refused."""
    found = provenance_differences(plan.checkpoint(), data, split)
    if found:
        log.warning("resume: %s; training goes on with the data as it is now", "; ".join(found))


def _check_loss_fits(loss_fn: torch.nn.Module, item: dict[str, Any], n_classes: int) -> None:
    """One loss evaluation on a training item's mask (and weight map) with zero logits: a loss that
    does not fit the data (`loss=ce` on binary masks, `weighted_bce` without weight maps) fails here,
    before the run folder gets anything."""
    mask = item["mask"][None].long()
    weight = item.get("weight")
    logits = torch.zeros(1, 1 if n_classes == 1 else n_classes, *mask.shape[1:])
    loss_fn(logits, mask, weight=None if weight is None else weight[None].float())
