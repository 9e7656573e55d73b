"""The machine's arithmetic ceiling, measured, and the model FLOPs utilisation (MFU) read against it.

A dense square matmul is the fastest thing the math libraries do, so its rate is the practical peak a
training step's convolutions can approach. It is measured in the precision each training path
computes in: fp32 always; bf16 on CUDA and on CPUs that compute bf16 natively (AVX512-BF16 or AMX,
the same probe `trainer.precision=auto` uses). On a CPU it runs on this process's torch threads, the
count seg-train and the reference loop use as well.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from seg.bench.measure import sync
from seg.engine.builders import cpu_has_bf16

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LABELS = {"32": "fp32", "bf16": "bf16", "16": "fp16"}  # trainer.precision -> the peak's name
DEFAULT_SIZE = {"cpu": 2048, "cuda": 8192}  # CPU: 17 GFLOP a matmul (0.1 s on 2 Zen 4 cores) saturates them
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def matmul_tflops(n: int, iters: int, seconds: float) -> float:
    """Rate of `iters` n x n x n matmuls done in `seconds`: 2 n^3 FLOPs each (a multiply and an add)."""
    return 2.0 * n**3 * iters / seconds / 1e12 if seconds > 0 else 0.0


def matmul_peak(device: torch.device, dtype: torch.dtype, *, n: int, min_seconds: float = 1.0,
                max_iters: int = 50) -> float:
    """The best rate (TFLOP/s) over matmuls timed one by one after an untimed one, for `min_seconds`
    (at least 3, at most `max_iters` of them): the ceiling, which a busy neighbour on a shared machine
    can lower but not raise."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = a @ b
    sync(device)
    best, spent, iters = 0.0, 0.0, 0
    while iters < 3 or (spent < min_seconds and iters < max_iters):
        start = time.perf_counter()
        out = a @ b
        sync(device)
        seconds = time.perf_counter() - start
        spent, iters = spent + seconds, iters + 1
        best = max(best, matmul_tflops(n, 1, seconds))
    del out
    return best


def peak_precisions(device: torch.device) -> list[str]:
    """Which peaks to measure: fp32 everywhere, bf16 where the hardware computes it natively."""
    if device.type == "cuda":
        return ["fp32", "bf16"] if torch.cuda.is_bf16_supported() else ["fp32", "fp16"]
    if device.type == "cpu" and cpu_has_bf16():
        return ["fp32", "bf16"]
    return ["fp32"]


def measure_peaks(device: torch.device, *, n: int | None = None, min_seconds: float = 1.0) -> dict[str, Any]:
    """Measured matmul peaks by precision (`{"fp32": TFLOP/s, "bf16": ...}`), the size and thread count."""
    size = int(n or DEFAULT_SIZE.get(device.type, 2048))
    peaks = {p: matmul_peak(device, DTYPES[p], n=size, min_seconds=min_seconds) for p in peak_precisions(device)}
    return {"peaks_tflops": peaks, "matmul_size": size, "threads": torch.get_num_threads()}


def peak_for(precision: str, peaks: dict[str, float]) -> tuple[str, float | None]:
    """The peak a path computing in `precision` (a trainer.precision) is read against: its own where
    measured; fp16 against bf16 on a GPU (the same tensor-core rate), fp32 otherwise (a CPU emulates
    fp16, and bf16 without native support)."""
    own = LABELS.get(precision, precision)
    for candidate in (own, "bf16" if own == "fp16" else "fp32", "fp32"):
        if candidate in peaks:
            return candidate, peaks[candidate]
    return own, None


def flops_figures(per_image: float, rates: dict[str, tuple[float, str]], device: torch.device, *,
                  matmul_size: int | None = None, min_seconds: float = 1.0) -> dict[str, Any]:
    """Achieved TFLOP/s of each training path (`rates`: name -> (images per second, precision)) from
    the counted FLOPs per image, and each one's MFU against the measured peak of its precision."""
    measured = measure_peaks(device, n=matmul_size, min_seconds=min_seconds)
    peaks = measured["peaks_tflops"]
    out: dict[str, Any] = {"per_image": per_image, "peak_fp32_tflops": peaks.get("fp32"),
                           "peak_bf16_tflops": peaks.get("bf16"), "peaks_tflops": peaks,
                           "matmul_size": measured["matmul_size"], "threads": measured["threads"]}
    for name, (images_per_second, precision) in rates.items():
        achieved = per_image * images_per_second / 1e12
        against, peak = peak_for(precision, peaks)
        prefix = "" if name == "seg" else f"{name}_"
        out[f"{prefix}achieved_tflops"] = achieved
        out[f"{prefix}mfu"] = achieved / peak if peak else None
        out[f"{prefix}mfu_against"] = against
    return out


def cpu_description() -> dict[str, Any]:
    """What `lscpu` shows of the CPU: its model name, family/model numbers, and the flags that decide
    its arithmetic (AVX-512, native bf16 through AVX512-BF16 or AMX)."""
    info: dict[str, Any] = {"model_name": None, "family": None, "model": None, "flags": []}
    keys = {"model name": "model_name", "cpu family": "family", "model": "model"}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key in keys and info[keys[key]] is None:
                    info[keys[key]] = value
                elif key == "flags":
                    present = set(value.split())
                    info["flags"] = [flag for flag in CPU_FLAGS if flag in present]
                    break  # the first processor's entry says it all
    except OSError:
        pass
    info["native_bf16"] = cpu_has_bf16()
    return info


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{unit}"


def _rate(tflops: float | None) -> str:
    """TFLOP/s, in GFLOP/s below 1 TFLOP/s (CPUs)."""
    if tflops is None:
        return "n/a"
    return f"{tflops:,.1f} TFLOP/s" if tflops >= 1 else f"{1000 * tflops:,.1f} GFLOP/s"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def flops_rows(fl: dict[str, Any]) -> list[tuple[str, str, str]]:
    """FLOPs, achieved rates, the measured peaks and each path's MFU against the peak of its precision."""
    size = f"{fl.get('matmul_size', '?')}^3 matmul on {fl.get('threads', '?')} thread(s), best rate"
    rows = [("FLOPs per image", _fmt(fl["per_image"] / 1e9, " GFLOP", 3), "forward + backward"),
            ("achieved, seg", _rate(fl["achieved_tflops"]), "at the seg training rate")]
    if fl.get("reference_achieved_tflops") is not None:
        rows.append(("achieved, reference", _rate(fl["reference_achieved_tflops"]), "at the reference rate"))
    rows.append(("fp32 matmul peak", _rate(fl.get("peak_fp32_tflops")), f"measured: {size}"))
    rows.append(("bf16 matmul peak", _rate(fl["peak_bf16_tflops"]),
                 "measured" if fl["peak_bf16_tflops"] is not None else "not measured: no native bf16"))
    rows.append(("MFU, seg", _percent(fl["mfu"]), f"against the {fl.get('mfu_against', 'bf16')} peak; "
                                                   "target >= 35% (GPU)"))
    if fl.get("reference_achieved_tflops") is not None:
        rows.append(("MFU, reference", _percent(fl.get("reference_mfu")),
                     f"against the {fl.get('reference_mfu_against', 'fp32')} peak"))
    return rows
