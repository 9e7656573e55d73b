"""The Optuna sweeper's glue, with a launcher that trains nothing: batches, job numbers, what Optuna is told."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf

from seg.cli.common import config_dir
from seg.errors import ConfigError
from seg.search.sweeper import OptunaSweeper
from seg.summary import write_result

STATES = optuna.trial.TrialState
PARAMS = {"optimizer.lr": "tag(log, interval(1e-4, 1e-2))", "loss": "choice(bce, dice)"}
ARGS = ["trainer.monitor=val/loss", "trainer.monitor_mode=min"]


class FakeLauncher:
    """Runs each job as `outcome(trial number)` says, writing the result.json seg-train would: a number
    (finished with that best value), "pruned", "failed" (a user error), "bug" (the task raised), "kill"."""

    def __init__(self, sweep: Path, outcome: Callable[[int], object]) -> None:
        self.sweep, self.outcome, self.calls = sweep, outcome, []

    def launch(self, job_overrides: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
        self.calls.append((initial_job_idx, [list(o) for o in job_overrides]))
        returns = []
        for number, overrides in enumerate(job_overrides, initial_job_idx):
            outcome, folder = self.outcome(number), self.sweep / str(number)
            if outcome == "kill":  # SIGTERM: seg-train saved and exits 143, through the launcher
                raise SystemExit(143)
            folder.mkdir(parents=True, exist_ok=True)
            status = "finished" if isinstance(outcome, float) else outcome
            if status != "bug":
                write_result(folder, {"status": status, "epoch": 1, "monitor": "val/loss", "reason": "loss=ce ..."})
            value = outcome if isinstance(outcome, float) else RuntimeError("a bug") if status == "bug" else math.nan
            returns.append(JobReturn(overrides=overrides, cfg=OmegaConf.create({"run_dir": str(folder)}),
                                     status=JobStatus.FAILED if status == "bug" else JobStatus.COMPLETED,
                                     _return_value=value))
        return returns


@pytest.fixture
def make(tmp_path: Path):
    """make(outcome, **settings) -> (sweeper, launcher), set up on the training config as seg-train would."""
    def build(outcome: Callable[[int], object], *extra: str, **settings: object):
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            gh = GlobalHydra.instance()
            cfg = gh.hydra.compose_config("train", [*ARGS, f"hydra.sweep.dir={tmp_path / 'S'}", *extra],
                                          run_mode=RunMode.MULTIRUN, with_log_configuration=False)
            sweeper = OptunaSweeper(**{"study_name": "s", "storage": None, "n_trials": 4, "n_jobs": 2,
                                       "sampler": "random", "seed": 0, "pruner": "median", "n_startup_trials": 1,
                                       "n_warmup_steps": 0, "params": PARAMS, **settings})
            sweeper.setup(hydra_context=HydraContext(config_loader=gh.config_loader(), callbacks=None),
                          task_function=lambda c: None, config=cfg)
            launcher = sweeper.launcher = FakeLauncher(tmp_path / "S", outcome)
        return sweeper, launcher

    return build


def _sweep(sweeper: OptunaSweeper, *extra: str) -> None:
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        sweeper.sweep([*ARGS, *extra])


def _trials(tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'S' / 'optuna.db'}").trials


def test_batches_are_numbered_by_trial_and_every_outcome_is_told(make, tmp_path: Path) -> None:
    outcomes = {0: 0.5, 1: "pruned", 2: "failed", 3: 0.3, 4: 0.4}
    sweeper, launcher = make(outcomes.get, n_trials=5)
    _sweep(sweeper)
    assert [(idx, len(jobs)) for idx, jobs in launcher.calls] == [(0, 2), (2, 2), (4, 1)]
    url = f"sqlite:///{tmp_path / 'S' / 'optuna.db'}"
    trials = _trials(tmp_path)
    for number, job in enumerate(j for _, jobs in launcher.calls for j in jobs):
        assert job[:2] == ARGS and job[-3:] == [f"search.storage='{url}'", "search.study='s'", f"search.trial={number}"]
        assert {o.split("=", 1)[0] for o in job[2:-3]} == {"optimizer.lr", "loss"}
        assert f"loss={trials[number].params['loss']}" in job
    assert [t.state for t in trials] == [STATES.COMPLETE, STATES.PRUNED, STATES.FAIL, STATES.COMPLETE, STATES.COMPLETE]
    assert [t.value for t in trials if t.state == STATES.COMPLETE] == [0.5, 0.3, 0.4]
    study = optuna.load_study(study_name="s", storage=url)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE and study.best_trial.number == 3
    assert study.user_attrs == {"monitor": "val/loss", "pruning": {"pruner": "median", "n_startup_trials": 1,
                                                                   "n_warmup_steps": 0}}
    assert (tmp_path / "S" / "multirun.yaml").is_file()


def test_a_killed_search_resumes_its_running_trials_under_their_numbers(make, tmp_path: Path) -> None:
    sweeper, launcher = make(lambda n: "kill" if n == 1 else 0.5)
    with pytest.raises(SystemExit):
        _sweep(sweeper)
    # The kill came in the batch's second job: neither trial of the batch was told.
    assert [t.state for t in _trials(tmp_path)] == [STATES.RUNNING, STATES.RUNNING]
    first_jobs = launcher.calls[0][1]
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'S' / 'optuna.db'}")
    study.tell(0, 0.9)  # as if another session had ended trial 0; and a failed trial 2, a running trial 3
    study.tell(study.ask().number, state=STATES.FAIL)
    study.ask(study.trials[0].distributions)

    with pytest.raises(ConfigError, match="already holds the Optuna study 's' .*resume=auto"):
        _sweep(make(lambda n: 0.5)[0])
    resumed, launcher = make(lambda n: 0.25 + n / 100, "resume=auto", n_trials=5)
    _sweep(resumed, "resume=auto")
    # Trials 1 and 3 run again, each under its number (not consecutive: launched one by one), then trial 4.
    assert [(idx, len(jobs)) for idx, jobs in launcher.calls] == [(1, 1), (3, 1), (4, 1)]
    assert launcher.calls[0][1][0][:-3] == [*ARGS, "resume=auto", *first_jobs[1][2:-3]]  # its own values again
    trials = _trials(tmp_path)
    assert [t.state for t in trials] == [STATES.COMPLETE, STATES.COMPLETE, STATES.FAIL, STATES.COMPLETE,
                                         STATES.COMPLETE]
    assert [t.value for t in trials] == [0.9, 0.26, None, 0.28, 0.29]


def test_a_job_that_raises_is_told_failed_and_its_error_stops_the_search(make, tmp_path: Path) -> None:
    sweeper, launcher = make(lambda n: "bug" if n == 0 else 0.5)
    with pytest.raises(RuntimeError, match="a bug"):
        _sweep(sweeper)
    assert [t.state for t in _trials(tmp_path)] == [STATES.FAIL, STATES.COMPLETE]  # the batch's other job is told


def test_settings_and_a_changed_objective_are_refused_in_one_line(make, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.n_trials=0 must be an integer >= 1"):
        make(lambda n: 0.5, n_trials=0)
    sweeper, _ = make(lambda n: 0.5, n_trials=1)
    _sweep(sweeper)
    flipped, _ = make(lambda n: 0.5, "trainer.monitor_mode=max", "resume=auto", n_trials=2)
    with pytest.raises(ConfigError) as err:
        _sweep(flipped, "trainer.monitor_mode=max", "resume=auto")
    assert "was made to minimize val/loss, not to maximize val/loss" in str(err.value)
    assert "\n" not in str(err.value) and len(_trials(tmp_path)) == 1
    assert json.loads((tmp_path / "S" / "0" / "result.json").read_text())["status"] == "finished"
