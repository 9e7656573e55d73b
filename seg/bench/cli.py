"""seg-bench: `seg-bench [seg-train overrides ...] [--steps N] [--warmup N] [--json PATH]
[--rounds N] [--cache-dir DIR] [--skip-reference] [--skip-eval]`.

One process measures, for one training config: seg's training throughput, the tutorial-style
reference loop's and their ratio, the data pipeline alone, data preparation (fresh cache, then
reused), peak memory, FLOPs per image (and on CUDA achieved TFLOP/s against the measured bf16 matmul
peak), and evaluation throughput. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from seg.bench.measure import interleaved, machine_info, matmul_peak_tflops, memory_kind, split_steps, sync
from seg.bench.reference import ReferenceRun
from seg.bench.seg_path import SegRun
from seg.cli.common import config_dir, describe_hydra_error, user_errors
from seg.engine import builders
from seg.errors import ConfigError, OneLineParser

PROG = "seg-bench"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog=PROG, description="Training/evaluation speed of seg against a tutorial-style loop, for one config.",
        epilog="example: seg-bench dataset=synthetic dataset.image_size=128 model=segnet trainer.batch_size=16",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="seg-train overrides, e.g. model=segnet trainer.precision=bf16")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile, autotune; default 5)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="seg and reference steps alternate in this many chunks (default 4)")
    parser.add_argument("--sync-every", type=int, default=None,
                        help="steps per timed window, each ending with a device sync (default: 5 on a GPU, "
                             "where a sync per step would stall the queue a real run keeps full; 1 on a CPU)")
    parser.add_argument("--json", type=Path, default=Path("benchmark.json"),
                        help="output file (default benchmark.json)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the fresh, deleted-afterwards data cache goes (default: the system temp folder)")
    parser.add_argument("--skip-reference", action="store_true", help="do not run the reference loop")
    parser.add_argument("--skip-eval", action="store_true", help="do not time evaluation")
    args = parser.parse_intermixed_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1 or (args.sync_every is not None and args.sync_every < 1):
        parser.error(f"need --steps >= 1, --warmup >= 0, --rounds >= 1 and --sync-every >= 1, got {args.steps}, "
                     f"{args.warmup}, {args.rounds}, {args.sync_every}")
    return args


def compose_config(overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose(config_name="train", overrides=list(overrides))


def time_data_prep(cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """Build the data twice from the same config: the first decodes into the (fresh) cache, the
    second should only open it. Returns the second data module and both times."""

    def build() -> tuple[Any, float]:
        start = time.perf_counter()
        data = builders.build_data(cfg.dataset)
        data.split_ids()
        for split in ("train", "val", "test"):
            try:
                data.dataset(split)
            except ConfigError:  # LUNA16 and ISBI 2012 have no test split
                if split != "test":
                    raise
        return data, time.perf_counter() - start

    _, first = build()
    data, second = build()
    return data, {"first_seconds": first, "second_seconds": second, "ratio": _ratio(second, first)}


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def describe(
    cfg: DictConfig, overrides: Sequence[str], data: Any, amp_precision: str, channels_last: bool
) -> dict[str, Any]:
    item = data.dataset("train")[0]
    aug = builders.build(cfg.augmentation, "augmentation")
    return {
        "overrides": list(overrides),
        "dataset": getattr(data, "name", type(data).__name__),
        "model": str(cfg.model.get("_target_", "?")).rsplit(".", 1)[-1],
        "model_options": {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "_target_"},
        "image_size": list(item["image"].shape[-2:]),
        "in_channels": data.in_channels,
        "n_classes": data.n_classes,
        "batch_size": int(cfg.trainer.batch_size),
        "precision": amp_precision,
        "channels_last": channels_last,
        "compile": bool(cfg.trainer.compile),
        "num_workers": int(cfg.trainer.num_workers),
        "loss": str(cfg.loss.get("_target_", "?")).rsplit(".", 1)[-1],
        "optimizer": str(cfg.optimizer.get("_target_", "?")).rsplit(".", 1)[-1],
        "augmentation": aug.describe() if hasattr(aug, "describe") else [type(aug).__name__],
        "train_images": len(data.dataset("train")),
    }


def run_benchmark(cfg: DictConfig, overrides: Sequence[str], *, steps: int, warmup: int, rounds: int = 4,
                  skip_reference: bool = False, skip_eval: bool = False, cache_parent: Path | None = None,
                  sync_every: int | None = None) -> dict[str, Any]:
    device = builders.resolve_device(cfg.trainer.device)
    sync_every = sync_every or (1 if device.type == "cpu" else 5)
    cfg.trainer.num_workers = builders.resolve_num_workers(cfg.trainer.num_workers, device)  # as seg-train
    if int(cfg.trainer.batch_size) < 1:
        raise ConfigError(f"trainer.batch_size must be >= 1, got {cfg.trainer.batch_size}")
    if cache_parent is not None:
        cache_parent.mkdir(parents=True, exist_ok=True)
    cache = tempfile.mkdtemp(prefix="seg-bench-cache-", dir=cache_parent)
    try:
        if "cache_dir" in cfg.dataset:
            with open_dict(cfg):
                cfg.dataset.cache_dir = cache
        data, prep = time_data_prep(cfg)
        prep["fresh_cache"] = "cache_dir" in cfg.dataset
        n_samples = (warmup + steps) * int(cfg.trainer.batch_size)
        factories: dict[str, Callable[[], Any]] = {"seg": lambda: SegRun(cfg, data, device)}
        if not skip_reference:
            factories["reference"] = lambda: ReferenceRun(cfg, data, device, n_samples=n_samples)
        paths = interleaved(factories, warmup=warmup, steps=steps, rounds=rounds, device=device, sync_every=sync_every)
        seg: SegRun = paths["seg"].run
        result: dict[str, Any] = {
            "config": describe(cfg, overrides, data, seg.amp.precision, seg.channels_last),
            "machine": machine_info(device),
            "settings": {"steps": steps, "warmup": warmup, "rounds": len(split_steps(steps, rounds)),
                         "sync_every": sync_every},
            "memory_kind": memory_kind(device), "data_prep": prep,
        }  # fmt: skip
        for name, path in paths.items():
            result[name] = {**path.times.summary(), "peak_memory_bytes": path.peak_memory_bytes,
                            "memory_increase_bytes": path.memory_increase_bytes}
        train = result["seg"]
        result.setdefault("reference", None)
        result["speedup"] = None
        if result["reference"] is not None:
            result["reference"]["dataset_images"] = len(paths["reference"].run.dataset)
            result["speedup"] = _ratio(train["images_per_second"], result["reference"]["images_per_second"])
            del paths["reference"]
        pipe = seg.time_pipeline(warmup, steps, sync_every).summary()
        pipe["ratio_to_training"] = _ratio(pipe["images_per_second_mean"], train["images_per_second"])
        result["data_pipeline"] = pipe
        result["flops"] = flops_figures(seg.flops_per_image(), train["images_per_second"], device)
        result["eval"] = None if skip_eval else seg.time_eval()
        return result
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def flops_figures(per_image: float, images_per_second: float, device: torch.device) -> dict[str, Any]:
    """Achieved TFLOP/s from the counted FLOPs; MFU against a measured bf16 matmul on CUDA only (a
    CPU has no comparable single peak)."""
    achieved = per_image * images_per_second / 1e12
    peak = None
    if device.type == "cuda":
        peak = matmul_peak_tflops(device)
        sync(device)
    return {"per_image": per_image, "achieved_tflops": achieved, "peak_bf16_tflops": peak,
            "mfu": achieved / peak if peak else None}


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{unit}"


def format_table(r: dict[str, Any]) -> str:
    c, m, seg = r["config"], r["machine"], r["seg"]
    rows: list[tuple[str, str, str]] = [
        ("seg training", _fmt(seg["images_per_second"], " img/s"),
         f"median of {seg.get('timed_windows', seg['timed_steps'])} windows, {seg['timed_steps']} steps "
         f"({seg['step_seconds_median']:.3f} s/step); "
         f"mean {seg['images_per_second_mean']:.1f} img/s"),
    ]
    if r["reference"] is not None:
        rows.append(("reference loop", _fmt(r["reference"]["images_per_second"], " img/s"),
                     "fp32, NCHW, per-sample CPU transforms, loss.item() per step"))
        rows.append(("speedup seg/reference", _fmt(r["speedup"], "x", 2), "target >= 2x (CPU), >= 3x (GPU)"))
    pipe = r["data_pipeline"]
    rows.append(("data pipeline alone", _fmt(pipe["images_per_second_mean"], " img/s"),
                 f"{_fmt(pipe['ratio_to_training'], 'x')} training (target >= 2x)"))
    prep = r["data_prep"]
    ratio = "n/a" if prep["ratio"] is None else f"{100 * prep['ratio']:.1f}%"
    rows.append(("data prep, first run", _fmt(prep["first_seconds"], " s", 3), "fresh cache"))
    rows.append(("data prep, second run", _fmt(prep["second_seconds"], " s", 3), f"{ratio} of first (target < 5%)"))
    kind = "CUDA max allocated" if r["memory_kind"] == "cuda_max_allocated" else "process peak RSS"
    for name in ("seg", "reference"):
        if r[name] is not None:
            peak, rise = r[name]["peak_memory_bytes"] / 2**20, r[name]["memory_increase_bytes"] / 2**20
            rows.append((f"peak memory, {name}", _fmt(peak, " MiB"), f"{kind}; +{rise:,.1f} MiB over its start"))
    fl = r["flops"]
    rows.append(("FLOPs per image", _fmt(fl["per_image"] / 1e9, " GFLOP", 3), "forward + backward"))
    rows.append(("achieved", _fmt(fl["achieved_tflops"], " TFLOP/s", 3), "at the seg training rate"))
    rows.append(("bf16 matmul peak", _fmt(fl["peak_bf16_tflops"], " TFLOP/s"), "measured (CUDA only)"))
    rows.append(("MFU", "n/a" if fl["mfu"] is None else f"{100 * fl['mfu']:.1f}%", "target >= 35% (GPU)"))
    if r["eval"] is not None:
        e = r["eval"]
        rows.append(("evaluation", _fmt(e["images_per_second"], " img/s"),
                     f"{e['split']} split, {e['images']} images; first pass {_fmt(e['first_pass_images_per_second'])}"
                     " img/s (loader start, autotuning)"))
    head = (f"{c['dataset']} {c['image_size'][0]}x{c['image_size'][1]}, {c['model']}, batch {c['batch_size']}, "
            f"precision {c['precision']}, channels_last {c['channels_last']}, compile {c['compile']}, "
            f"workers {c['num_workers']}, augmentation: {'; '.join(c['augmentation'])}")
    machine = (f"{m['device']} ({m['device_name']}), torch {m['torch']}, {m['cpu_count']} CPUs, "
               f"{m['torch_threads']} threads; {r['settings']['warmup']} warm-up + "
               f"{r['settings']['steps']} timed steps "
               f"in {r['settings']['rounds']} alternating rounds, a device sync every "
               f"{r['settings'].get('sync_every', 1)} step(s)")
    w1, w2 = max(len(a) for a, _, _ in rows), max(len(b) for _, b, _ in rows)
    lines = [head, machine, "-" * (w1 + w2 + 40)]
    lines += [f"{a:<{w1}}  {b:>{w2}}  {note}" for a, b, note in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with user_errors(PROG):
        try:
            cfg = compose_config(args.overrides)
        except HydraException as exc:
            raise ConfigError(f"cannot compose the config from {args.overrides}: {describe_hydra_error(exc)}") from None
        result = run_benchmark(cfg, args.overrides, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
                               skip_reference=args.skip_reference, skip_eval=args.skip_eval,
                               cache_parent=args.cache_dir, sync_every=args.sync_every)
        print(format_table(result))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
