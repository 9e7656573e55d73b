"""An Optuna search through seg-train: interrupted, resumed, pruning, failed trials and the leaderboard."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import optuna
import pytest

from seg.search.space import literal
from tests.cli.test_cli import TINY, assert_user_error, run

# val/loss tells the losses the ready search draws from apart after one epoch (dice_bce about 1.45, dice 0.8,
# bce 0.64; val/dice is 0 for all at this size); one finished trial is enough for the median pruner, from the
# first epoch on. seed=5 (the sampler's too) draws bce for the first two trials.
SEARCH = ["--multirun", "hparams_search=unet_optuna", *TINY, "trainer.epochs=2", "trainer.monitor=val/loss",
          "trainer.monitor_mode=min", "hydra.sweeper.n_startup_trials=1", "hydra.sweeper.n_warmup_steps=0",
          "seed=5", "hydra.sweep.dir=S"]
STATES = optuna.trial.TrialState


def _trials(sweep: Path, study: str = "unet_optuna") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{sweep / 'optuna.db'}").trials


def _behind_the_median(trial: optuna.trial.FrozenTrial, trials: list[optuna.trial.FrozenTrial]) -> list[int]:
    """The median rule, recomputed: the epochs at which the trial's best value so far was behind (above) the
    median of the complete trials before it at that epoch (the search runs one trial at a time)."""
    earlier = [u for u in trials[:trial.number] if u.state == STATES.COMPLETE]
    values = trial.intermediate_values
    return [s for s in sorted(values) if earlier and min(v for k, v in values.items() if k <= s)
            > statistics.median(u.intermediate_values[s] for u in earlier)]


def _killed_in_trial_2(sweep: Path, params: dict[str, object]) -> None:
    """What a search killed in its third trial leaves (tests/search/test_sweeper.py kills one): trial 2 asked
    with these values and never told, so still RUNNING."""
    study = optuna.load_study(study_name="unet_optuna", storage=f"sqlite:///{sweep / 'optuna.db'}")
    study.enqueue_trial(params)
    assert study.ask(study.trials[0].distributions).number == 2


def test_a_search_stopped_and_resumed_ends_with_its_trials_pruned_and_ranked(tmp_path: Path) -> None:
    # 4 trials of 2 epochs in two commands: the end-to-end test of the search (about 8 s).
    sweep = tmp_path / "S"
    first = run("seg-train", *SEARCH, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert [t.params["loss"] for t in _trials(sweep)] == ["bce", "bce"]
    # dice_bce's val/loss is about twice bce's: trial 2 is pruned after its first epoch.
    _killed_in_trial_2(sweep, {"optimizer.lr": 1e-3, "optimizer.weight_decay": 1e-5, "loss": "dice_bce",
                               "augmentation": "flip"})

    resumed = run("seg-train", *SEARCH, "hydra.sweeper.n_trials=4", "resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = _trials(sweep)
    assert [t.number for t in trials] == [0, 1, 2, 3] and all(t.state.is_finished() for t in trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 4  # the resumed sampler draws anew
    assert "trial(s) 2 were running when the search stopped" in resumed.stdout
    folders = {int(p.name.split("_", 1)[0]): p for p in sweep.iterdir() if p.is_dir()}
    assert sorted(folders) == [0, 1, 2, 3]  # trial 2 ran, under its own number, in a folder of its own

    pruned = [t for t in trials if t.state == STATES.PRUNED]
    assert 2 in [t.number for t in pruned], [(t.number, t.state, t.intermediate_values) for t in trials]
    for t in trials:
        result = json.loads((folders[t.number] / "result.json").read_text())
        assert _behind_the_median(t, trials) == ([max(t.intermediate_values)] if t.state == STATES.PRUNED else [])
        if t.state == STATES.PRUNED:  # stopped after the validation that fell behind, a normal exit
            assert (result["status"], result["epoch"]) == ("pruned", max(t.intermediate_values))
        else:
            assert t.state == STATES.COMPLETE and list(t.intermediate_values) == [1, 2]
            assert result["status"] == "finished" and t.value == pytest.approx(min(t.intermediate_values.values()))
            assert t.value == pytest.approx(result["best_score"])

    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert len(rows) == 4
    by_trial = {int(r["run_dir"].split("_", 1)[0]): r for r in rows}
    for t in trials:
        row = by_trial[t.number]
        assert row["status"] == ("pruned" if t.state == STATES.PRUNED else "finished")
        assert f"search.trial={t.number}" in row["overrides"] and "search.storage" not in row["overrides"]
        if t.state == STATES.COMPLETE:
            assert float(row["best val/loss"]) == pytest.approx(t.value)
    assert [r["status"] for r in rows][-len(pruned):] == ["pruned"] * len(pruned)  # after the finished ones
    best = min((t for t in trials if t.state == STATES.COMPLETE), key=lambda t: t.value)
    assert int(rows[0]["run_dir"].split("_", 1)[0]) == best.number
    md = (sweep / "summary.md").read_text()
    command = md.split("```bash\n", 1)[1].split("\n", 1)[0]
    assert command.startswith("seg-train hparams_search=unet_optuna ") and "resume=" not in command
    assert all(f"{k}={literal(v)}" in command.split() for k, v in best.params.items()) and "search." not in command


def test_failed_trials_are_recorded_and_an_old_study_is_not_overwritten(tmp_path: Path) -> None:
    # loss=ce fails at start on this binary set: each trial fails, the search goes on to n_trials.
    args = [*SEARCH, "hydra.sweeper.n_trials=2", "loss=ce"]
    failed = run("seg-train", *args, cwd=tmp_path)
    assert_user_error(failed, "2 sweep job(s) failed", "loss=ce needs a multi-class model")
    trials = _trials(tmp_path / "S")
    assert [t.state for t in trials] == [STATES.FAIL, STATES.FAIL]
    assert {json.loads(p.read_text())["status"] for p in (tmp_path / "S").glob("*/result.json")} == {"failed"}

    again = run("seg-train", *args, cwd=tmp_path)
    assert_user_error(again, "already holds the Optuna study 'unet_optuna' (optuna.db)", "resume=auto")
    assert len(again.stderr.strip().splitlines()) == 1 and len(_trials(tmp_path / "S")) == 2


def test_a_mistyped_search_key_stops_before_a_study_exists(tmp_path: Path) -> None:
    bad = run("seg-train", *SEARCH, "trainer.batch_sise=choice(2,4)", cwd=tmp_path)
    assert_user_error(bad, "trainer.batch_sise")
    assert not (tmp_path / "S" / "optuna.db").exists()



def test_a_damaged_study_database_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "S").mkdir()
    (tmp_path / "S" / "optuna.db").write_text("not a database")
    proc = run("seg-train", *SEARCH, "hydra.sweeper.n_trials=1", "resume=auto", cwd=tmp_path)
    assert_user_error(proc, "the Optuna storage sqlite:///", "cannot be used", "file is not a database")
    assert len(proc.stderr.strip().splitlines()) == 1
