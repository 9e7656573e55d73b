"""`seg-bench --to-quality val/dice=0.9`: the wall time from a process's start to its first validation
that reaches a target, for seg-train and for the tutorial-style reference loop, on one config.

Both run as processes of their own, so start-up (interpreter, imports, data, model) is in their time:
seg-train is the installed command, validating every epoch, read through its TensorBoard events (every
validation scalar, stamped when it was logged) while it runs, and stopped with SIGTERM once the target is
reached (it saves last.pt and exits); the reference is `python -m seg.bench.reference_fit` on the same
config, resolved, reporting one JSON line per epoch. The data cache is built once before both (a fresh
one, deleted afterwards), so neither pays the one-off decoding; its time is reported beside them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seg.bench.follow import JsonLinesTail, Outcome, Target, TensorBoardTail, watch
from seg.data.base import SegDataModule
from seg.engine import builders
from seg.errors import ConfigError
from seg.metrics import SegMetrics


def seg_train_command() -> list[str]:
    """The installed console script beside this interpreter (a venv's bin/), else the one on PATH."""
    beside = Path(sys.executable).with_name("seg-train")
    found = str(beside) if beside.is_file() else shutil.which("seg-train")
    return [found] if found else [sys.executable, "-m", "seg.cli.train"]


@contextmanager
def _environment(key: str, value: str) -> Iterator[None]:
    previous = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def prepare_data(cfg: DictConfig) -> tuple[SegDataModule, float]:
    """Build the dataset's cache once (both loops then open it) and check there is a val split."""
    start = time.perf_counter()
    data = builders.build_data(cfg.dataset)
    data.split_ids()
    if len(data.dataset("train")) == 0 or len(data.dataset("val")) == 0:
        raise ConfigError("--to-quality needs a non-empty train and val split: check the dataset's split settings")
    return data, time.perf_counter() - start


def check_metric(target: Target, data: SegDataModule) -> None:
    """The target's metric must be one validation reports (the names seg-train's monitor accepts)."""
    metrics = SegMetrics(n_classes=data.n_classes, class_names=data.class_names,
                         kaggle=bool(getattr(data, "kaggle_metric", False)))
    names = sorted({f"val/{k}" for k in metrics.compute()} | {"val/loss"})
    if target.metric not in names:
        raise ConfigError(f"--to-quality {target.metric}: not a validation metric of this config; "
                          f"choose one of {', '.join(names)}")


def run_to_quality(cfg: DictConfig, overrides: list[str], target: Target, *, max_seconds: float | None,
                   skip_reference: bool = False, work_parent: Path | None = None) -> dict[str, Any]:
    """Time seg-train, then the reference loop, to `target`; every figure as a dict."""
    if max_seconds is not None and max_seconds <= 0:
        raise ConfigError(f"--max-seconds must be > 0, got {max_seconds:g}")
    if work_parent is not None:
        work_parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="seg-bench-quality-", dir=work_parent))
    # This seg for both children, installed or run from a checkout (scripts/benchmark.py).
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding seg/
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "SEG_CACHE_DIR": str(work / "cache"), "PYTHONPATH": path}
    try:
        with _environment("SEG_CACHE_DIR", env["SEG_CACHE_DIR"]):
            data, prep_seconds = prepare_data(cfg)
        check_metric(target, data)
        command = [*seg_train_command(), *overrides, "trainer.val_every=1", f"hydra.run.dir={work / 'seg-run'}"]
        seg = watch("seg-train", command, TensorBoardTail(work / "seg-run" / "tb", target.metric),
                    target=target, work=work, env=env, max_seconds=max_seconds)
        reference = None
        if not skip_reference:
            OmegaConf.save(cfg, work / "reference.yaml", resolve=True)
            command_ref = [sys.executable, "-m", "seg.bench.reference_fit", "--config", str(work / "reference.yaml"),
                           "--out", str(work / "reference.jsonl")]
            reference = watch("reference", command_ref, JsonLinesTail(work / "reference.jsonl", target.metric),
                              target=target, work=work, env=env, max_seconds=max_seconds)
        item = data.dataset("train")[0]
        return {
            "mode": "to_quality", "target": asdict(target), "max_seconds": max_seconds,
            "max_epochs": int(cfg.trainer.epochs), "data_prep_seconds": prep_seconds,
            "config": {"overrides": list(overrides), "dataset": getattr(data, "name", type(data).__name__),
                       "model": str(cfg.model.get("_target_", "?")).rsplit(".", 1)[-1],
                       "image_size": list(item["image"].shape[-2:]), "batch_size": int(cfg.trainer.batch_size),
                       "precision": builders.resolve_precision(str(cfg.trainer.precision),
                                                               builders.resolve_device(cfg.trainer.device)),
                       "train_images": len(data.dataset("train")), "val_images": len(data.dataset("val"))},
            "seg": {**asdict(seg), "command": command[:-1]},  # the work folder is temporary
            "reference": None if reference is None else asdict(reference),
            **ratio(seg, reference),
        }  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ratio(seg: Outcome, reference: Outcome | None) -> dict[str, Any]:
    """Reference time / seg time. When only seg reached the target, a lower bound: the reference
    searched that long without reaching it."""
    if reference is None:
        return {"ratio": None, "ratio_text": "n/a (no reference run)"}
    if not seg.reached:
        return {"ratio": None, "ratio_text": "not reached (seg" + (", reference)" if not reference.reached else ")")}
    if reference.reached:
        value = reference.seconds / seg.seconds if seg.seconds else None
        return {"ratio": value, "ratio_text": "n/a" if value is None else f"{value:.2f}x"}
    bound = reference.searched_seconds / seg.seconds if seg.seconds else None
    return {"ratio": None, "ratio_bound": bound,
            "ratio_text": f">{bound:.2f}x (reference not reached)" if bound else "> (reference not reached)"}


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f} s"


def _load(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def format_quality_table(r: dict[str, Any]) -> str:
    c, t = r["config"], r["target"]
    target = f"{t['metric']} {'>=' if t['mode'] == 'max' else '<='} {t['value']:g}"
    limit = f"{r['max_seconds']:g} s" if r["max_seconds"] is not None else "none"
    m = r["machine"]
    lines = [f"time to {target}: {c['dataset']} {c['image_size'][0]}x{c['image_size'][1]}, {c['model']}, "
             f"batch {c['batch_size']}, seg precision {c['precision']}, at most {r['max_epochs']} epochs, "
             f"time limit {limit}",
             f"{m['device']} ({m['device_name']}; CPU flags: {', '.join(m['cpu']['flags']) or 'none listed'}), "
             f"{m['torch_threads']} torch threads, load average {_load(m['load_average_1min'])} at the start, "
             f"{_load(m.get('load_average_1min_end'))} at the end; "
             f"data cache built first in {r['data_prep_seconds']:.1f} s (in neither time)",
             "-" * 96,
             f"{'':<16}{'to target':>12}{'epochs':>8}{'value':>9}{'best':>9}{'1st val':>9}  stopped by"]
    for name, key in (("seg-train", "seg"), ("reference loop", "reference")):
        o = r[key]
        if o is None:
            continue
        first = o["curve"][0]["seconds"] if o["curve"] else None
        value = "-" if o["value"] is None else f"{o['value']:.4f}"
        best = "-" if o["best"] is None else f"{o['best']:.4f}"
        load = "/".join(_load(x) for x in o.get("load_average") or [None])
        lines.append(f"{name:<16}{_seconds(o['seconds']):>12}{o['epochs'] or '-':>8}{value:>9}{best:>9}"
                     f"{'-' if first is None else f'{first:.1f} s':>9}  {o['stopped_by']}"
                     f" after {o['searched_seconds']:.1f} s; load {load}")
    lines.append(f"speedup (reference time / seg time): {r['ratio_text']}")
    return "\n".join(lines)
