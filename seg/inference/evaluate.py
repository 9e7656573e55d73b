"""seg-eval: rebuild model and data from a checkpoint's stored config, score a split, write reports."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import Subset

from seg.checkpoint import load_checkpoint, sha256
from seg.config import INFERENCE_BATCH_SIZE
from seg.data.base import SegDataModule, check_split
from seg.data.io import safe_name
from seg.engine import builders
from seg.engine.loop import StepSettings, evaluate
from seg.engine.preview import Preview
from seg.errors import ConfigError
from seg.inference.core import InferredLogits, load_model, output_dir, resolve_inference, stored_config
from seg.inference.ensemble import ensemble_paths
from seg.inference.outputs import OutputFolder
from seg.inference.report import finish_tuning, prepare, summary
from seg.inference.tables import REPORTS, table, write_reports
from seg.logger.overlay import save_png
from seg.metrics import SegMetrics
from seg.provenance import provenance_differences

log = logging.getLogger("seg")


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    paths = ensemble_paths(cfg.ckpt, cfg.get("members"))  # None: one checkpoint file
    if paths is not None and len(paths) > 1:
        from seg.inference.ensemble_eval import run_ensemble_eval  # it builds on this module's helpers

        return run_ensemble_eval(cfg, paths)
    path = paths[0] if paths else Path(str(cfg.ckpt)).expanduser()
    if paths:
        log.info("seg-eval: ckpt=%s holds one checkpoint, %s: evaluated alone", cfg.ckpt, path)
    ckpt = load_checkpoint(path)
    digest = sha256(path)
    check_settings(cfg)
    out_dir = Path(cfg.out_dir).expanduser() if cfg.out_dir else output_dir(path, "eval", f"{path.stem}-{cfg.split}")
    outputs = OutputFolder(out_dir, "seg-eval")
    outputs.claim(REPORTS)  # before the evaluation: a file of the user's in the way fails at once
    train_cfg = stored_config(ckpt, cfg.dataset, path, cfg.allowed_targets)
    how = resolve_inference(cfg.get("inference"), ckpt["config"])
    loaded = load_model(ckpt, path, train_cfg, device=cfg.device, precision=cfg.precision)
    model, settings = loaded.model, loaded.settings
    if how.sliding:  # scored, and drawn in the overlays, from sliding windows at the dataset's resolution
        model = InferredLogits(model, settings.amp, how, settings.channels_last)
    log.info("seg-eval: %s", how.describe())
    device, trainer = settings.device, train_cfg.get("trainer", {})
    data = builders.build_data(train_cfg.dataset)
    dataset = data.dataset(cfg.split)
    for difference in provenance_differences(ckpt, data, data.split_ids()):  # scores would not compare
        log.warning("seg-eval: %s; the scores may not compare with the training's", difference)
    collector = prepare(cfg, path, digest, data, dataset, trainer)  # tuning's refusals, a .postprocess.json
    loss_fn = builders.build_module(train_cfg.loss, "loss").to(device)
    metrics = SegMetrics(n_classes=data.n_classes, class_names=data.class_names,
                         kaggle=bool(getattr(data, "kaggle_metric", False)))
    batch_size = int(cfg.batch_size or trainer.get("batch_size", INFERENCE_BATCH_SIZE))
    workers = builders.resolve_num_workers(cfg.num_workers, device)
    loader = builders.build_loader(dataset, batch_size=batch_size, num_workers=workers, device=device)
    raw = evaluate(model, loader, loss_fn, metrics, settings, desc=f"eval {cfg.split}", on_batch=collector)
    rows, tuning = collector.rows, finish_tuning(collector, path, digest)
    values = collector.values(raw)  # the post-processed masks' metrics where settings apply
    overlays = _overlay_names(cfg, rows)
    outputs.claim([*REPORTS, *(f"overlays/{name}" for name in overlays.values())])
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {**values, "n_images": len(rows), "split": cfg.split, "checkpoint": str(path.resolve()),
              "checkpoint_sha256": digest, "epoch": ckpt.get("epoch"), "inference": how.describe(),
              **summary(collector, raw, tuning)}
    try:  # what was written is recorded even when a stop or an error comes in the middle
        write_reports(outputs, report, collector, f"{path.name} on {cfg.split}")
        outputs.remove_previous("overlays")  # an earlier seg-eval's ranks and scores; never the user's files
        n_saved = _save_overlays(overlays, rows, dataset, data, model, settings, outputs)
    finally:
        outputs.save_record()
    print(table(report, values, path))
    log.info("wrote %s and %d overlay(s) to %s", ", ".join(REPORTS), n_saved, out_dir)
    return report


def check_settings(cfg: DictConfig) -> None:
    """seg-eval's own settings, checked before any data is read (an ensemble's too)."""
    check_split(cfg.split)
    if cfg.n_overlays < 0:
        raise ConfigError(f"n_overlays must be >= 0, got {cfg.n_overlays}")
    if cfg.batch_size is not None and cfg.batch_size < 1:  # 0 would read as "not set" below
        raise ConfigError(f"batch_size must be >= 1, or null for the training batch size; got {cfg.batch_size}")
    if cfg.num_workers is not None and cfg.num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0 (0 loads data in the main process) or null, got {cfg.num_workers}")


def _overlay_names(cfg: DictConfig, rows: list[dict[str, Any]]) -> dict[int, str]:
    """Row position -> file name of the overlays to draw: the worst by Dice (ranked) or all."""
    choice = str(getattr(cfg.overlays, "value", cfg.overlays))
    if choice == "none":
        return {}
    order = range(len(rows)) if choice == "all" else sorted(range(len(rows)), key=lambda i: rows[i]["dice"])
    chosen = list(order)[: len(rows) if choice == "all" else max(0, cfg.n_overlays)]
    prefix = (lambda rank: f"{rank:04d}_") if choice == "worst" else (lambda rank: "")
    return {i: f"{prefix(rank)}{safe_name(str(rows[i]['id']))}_dice{rows[i]['dice']:.3f}.png"
            for rank, i in enumerate(chosen)}


def _save_overlays(names: dict[int, str], rows: list[dict[str, Any]], dataset: Any, data: SegDataModule,
                   model: torch.nn.Module, settings: StepSettings, outputs: OutputFolder) -> int:
    folder = outputs.folder / "overlays"
    if names:
        folder.mkdir(parents=True, exist_ok=True)
    chosen = list(names.items())
    for start in range(0, len(chosen), 16):  # bounded memory even with overlays=all
        part = chosen[start : start + 16]
        subset = Subset(dataset, [rows[i]["index"] for i, _ in part])
        panels = Preview(subset, list(range(len(part))), data.n_classes,
                         class_names=data.class_names).render(model, settings)
        for (_, name), panel in zip(part, panels):
            save_png(panel, folder / name)
            outputs.wrote(folder / name)
    return len(chosen)
