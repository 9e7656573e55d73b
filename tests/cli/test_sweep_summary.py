"""A sweep ends with its answer: the leaderboard in the sweep folder, printed, rebuilt by seg-summary."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.cli.test_cli import TINY, assert_user_error, run

SWEEP = ["--multirun", *TINY, "trainer.epochs=1", "model.wf=2,3", "loss=dice_bce,bce", "hydra.sweep.dir=S"]


def _rows(sweep: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((sweep / "summary.csv").open()))


def _check_leaderboard(sweep: Path, epochs: int) -> None:
    rows = _rows(sweep)
    assert len(rows) == 4
    combos = {tuple(o for o in r["overrides"].split() if o.startswith(("model.wf=", "loss="))) for r in rows}
    assert combos == {(f"model.wf={wf}", f"loss={loss}") for wf in (2, 3) for loss in ("dice_bce", "bce")}
    for row in rows:
        assert row["status"] == "finished" and row["epoch"] == str(epochs), row
        best = torch.load(sweep / row["run_dir"] / "checkpoints" / "best.pt", weights_only=True)["best_score"]
        assert float(row["best val/dice"]) == pytest.approx(best)
    scores = [float(r["best val/dice"]) for r in rows]
    assert scores == sorted(scores, reverse=True)  # val/dice: mode max, best first


def test_a_sweep_and_its_resume_end_with_the_leaderboard(tmp_path: Path) -> None:
    first = run("seg-train", *SWEEP, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    sweep = tmp_path / "S"
    _check_leaderboard(sweep, epochs=1)
    assert "4 job(s) in S, best first" in first.stdout and (sweep / "summary.md").read_text().count("| finished") == 4

    resumed = run("seg-train", *SWEEP, "resume=auto", "trainer.epochs=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _check_leaderboard(sweep, epochs=2)
    assert all("resume=auto" in r["overrides"] for r in _rows(sweep))  # this invocation's overrides

    written = (sweep / "summary.csv").read_text()
    (sweep / "summary.csv").unlink()
    rebuilt = subprocess.run([str(Path(sys.executable).parent / "seg-summary"), "S"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (sweep / "summary.csv").read_text() == written and "4 run(s) below S" in rebuilt.stdout
    (tmp_path / "empty").mkdir()
    empty = subprocess.run([str(Path(sys.executable).parent / "seg-summary"), "empty"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert_user_error(empty, "holds no run's result.json")
    assert len(empty.stderr.strip().splitlines()) == 1


def test_a_failed_job_is_on_the_leaderboard_last_with_its_reason(tmp_path: Path) -> None:
    proc = run("seg-train", "--multirun", *TINY, "trainer.epochs=1", "loss=ce,bce", "hydra.sweep.dir=S", cwd=tmp_path)
    assert_user_error(proc, "1 sweep job(s) failed", "job 0 (", "loss=ce needs a multi-class model")
    rows = _rows(tmp_path / "S")
    ranked = [(r["overrides"].split()[-1], r["status"]) for r in rows]
    assert ranked == [("loss=bce", "finished"), ("loss=ce", "failed")]
    assert "loss=ce needs a multi-class model" in rows[1]["reason"] and rows[1]["best val/dice"] == ""
    assert rows[1]["run_dir"] == "0_loss=ce"
