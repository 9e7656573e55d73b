"""seg.summary: the leaderboard of a folder of runs, from their result.json files alone."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from seg.summary import collect, main, write_summary


def _result(folder: Path, **fields: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps({"monitor": "val/loss", "monitor_mode": "min", **fields}))


def _finished(folder: Path, best: float, overrides: list[str], **extra: object) -> None:
    _result(folder, status="finished", best_score=best, best_epoch=2, epoch=3, stopped_by=None, overrides=overrides,
            wall_s=1.5, **{"val/loss": best + 0.1, "val/dice": 0.5}, **extra)


def test_collect_finds_runs_at_any_depth_and_skips_what_is_not_a_run(tmp_path: Path) -> None:
    _finished(tmp_path / "sweepA" / "0", 0.3, ["loss=bce"])
    _finished(tmp_path / "deep" / "er" / "run", 0.2, ["model.wf=2"])
    _result(tmp_path / "sweepA" / "1", status="failed", reason="loss=ce needs ...", overrides=["loss=ce"], job=1)
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "result.json").write_text(json.dumps({"images_per_second": 3.0}))  # seg-bench's own
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "result.json").write_text("{half")
    old = tmp_path / "old"  # from before result.json held the overrides: Hydra's record gives them
    _result(old, best_score=0.4, best_epoch=1, epoch=1, stopped_by="SIGTERM")
    (old / ".hydra").mkdir()
    (old / ".hydra" / "overrides.yaml").write_text("- trainer.epochs=9\n")
    rows = {r["run_dir"]: r for r in collect(tmp_path)}
    assert set(rows) == {"sweepA/0", "deep/er/run", "sweepA/1", "old"}
    assert rows["old"]["overrides"] == "trainer.epochs=9" and rows["old"]["status"] == "stopped"
    assert rows["sweepA/1"]["status"] == "failed" and math.isnan(rows["sweepA/1"]["best"])
    assert rows["deep/er/run"]["metrics"] == {"val/loss": pytest.approx(0.3), "val/dice": 0.5}


@pytest.mark.parametrize("mode", ["min", "max"])
def test_the_summary_is_ranked_by_the_monitor_with_failed_jobs_last(tmp_path: Path, mode: str) -> None:
    _result(tmp_path / "0", status="failed", reason="bad | idea", overrides=["loss=ce"], job=0)
    for job, best in ((1, 0.5), (2, 0.1), (3, 0.3)):
        _finished(tmp_path / str(job), best, [f"model.wf={job}", "loss=bce"])
    _result(tmp_path / "4", status="stopped", best_score=0.9, best_epoch=1, epoch=1, stopped_by="SIGINT", overrides=[])
    shown = write_summary(tmp_path, collect(tmp_path), "val/loss", mode)
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    order = ["2", "3", "1", "4"] if mode == "min" else ["4", "1", "3", "2"]
    assert [r["run_dir"] for r in rows] == [*order, "0"]
    assert [r["status"] for r in rows][-1] == "failed" and rows[-1]["reason"] == "bad | idea"
    by_dir = {r["run_dir"]: r for r in rows}
    assert float(by_dir["2"]["best val/loss"]) == 0.1 and by_dir["2"]["overrides"] == "model.wf=2 loss=bce"
    assert by_dir["2"]["best_epoch"] == "2" and by_dir["2"]["wall_s"] == "1.5" and by_dir["4"]["status"] == "stopped"
    md = (tmp_path / "summary.md").read_text()
    assert shown in md and "bad \\| idea" in md and len(shown.splitlines()) == 2 + 5
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["summary.csv", "summary.md"]  # no temp files


def test_fit_outside_hydra_records_what_the_leaderboard_needs(tmp_path: Path) -> None:
    from seg.train.fit import fit
    from tests.tiny import compose_cfg

    fit(compose_cfg(["trainer.epochs=1"], tmp_path), tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["overrides"] == [] and result["status"] == "finished" and result["stopped_by"] is None
    assert (result["monitor"], result["monitor_mode"]) == ("val/dice", "max") and result["wall_s"] > 0
    assert Path(result["run_dir"]) == tmp_path and result["best_epoch"] == 1 and "val/dice" in result
    (row,) = collect(tmp_path)
    assert row["run_dir"] == "." and row["best"] == result["best_score"]


def test_seg_summary_refuses_a_folder_without_runs_in_one_line(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    for folder in (tmp_path, tmp_path / "missing"):
        with pytest.raises(SystemExit) as stopped:
            main([str(folder)])
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("seg-summary: error: ")
    assert not (tmp_path / "summary.csv").exists()
