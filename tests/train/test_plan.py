"""plan_run: one decision of the run folder and the resumed checkpoint, the same whether the Hydra
callback makes it for a single run or a sweep job makes it for itself."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from seg.cli.callbacks import StartRecord, _settle_run
from seg.cli.common import config_dir
from seg.errors import CheckpointError, ConfigError
from seg.train.plan import RunPlan, continues_its_run, plan_run


def fake_checkpoint(path: Path) -> Path:
    """A zip, as torch.save writes: plan_run looks at where a checkpoint is, never inside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"")
    return path


def composed(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def by_callback(overrides: list[str]) -> Path:
    """The folder the Hydra callback settles for a single run."""
    config = composed(overrides)
    _settle_run(config, StartRecord())
    return Path(config.hydra.run.dir)


def by_job(overrides: list[str], job_dir: Path) -> RunPlan:
    """What a sweep job (or fit given a folder) plans in its own folder."""
    cfg = composed(overrides)
    with open_dict(cfg):
        del cfg["hydra"]
    return plan_run(cfg, job_dir)


def test_the_callback_and_a_job_agree(tmp_path: Path) -> None:
    run, other = tmp_path / "run", tmp_path / "other"
    last = fake_checkpoint(run / "checkpoints" / "last.pt")
    (run / "split.json").write_text("{}")  # what makes a folder a seg run
    loose = fake_checkpoint(tmp_path / "backup" / "old.pt")
    cases = {  # overrides -> (the folder given, the folder trained in, the checkpoint continued)
        "new": ([f"hydra.run.dir={other}"], other, other, None),
        "auto": (["resume=auto", f"hydra.run.dir={run}"], run, run, last),
        "path in a run": ([f"resume={last}", f"hydra.run.dir={other}"], other, run, last),
        "loose copy": ([f"resume={loose}", f"hydra.run.dir={other}"], other, other, loose),
    }
    for name, (overrides, given, trained_in, resumed) in cases.items():
        plan = by_job([o for o in overrides if not o.startswith("hydra.")], given)
        assert (plan.run_dir, plan.resume_from) == (trained_in, resumed), name
        assert by_callback(overrides) == trained_in, name


def test_a_new_run_never_trains_where_checkpoints_are(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        by_job([], tmp_path / "run")
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        by_callback([f"hydra.run.dir={tmp_path / 'run'}"])


def test_a_missing_or_fake_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="resume=auto: no checkpoint at"):
        by_job(["resume=auto"], tmp_path)
    text = tmp_path / "r" / "checkpoints" / "last.pt"
    text.parent.mkdir(parents=True)
    text.write_text("not a checkpoint")
    assert not continues_its_run(text)  # only a real checkpoint moves the run to its folder
    assert by_job([f"resume={text}"], tmp_path / "mine").run_dir == tmp_path / "mine"


def test_the_checkpoint_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import seg.train.plan as plan_module

    calls = []
    monkeypatch.setattr(plan_module, "load_checkpoint",
                        lambda path, mmap: calls.append(path) or {"optimizer": {}, "rng": {}, "config": {}})
    plan = RunPlan(tmp_path, resume_from=fake_checkpoint(tmp_path / "checkpoints" / "last.pt"))
    assert plan.checkpoint() is plan.checkpoint() and len(calls) == 1
    with pytest.raises(ValueError):
        RunPlan(tmp_path).checkpoint()


def test_a_resume_never_overwrites_another_runs_or_a_later_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fake_checkpoint(run / "checkpoints" / "last.pt")
    best = fake_checkpoint(run / "checkpoints" / "best.pt")
    (run / "split.json").write_text("{}")
    with pytest.raises(ConfigError, match="would continue that run from best.pt and overwrite its later last.pt"):
        by_job([f"resume={best}"], tmp_path / "other")
    loose = fake_checkpoint(tmp_path / "backup" / "old.pt")
    with pytest.raises(ConfigError, match="already holds checkpoints"):  # a loose copy into another run
        by_job([f"resume={loose}"], run)
    mine = fake_checkpoint(tmp_path / "mine" / "checkpoints" / "unet_v3.pt")  # no split.json: not a run
    assert by_job([f"resume={mine}"], tmp_path / "new").run_dir == tmp_path / "new"
