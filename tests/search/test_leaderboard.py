"""seg.summary for searches: pruned trials on the leaderboard, and the best run as a ready command."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

from seg.summary import collect, write_summary


def _job(folder: Path, status: str, best: float | None, overrides: list[str]) -> None:
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"status": status, "best_score": best, "overrides": overrides,
                                                    "monitor": "val/dice", "monitor_mode": "max", "epoch": 3}))


def test_pruned_trials_rank_after_finished_ones_and_the_best_is_a_ready_command(tmp_path: Path) -> None:
    storage = "search.storage='sqlite:////very/long/path/optuna.db'"
    _job(tmp_path / "0", "pruned", 0.9, ["loss=bce", storage, "search.study='s'", "search.trial=0"])
    _job(tmp_path / "1", "finished", 0.7, ["dataset.root='/data/my set'", "+trainer.x=1", "resume=auto",
                                           "hparams_search=unet_optuna", storage, "search.trial=1"])
    _job(tmp_path / "2", "stopped", 0.8, ["loss=dice"])  # interrupted: ranked by its value, never the command
    _job(tmp_path / "3", "finished", 0.6, ["loss=dice_bce"])
    _job(tmp_path / "4", "failed", None, ["loss=ce"])
    write_summary(tmp_path, collect(tmp_path), "val/dice", "max")
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [(r["run_dir"], r["status"]) for r in rows] == [("2", "stopped"), ("1", "finished"), ("3", "finished"),
                                                         ("0", "pruned"), ("4", "failed")]
    assert rows[3]["overrides"] == "loss=bce search.trial=0"  # the study's storage: the same long path in each row
    md = (tmp_path / "summary.md").read_text()
    assert "Best finished run (1: best val/dice=0.7000)" in md
    command = md.split("```bash\n", 1)[1].split("\n", 1)[0]
    assert shlex.split(command) == ["seg-train", "dataset.root='/data/my set'", "+trainer.x=1",
                                    "hparams_search=unet_optuna"]


def test_no_finished_run_no_command(tmp_path: Path) -> None:
    _job(tmp_path / "0", "failed", None, ["loss=ce"])
    write_summary(tmp_path, collect(tmp_path), "val/dice", "max")
    assert "```" not in (tmp_path / "summary.md").read_text()
