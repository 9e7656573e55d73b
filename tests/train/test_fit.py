"""fit(): training runs end to end, logs, keeps checkpoints, reproduces with a seed, resumes exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seg.checkpoint import load_checkpoint
from seg.errors import CheckpointError, ConfigError
from seg.train.fit import fit
from tests.tiny import compose_cfg


def test_short_training_through_fit(tmp_path: Path) -> None:
    cfg = compose_cfg(["trainer.epochs=1"], tmp_path)
    result = fit(cfg, tmp_path)
    assert result["epoch"] == 1
    for key in ("val/dice", "val/iou", "val/precision", "val/recall", "val/f1", "val/dice_per_image",
                "val/percent_tp", "val/percent_fn", "val/percent_fp"):
        assert 0.0 <= result[key] <= 100.0, key
    assert result["val/loss"] > 0
    assert (tmp_path / "checkpoints" / "best.pt").is_file()


def test_run_directory_contents(tmp_path: Path) -> None:
    cfg = compose_cfg([], tmp_path)
    result = fit(cfg, tmp_path)
    split = json.loads((tmp_path / "split.json").read_text())
    assert set(split) == {"train", "val", "test"} and len(split["train"]) == 14
    assert not set(split["train"]) & set(split["val"])
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    for key in ("model", "optimizer", "scheduler", "epoch", "samples_seen", "best_score", "monitor", "metrics",
                "config", "argv", "created", "versions"):
        assert key in ckpt, key
    assert ckpt["epoch"] == 2 and ckpt["samples_seen"] == 2 * 12  # 14 train items, batch 4, drop_last
    assert ckpt["monitor"] == "val/dice"
    assert ckpt["config"]["dataset"]["n_images"] == 20 and isinstance(ckpt["config"], dict)
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["best_score"] == pytest.approx(result["best_score"])
    assert best["metrics"]["val/dice"] == pytest.approx(result["best_score"])
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/dice", "val/iou", "lr", "perf/data_wait_fraction"} <= scalars
    assert [e.step for e in events.Scalars("val/dice")] == [1, 2]
    images = events.Tags()["images"]
    assert len([t for t in images if t.startswith("val/overlay/")]) == 2
    assert len([t for t in images if t.startswith("train/overlay/")]) == 2
    first_val = sorted(t for t in images if t.startswith("val/overlay/"))[0]
    assert [e.step for e in events.Images(first_val)] == [1, 2]  # the same image at every validation


def test_same_seed_same_first_losses(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        cfg = compose_cfg(["trainer.epochs=1", "augmentation=flip"], tmp_path / name)
        fit(cfg, tmp_path / name)
        runs.append(load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["model"])
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key


def test_resume_gives_the_same_weights_as_training_straight(tmp_path: Path) -> None:
    """4 epochs straight == 2 epochs, then resume=last.pt for 2 more (augmentation, shuffling and the
    plateau scheduler's state included)."""
    common = ["augmentation=affine", "scheduler=plateau", "scheduler.patience=0", "trainer.val_every=1"]
    fit(compose_cfg([*common, "trainer.epochs=4"], tmp_path / "straight"), tmp_path / "straight")
    fit(compose_cfg([*common, "trainer.epochs=2"], tmp_path / "resumed"), tmp_path / "resumed")
    last = tmp_path / "resumed" / "checkpoints" / "last.pt"
    fit(compose_cfg([*common, "trainer.epochs=4", f"resume={last}"], tmp_path / "other"), tmp_path / "other")
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(last)
    assert b["epoch"] == 4 and b["samples_seen"] == a["samples_seen"]
    assert b["best_score"] == pytest.approx(a["best_score"]) and b["scheduler"] == a["scheduler"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert not (tmp_path / "other" / "checkpoints").exists()  # the resumed run continued in its own folder
    events = EventAccumulator(str(tmp_path / "resumed" / "tb")).Reload()
    assert [e.step for e in events.Scalars("val/dice")] == [1, 2, 3, 4]  # one continuous curve


def _fit_interrupted(cfg, run_dir: Path, stop_after_steps: int) -> None:
    """Train with the full schedule but stop (as SIGINT would) after `stop_after_steps` optimizer steps."""
    import seg.train.fit as fit_module

    real, steps = fit_module.train_one_epoch, {"n": 0}

    def counting(*args, **kwargs):
        def should_stop() -> bool:  # asked before each step
            steps["n"] += 1
            return steps["n"] > stop_after_steps

        return real(*args, **{**kwargs, "should_stop": should_stop})

    fit_module.train_one_epoch = counting
    try:
        fit(cfg, run_dir)
    finally:
        fit_module.train_one_epoch = real


def test_interrupt_saves_last_and_keeps_best(tmp_path: Path) -> None:
    cfg = compose_cfg(["trainer.epochs=3"], tmp_path)
    _fit_interrupted(cfg, tmp_path, stop_after_steps=5)  # 3 steps per epoch: stops in epoch 2
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert last["epoch"] == 1 and best["epoch"] == 1
    assert last["samples_seen"] == 5 * 4 and best["samples_seen"] == 3 * 4  # the finished steps are kept
    progress = last["epoch_progress"]
    assert (progress["epoch"], progress["steps"], progress["samples"]) == (2, 2, 8)
    assert best["epoch_progress"] is None


def _interrupt_settings(workers: int) -> list[str]:
    return ["augmentation=strong", "scheduler=cosine", "trainer.epochs=3", f"trainer.num_workers={workers}"]


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory: pytest.TempPathFactory):
    """The uninterrupted run for each worker count, trained once for the stop points that compare with it."""
    runs: dict[int, Path] = {}

    def straight(workers: int) -> Path:
        if workers not in runs:
            runs[workers] = tmp_path_factory.mktemp(f"straight-{workers}")
            fit(compose_cfg(_interrupt_settings(workers), runs[workers]), runs[workers])
        return runs[workers]

    return straight


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop_after_steps", [4, 3])  # in the middle of epoch 2; right after epoch 1
def test_resume_after_an_interrupt_is_exact(tmp_path: Path, workers: int, stop_after_steps: int,
                                            straight_runs) -> None:
    """Interrupted mid-epoch then resumed == trained straight: weights, the epoch's logged loss and
    train metrics, and the lr schedule (cosine, stepped per epoch)."""
    common = _interrupt_settings(workers)
    straight_dir = straight_runs(workers)
    run = tmp_path / "stopped"
    _fit_interrupted(compose_cfg(common, run), run, stop_after_steps=stop_after_steps)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    fit(compose_cfg([*common, "resume=auto"], run), run)
    a = load_checkpoint(straight_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert b["epoch"] == 3 and b["samples_seen"] == a["samples_seen"] and b["scheduler"] == a["scheduler"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    curves = [EventAccumulator(str(d / "tb")).Reload() for d in (straight_dir, run)]
    for tag in ("train/loss", "train/dice", "lr", "val/dice", "val/loss"):
        # sorted: both event files of the resumed run may carry the same second in their names
        straight, resumed = (sorted((e.step, e.value) for e in c.Scalars(tag)) for c in curves)
        assert resumed == straight and len(straight) == 3, tag


def test_unknown_monitor_names_the_available_metrics_before_writing(tmp_path: Path) -> None:
    cfg = compose_cfg(["trainer.monitor=val/dise", "trainer.epochs=1"], tmp_path / "run")
    with pytest.raises(ConfigError, match="val/dice_per_image"):
        fit(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_resume_from_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    cfg = compose_cfg([f"resume={tmp_path / 'nope.pt'}"], tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        fit(cfg, tmp_path)


def test_early_stopping_and_min_mode(tmp_path: Path) -> None:
    cfg = compose_cfg(["trainer.epochs=6", "trainer.monitor=val/loss", "trainer.monitor_mode=min",
                       "trainer.early_stopping=1", "optimizer.lr=0.0", "model.batch_norm=false"], tmp_path)
    result = fit(cfg, tmp_path)
    assert result["epoch"] == 2  # lr 0, no batch-norm statistics: nothing changes after epoch 1
    assert result["best_epoch"] == 1


def test_resume_auto_continues_the_run_directory(tmp_path: Path) -> None:
    fit(compose_cfg(["trainer.epochs=1"], tmp_path), tmp_path)
    result = fit(compose_cfg(["trainer.epochs=2", "resume=auto"], tmp_path), tmp_path)
    assert result["epoch"] == 2
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 2
    with pytest.raises(CheckpointError, match="resume=auto"):
        fit(compose_cfg(["resume=auto"], tmp_path / "fresh"), tmp_path / "fresh")


def test_a_new_run_never_overwrites_earlier_checkpoints(tmp_path: Path) -> None:
    fit(compose_cfg(["trainer.epochs=1"], tmp_path), tmp_path)
    before = (tmp_path / "checkpoints" / "best.pt").read_bytes()
    with pytest.raises(ConfigError, match="resume=auto"):
        fit(compose_cfg(["trainer.epochs=1", "seed=7"], tmp_path), tmp_path)
    assert (tmp_path / "checkpoints" / "best.pt").read_bytes() == before


@pytest.mark.parametrize("loss, message", [("ce", "needs a multi-class model"), ("weighted_bce", "weight maps")])
def test_a_loss_that_does_not_fit_the_data_fails_before_the_run_folder_is_written(
    tmp_path: Path, loss: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        fit(compose_cfg([f"loss={loss}"], tmp_path / "run"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [("optimizer.betas=[0.9]", "invalid optimizer settings"),
                                               ("augmentation.hflip_p=2", "hflip_p")])
def test_a_bad_optimizer_or_augmentation_fails_before_the_run_folder_is_written(
    tmp_path: Path, override: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        fit(compose_cfg([override], tmp_path / "run"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _slow_loader(delays: list[float]):
    """Batches of 2 tiny images, each handed out after its delay (seconds)."""
    import time

    for delay in delays:
        time.sleep(delay)
        yield {"image": torch.zeros(2, 1, 8, 8), "mask": torch.zeros(2, 8, 8, dtype=torch.uint8)}


class _SlowStep(torch.nn.Conv2d):
    """A 1x1 convolution whose forward takes 50 ms, so a step outlasts the loader's own overhead
    (a bare tiny step takes well under a millisecond, about what fetching a batch costs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(0.05)
        return super().forward(x)


@pytest.mark.parametrize(("delays", "steady"), [([0.3, 0, 0, 0], False), ([0.1, 0.1, 0.1, 0.1], True)])
def test_the_data_wait_warning_tells_a_slow_loader_from_a_slow_start(delays, steady, caplog) -> None:
    """Over 10% waiting warns. Every epoch waits for its first batch (workers start or refill their
    queues), which more workers cannot remove: only a wait after it asks for more workers."""
    from types import SimpleNamespace

    from seg.engine.amp import Amp
    from seg.engine.loop import StepSettings, train_one_epoch
    from seg.losses import DiceBCELoss
    from seg.train.fit import _log_train

    model = _SlowStep(1, 1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train_one_epoch(model, _slow_loader(delays), DiceBCELoss(), optimizer,
                            StepSettings(torch.device("cpu"), Amp("32", "cpu", None, None)))
    assert stats.steps == 4 and stats.first_batch_seconds >= delays[0]
    assert stats.data_seconds >= sum(delays) and stats.data_wait_fraction > 0.5 * sum(delays) / (sum(delays) + 0.2)
    assert (stats.steady_data_wait_fraction > 0.10) is steady

    logged = {}
    tb = SimpleNamespace(scalars=lambda values, epoch: logged.update(values))
    run = SimpleNamespace(optimizer=optimizer, train_metrics=SimpleNamespace(compute=dict, sync=lambda device: None),
                          train_loader=SimpleNamespace(num_workers=3), step=SimpleNamespace(device="cpu"))
    with caplog.at_level("WARNING", logger="seg"):
        _log_train(tb, run, stats, epoch=1)
    assert logged["perf/data_wait_fraction"] == stats.data_wait_fraction
    assert "of the time was spent waiting for data" in caplog.text
    assert ("raise trainer.num_workers (now 3)" in caplog.text) is steady
    share = re.search(r"first batch .* took (\d+)% of it", caplog.text)
    assert (share is not None and int(share.group(1)) >= 90) is not steady  # 0.3 s of about 0.3 s waiting
