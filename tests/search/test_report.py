"""A search job's side: each validation reported to its Optuna trial, and the run stopped when pruned."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from seg.errors import ConfigError
from seg.search.report import trial_reporter
from seg.search.space import quoted
from tests.tiny import compose_cfg

MEDIAN = {"pruner": "median", "n_startup_trials": 1, "n_warmup_steps": 0}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One database for the module's studies: making an SQLite schema takes Optuna about a second."""
    return f"sqlite:///{tmp_path_factory.mktemp('optuna') / 'optuna.db'}"


def _study(url: str, name: str, pruning: dict | None = None) -> optuna.Study:
    """A study as the sweeper makes it: its monitor and its pruner's settings in its user attributes."""
    study = optuna.create_study(study_name=name, storage=url, direction="minimize")
    study.set_user_attr("monitor", "val/loss")
    study.set_user_attr("pruning", pruning or MEDIAN)
    return study


def _finished(study: optuna.Study, values: list[float]) -> None:
    """A complete trial that reported `values` at epochs 1, 2, ..."""
    trial = study.ask()
    for epoch, value in enumerate(values, 1):
        trial.report(value, epoch)
    study.tell(trial, min(values))


def _cfg(url: str, study: str, trial: int | None, monitor: str = "val/loss"):
    return OmegaConf.create({"search": {"storage": url, "study": study, "trial": trial},
                             "trainer": {"monitor": monitor}})


def test_a_trial_behind_the_median_is_pruned_and_left_to_the_sweeper_to_end(url: str) -> None:
    study = _study(url, "median")
    _finished(study, [1.0, 0.8])
    running = study.ask()
    reporter = trial_reporter(_cfg(url, "median", running.number), "min")
    assert reporter is not None and not reporter.report(1, 0.9)  # ahead of the median (1.0) at epoch 1
    assert not reporter.report(2, math.nan) and not reporter.pruned  # never reported: Optuna keeps none
    assert reporter.report(2, 2.5) and reporter.pruned  # its best, 0.9, is behind 0.8 at epoch 2
    frozen = study.trials[running.number]
    assert frozen.intermediate_values == {1: 0.9, 2: 2.5} and frozen.state == optuna.trial.TrialState.RUNNING


def test_no_pruner_and_the_startup_trials_never_prune(url: str) -> None:
    for name, pruning in (("none", {"pruner": "none"}), ("startup", {**MEDIAN, "n_startup_trials": 2})):
        study = _study(url, name, pruning)
        _finished(study, [0.1])  # startup: one of the two finished trials pruning waits for
        assert not trial_reporter(_cfg(url, name, study.ask().number), "min").report(1, 100.0), name


def test_who_reports_to_what_is_checked_in_one_line(url: str, tmp_path: Path) -> None:
    assert trial_reporter(OmegaConf.create({"trainer": {"monitor": "val/dice"}}), "max") is None  # no search node
    study = _study(url, "checks")
    assert trial_reporter(_cfg(url, "checks", None), "min") is None  # not a search job
    running = study.ask()
    _finished(study, [0.5])
    assert trial_reporter(_cfg(url, "checks", 1), "min") is None  # already ended: a run continued by hand trains on
    cases = [
        (_cfg(url, "checks", running.number), "max", "trainer.monitor_mode=max"),
        (_cfg(url, "checks", running.number, monitor="val/dice"), "min",
         "ranks trials by val/loss, but trainer.monitor=val/dice"),
        (_cfg(url, "checks", 7), "min", "holds no trial 7"),
        (_cfg(url, "nothing", 0), "min", "holds no trial 0 of a study 'nothing'"),
        (_cfg(f"sqlite:///{tmp_path / 'moved.db'}", "checks", 0), "min", "no such database"),
        (OmegaConf.create({"search": {"storage": None, "study": "s", "trial": 0}}), "min", "needs search.storage"),
    ]
    for cfg, mode, message in cases:
        with pytest.raises(ConfigError) as err:
            trial_reporter(cfg, mode)
        assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "moved.db").exists()  # not created by looking


def test_fit_stops_a_pruned_trial_after_that_validation_with_status_pruned(url: str, tmp_path: Path) -> None:
    from seg.train.fit import fit

    study = _study(url, "fit")
    _finished(study, [0.0, 0.0, 0.0])  # no val/loss is below 0: the next trial is behind it at epoch 1
    number = study.ask().number
    search = [f"search.storage={quoted(url)}", "search.study=fit", f"search.trial={number}"]
    run = tmp_path / "run"
    result = fit(compose_cfg(["trainer.epochs=3", "trainer.monitor=val/loss", "trainer.monitor_mode=min", *search],
                             run), run)
    assert (result["status"], result["epoch"], result["stopped_by"]) == ("pruned", 1, None)
    assert json.loads((run / "result.json").read_text())["status"] == "pruned"
    assert (run / "checkpoints" / "last.pt").is_file()  # written before the trial stopped: resumable
    assert study.trials[number].intermediate_values == {1: pytest.approx(result["val/loss"])}
