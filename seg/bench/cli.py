"""seg-bench: `seg-bench [seg-train overrides ...] [--steps N] [--warmup N] [--json PATH]
[--rounds N] [--cache-dir DIR] [--skip-reference] [--skip-eval] [--peak-size N]`, or
`seg-bench --to-quality val/dice=0.9 [overrides ...] [--max-seconds S]`, or
`seg-bench --nproc N [overrides ...] [--threads T]`.

One process measures, for one training config: seg's training throughput, the tutorial-style
reference loop's and their ratio, the data pipeline alone, data preparation (fresh cache, then
reused), peak memory, FLOPs per image, achieved TFLOP/s and MFU against measured matmul peaks (fp32,
and bf16 where native), and evaluation throughput. Prints a table and writes JSON. `--to-quality`
times both loops, as processes, to a validation target instead (seg/bench/quality.py); `--nproc N`
times the data-parallel training step in 1 and N processes (seg/bench/scaling.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from seg.bench.follow import parse_target
from seg.bench.measure import interleaved, machine_info, memory_kind, split_steps
from seg.bench.peak import cpu_description, flops_figures, flops_rows
from seg.bench.quality import format_quality_table, run_to_quality
from seg.bench.reference import ReferenceRun
from seg.bench.scaling import format_scaling_table, run_scaling
from seg.bench.seg_path import SegRun
from seg.cli.common import config_dir, describe_hydra_error, user_errors
from seg.engine import builders
from seg.errors import ConfigError, OneLineParser

PROG = "seg-bench"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog=PROG, description="Training/evaluation speed of seg against a tutorial-style loop, for one config.",
        epilog="examples: seg-bench dataset=synthetic dataset.image_size=128 model=segnet trainer.batch_size=16; "
               "seg-bench --to-quality val/dice=0.9 trainer.epochs=20 --max-seconds 600",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="seg-train overrides, e.g. model=segnet trainer.precision=bf16")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile, autotune; default 5)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="seg and reference steps alternate in this many chunks (default 4)")
    parser.add_argument("--sync-every", type=int, default=None,
                        help="steps per timed window, each ending with a device sync (default: 5 on a GPU, "
                             "where a sync per step would stall the queue a real run keeps full; 1 on a CPU)")
    parser.add_argument("--json", type=Path, default=None,
                        help="output file (default benchmark.json; to_quality.json with --to-quality)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the fresh, deleted-afterwards data cache (with --to-quality: and the runs) goes "
                             "(default: the system temp folder)")
    parser.add_argument("--skip-reference", action="store_true", help="do not run the reference loop")
    parser.add_argument("--skip-eval", action="store_true", help="do not time evaluation")
    parser.add_argument("--peak-size", type=int, default=None,
                        help="N of the N x N matmuls that measure the fp32/bf16 peak for MFU (default 2048 on a CPU, "
                             "8192 on a GPU)")
    parser.add_argument("--to-quality", metavar="METRIC=VALUE", default=None,
                        help="instead of throughput: wall time, start-up included, until the first validation with "
                             "METRIC >= VALUE (<= for a loss; or write >= / <=), e.g. val/dice=0.9, for seg-train "
                             "(the installed command, validating every epoch, stopped by SIGTERM at the target) and "
                             "the reference loop, each at most trainer.epochs epochs; prints both, the epochs and "
                             "the ratio")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="with --to-quality: give up on a loop after this many seconds (reported as not "
                             "reached; default: no limit but trainer.epochs)")
    parser.add_argument("--nproc", type=int, default=None,
                        help="instead: time seg-train's data-parallel training step in 1 process and in N (started "
                             "by torch.distributed.run; gloo on CPUs, nccl with one GPU per process), trainer."
                             "batch_size per process; prints img/s per process, in total, and the scaling "
                             "efficiency total_N / (N x total_1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="with --nproc: torch threads of every process, the 1-process run's too (default: "
                             "this machine's CPUs // N)")
    args = parser.parse_intermixed_args(argv)
    if args.nproc is not None and args.nproc < 1:
        parser.error(f"--nproc must be >= 1 (processes, one GPU each on CUDA), got {args.nproc}")
    if args.nproc is not None and args.to_quality is not None:
        parser.error("--nproc and --to-quality are separate measurements: give one of them")
    if args.threads is not None and (args.nproc is None or args.threads < 1):
        parser.error(f"--threads needs --nproc and a value >= 1, got {args.threads}")
    if args.max_seconds is not None and not args.max_seconds > 0:
        parser.error(f"--max-seconds must be > 0, got {args.max_seconds:g}")
    if args.peak_size is not None and args.peak_size < 1:
        parser.error(f"--peak-size must be >= 1, got {args.peak_size}")
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
                  sync_every: int | None = None, peak_size: int | None = None) -> dict[str, Any]:
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
            "machine": {**machine_info(device), "cpu": cpu_description()},
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
        rates = {"seg": (train["images_per_second"], seg.amp.precision)}
        if result["reference"] is not None:
            rates["reference"] = (result["reference"]["images_per_second"], "32")  # the tutorial's fp32
        result["flops"] = flops_figures(seg.flops_per_image(), rates, device, matmul_size=peak_size)
        result["eval"] = None if skip_eval else seg.time_eval()
        return result
    finally:
        shutil.rmtree(cache, ignore_errors=True)


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
    rows += flops_rows(r["flops"])
    if r["eval"] is not None:
        e = r["eval"]
        rows.append(("evaluation", _fmt(e["images_per_second"], " img/s"),
                     f"{e['split']} split, {e['images']} images; first pass {_fmt(e['first_pass_images_per_second'])}"
                     " img/s (loader start, autotuning)"))
    head = (f"{c['dataset']} {c['image_size'][0]}x{c['image_size'][1]}, {c['model']}, batch {c['batch_size']}, "
            f"precision {c['precision']}, channels_last {c['channels_last']}, compile {c['compile']}, "
            f"workers {c['num_workers']}, augmentation: {'; '.join(c['augmentation'])}")
    flags = ", ".join((m.get("cpu") or {}).get("flags") or []) or "none of avx2/avx512/amx"
    machine = (f"{m['device']} ({m['device_name']}; CPU flags: {flags}), torch {m['torch']}, {m['cpu_count']} CPUs, "
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
        if args.nproc is not None:
            device = builders.resolve_device(cfg.trainer.device)
            machine = {**machine_info(device), "cpu": cpu_description()}  # the load before the runs
            result = {**run_scaling(cfg, args.overrides, nproc=args.nproc, steps=args.steps, warmup=args.warmup,
                                    sync_every=args.sync_every, threads=args.threads, work_parent=args.cache_dir),
                      "machine": machine}
            result["machine"]["load_average_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            print(format_scaling_table(result))
        elif args.to_quality is not None:
            target = parse_target(args.to_quality)
            device = builders.resolve_device(cfg.trainer.device)
            machine = {**machine_info(device), "cpu": cpu_description()}
            result = {**run_to_quality(cfg, args.overrides, target, max_seconds=args.max_seconds,
                                       skip_reference=args.skip_reference, work_parent=args.cache_dir),
                      "machine": machine}
            result["machine"]["load_average_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            print(format_quality_table(result))
        else:
            result = run_benchmark(cfg, args.overrides, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
                                   skip_reference=args.skip_reference, skip_eval=args.skip_eval,
                                   cache_parent=args.cache_dir, sync_every=args.sync_every, peak_size=args.peak_size)
            print(format_table(result))
        mode = "ddp_step" if args.nproc is not None else "to_quality" if args.to_quality is not None else "benchmark"
        out = args.json or Path(f"{mode}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
