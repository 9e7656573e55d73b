"""logger=mlflow against a real local MLflow store (SQLite), read back with MLflow's own client: params,
per-epoch metrics equal to TensorBoard's and result.json's, the best checkpoint's bytes, the status, a
resume continuing the same MLflow run; TensorBoard (the default) needs no MLflow and writes none of it."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seg.allowlist import SEG_TARGETS
from seg.checkpoint import sha256
from seg.cli.common import config_dir
from seg.config import LOGGER_KEYS, check_train_config
from seg.errors import ConfigError
from seg.logger.build import build_loggers
from seg.logger.mlflow_logger import INSTALL, RUN_ID_FILE, MLflowLogger, mlflow_key, tracking_uri_for
from seg.train.fit import fit
from tests.cli.forked import run_forked
from tests.cli.test_cli import TINY, assert_user_error, run
from tests.tiny import compose_cfg

MLFLOW_FILES = ("mlflow.db", "mlartifacts", "mlruns", RUN_ID_FILE)
# MLflow's SQL store still uses an SQLAlchemy option SQLAlchemy 2 deprecates: theirs to change, not ours
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


def client(store: Path):
    from mlflow.tracking import MlflowClient  # imported here: collecting the suite need not load MLflow

    return MlflowClient(tracking_uri=f"sqlite:///{store}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """seg-train with logger=mlflow and its defaults into <tmp>/runs/a: the store it makes is copied by the
    other tests, as creating MLflow's tables takes 2 to 6 s (Alembic's migrations)."""
    folder = tmp_path_factory.mktemp("mlflow")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PYTHONUNBUFFERED": "1"}
    first = run_forked("seg-train", [*TINY, "trainer.epochs=2", "logger=mlflow", "hydra.run.dir=runs/a"], folder, env)
    assert first.returncode == 0, first.stderr[-3000:]
    return folder


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's MLFLOW_TRACKING_URI would send these runs to their store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def history(mlflow, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in mlflow.get_metric_history(run_id, key))


def test_a_run_logs_beside_its_folder_and_a_resume_continues_the_same_mlflow_run(trained: Path, tmp_path: Path
                                                                                 ) -> None:
    """The fixture's run, then its resume (10 s with the fixture: two commands that load MLflow)."""
    run_dir, store = trained / "runs" / "a", trained / "runs" / "mlflow.db"
    assert sorted(p.name for p in trained.iterdir()) == ["runs"]  # nothing in the current directory
    mlflow = client(store)
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    logged = mlflow.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "a"
    assert logged.data.tags["seg.run_dir"] == str(run_dir.resolve()) and logged.data.tags["seg.status"] == "finished"
    experiment = mlflow.get_experiment(logged.info.experiment_id)
    assert experiment.name == "seg-synthetic"
    assert experiment.artifact_location == (trained / "runs" / "mlartifacts" / "seg-synthetic").as_uri()
    params = logged.data.params
    assert params["override/logger"] == "mlflow" and params["override/model.wf"] == "3"
    assert params["override/trainer.epochs"] == "2" and params["model._target_"] == "seg.models.UNet"

    result = json.loads((run_dir / "result.json").read_text())
    events = EventAccumulator(str(run_dir / "tb")).Reload()
    for key in ("val/dice", "val/loss", "train/loss", "lr"):
        tensorboard = sorted((e.step, e.value) for e in events.Scalars(key))
        assert history(mlflow, run_id, key) == [(s, pytest.approx(v, rel=1e-6)) for s, v in tensorboard]
    dice = history(mlflow, run_id, "val/dice")
    assert len(dice) == 2 and dice[-1] == (2, result["val/dice"])  # result.json: the last epoch's, exactly
    assert "hparams/best_val_dice" in logged.data.metrics and "perf/images_per_second" in logged.data.metrics
    best = Path(mlflow.download_artifacts(run_id, "checkpoints/best.pt", str(tmp_path / "down1")))
    assert sha256(best) == sha256(run_dir / "checkpoints" / "best.pt")

    again = run("seg-train", f"resume={run_dir / 'checkpoints' / 'last.pt'}", "trainer.epochs=3", cwd=trained)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run_dir / RUN_ID_FILE).read_text().strip() == run_id
    assert len(mlflow.search_runs([experiment.experiment_id])) == 1
    resumed = mlflow.get_run(run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed/trainer.epochs"] == "3"
    assert resumed.data.params["trainer.epochs"] == "2"  # params are fixed once logged
    steps = history(mlflow, run_id, "val/loss")
    events = EventAccumulator(str(run_dir / "tb")).Reload()
    assert [s for s, _ in steps] == [1, 2, 3]
    assert steps == [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars("val/loss")]
    best = Path(mlflow.download_artifacts(run_id, "checkpoints/best.pt", str(tmp_path / "down2")))
    assert sha256(best) == sha256(run_dir / "checkpoints" / "best.pt")


def test_the_options_name_store_experiment_run_and_artifacts(trained: Path, tmp_path: Path) -> None:
    """The other options in one in-process run; then the ends seg maps to KILLED and FAILED."""
    store, artifacts, run_dir = tmp_path / "store" / "m.db", tmp_path / "art", tmp_path / "runs" / "r"
    store.parent.mkdir()
    shutil.copy(trained / "runs" / "mlflow.db", store)  # a store with its tables, and another experiment
    cfg = compose_cfg(["logger=mlflow", f"logger.tracking_uri={store}", "logger.experiment_name=mine",
                       "logger.run_name=first try", "logger.log_checkpoint=false",
                       f"logger.artifact_location={artifacts}", "trainer.epochs=1"], run_dir)
    fit(cfg, run_dir)
    mlflow = client(store)
    experiment = mlflow.get_experiment_by_name("mine")
    assert experiment.artifact_location == artifacts.as_uri()
    (logged,) = mlflow.search_runs([experiment.experiment_id])
    assert logged.info.run_name == "first try" and logged.info.status == "FINISHED"
    assert [a.path for a in mlflow.list_artifacts(logged.info.run_id)] == ["config.yaml"]  # no checkpoint
    assert not (tmp_path / "runs" / "mlflow.db").exists()

    config = {"dataset": {"_target_": "seg.data.ph2.PH2Data"}}
    for status, expected in (("stopped", "KILLED"), (None, "FAILED")):
        (tmp_path / str(status)).mkdir()
        sink = MLflowLogger(run_dir=tmp_path / str(status), config=config, tracking_uri=str(store))
        sink.scalars({"val/dice": 0.5}, 1)
        if status:
            sink.finish(status)
        else:  # close() alone: the run ended by an exception
            sink.close()
        ended = mlflow.get_run(sink.run_id)
        assert ended.info.status == expected and history(mlflow, sink.run_id, "val/dice") == [(1, 0.5)]
        assert mlflow.get_experiment(ended.info.experiment_id).name == "seg-ph2"


def test_a_wrong_logger_key_fails_at_start_in_one_line(tmp_path: Path) -> None:
    bad = run("seg-train", *TINY, "logger=mlflow", "+logger.trackin_uri=x", "hydra.run.dir=r", cwd=tmp_path)
    assert_user_error(bad, "unknown key logger.trackin_uri (did you mean logger.tracking_uri?)")
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()
    with pytest.raises(ConfigCompositionException):  # the schema types the values
        compose_cfg(["logger=mlflow", "logger.log_checkpoint=maybe"])


def test_the_default_needs_no_mlflow_and_writes_none_of_its_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now fails, as where it is not installed
    monkeypatch.chdir(tmp_path)
    fit(compose_cfg(["trainer.epochs=1"], tmp_path / "run"), tmp_path / "run")
    assert (tmp_path / "run" / "tb").is_dir()
    assert [p for p in tmp_path.rglob("*") if p.name in MLFLOW_FILES] == []
    with pytest.raises(ConfigError) as err:
        build_loggers(compose_cfg(["logger=mlflow"]), tmp_path / "other")
    assert str(err.value) == INSTALL and not (tmp_path / "other").exists()


@pytest.mark.parametrize("name", sorted(p.stem for p in (config_dir() / "logger").glob("*.yaml")))
def test_every_logger_option_composes_with_its_keys(name: str, tmp_path: Path) -> None:
    cfg = compose_cfg([f"logger={name}"], tmp_path)
    check_train_config(cfg)
    target = cfg.logger._target_
    assert target in SEG_TARGETS and sorted(cfg.logger) == sorted(LOGGER_KEYS[target])
    if name == "tensorboard":
        loggers = build_loggers(cfg, tmp_path)
        loggers.close()
        assert loggers.extra == [] and (tmp_path / "tb").is_dir()
    else:
        assert cfg.logger.log_checkpoint is True and cfg.logger.tracking_uri is None
        assert cfg.logger.experiment_name is None and cfg.logger.run_name is None


def test_tracking_uris_and_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "sweep" / "job"
    assert tracking_uri_for(None, run_dir) == f"sqlite:///{(tmp_path / 'sweep' / 'mlflow.db').as_posix()}"
    monkeypatch.chdir(tmp_path)
    assert tracking_uri_for("stores/m.db", run_dir) == f"sqlite:///{(tmp_path / 'stores' / 'm.db').as_posix()}"
    assert tracking_uri_for("http://host:5000", run_dir) == "http://host:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team:5000")
    assert tracking_uri_for(None, run_dir) == "http://team:5000"
    assert mlflow_key("val/dice_left lung") == "val/dice_left lung" and mlflow_key("val/dice_a+b") == "val/dice_a_b"
    assert mlflow_key("/x//../y") == "x/__/y"


def _open_store(store: str, run_dir: str) -> None:
    """A job of a parallel sweep: opens the sweep's store (new: its tables are created by the first)."""
    Path(run_dir).mkdir(parents=True)
    logger = MLflowLogger(run_dir=run_dir, config={"dataset": {"_target_": "x.SyntheticData"}}, tracking_uri=store)
    logger.finish("finished")


def test_parallel_jobs_opening_one_new_store_all_get_their_run(tmp_path: Path) -> None:
    import multiprocessing

    store = str(tmp_path / "sweep" / "mlflow.db")
    context = multiprocessing.get_context("fork")
    jobs = [context.Process(target=_open_store, args=(store, str(tmp_path / "sweep" / f"{n}_seed={n}")))
            for n in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=120)
    assert [job.exitcode for job in jobs] == [0, 0, 0]  # without the lock, one lost the race for the tables
    runs = client(store).search_runs([client(store).get_experiment_by_name("seg-synthetic").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["0_seed=0", "1_seed=1", "2_seed=2"]
