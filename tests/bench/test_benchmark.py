"""The benchmark on a tiny config: every figure present and sane. No timing thresholds: speed is
measured by the benchmark itself, never asserted."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from seg.bench.cli import format_table, main
from seg.bench.measure import (
    StepTimes,
    count_train_flops,
    cycle,
    interleaved,
    peak_memory_bytes,
    reset_peak_memory,
    split_steps,
    time_steps,
)
from seg.bench.reference import Sample, TutorialDataset, native_samples
from seg.data.base import CachedArrayData
from seg.data.synthetic import SyntheticData
from seg.engine.builders import resolve_precision

TINY = [
    "dataset=synthetic",
    "dataset.image_size=32",
    "dataset.n_images=16",
    "model=unet",
    "model.depth=2",
    "model.wf=3",
    "trainer.batch_size=4",
    "trainer.device=cpu",
]

CPU = torch.device("cpu")


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_main_prints_table_and_writes_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench" / "result.json"
    main([*TINY, "--warmup", "2", "--steps", "3", "--rounds", "2", "--json", str(out), "--peak-size", "32"])
    table = capsys.readouterr().out
    for row in ("seg training", "reference loop", "speedup seg/reference", "data pipeline alone",
                "data prep, first run", "data prep, second run", "peak memory, seg", "FLOPs per image",
                "fp32 matmul peak", "MFU, seg", "MFU, reference", "evaluation"):
        assert row in table
    assert "synthetic 32x32, UNet, batch 4" in table

    r = json.loads(out.read_text())
    assert r["config"]["overrides"] == TINY
    assert r["config"]["image_size"] == [32, 32] and r["config"]["batch_size"] == 4
    resolved = resolve_precision("auto", torch.device("cpu"))  # this machine's `auto`: bf16 or 32
    assert r["config"]["model_options"]["depth"] == 2 and r["config"]["precision"] == resolved
    assert r["config"]["channels_last"] is True  # auto: NHWC on the CPU
    assert r["config"]["augmentation"] == ["hflip p=0.5", "vflip p=0.5"]
    assert r["machine"]["device"] == "cpu" and r["machine"]["torch"] == torch.__version__
    assert r["machine"]["cpu_count"] >= 1 and r["machine"]["torch_threads"] >= 1
    assert r["settings"] == {"steps": 3, "warmup": 2, "rounds": 2, "sync_every": 1}  # CPU: a sync per step
    assert r["memory_kind"] == "process_peak_rss"
    for part in ("seg", "reference", "data_pipeline"):
        figures = r[part]
        assert figures["timed_steps"] == 3
        assert figures["timed_images"] >= 3
        for key in ("images_per_second", "images_per_second_mean", "step_seconds_median",
                    "step_seconds_min", "step_seconds_max"):
            assert _positive(figures[key]), (part, key, figures[key])
        assert figures["step_seconds_min"] <= figures["step_seconds_median"] <= figures["step_seconds_max"]
    assert r["seg"]["timed_images"] == 12  # drop_last: full batches of 4 only
    assert r["reference"]["dataset_images"] == 11  # 70% of 16 cases, all the needed samples
    for part in ("seg", "reference"):
        assert r[part]["peak_memory_bytes"] > 2**20
        assert 0 <= r[part]["memory_increase_bytes"] <= r[part]["peak_memory_bytes"]
    assert _positive(r["speedup"])
    assert r["speedup"] == pytest.approx(r["seg"]["images_per_second"] / r["reference"]["images_per_second"])
    assert _positive(r["data_pipeline"]["ratio_to_training"])
    prep = r["data_prep"]
    assert prep["fresh_cache"] is True
    assert _positive(prep["first_seconds"]) and _positive(prep["second_seconds"]) and _positive(prep["ratio"])
    flops = r["flops"]
    assert _positive(flops["per_image"]) and _positive(flops["achieved_tflops"])
    assert _positive(flops["reference_achieved_tflops"]) and _positive(flops["peak_fp32_tflops"])
    assert flops["matmul_size"] == 32 and flops["threads"] == torch.get_num_threads()
    # MFU against the peak of each path's own precision: seg's resolved one, the reference's fp32
    assert flops["mfu_against"] == {"bf16": "bf16", "32": "fp32"}[resolved]
    assert flops["mfu"] == pytest.approx(flops["achieved_tflops"] / flops["peaks_tflops"][flops["mfu_against"]])
    assert flops["reference_mfu_against"] == "fp32"
    assert flops["reference_mfu"] == pytest.approx(flops["reference_achieved_tflops"] / flops["peak_fp32_tflops"])
    assert (flops["peak_bf16_tflops"] is not None) == (resolved == "bf16")  # measured where bf16 is native
    assert r["machine"]["cpu"]["native_bf16"] == (resolved == "bf16")
    ev = r["eval"]
    assert ev["split"] == "val" and ev["images"] == 2 and _positive(ev["images_per_second"])
    assert _positive(ev["first_pass_seconds"])
    assert ev["first_pass_images_per_second"] == pytest.approx(2 / ev["first_pass_seconds"])
    assert 0.0 <= ev["dice"] <= 1.0


def test_skip_flags_leave_those_figures_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    cache_parent = tmp_path / "caches"
    main([*TINY, "--warmup", "0", "--steps", "3", "--skip-reference", "--skip-eval", "--json", str(out),
          "--cache-dir", str(cache_parent), "--sync-every", "2", "--rounds", "1", "--peak-size", "16"])
    table = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["settings"]["sync_every"] == 2 and r["seg"]["timed_windows"] == 2 and r["seg"]["timed_steps"] == 3
    assert "a device sync every 2 step(s)" in table
    assert r["reference"] is None and r["speedup"] is None and r["eval"] is None
    assert "reference_mfu" not in r["flops"] and "MFU, reference" not in table
    assert _positive(r["seg"]["images_per_second"])
    assert "reference loop" not in table and "evaluation" not in table
    assert cache_parent.is_dir() and not any(cache_parent.iterdir())  # the fresh cache is removed

    # The GPU rows, from figures as a CUDA run reports them.
    r["memory_kind"] = "cuda_max_allocated"
    r["flops"].update(peak_bf16_tflops=600.0, mfu=0.4, mfu_against="bf16")
    gpu_table = format_table(r)
    assert "CUDA max allocated" in gpu_table and "600.0 TFLOP/s" in gpu_table
    assert "40.0%  against the bf16 peak" in gpu_table


def test_bad_override_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["model=no_such_model", "--steps", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("seg-bench: error: cannot compose the config") and "Traceback" not in err


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--sync-every", "0"]])
def test_bad_steps_is_rejected(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*TINY, *bad])
    assert exc.value.code == 2


def test_step_times_summary() -> None:
    times = StepTimes(seconds=[0.5, 1.0, 0.25], images=[4, 4, 2])
    s = times.summary()
    assert s["images_per_second"] == pytest.approx(8.0)  # median of 8, 4, 8
    assert s["images_per_second_mean"] == pytest.approx(10 / 1.75)
    assert s["step_seconds_median"] == 0.5 and s["step_seconds_min"] == 0.25 and s["step_seconds_max"] == 1.0
    assert s["timed_steps"] == 3 and s["timed_images"] == 10


def test_time_steps_runs_warmup_untimed() -> None:
    calls: list[int] = []

    def step() -> int:
        calls.append(1)
        return 5

    times = time_steps(step, warmup=2, steps=3, device=CPU)
    assert len(calls) == 5 and times.images == [5, 5, 5] and len(times.seconds) == 3
    with pytest.raises(ValueError):
        time_steps(step, warmup=0, steps=0, device=CPU)


def test_time_steps_in_windows_between_syncs(monkeypatch) -> None:
    """With sync_every=k, one sync (and one timing) per k steps; the summary is still per step."""
    import seg.bench.measure as measure

    synced: list[int] = []
    calls: list[int] = []
    monkeypatch.setattr(measure, "sync", lambda device: synced.append(len(calls)))

    def step() -> int:
        calls.append(1)
        return 4

    times = time_steps(step, warmup=1, steps=7, device=CPU, sync_every=3)
    assert synced == [1, 4, 7, 8]  # after warm-up, then after steps 3, 6 and 7
    assert times.steps == [3, 3, 1] and times.images == [12, 12, 4]
    s = times.summary()
    assert s["timed_steps"] == 7 and s["timed_windows"] == 3 and s["timed_images"] == 28
    assert s["step_seconds_min"] <= s["step_seconds_median"] <= s["step_seconds_max"]
    with pytest.raises(ValueError):
        time_steps(step, warmup=0, steps=1, device=CPU, sync_every=0)


def test_split_steps_into_rounds() -> None:
    assert split_steps(10, 4) == [3, 3, 2, 2]
    assert split_steps(3, 4) == [1, 1, 1]
    assert split_steps(5, 1) == [5]


class _Counter:
    """A stand-in training path that logs its calls into a shared list."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def start(self) -> None:
        self.log.append(f"{self.name}:start")

    def step(self) -> int:
        self.log.append(self.name)
        return 2

    def close(self) -> None:
        self.log.append(f"{self.name}:close")


def test_interleaved_alternates_paths_after_each_ones_first_chunk() -> None:
    log: list[str] = []
    out = interleaved({"a": lambda: _Counter("a", log), "b": lambda: _Counter("b", log)},
                      warmup=1, steps=3, rounds=2, device=CPU)
    assert log == ["a:start", "a", "a", "a", "b:start", "b", "b", "b", "a", "b", "a:close", "b:close"]
    for result in out.values():
        assert result.times.images == [2, 2, 2] and len(result.times.seconds) == 3
        assert result.peak_memory_bytes > 0 and result.memory_increase_bytes >= 0


def test_cycle_goes_on_across_epochs_and_refuses_empty_loaders() -> None:
    epochs: list[int] = []

    def loader(epoch: int) -> list[int]:
        epochs.append(epoch)
        return [10 * epoch, 10 * epoch + 1]

    batches = cycle(loader)
    assert [next(batches) for _ in range(5)] == [10, 11, 20, 21, 30]
    assert epochs == [1, 2, 3]
    with pytest.raises(ValueError, match="no batches"):
        next(cycle(lambda epoch: []))


def test_flop_count_of_a_1x1_conv_is_exact() -> None:
    """1x1 conv 3->2 on 4x4: forward 2*3*2*16 = 192 FLOPs, weight gradient the same (the input
    needs no gradient); the loss adds no matmul or conv."""
    model = nn.Conv2d(3, 2, kernel_size=1, bias=False)
    image = torch.rand(1, 3, 4, 4)
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    loss = nn.Module()
    loss.forward = lambda logits, target: logits.square().mean()  # type: ignore[method-assign]
    assert count_train_flops(model, image, mask, loss, contextlib.nullcontext()) == 384
    assert all(p.grad is None for p in model.parameters())


def test_memory_helpers_on_cpu() -> None:
    reset_peak_memory(CPU)
    assert peak_memory_bytes(CPU) > 2**20


def test_tutorial_dataset_resizes_flips_and_keeps_labels() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    binary = np.zeros((40, 60), np.uint8)
    binary[10:30, 5:25] = 1
    classes = np.zeros((40, 60), np.uint8)
    classes[:, 30:] = 2
    classes[:5] = 255
    plain = TutorialDataset(samples=[Sample(image, binary), Sample(image, classes)], size=(20, 30),
                            hflip_p=0.0, vflip_p=0.0)
    x, m = plain[0]
    assert x.shape == (3, 20, 30) and x.dtype == torch.float32 and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    assert m.shape == (20, 30) and m.dtype == torch.int64 and set(m.unique().tolist()) == {0, 1}
    assert m[5:15, 3:12].all() and not m[:, 15:].any()
    _, mc = plain[1]
    assert set(mc.unique().tolist()) == {0, 2, 255} and (mc[:2] == 255).all()

    flipped = TutorialDataset(samples=[Sample(image, binary)], size=(20, 30), hflip_p=1.0, vflip_p=1.0)
    xf, mf = flipped[0]
    assert torch.equal(xf, x.flip(1, 2)) and torch.equal(mf, m.flip(0, 1))

    weight = np.linspace(0, 1, 20 * 30, dtype=np.float32).reshape(20, 30)
    with_weight = TutorialDataset(samples=[Sample(image[:20, :30], binary[:20, :30], weight)], size=(20, 30),
                                  hflip_p=1.0, vflip_p=0.0)
    _, _, w = with_weight[0]
    assert torch.equal(w, torch.from_numpy(weight[:, ::-1].copy()))


class _FileReader(CachedArrayData):
    """A reader whose cases decode at 48x40, larger than the training size."""

    name = "bench-files"

    def list_cases(self) -> list[str]:
        return [f"c{i}" for i in range(10)]

    def load_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        i = int(case_id[1:])
        image = np.full((48, 40), 20 * i, np.uint8)  # grey: the engine adds the channel axis
        mask = np.zeros((48, 40), np.uint8)
        mask[: 4 * (i + 1)] = 1
        return image, mask


def test_native_samples_decode_file_readers_at_native_size(tmp_path: Path) -> None:
    data = _FileReader(root=str(tmp_path), image_size=16, cache_dir=str(tmp_path / "cache"), in_channels=1)
    samples = native_samples(data, "train", limit=3)
    assert len(samples) == 3
    ids = data.split_ids()["train"][:3]
    for sample, case in zip(samples, ids):
        assert sample.image.shape == (48, 40, 1) and sample.mask.shape == (48, 40) and sample.weight is None
        assert int(sample.image[0, 0, 0]) == 20 * int(case[1:])
    x, m = TutorialDataset(samples=samples, size=(16, 16), hflip_p=0.0, vflip_p=0.0)[0]
    assert x.shape == (1, 16, 16) and m.shape == (16, 16)


def test_native_samples_of_generated_data_are_the_dataset_items(tmp_path: Path) -> None:
    data = SyntheticData(n_images=8, image_size=24, cache_dir=str(tmp_path))
    samples = native_samples(data, "val", limit=5)
    items = data.dataset("val")
    assert len(samples) == min(5, len(items)) >= 1
    assert np.array_equal(samples[0].image, np.moveaxis(items[0]["image"].numpy(), 0, -1))
    assert np.array_equal(samples[0].mask, items[0]["mask"].numpy())
