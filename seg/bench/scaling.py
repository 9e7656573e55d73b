"""`seg-bench --nproc N`: the data-parallel training step, timed in 1 process and in N processes
started by PyTorch's own launcher (`torch.distributed.run`: gloo on CPUs, nccl with one GPU per process
on CUDA), each process running seg/bench/ddp_step.py. Reports images/s per process and in total, and
the scaling efficiency total_N / (N x total_1).

Both runs use the same resolved config and the same torch threads per process (`--threads`, by default
the CPUs this process may use divided by N), so the efficiency compares like with like: on a CPU, N
processes of T threads against one of T threads. trainer.batch_size is per process, as in seg-train.
The data cache is built once, before both runs, and start-up is not timed (ddp_step.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from seg.bench.quality import _environment
from seg.engine import builders
from seg.errors import ConfigError, SegError

CPU_NOTE = ("on CPUs the processes share this machine's cores and memory bandwidth: the scaling measures the "
            "machine (and whatever else runs on it) as much as DDP")


def check_nproc(nproc: int, device: torch.device) -> None:
    """N processes need N devices of their own on CUDA (one GPU each); CPUs are shared; no DDP on MPS."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    if nproc == 1:
        return
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if nproc > count:
            raise ConfigError(f"--nproc {nproc}: this machine has {count} CUDA device(s) and each process takes one; "
                              f"use --nproc {count} or less, or trainer.device=cpu (gloo)")
        if device.index is not None:
            raise ConfigError(f"trainer.device={device} with --nproc {nproc}: each process takes the GPU of its rank; "
                              "use trainer.device=auto or cuda")
    elif device.type != "cpu":
        raise ConfigError(f"--nproc {nproc} on {device.type}: data-parallel runs need CUDA (nccl) or the CPU (gloo); "
                          "use --nproc 1 or trainer.device=cpu")


def default_threads(nproc: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // nproc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _error_line(log: Path) -> str:
    """A rank's own one-line error, else the last line before the launcher's failure report."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in lines:
        if line.startswith("seg-bench: error: "):
            return line.removeprefix("seg-bench: error: ")
    end = next((i for i, line in enumerate(lines) if "ChildFailedError" in line), len(lines))
    return lines[end - 1] if end > 0 else "(no output)"


def launch(nproc: int, work: Path, env: dict[str, str], *, warmup: int, steps: int, sync_every: int) -> dict[str, Any]:
    """One run of ddp_step.py: alone for 1 process, under torch.distributed.run for more."""
    out, log_path = work / f"ranks-{nproc}.json", work / f"ddp-{nproc}.log"
    child = ["-m", "seg.bench.ddp_step", "--config", str(work / "config.yaml"), "--out", str(out),
             "--warmup", str(warmup), "--steps", str(steps), "--sync-every", str(sync_every)]
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                                      "--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    start = time.perf_counter()
    with log_path.open("w") as log:
        code = subprocess.run([sys.executable, *launcher, *child], cwd=work, env=env, stdout=log,
                              stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    if code != 0 or not out.is_file():
        raise SegError(f"the {nproc}-process training step failed (exit {code}): {_error_line(log_path)}")
    return summarise(nproc, json.loads(out.read_text()), wall_seconds=wall)


def summarise(processes: int, ranks: list[dict[str, Any]], *, wall_seconds: float | None = None) -> dict[str, Any]:
    """Every rank's median img/s, their sum (the job's rate) and mean (per process)."""
    if len(ranks) != processes:
        raise SegError(f"the {processes}-process run reported {len(ranks)} rank(s)")
    rates = [float(r["images_per_second"]) for r in ranks]
    total = sum(rates)
    return {"processes": processes, "images_per_second_total": total,
            "images_per_second_per_process": total / processes, "wall_seconds": wall_seconds, "ranks": ranks}


def efficiency(run: dict[str, Any], single: dict[str, Any]) -> float | None:
    """total_N / (N x total_1): 1.0 is linear scaling."""
    base = single["images_per_second_total"]
    return run["images_per_second_total"] / (run["processes"] * base) if base > 0 else None


def _describe(cfg: DictConfig, overrides: list[str], data: Any, device: torch.device) -> dict[str, Any]:
    t = cfg.trainer
    amp = builders.build_amp(str(t.precision), device)
    item = data.dataset("train")[0]
    return {"overrides": list(overrides), "dataset": getattr(data, "name", type(data).__name__),
            "model": str(cfg.model.get("_target_", "?")).rsplit(".", 1)[-1],
            "image_size": list(item["image"].shape[-2:]), "batch_size_per_process": int(t.batch_size),
            "precision": amp.precision, "channels_last": builders.resolve_channels_last(t.channels_last, amp),
            "compile": bool(t.compile), "train_images": len(data.dataset("train"))}


def run_scaling(cfg: DictConfig, overrides: list[str], *, nproc: int, steps: int, warmup: int,
                sync_every: int | None = None, threads: int | None = None,
                work_parent: Path | None = None) -> dict[str, Any]:
    """Time the step in 1 process, then in `nproc`; every figure as a dict."""
    device = builders.resolve_device(cfg.trainer.device)
    check_nproc(nproc, device)
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    if int(cfg.trainer.batch_size) < 1:
        raise ConfigError(f"trainer.batch_size must be >= 1, got {cfg.trainer.batch_size}")
    threads = threads or default_threads(nproc)
    sync_every = sync_every or (1 if device.type == "cpu" else 5)
    if work_parent is not None:
        work_parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="seg-bench-ddp-", dir=work_parent))
    package_root = str(Path(__file__).resolve().parents[2])  # this seg in the children, installed or a checkout
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "SEG_CACHE_DIR": str(work / "cache"), "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads),
           "PYTHONUNBUFFERED": "1"}
    try:
        if "cache_dir" in cfg.dataset:
            with open_dict(cfg):
                cfg.dataset.cache_dir = str(work / "cache")
        with _environment("SEG_CACHE_DIR", env["SEG_CACHE_DIR"]):
            data = builders.build_data(cfg.dataset)  # decodes into the cache once; the processes open it
            data.split_ids()
            config = _describe(cfg, overrides, data, device)
        OmegaConf.save(cfg, work / "config.yaml", resolve=True)
        timing = {"warmup": warmup, "steps": steps, "sync_every": sync_every}
        runs = [launch(1, work, env, **timing)]
        if nproc > 1:
            runs.append(launch(nproc, work, env, **timing))
        for run in runs:
            run["efficiency"] = efficiency(run, runs[0])
        return {"mode": "ddp_step", "config": config,
                "settings": {**timing, "nproc": nproc, "threads_per_process": threads,
                             "backend": "nccl" if device.type == "cuda" else "gloo"},
                "runs": runs, "efficiency": runs[-1]["efficiency"],
                "note": CPU_NOTE if device.type == "cpu" else None}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_scaling_table(r: dict[str, Any]) -> str:
    c, s, m = r["config"], r["settings"], r["machine"]
    lines = [f"data-parallel training step: {c['dataset']} {c['image_size'][0]}x{c['image_size'][1]}, {c['model']}, "
             f"batch {c['batch_size_per_process']} per process, precision {c['precision']}, "
             f"channels_last {c['channels_last']}, compile {c['compile']}",
             f"{m['device']} ({m['device_name']}), torch {m['torch']}, {m['cpu_count']} CPUs, backend {s['backend']}, "
             f"{s['threads_per_process']} torch thread(s) per process; {s['warmup']} warm-up + {s['steps']} timed "
             f"steps, a device sync every {s['sync_every']}; load average {_fmt(m['load_average_1min'], '.2f')} "
             f"at the start, {_fmt(m.get('load_average_1min_end'), '.2f')} at the end",
             "-" * 64,
             f"{'processes':>9}  {'img/s per process':>17}  {'total img/s':>11}  {'efficiency':>10}  global batch"]
    for run in r["runs"]:
        lines.append(f"{run['processes']:>9}  {run['images_per_second_per_process']:>17,.1f}  "
                     f"{run['images_per_second_total']:>11,.1f}  {_fmt(run['efficiency'], '>10.1%')}  "
                     f"{run['processes'] * c['batch_size_per_process']}")
    lines.append("efficiency = total img/s of N processes / (N x total img/s of 1 process)")
    if r.get("note"):
        lines.append(f"note: {r['note']}")
    return "\n".join(lines)
