"""resume: the stored config wins, the command line changes only the keys it names, group choices
may not change the run, the split must stay, and epoch-based schedules follow a raised epoch count."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seg.checkpoint import load_checkpoint
from seg.errors import CheckpointError, ConfigError
from seg.train.fit import fit
from seg.train.resume import differences, override_key, resumed_config
from tests.tiny import compose_cfg

GROUPS = {"dataset", "model", "loss", "augmentation", "optimizer", "scheduler", "experiment"}
ORIGINAL = ["model.wf=2", "loss=bce", "trainer.batch_size=5", "optimizer.lr=0.003"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    fit(compose_cfg([*ORIGINAL, "trainer.epochs=1"], run_dir), run_dir)
    return run_dir


def resume(run: Path, overrides: list[str], groups: set[str] = GROUPS) -> object:
    """What seg-train does with `seg-train <overrides>`: compose them alone, then resumed_config."""
    return resumed_config(compose_cfg(overrides), run, overrides, groups)


def test_the_stored_config_is_resumed_with_only_the_named_keys_changed(run: Path, caplog) -> None:
    last = run / "checkpoints" / "last.pt"
    with caplog.at_level(logging.INFO, logger="seg"):
        cfg = resume(run, [f"resume={last}", "trainer.epochs=3", "trainer.num_workers=1"])
    assert cfg.model.wf == 2 and cfg.loss._target_ == "seg.losses.BCELoss"  # not the defaults of this command
    assert cfg.trainer.batch_size == 5 and cfg.optimizer.lr == pytest.approx(0.003)
    assert cfg.trainer.epochs == 3 and cfg.trainer.num_workers == 1 and cfg.resume == str(last)
    assert "trainer.epochs (1 -> 3)" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # routine changes are not warned


def test_changing_what_the_run_is_warns(run: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="seg"):
        cfg = resume(run, ["resume=auto", "optimizer.lr=0.01"])
    assert cfg.optimizer.lr == pytest.approx(0.01)
    assert any(r.levelno == logging.WARNING and "optimizer.lr (0.003 -> 0.01)" in r.message for r in caplog.records)


def test_group_choices_may_repeat_the_run_but_not_change_it(run: Path, caplog) -> None:
    same = resume(run, ["resume=auto", "loss=bce", *[o for o in ORIGINAL if o != "loss=bce"]])
    assert same.loss._target_ == "seg.losses.BCELoss"
    # Repeating the choice without the run's own model.wf=2: the stored settings stay, with a warning.
    with caplog.at_level(logging.WARNING, logger="seg"):
        repeated = resume(run, ["resume=auto", "model=unet"])
    assert repeated.model.wf == 2 and "the stored ones are kept" in caplog.text and "model.wf (2 -> 5)" in caplog.text
    with pytest.raises(ConfigError, match=r"model=segnet would change model\._target_"):
        resume(run, ["resume=auto", "model=segnet"])
    with pytest.raises(ConfigError, match="deleting a key"):
        override_key("~trainer.grad_clip_norm")


def test_a_file_that_cannot_be_resumed_fails_before_anything_is_written(tmp_path: Path) -> None:
    bad = tmp_path / "a" / "b" / "bad.pt"
    bad.parent.mkdir(parents=True)
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        resume(tmp_path, [f"resume={bad}"])
    torch.save({"model": {}, "config": {"trainer": {}}, "epoch": 3}, tmp_path / "weights.pt")  # inference export
    with pytest.raises(CheckpointError, match="no training state"):
        resume(tmp_path, [f"resume={tmp_path / 'weights.pt'}"])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "bad.pt", "weights.pt"]


def test_helpers() -> None:
    assert override_key("++trainer.epochs=3") == "trainer.epochs" and override_key("+x.y=[1,2]") == "x.y"
    a, b = {"a": {"b": 1, "c": [1]}, "r": {"s": 1}}, {"a": {"b": 2, "c": [1]}, "r": {"s": 2}}
    assert differences(a, b, skip=("r",)) == ["a.b (1 -> 2)"] and differences(a, b, skip=("r.s",)) == ["a.b (1 -> 2)"]


def test_a_resume_that_would_change_the_split_is_refused(tmp_path: Path) -> None:
    fit(compose_cfg(["trainer.epochs=1"], tmp_path), tmp_path)
    before = (tmp_path / "split.json").read_text()
    with pytest.raises(ConfigError, match="another split"):
        fit(compose_cfg(["trainer.epochs=2", "resume=auto", "dataset.n_images=30"], tmp_path), tmp_path)
    assert (tmp_path / "split.json").read_text() == before


def test_raising_epochs_on_resume_replans_an_epoch_based_schedule(tmp_path: Path, caplog) -> None:
    """2 epochs of a 2-epoch cosine schedule, resumed with trainer.epochs=4, train like 4 straight
    (the cosine's first two epochs are its warm-up and peak either way)."""
    common = ["scheduler=cosine", "augmentation=none"]
    fit(compose_cfg([*common, "trainer.epochs=4"], tmp_path / "straight"), tmp_path / "straight")
    fit(compose_cfg([*common, "trainer.epochs=2"], tmp_path / "longer"), tmp_path / "longer")
    with caplog.at_level(logging.INFO, logger="seg"):
        fit(compose_cfg([*common, "trainer.epochs=4", "resume=auto"], tmp_path / "longer"), tmp_path / "longer")
    assert "trainer.epochs 2 -> 4" in caplog.text
    lrs = [sorted((e.step, e.value) for e in EventAccumulator(str(d / "tb")).Reload().Scalars("lr"))
           for d in (tmp_path / "straight", tmp_path / "longer")]
    assert lrs[0] == lrs[1] and [round(v, 6) for _, v in lrs[0]] == [0.0005, 0.001, 0.00075, 0.00025]
    a, b = (load_checkpoint(tmp_path / d / "checkpoints" / "last.pt")["model"] for d in ("straight", "longer"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_nothing_to_train_says_so(tmp_path: Path, caplog) -> None:
    fit(compose_cfg(["trainer.epochs=1"], tmp_path), tmp_path)
    with caplog.at_level(logging.WARNING, logger="seg"):
        result = fit(compose_cfg(["trainer.epochs=1", "resume=auto"], tmp_path), tmp_path)
    assert result["epoch"] == 1 and "nothing to train" in caplog.text and "trainer.epochs=11" in caplog.text


def test_a_loose_checkpoint_resumes_in_this_runs_folder_not_its_parents(run: Path, tmp_path: Path) -> None:
    """backup/old.pt next to another run's checkpoints/: that run's files stay as they are."""
    other = tmp_path / "other"
    (other / "backup").mkdir(parents=True)
    (other / "checkpoints").mkdir()
    (other / "checkpoints" / "best.pt").write_bytes(b"another run's checkpoint")
    loose = other / "backup" / "old.pt"
    loose.write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    here = tmp_path / "here"
    cfg = resume(here, [f"resume={loose}", "trainer.epochs=2"])
    fit(cfg, here)
    assert (other / "checkpoints" / "best.pt").read_bytes() == b"another run's checkpoint"
    assert sorted(p.name for p in (other / "checkpoints").iterdir()) == ["best.pt"]
    assert load_checkpoint(here / "checkpoints" / "last.pt")["epoch"] == 2


def test_a_resume_may_choose_where_its_curves_go(run: Path, caplog) -> None:
    """logger=mlflow on a resume takes effect (the logger is not how the run trains), unwarned."""
    with caplog.at_level(logging.INFO, logger="seg"):
        cfg = resume(run, ["resume=auto", "logger=mlflow"], groups={*GROUPS, "logger"})
    assert cfg.logger._target_ == "seg.logger.mlflow_logger.MLflowLogger" and cfg.model.wf == 2
    assert "logger._target_" in caplog.text and not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_checkpoint_from_before_a_trainer_key_resumes_with_its_default(run: Path, tmp_path: Path) -> None:
    """An older seg wrote no trainer.accumulate_grad_batches (or ema_decay): the default, which is what
    that seg did, fills it in."""
    import shutil

    import torch

    old = tmp_path / "old"
    shutil.copytree(run, old)
    last = old / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    for key in ("accumulate_grad_batches", "ema_decay", "sync_batchnorm"):
        del ckpt["config"]["trainer"][key]
    torch.save(ckpt, last)
    cfg = resume(old, [f"resume={last}"])
    assert cfg.trainer.accumulate_grad_batches == 1 and cfg.trainer.ema_decay is None
    assert cfg.trainer.sync_batchnorm is False and cfg.trainer.batch_size == 5  # the stored ones stay
