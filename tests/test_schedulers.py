"""The epoch-based schedules' linear warm-up (`scheduler.warmup_epochs`, `scheduler.warmup_start_factor`):
the lr of every epoch, the defaults that keep the schedules as they were, bad values in one line, and a
resume that raises trainer.epochs replanning a warmed-up schedule exactly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seg.checkpoint import load_checkpoint
from seg.engine import builders
from seg.errors import ConfigError
from seg.train.fit import fit
from tests.tiny import compose_cfg

LR = 0.01


def lrs(overrides: list[str], epochs: int) -> list[float]:
    """The lr each epoch 0..epochs trains with, from the composed scheduler config."""
    cfg = compose_cfg([*overrides, f"optimizer.lr={LR}"])
    optimizer = builders.build_optimizer(cfg.optimizer, torch.nn.Linear(2, 1), torch.device("cpu"))
    scheduler = builders.build_scheduler(cfg.scheduler, optimizer, epochs, "max")
    seen = []
    for _ in range(epochs + 1):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def exactly(values: list[float]) -> list[float]:
    return pytest.approx([LR * v for v in values], rel=1e-12, abs=0)


def test_cosine_keeps_its_one_evenly_spaced_warmup_epoch_by_default() -> None:
    c = [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]  # 4 epochs of cosine after the warm-up
    assert lrs(["scheduler=cosine"], 5) == exactly([0.5, *c])


def test_cosine_with_a_longer_warmup_and_its_start_factor() -> None:
    c = [0.5 * (1 + math.cos(math.pi * k / 3)) for k in range(4)]
    assert lrs(["scheduler=cosine", "scheduler.warmup_epochs=2", "scheduler.warmup_start_factor=0.1"], 5) == exactly(
        [0.1, 0.55, *c])
    assert lrs(["scheduler=cosine", "scheduler.warmup_epochs=2"], 5)[:3] == exactly([1 / 3, 2 / 3, 1.0])
    floor = 0.1  # min_lr / lr: the cosine ends there, the warm-up is untouched by it
    assert lrs(["scheduler=cosine", "scheduler.warmup_epochs=0", f"scheduler.min_lr={LR * floor}"], 2) == exactly(
        [1.0, floor + (1 - floor) * 0.5, floor])


def test_poly_has_no_warmup_by_default() -> None:
    assert lrs(["scheduler=poly"], 4) == exactly([(1 - e / 4) ** 0.9 for e in range(5)])


def test_poly_with_a_warmup_decays_over_the_remaining_epochs() -> None:
    got = lrs(["scheduler=poly", "scheduler.power=1.0", "scheduler.warmup_epochs=2",
               "scheduler.warmup_start_factor=0.25"], 6)
    assert got == exactly([0.25, 0.625, 1.0, 0.75, 0.5, 0.25, 0.0])
    even = lrs(["scheduler=poly", "scheduler.warmup_epochs=3"], 5)
    assert even == exactly([0.25, 0.5, 0.75, 1.0, 0.5 ** 0.9, 0.0])
    # a warm-up as long as the run: every epoch warms up, and the lr reaches the full value after it
    assert lrs(["scheduler=poly", "scheduler.warmup_epochs=3"], 3) == exactly([0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize("sched", ["cosine", "poly"])
@pytest.mark.parametrize("override, message", [
    ("warmup_epochs=-1", r"warmup_epochs (and min_lr )?must be"),
    ("warmup_epochs=1.5", r"warmup_epochs must be an integer >= 0, got 1\.5"),
    ("warmup_start_factor=0", r"warmup_start_factor must be in \(0, 1\]"),
    ("warmup_start_factor=1.5", r"warmup_start_factor must be in \(0, 1\]"),
])
def test_bad_warmup_values_are_one_config_error(sched: str, override: str, message: str) -> None:
    cfg = compose_cfg([f"scheduler={sched}", f"scheduler.{override}"])
    optimizer = builders.build_optimizer(cfg.optimizer, torch.nn.Linear(2, 1), torch.device("cpu"))
    with pytest.raises(ConfigError, match=rf"invalid scheduler settings .*: {message}"):
        builders.build_scheduler(cfg.scheduler, optimizer, 4, "max")


def test_raising_epochs_on_resume_replans_a_warmed_up_poly_schedule(tmp_path: Path) -> None:
    """2 epochs (both warm-up), resumed with trainer.epochs=4, train exactly like 4 straight."""
    common = ["scheduler=poly", "scheduler.warmup_epochs=2", "scheduler.warmup_start_factor=0.25",
              "augmentation=none", f"optimizer.lr={LR}"]
    fit(compose_cfg([*common, "trainer.epochs=4"], tmp_path / "straight"), tmp_path / "straight")
    fit(compose_cfg([*common, "trainer.epochs=2"], tmp_path / "longer"), tmp_path / "longer")
    fit(compose_cfg([*common, "trainer.epochs=4", "resume=auto"], tmp_path / "longer"), tmp_path / "longer")
    curves = [sorted((e.step, e.value) for e in EventAccumulator(str(d / "tb")).Reload().Scalars("lr"))
              for d in (tmp_path / "straight", tmp_path / "longer")]
    assert curves[0] == curves[1]
    # TensorBoard stores float32
    assert [v for _, v in curves[0]] == pytest.approx([LR * f for f in (0.25, 0.625, 1.0, 0.5 ** 0.9)], rel=1e-6)
    a, b = (load_checkpoint(tmp_path / d / "checkpoints" / "last.pt")["model"] for d in ("straight", "longer"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_warm_up_as_long_as_the_run_is_said(caplog) -> None:
    import torch

    from seg.engine.schedulers import poly

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with caplog.at_level("WARNING", logger="seg"):
        poly(optimizer, epochs=2, warmup_epochs=5)
    assert "the run ends during the warm-up" in caplog.text
