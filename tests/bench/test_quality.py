"""seg-bench --to-quality: the target, each loop's outcome and its readers, the ratio, and two real runs
(seg-train as the installed command and the reference loop as its own process) on tiny data. No time
is asserted, only what was reached, when relative to what, and how it is reported."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from seg.bench.cli import main
from seg.bench.follow import JsonLinesTail, Outcome, Target, TensorBoardTail, parse_target, watch
from seg.bench.quality import format_quality_table, ratio
from seg.bench.reference_fit import fit_reference
from seg.engine.builders import build_data
from seg.errors import ConfigError, SegError
from tests.tiny import compose_cfg

TINY = ["dataset.n_images=24", "dataset.image_size=16", "model=unet", "model.depth=2", "model.wf=2",
        "trainer.batch_size=4", "trainer.device=cpu", "trainer.preview_images=1"]


@pytest.mark.parametrize(("text", "expected"), [
    ("val/dice=0.9", Target("val/dice", 0.9, "max")),
    ("val/loss=0.3", Target("val/loss", 0.3, "min")),  # a loss is reached going down
    ("val/dice<=0.2", Target("val/dice", 0.2, "min")),
    (" val/iou >= 1e-1 ", Target("val/iou", 0.1, "max")),
])  # fmt: skip
def test_parse_target(text: str, expected: Target) -> None:
    assert parse_target(text) == expected
    assert expected.reached(expected.value) and str(parse_target("val/loss=0.3")) == "val/loss <= 0.3"


@pytest.mark.parametrize("text", ["dice=0.9", "val/dice", "val/dice=high", "val/dice=0.9=1", "train/loss=1"])
def test_bad_target_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="expected METRIC=VALUE"):
        parse_target(text)


def test_outcome_keeps_the_first_validation_that_reaches_the_target_in_time() -> None:
    target = Target("val/dice", 0.8, "max")
    o = Outcome()
    for epoch, seconds, value in [(1, 5.0, 0.3), (2, 7.0, 0.85), (3, 9.0, 0.9)]:
        o.add(epoch, seconds, value, target, max_seconds=None)
    assert (o.reached, o.epochs, o.seconds, o.value, o.best) == (True, 2, 7.0, 0.85, 0.9)
    late = Outcome()
    late.add(1, 12.0, 0.95, target, max_seconds=10.0)  # validated after the limit: not in time
    assert not late.reached and late.epochs == 1 and late.best == 0.95 and late.seconds is None


def _outcome(reached: bool, seconds: float | None, searched: float) -> Outcome:
    return Outcome(reached=reached, seconds=seconds, searched_seconds=searched)


def test_ratio_reports_a_bound_or_not_reached() -> None:
    assert ratio(_outcome(True, 10.0, 10.0), _outcome(True, 25.0, 25.0)) == {"ratio": 2.5, "ratio_text": "2.50x"}
    bound = ratio(_outcome(True, 10.0, 10.0), _outcome(False, None, 30.0))
    assert bound == {"ratio": None, "ratio_bound": 3.0, "ratio_text": ">3.00x (reference not reached)"}
    assert ratio(_outcome(False, None, 9.0), _outcome(True, 5.0, 5.0))["ratio_text"] == "not reached (seg)"
    assert ratio(_outcome(False, None, 9.0), _outcome(False, None, 9.0))["ratio_text"] == "not reached (seg, reference)"
    assert ratio(_outcome(True, 1.0, 1.0), None)["ratio"] is None


def test_json_lines_tail_reads_only_complete_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "epochs.jsonl"
    tail = JsonLinesTail(path, "val/dice")
    assert tail.read() == []  # not written yet
    first, second = (json.dumps({"epoch": k, "time": 100.0 + k, "metrics": {"val/dice": k / 4}}) for k in (1, 2))
    path.write_text(first + "\n" + second[:10])  # the second line half written
    assert tail.read() == [(1, 101.0, 0.25)]
    with path.open("a") as f:
        f.write(second[10:] + "\n")
    assert tail.read() == [(2, 102.0, 0.5)] and tail.read() == []


def test_tensorboard_tail_reads_one_tag_as_the_file_grows(tmp_path: Path) -> None:
    tail = TensorBoardTail(tmp_path / "tb", "val/dice")
    assert tail.read() == []
    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    writer.add_scalar("val/dice", 0.25, global_step=1, walltime=1000.0)
    writer.add_scalar("val/loss", 0.7, global_step=1, walltime=1000.0)
    writer.flush()
    assert tail.read() == [(1, 1000.0, 0.25)]
    writer.add_scalar("val/dice", 0.5, global_step=2, walltime=1002.0)
    writer.close()
    assert tail.read() == [(2, 1002.0, 0.5)]


def _writer(tmp_path: Path, values: list[float], code: int) -> list[str]:
    """A stand-in training process: one JSON line per value, then exit `code` with a last word."""
    script = (f"import json, sys, time\nwith open({str(tmp_path / 'e.jsonl')!r}, 'a') as f:\n"
              f"    for i, v in enumerate({values!r}):\n"
              "        f.write(json.dumps({'epoch': i + 1, 'time': time.time(), 'metrics': {'val/dice': v}}) + '\\n')\n"
              f"print('the last word')\nsys.exit({code})\n")
    return [sys.executable, "-c", script]


def test_watch_reports_epochs_run_out_and_a_failure(tmp_path: Path) -> None:
    target = Target("val/dice", 0.9, "max")
    done = watch("fake", _writer(tmp_path, [0.2, 0.4], 0), JsonLinesTail(tmp_path / "e.jsonl", "val/dice"),
                 target=target, work=tmp_path, env={}, max_seconds=None)
    assert (done.reached, done.stopped_by, done.epochs, done.best, done.exit_code) == (False, "run_ended", 2, 0.4, 0)
    assert [row["value"] for row in done.curve] == [0.2, 0.4] and 0 < done.curve[0]["seconds"] <= done.wall_seconds
    (tmp_path / "e.jsonl").unlink()
    with pytest.raises(SegError, match=r"fake failed \(exit 3\) before reaching val/dice >= 0.9: the last word"):
        watch("fake", _writer(tmp_path, [0.1], 3), JsonLinesTail(tmp_path / "e.jsonl", "val/dice"),
              target=target, work=tmp_path, env={}, max_seconds=None)
    (tmp_path / "e.jsonl").unlink()
    with pytest.raises(SegError, match="fake ended without a validation of val/dice .*the last word"):
        watch("fake", _writer(tmp_path, [], 0), JsonLinesTail(tmp_path / "e.jsonl", "val/dice"),
              target=target, work=tmp_path, env={}, max_seconds=None)


def test_reference_fit_validates_every_epoch_with_a_plateau_schedule(tmp_path: Path) -> None:
    cfg = compose_cfg([*TINY, "trainer.epochs=2", "scheduler=plateau"])
    (tmp_path / "cfg.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    fit_reference(tmp_path / "cfg.yaml", tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["time"] <= rows[1]["time"]
    train = len(build_data(cfg.dataset).dataset("train"))
    assert train % 4 != 0 and all(r["images"] == train for r in rows)  # the whole split, no drop_last
    assert {"val/dice", "val/iou", "val/loss", "val/dice_per_image"} <= set(rows[0]["metrics"])
    assert all(0.0 <= r["metrics"]["val/dice"] <= 1.0 for r in rows)


def test_to_quality_easy_target_stops_both_loops_at_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real thing (about 7 s idle: two processes start, import torch and train): a loss any model is
    under at its first validation, with epochs to spare, so seg-train is stopped by SIGTERM."""
    out = tmp_path / "q.json"
    main(["--to-quality", "val/loss<=50", *TINY, "trainer.epochs=30", "--json", str(out), "--cache-dir",
          str(tmp_path / "work")])
    table = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["mode"] == "to_quality" and r["target"] == {"metric": "val/loss", "value": 50.0, "mode": "min"}
    assert r["max_epochs"] == 30 and r["config"]["image_size"] == [16, 16] and r["config"]["val_images"] == 2
    seg, ref = r["seg"], r["reference"]
    for o in (seg, ref):
        assert o["reached"] and o["stopped_by"] == "target" and o["epochs"] == 1 and o["value"] <= 50
        assert 0 < o["seconds"] <= o["searched_seconds"] <= o["wall_seconds"] and o["curve"][0]["epoch"] == 1
        assert len(o["load_average"]) == 2 and all(load >= 0 for load in o["load_average"])  # its start, its end
    assert seg["exit_code"] == 128 + signal.SIGTERM  # seg-train saved and exited on the signal
    assert seg["command"][0].endswith("seg-train") and "trainer.val_every=1" in seg["command"]
    assert r["ratio"] == pytest.approx(ref["seconds"] / seg["seconds"]) and r["ratio_text"] == f"{r['ratio']:.2f}x"
    assert "time to val/loss <= 50" in table and f"speedup (reference time / seg time): {r['ratio_text']}" in table
    assert r["machine"]["cpu"]["model_name"] and not any((tmp_path / "work").iterdir())  # the work folder went


def test_to_quality_impossible_target_is_reported_not_reached(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A perfect loss in a 1 s limit (about 3 s): both stopped at the limit, reported, exit 0."""
    out = tmp_path / "q.json"
    main(["--to-quality", "val/loss<=0", *TINY, "--max-seconds", "1", "--json", str(out)])
    r = json.loads(out.read_text())
    for o in (r["seg"], r["reference"]):
        assert not o["reached"] and o["seconds"] is None and o["stopped_by"] == "max_seconds"
        assert o["searched_seconds"] >= 1.0
    assert r["ratio"] is None and r["ratio_text"] == "not reached (seg, reference)"
    table = capsys.readouterr().out
    assert "not reached" in table and "max_seconds after" in table
    assert format_quality_table(r) == table.rstrip("\n")


@pytest.mark.parametrize(("args", "message"), [
    (["--to-quality", "val/nosuch=0.5"], "val/nosuch: not a validation metric of this config; choose one of"),
    (["--to-quality", "dice=0.5"], "expected METRIC=VALUE"),
    (["--to-quality", "val/dice=0.5", "--max-seconds", "0"], "--max-seconds must be > 0"),
])  # fmt: skip
def test_bad_to_quality_input_is_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*TINY, *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("seg-bench: error:") and len(err.strip().splitlines()) == 1
