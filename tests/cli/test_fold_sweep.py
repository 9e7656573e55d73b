"""A 3-fold x 2-seed sweep ends with the per-configuration mean and sample std beside the per-job rows."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from tests.cli.test_cli import TINY, run


def test_a_fold_and_seed_sweep_reports_mean_and_std_per_configuration(tmp_path: Path) -> None:
    proc = run("seg-train", "--multirun", *TINY, "trainer.epochs=1", "dataset.folds=3", "dataset.fold=0,1,2",
               "seed=1,2", "hydra.sweep.dir=S", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "S"
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/result.json"))]
    assert len(results) == 6 and all(r["status"] == "finished" for r in results)
    splits = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/split.json"))]
    assert len({json.dumps(s["test"]) for s in splits}) == 1  # every fold keeps the one test split
    assert len({json.dumps(s["val"]) for s in splits}) == 3  # three folds, each validated under two seeds

    groups = list(csv.DictReader((sweep / "summary_groups.csv").open()))
    assert len(groups) == 1
    group = groups[0]
    assert "dataset.fold=" not in group["configuration"] and "seed=" not in group["configuration"]
    assert "dataset.folds=3" in group["configuration"] and group["n"] == "6" and group["failed"] == "0"
    columns = {"best val/dice": "best_score", **{k: k for k in results[0] if k.startswith("val/")}}
    for column, key in columns.items():
        values = [float(r[key]) for r in results]
        assert float(group[f"{column} mean"]) == pytest.approx(statistics.mean(values)), column
        assert float(group[f"{column} std"]) == pytest.approx(statistics.stdev(values)), column  # ddof=1
    md = (sweep / "summary.md").read_text()
    assert "sample std (ddof=1)" in md and md.count("| finished") == 6 and " \u00b1 " in md
    assert "sample std (ddof=1)" in proc.stdout  # printed at the sweep's end as well


def test_groups_skip_failed_jobs_give_no_std_for_one_value_and_vanish_without_repeats(tmp_path: Path) -> None:
    from seg.summary import collect, write_summary

    def result(name: str, overrides: list[str], **fields: object) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps({"overrides": overrides, **fields}))

    result("0", ["loss=bce", "seed=1"], status="finished", best_score=0.5, **{"val/dice": 0.5})
    result("1", ["loss=bce", "seed=2"], status="failed", reason="x")
    result("2", ["loss=dice", "seed=1"], status="finished", best_score=0.7, **{"val/dice": 0.7})
    result("3", ["loss=dice", "seed=2"], status="finished", best_score=0.9, **{"val/dice": 0.9})
    write_summary(tmp_path, collect(tmp_path), "val/dice", "max")
    groups = list(csv.DictReader((tmp_path / "summary_groups.csv").open()))
    ranked = [(g["configuration"], g["n"], g["failed"]) for g in groups]
    assert ranked == [("loss=dice", "2", "0"), ("loss=bce", "1", "1")]
    assert float(groups[0]["val/dice std"]) == pytest.approx(statistics.stdev([0.7, 0.9]))
    assert groups[1]["val/dice mean"] == "0.5" and groups[1]["val/dice std"] == ""  # n=1: no std
    for name in ("1", "3"):
        (tmp_path / name / "result.json").unlink()  # one seed left: nothing varies, no group table
    write_summary(tmp_path, collect(tmp_path), "val/dice", "max")
    assert not (tmp_path / "summary_groups.csv").exists() and "sample std" not in (tmp_path / "summary.md").read_text()
