"""seg-eval: rebuild model and data from a checkpoint's stored config, score a split, write reports."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import Subset

from seg.checkpoint import load_checkpoint, sha256
from seg.config import INFERENCE_BATCH_SIZE
from seg.data.base import check_split
from seg.data.io import safe_name
from seg.engine import builders
from seg.engine.loop import StepSettings, evaluate
from seg.engine.preview import Preview
from seg.errors import ConfigError
from seg.inference.core import load_model, output_dir, stored_config
from seg.inference.outputs import OutputFolder
from seg.logger.overlay import save_png
from seg.metrics import SegMetrics, per_image_stats

log = logging.getLogger("seg")

SUMMARY_KEYS = ("dice", "iou", "precision", "recall", "f1", "dice_per_image")
REPORTS = ("metrics.json", "per_image.csv")


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    path = Path(cfg.ckpt).expanduser()
    ckpt = load_checkpoint(path)
    digest = sha256(path)
    check_split(cfg.split)
    if cfg.n_overlays < 0:
        raise ConfigError(f"n_overlays must be >= 0, got {cfg.n_overlays}")
    if cfg.num_workers is not None and cfg.num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0 (0 loads data in the main process) or null, got {cfg.num_workers}")
    out_dir = Path(cfg.out_dir).expanduser() if cfg.out_dir else output_dir(path, "eval", f"{path.stem}-{cfg.split}")
    outputs = OutputFolder(out_dir, "seg-eval")
    outputs.claim(REPORTS)  # before the evaluation: a file of the user's in the way fails at once
    train_cfg = stored_config(ckpt, cfg.dataset, path, cfg.allowed_targets)
    loaded = load_model(ckpt, path, train_cfg, device=cfg.device, precision=cfg.precision)
    model, settings = loaded.model, loaded.settings
    device, trainer = settings.device, train_cfg.get("trainer", {})
    data = builders.build_data(train_cfg.dataset)
    dataset = data.dataset(cfg.split)
    loss_fn = builders.build_module(train_cfg.loss, "loss").to(device)
    metrics = SegMetrics(n_classes=data.n_classes, class_names=data.class_names,
                         kaggle=bool(getattr(data, "kaggle_metric", False)))
    batch_size = int(cfg.batch_size or trainer.get("batch_size", INFERENCE_BATCH_SIZE))
    workers = builders.resolve_num_workers(cfg.num_workers, device)
    loader = builders.build_loader(dataset, batch_size=batch_size, num_workers=workers, device=device)
    rows: list[dict[str, Any]] = []
    ids = list(getattr(dataset, "ids", range(len(dataset))))

    def collect(batch: dict[str, Any], logits: torch.Tensor, mask: torch.Tensor) -> None:
        stats = {k: v.cpu().tolist() for k, v in per_image_stats(logits, mask).items()}
        for j, index in enumerate(batch["index"].tolist()):
            scores = {k: stats[k][j] for k in ("dice", "iou", "precision", "recall")}
            rows.append({"id": ids[index], "index": index, **scores})

    values = evaluate(model, loader, loss_fn, metrics, settings, desc=f"eval {cfg.split}", on_batch=collect)
    overlays = _overlay_names(cfg, rows)
    outputs.claim([*REPORTS, *(f"overlays/{name}" for name in overlays.values())])
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {**values, "n_images": len(rows), "split": cfg.split, "checkpoint": str(path.resolve()),
              "checkpoint_sha256": digest, "epoch": ckpt.get("epoch")}
    try:  # what was written is recorded even when a stop or an error comes in the middle
        (out_dir / "metrics.json").write_text(json.dumps(report, indent=1))
        _write_csv(out_dir / "per_image.csv", rows)
        for name in REPORTS:
            outputs.wrote(out_dir / name)
        outputs.remove_previous("overlays")  # an earlier seg-eval's ranks and scores; never the user's files
        n_saved = _save_overlays(overlays, rows, dataset, data.n_classes, model, settings, outputs)
    finally:
        outputs.save_record()
    _print_table(values, len(rows), cfg.split, path)
    log.info("wrote %s, %s and %d overlay(s) to %s", "metrics.json", "per_image.csv", n_saved, out_dir)
    return report


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "dice", "iou", "precision", "recall"], extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})


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


def _save_overlays(names: dict[int, str], rows: list[dict[str, Any]], dataset: Any, n_classes: int,
                   model: torch.nn.Module, settings: StepSettings, outputs: OutputFolder) -> int:
    folder = outputs.folder / "overlays"
    if names:
        folder.mkdir(parents=True, exist_ok=True)
    chosen = list(names.items())
    for start in range(0, len(chosen), 16):  # bounded memory even with overlays=all
        part = chosen[start : start + 16]
        subset = Subset(dataset, [rows[i]["index"] for i, _ in part])
        panels = Preview(subset, list(range(len(part))), n_classes).render(model, settings)
        for (_, name), panel in zip(part, panels):
            save_png(panel, folder / name)
            outputs.wrote(folder / name)
    return len(chosen)


def _print_table(values: dict[str, float], n: int, split: str, path: Path) -> None:
    keys = [k for k in SUMMARY_KEYS if k in values] + sorted(k for k in values if k not in SUMMARY_KEYS)
    width = max(len(k) for k in keys)
    lines = [f"{path} on {split} ({n} images)", "-" * (width + 12)]
    lines += [f"{k:<{width}}  {values[k]:>9.4f}" for k in keys]
    print("\n".join(lines))
