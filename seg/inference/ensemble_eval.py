"""seg-eval for an ensemble (`ckpt=[a.pt,b.pt]` or `ckpt=FOLDER`): one pass over the split in which
every member runs on each batch in turn and is scored on its own, while the mean of their
probabilities is scored as seg-eval scores one model (metrics.json, per_image.csv, reliability.png,
overlays). ensemble.csv and ensemble.json hold one row per member and one for the ensemble.

Data and split come from the first member's stored config (with the command's `dataset.*`). Members
keep their own post-processing (a .postprocess.json beside them), so each member's row is what seg-eval
gives for it alone; the ensemble's averaged probabilities are not post-processed. The ensemble's
`loss` is the first member's loss function on the averaged probabilities.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from seg.config import INFERENCE_BATCH_SIZE
from seg.engine import builders
from seg.engine.amp import Amp
from seg.engine.loop import StepSettings, to_device
from seg.errors import ConfigError
from seg.inference.core import (
    Inference,
    InferredLogits,
    ensemble_output_dir,
    load_model,
    probs_to_logits,
    resolve_inference,
    stored_config,
)
from seg.inference.ensemble import (
    average,
    label,
    load_members,
    member_logits,
    note_postprocess,
    split_difference,
)
from seg.inference.evaluate import _overlay_names, _save_overlays, check_settings
from seg.inference.outputs import OutputFolder
from seg.inference.postprocess import load_postprocess
from seg.inference.report import Collector, finite, prepare, probabilities, summary
from seg.inference.tables import REPORTS, SUMMARY_KEYS, table, write_reports
from seg.metrics import SegMetrics
from seg.provenance import provenance_differences

log = logging.getLogger("seg")

FILES = ("ensemble.csv", "ensemble.json")
COLUMNS = ("member", "name", "checkpoint", "checkpoint_sha256", "epoch", "postprocess")
NO_SURFACE = OmegaConf.create({"surface": False, "surface_tolerance": 0.0})  # a member's row: pooled metrics only


@dataclass
class Member:
    """One checkpoint of the ensemble, run as seg-eval runs it alone, with its own running metrics."""

    path: Path
    digest: str
    epoch: Any
    provenance: dict[str, Any]
    train_cfg: DictConfig
    how: Inference
    forward: torch.nn.Module  # its model, or the model through sliding windows
    settings: StepSettings
    loss_fn: torch.nn.Module
    metrics: SegMetrics = field(init=False)  # set once the data is built (from the first member)
    # Its post-processed masks' metrics, where its .postprocess.json applies.
    collector: Collector | None = field(init=False, default=None)

    def score(self, batch: dict[str, Any], image: torch.Tensor, mask: torch.Tensor,
              weight: torch.Tensor | None) -> torch.Tensor:
        """Count this member's logits on the batch in its own metrics; its probabilities."""
        logits = member_logits(self.forward, self.settings, image)
        self.metrics.update(logits, mask, loss=self.loss_fn(logits, mask, weight=weight))
        if self.collector is not None:
            self.collector(batch, logits, mask)
        return probabilities(logits)

    def values(self) -> dict[str, float]:
        raw = self.metrics.compute()
        return self.collector.values(raw) if self.collector is not None else raw


def _member(cfg: DictConfig, ckpt: dict[str, Any], path: Path, digest: str) -> Member:
    train_cfg = stored_config(ckpt, cfg.dataset, path, cfg.allowed_targets)
    how = resolve_inference(cfg.get("inference"), ckpt["config"])
    loaded = load_model(ckpt, path, train_cfg, device=cfg.device, precision=cfg.precision)
    settings = loaded.settings
    forward = InferredLogits(loaded.model, settings.amp, how, settings.channels_last) if how.sliding else loaded.model
    loss_fn = builders.build_module(train_cfg.loss, "loss").to(settings.device)
    return Member(path, digest, ckpt.get("epoch"), dict(ckpt.get("provenance") or {}), train_cfg, how,
                  forward, settings, loss_fn)


class EnsembleLogits(torch.nn.Module):
    """The members as one model returning the logits of their averaged probabilities (the overlays)."""

    def __init__(self, members: Sequence[Member]) -> None:
        super().__init__()
        self.members = list(members)

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return probs_to_logits(average(probabilities(member_logits(m.forward, m.settings, image))
                                       for m in self.members))


def run_ensemble_eval(cfg: DictConfig, paths: Sequence[Path]) -> dict[str, Any]:
    check_settings(cfg)
    if cfg.tune:
        raise ConfigError("tune=true tunes one checkpoint's post-processing, and an ensemble's averaged probabilities "
                          "are not post-processed; tune each member alone (seg-eval ckpt=PATH split=val tune=true)")
    out_dir = Path(cfg.out_dir).expanduser() if cfg.out_dir else ensemble_output_dir(paths, "eval", str(cfg.split))
    outputs = OutputFolder(out_dir, "seg-eval")
    outputs.claim([*REPORTS, *FILES])  # before the evaluation: a file of the user's in the way fails at once
    members = load_members(paths, cfg.get("inference"), lambda ckpt, path, digest: _member(cfg, ckpt, path, digest))
    first = members[0]
    log.info("seg-eval: an ensemble of %d checkpoints, %s", len(members), first.how.describe())
    trainer = first.train_cfg.get("trainer", {})
    data = builders.build_data(first.train_cfg.dataset)
    dataset = data.dataset(cfg.split)
    _warn_differences(members, data, str(cfg.split))
    collector = prepare(OmegaConf.merge(cfg, {"postprocess": False}), first.path, first.digest, data, dataset, trainer)
    if cfg.postprocess:
        note_postprocess(paths, "seg-eval")
    kaggle = bool(getattr(data, "kaggle_metric", False))
    for m in members:  # each member's row is its seg-eval result alone, post-processed where that applies
        m.metrics = SegMetrics(n_classes=data.n_classes, class_names=data.class_names, kaggle=kaggle)
        tuned = load_postprocess(m.path, m.digest) if cfg.postprocess else None
        m.collector = Collector(NO_SURFACE, data, dataset, tuned, None) if tuned is not None else None
    metrics = SegMetrics(n_classes=data.n_classes, class_names=data.class_names, kaggle=kaggle)
    device = first.settings.device
    batch_size = int(cfg.batch_size or trainer.get("batch_size", INFERENCE_BATCH_SIZE))
    workers = builders.resolve_num_workers(cfg.num_workers, device)
    loader = builders.build_loader(dataset, batch_size=batch_size, num_workers=workers, device=device)
    raw = _score(members, loader, first.loss_fn, metrics, collector, device, f"eval {cfg.split} (ensemble)")
    rows, values = collector.rows, collector.values(raw)
    table_rows = [*(_row(k, m, paths) for k, m in enumerate(members, 1)),
                  {"member": "ensemble", "name": f"mean of {len(members)}", "checkpoint": "", "checkpoint_sha256": "",
                   "epoch": "", "postprocess": "none", **values}]
    overlays = _overlay_names(cfg, rows)
    outputs.claim([*REPORTS, *FILES, *(f"overlays/{name}" for name in overlays.values())])
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"ensemble of {len(members)} checkpoints"
    report = {**values, "n_images": len(rows), "split": cfg.split, "members": table_rows[:-1],
              "inference": first.how.describe(), **summary(collector, raw, None)}
    try:  # what was written is recorded even when a stop or an error comes in the middle
        write_reports(outputs, report, collector, f"{title} on {cfg.split}")
        _write_rows(outputs, table_rows, {"split": cfg.split, "n_images": len(rows), "inference": report["inference"]})
        outputs.remove_previous("overlays")
        plain = StepSettings(device, Amp.create("32", device))  # each member runs in its own precision inside
        n_saved = _save_overlays(overlays, rows, dataset, data, EnsembleLogits(members), plain, outputs)
    finally:
        outputs.save_record()
    print(table(report, values, Path(title)))  # the ensemble's class x metric table, as for one model
    print(members_table(table_rows, f"members and their ensemble on {cfg.split} ({len(rows)} images)"))
    log.info("wrote %s and %d overlay(s) to %s", ", ".join([*REPORTS, *FILES]), n_saved, out_dir)
    return report


@torch.no_grad()
def _score(members: Sequence[Member], loader: Iterable[dict[str, Any]], loss_fn: torch.nn.Module,
           metrics: SegMetrics, collector: Collector, device: torch.device, desc: str) -> dict[str, float]:
    """The pass: each batch through every member in turn (each counted in its own metrics), then their
    mean probabilities counted as one model's (as logits: what metrics, losses and the collector take)."""
    for m in members:
        m.forward.eval()
    metrics.reset()
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None):
        image, mask, weight = to_device(batch, device)  # each member puts it in its own layout
        logits = probs_to_logits(average(m.score(batch, image, mask, weight) for m in members))
        metrics.update(logits, mask, loss=loss_fn(logits, mask, weight=weight))
        collector(batch, logits, mask)
    return metrics.compute()


def _warn_differences(members: Sequence[Member], data: Any, split: str) -> None:
    """The first member's provenance as seg-eval checks one checkpoint's; every other member's data,
    and whether the cases evaluated were its own `split` cases (members of other folds or seeds)."""
    ids = data.split_ids()
    fingerprint = getattr(data, "source_fingerprint", lambda: None)()
    for k, m in enumerate(members, 1):
        found = provenance_differences({"provenance": m.provenance}, fingerprint, ids if k == 1 else None)
        for difference in found:
            log.warning("seg-eval: ensemble member %d (%s): %s; the scores may not compare with the training's", k,
                        m.path, difference)
        why = split_difference(m.path, m.provenance, split, ids) if k > 1 else None
        if why is not None:
            log.warning("seg-eval: ensemble member %d (%s): %s; it may have trained on cases it is scored on", k,
                        m.path, why)


def _row(k: int, m: Member, paths: Sequence[Path]) -> dict[str, Any]:
    pp = m.collector.settings.describe() if m.collector is not None and m.collector.settings is not None else "none"
    return {"member": str(k), "name": label(m.path, paths), "checkpoint": str(m.path.resolve()),
            "checkpoint_sha256": m.digest, "epoch": m.epoch, "postprocess": pp, **m.values()}


def _metric_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    keys = {k for r in rows for k in r if k not in COLUMNS}
    return [k for k in (*SUMMARY_KEYS, "loss") if k in keys] + sorted(keys - {*SUMMARY_KEYS, "loss"})


def _write_rows(outputs: OutputFolder, rows: Sequence[dict[str, Any]], about: dict[str, Any]) -> None:
    """ensemble.csv (one row per member, then the ensemble) and ensemble.json (the same rows)."""
    folder = outputs.folder
    with open(folder / "ensemble.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*COLUMNS, *_metric_keys(rows)], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    outputs.wrote(folder / "ensemble.csv")
    (folder / "ensemble.json").write_text(json.dumps(finite({**about, "rows": list(rows)}), indent=1, allow_nan=False))
    outputs.wrote(folder / "ensemble.json")


def members_table(rows: Sequence[dict[str, Any]], title: str) -> str:
    """The printed comparison: one line per member and one for the ensemble, the main pooled metrics."""
    keys = [k for k in (*SUMMARY_KEYS, "loss") if all(k in r for r in rows)]
    width = max(len(str(r["name"])) for r in rows) + 4
    lines = [title, f"{'member':<{width}}" + "".join(f"{k:>16}" for k in keys)]
    for r in rows:
        tag = f"{r['member']:>2} " if r["member"] != "ensemble" else "   "
        lines.append(f"{tag + str(r['name']):<{width}}" + "".join(f"{r[k]:>16.4f}" for k in keys))
    if any(r["postprocess"] != "none" for r in rows):
        lines.append("members with a .postprocess.json are scored post-processed; the ensemble is not")
    return "\n".join(lines)
