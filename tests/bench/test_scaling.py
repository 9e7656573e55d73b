"""`seg-bench --nproc N`: the data-parallel step timed in 1 and N processes (gloo on the CPU here). No
timing thresholds: the figures are checked for consistency (totals, efficiency), never for speed."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from seg.bench import scaling
from seg.bench.cli import main
from seg.bench.scaling import check_nproc, efficiency, launch, summarise
from seg.errors import ConfigError, SegError
from tests.bench.test_benchmark import TINY


def test_two_cpu_processes_report_per_process_total_and_efficiency(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real thing (about 10 s idle: one process, then torchrun's agent and two ranks start, import
    torch and train two steps): every figure present and consistent."""
    out = tmp_path / "ddp.json"
    main(["--nproc", "2", "--threads", "1", *TINY, "--warmup", "1", "--steps", "2", "--json", str(out),
          "--cache-dir", str(tmp_path / "work")])
    table = capsys.readouterr().out
    assert "data-parallel training step: synthetic 32x32, UNet, batch 4 per process" in table
    assert "backend gloo, 1 torch thread(s) per process; 1 warm-up + 2 timed steps" in table
    assert "processes  img/s per process  total img/s  efficiency  global batch" in table
    assert "note: on CPUs the processes share this machine's cores" in table

    r = json.loads(out.read_text())
    assert r["mode"] == "ddp_step" and r["config"]["batch_size_per_process"] == 4
    assert r["settings"] == {"warmup": 1, "steps": 2, "sync_every": 1, "nproc": 2, "threads_per_process": 1,
                             "backend": "gloo"}
    assert [run["processes"] for run in r["runs"]] == [1, 2]
    one, two = r["runs"]
    for run in r["runs"]:
        ranks = run["ranks"]
        assert [x["rank"] for x in ranks] == list(range(run["processes"]))
        assert all(x["device"] == "cpu" and x["torch_threads"] == 1 and x["timed_steps"] == 2 for x in ranks)
        assert all(x["timed_images"] == 8 and x["images_per_second"] > 0 for x in ranks)  # 2 full batches of 4
        assert all(0 < x["startup_seconds"] < run["wall_seconds"] for x in ranks)
        total = sum(x["images_per_second"] for x in ranks)
        assert run["images_per_second_total"] == pytest.approx(total)
        assert run["images_per_second_per_process"] == pytest.approx(total / run["processes"])
        assert f"{run['images_per_second_total']:,.1f}" in table
    assert [x["train_images_per_epoch"] for x in one["ranks"] + two["ranks"]] == [11, 5, 5]  # two shards of 11
    assert one["efficiency"] == pytest.approx(1.0)
    expected = two["images_per_second_total"] / (2 * one["images_per_second_total"])
    assert r["efficiency"] == two["efficiency"] == pytest.approx(expected) and math.isfinite(expected)
    assert f"{expected:.1%}" in table
    assert r["machine"]["device"] == "cpu" and r["machine"]["load_average_1min_end"] is not None
    assert list((tmp_path / "work").iterdir()) == []  # the runs' folder (config, cache, ranks' JSON) is gone


def test_totals_and_efficiency_from_the_ranks_figures() -> None:
    ranks = [{"rank": 0, "images_per_second": 10.0}, {"rank": 1, "images_per_second": 30.0}]
    two = summarise(2, ranks, wall_seconds=3.0)
    assert two["images_per_second_total"] == 40.0 and two["images_per_second_per_process"] == 20.0
    one = summarise(1, [{"rank": 0, "images_per_second": 25.0}])
    assert efficiency(two, one) == pytest.approx(0.8) and efficiency(one, one) == 1.0
    assert efficiency(two, summarise(1, [{"rank": 0, "images_per_second": 0.0}])) is None
    with pytest.raises(SegError, match="the 2-process run reported 1 rank"):
        summarise(2, ranks[:1])


@pytest.mark.parametrize(("argv", "message"), [
    (["--nproc", "0"], "--nproc must be >= 1 (processes, one GPU each on CUDA), got 0"),
    (["--nproc", "2", "--to-quality", "val/dice=0.9"], "--nproc and --to-quality are separate measurements"),
    (["--threads", "2"], "--threads needs --nproc and a value >= 1, got 2"),
    (["--nproc", "2", "--threads", "0"], "--threads needs --nproc and a value >= 1, got 0"),
])  # fmt: skip
def test_bad_command_lines_give_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_more_processes_than_gpus_and_devices_without_ddp_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"--nproc 2: this machine has 1 CUDA device\(s\) and each process takes one"):
        check_nproc(2, torch.device("cuda"))
    check_nproc(1, torch.device("cuda"))  # one process: the ordinary run
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    check_nproc(4, torch.device("cuda"))
    with pytest.raises(ConfigError, match="trainer.device=cuda:1 with --nproc 2: each process takes the GPU"):
        check_nproc(2, torch.device("cuda", 1))
    with pytest.raises(ConfigError, match="--nproc 2 on mps: data-parallel runs need CUDA"):
        check_nproc(2, torch.device("mps"))
    with pytest.raises(ConfigError, match="--nproc must be >= 1, got 0"):
        check_nproc(0, torch.device("cpu"))
    check_nproc(8, torch.device("cpu"))  # CPU processes share the cores


def test_a_failing_process_reports_its_own_line(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("trainer:\n  device: tpu0\n")
    with pytest.raises(SegError, match=r"the 1-process training step failed \(exit 2\): trainer.device='tpu0' is not"):
        launch(1, tmp_path, dict(os.environ), warmup=0, steps=1, sync_every=1)
    log = tmp_path / "torchrun.log"  # no line of its own (a crash): the last one before the launcher's report
    log.write_text("rank 1 said this\nTraceback ...\nRuntimeError: boom\n\ntorch...ChildFailedError:\n  ...\n")
    assert scaling._error_line(log) == "RuntimeError: boom"
