"""The measured matmul peaks and the MFU read against them: arithmetic, which peak each precision is
read against, the JSON fields, and the CPU's description. Tiny matrices; no speed is asserted."""

from __future__ import annotations

import pytest
import torch

import seg.bench.peak as peak
from seg.bench.peak import cpu_description, flops_figures, flops_rows, matmul_peak, matmul_tflops, peak_for
from seg.engine.builders import cpu_has_bf16

CPU = torch.device("cpu")


def test_matmul_rate_arithmetic() -> None:
    assert matmul_tflops(1000, 2, 0.5) == pytest.approx(2 * 1000**3 * 2 / 0.5 / 1e12)  # 0.008 TFLOP/s
    assert matmul_tflops(64, 1, 0.0) == 0.0


def test_matmul_peak_times_a_few_real_matmuls() -> None:
    assert matmul_peak(CPU, torch.float32, n=32, min_seconds=0.0) > 0


@pytest.mark.parametrize(("precision", "peaks", "expected"), [
    ("bf16", {"fp32": 0.2, "bf16": 0.4}, ("bf16", 0.4)),
    ("bf16", {"fp32": 0.2}, ("fp32", 0.2)),  # a CPU without native bf16: its arithmetic is fp32's
    ("32", {"fp32": 0.2, "bf16": 0.4}, ("fp32", 0.2)),
    ("16", {"fp32": 60.0, "bf16": 800.0}, ("bf16", 800.0)),  # a GPU's tensor cores
    ("16", {"fp32": 0.2}, ("fp32", 0.2)),  # emulated on a CPU
])  # fmt: skip
def test_peak_for_each_precision(precision: str, peaks: dict[str, float], expected: tuple[str, float]) -> None:
    assert peak_for(precision, peaks) == expected


@pytest.mark.parametrize("native_bf16", [True, False])
def test_flops_figures_on_cpu(monkeypatch: pytest.MonkeyPatch, native_bf16: bool) -> None:
    """Fixed peaks in: every figure is the arithmetic of the counted FLOPs and the rates."""
    rates = {torch.float32: 0.2, torch.bfloat16: 0.5}
    measured: list[tuple[torch.dtype, int]] = []

    def fake_peak(device: torch.device, dtype: torch.dtype, *, n: int, min_seconds: float) -> float:
        measured.append((dtype, n))
        return rates[dtype]

    monkeypatch.setattr(peak, "matmul_peak", fake_peak)
    monkeypatch.setattr(peak, "cpu_has_bf16", lambda: native_bf16)
    fl = flops_figures(2e9, {"seg": (50.0, "bf16"), "reference": (20.0, "32")}, CPU, matmul_size=128)
    assert measured == ([(torch.float32, 128), (torch.bfloat16, 128)] if native_bf16 else [(torch.float32, 128)])
    assert fl["per_image"] == 2e9 and fl["matmul_size"] == 128 and fl["threads"] == torch.get_num_threads()
    assert fl["achieved_tflops"] == pytest.approx(0.1) and fl["reference_achieved_tflops"] == pytest.approx(0.04)
    assert fl["peak_fp32_tflops"] == 0.2 and fl["reference_mfu"] == pytest.approx(0.2)
    assert fl["reference_mfu_against"] == "fp32"
    if native_bf16:
        assert fl["peak_bf16_tflops"] == 0.5 and fl["mfu_against"] == "bf16" and fl["mfu"] == pytest.approx(0.2)
    else:
        assert fl["peak_bf16_tflops"] is None and fl["mfu_against"] == "fp32" and fl["mfu"] == pytest.approx(0.5)
    rows = {name: (value, note) for name, value, note in flops_rows(fl)}
    assert rows["achieved, seg"][0] == "100.0 GFLOP/s" and rows["fp32 matmul peak"][0] == "200.0 GFLOP/s"
    assert rows["MFU, reference"] == ("20.0%", "against the fp32 peak")
    assert rows["bf16 matmul peak"][1] == ("measured" if native_bf16 else "not measured: no native bf16")


def test_flops_figures_of_seg_alone_with_a_real_tiny_peak() -> None:
    fl = flops_figures(1e6, {"seg": (10.0, "32")}, CPU, matmul_size=16, min_seconds=0.0)
    assert fl["peak_fp32_tflops"] > 0 and fl["mfu"] == pytest.approx(1e-5 / fl["peak_fp32_tflops"])
    assert "reference_mfu" not in fl and [r[0] for r in flops_rows(fl)].count("MFU, reference") == 0


def test_cpu_description_names_the_cpu_and_its_arithmetic_flags() -> None:
    info = cpu_description()
    with open("/proc/cpuinfo") as f:
        text = f.read()
    assert info["model_name"] and info["model_name"] in text
    flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    assert info["flags"] == [flag for flag in peak.CPU_FLAGS if flag in flags]
    assert info["native_bf16"] == cpu_has_bf16()
