"""trainer.ema_decay: the EMA follows the hand-computed average, is what validation scores and what the
checkpoint's `model` holds (the raw weights beside it), resumes bit-identically, and bad values or
checkpoints give one line."""

from __future__ import annotations

import copy
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from seg.checkpoint import ema_state, load_checkpoint, save_checkpoint
from seg.config import check_train_config
from seg.engine import builders
from seg.engine.builders import build_amp
from seg.engine.ema import ModelEma, warmed_decay
from seg.engine.loop import StepSettings, evaluate, train_step
from seg.errors import CheckpointError, ConfigError
from seg.losses import BCELoss
from seg.metrics import SegMetrics
from seg.train.fit import fit
from tests.cli.test_cli import TINY as CLI_TINY
from tests.cli.test_cli import assert_user_error, run
from tests.tiny import compose_cfg
from tests.train.test_fit import _fit_interrupted

# fp32 and the plain layout: validation redone by hand below must run exactly as fit's did
PLAIN = ["trainer.precision=32", "trainer.channels_last=false", "trainer.device=cpu"]
EMA = "trainer.ema_decay=0.9"
STEPS_PER_EPOCH = 3  # 14 training items, batch 4, drop_last


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_warmed_decay_follows_the_model_early_then_keeps_the_set_decay() -> None:
    assert [warmed_decay(0.999, n) for n in range(3)] == [1 / 10, 2 / 11, 3 / 12]
    assert warmed_decay(0.99, 889) < 0.99 and warmed_decay(0.99, 890) == 0.99 == warmed_decay(0.99, 10_000)


def test_ema_equals_a_hand_computed_average_over_three_steps() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 1, 1), nn.BatchNorm2d(1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    settings = StepSettings(torch.device("cpu"), build_amp("32", torch.device("cpu")))
    ema = ModelEma(source=model, decay=0.2)  # warm-up decays 0.1 and 0.18, then the set 0.2 (< 3/12)
    expected = copy.deepcopy(model.state_dict())
    for n in range(3):
        batch = {"image": torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8),
                 "mask": torch.randint(0, 2, (2, 4, 4), dtype=torch.uint8)}
        train_step(model, batch, BCELoss(), optimizer, settings, ema=ema)
        d = min(0.2, (1 + n) / (10 + n))
        for key, raw in model.state_dict().items():
            # batch norm's running statistics are averaged too; its integer step count is copied
            expected[key] = d * expected[key] + (1 - d) * raw if raw.is_floating_point() else raw.clone()
    assert ema.updates == 3
    got = ema.module.state_dict()
    assert got.keys() == expected.keys() and int(got["1.num_batches_tracked"]) == 3
    for key in expected:
        assert torch.allclose(got[key], expected[key], rtol=0, atol=1e-6), key
    assert not torch.allclose(got["0.weight"], model.state_dict()["0.weight"])  # an average, not a copy
    assert not any(p.requires_grad for p in ema.module.parameters())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two epochs trained plain and with an EMA, otherwise alike."""
    folders = {}
    for name, extra in (("plain", []), ("ema", [EMA])):
        folders[name] = tmp_path_factory.mktemp(name)
        fit(compose_cfg([*PLAIN, *extra], folders[name]), folders[name])
    return folders


def test_the_checkpoint_model_is_the_ema_and_train_model_the_raw_weights(runs: dict[str, Path]) -> None:
    plain = load_checkpoint(runs["plain"] / "checkpoints" / "last.pt")
    last = load_checkpoint(runs["ema"] / "checkpoints" / "last.pt")
    assert "train_model" not in plain and "ema_steps" not in plain
    assert last["ema_steps"] == 2 * STEPS_PER_EPOCH
    assert _same(last["train_model"], plain["model"])  # the average never changes what training does
    assert last["model"].keys() == plain["model"].keys() and not _same(last["model"], last["train_model"])
    best = load_checkpoint(runs["ema"] / "checkpoints" / "best.pt")
    assert best["model"].keys() == last["model"].keys() and "train_model" in best


def _val_scores(cfg, state_dict: dict[str, torch.Tensor]) -> dict[str, float]:
    """Validation of `state_dict` done by hand: the run's model, loss, val split and settings."""
    model = builders.build_model(cfg.model, cfg.trainer.weight_init)
    model.load_state_dict(state_dict)
    data = builders.build_data(cfg.dataset)
    loader = builders.build_loader(data.dataset("val"), batch_size=cfg.trainer.batch_size, device=torch.device("cpu"),
                                   num_workers=0, pin_memory=False, prefetch_factor=2)
    cpu = torch.device("cpu")
    metrics = SegMetrics(n_classes=data.n_classes, class_names=data.class_names)
    return evaluate(model, loader, builders.build_module(cfg.loss, "loss"), metrics,
                    StepSettings(cpu, build_amp("32", cpu)))


def test_validation_scores_the_ema_weights(runs: dict[str, Path]) -> None:
    last = load_checkpoint(runs["ema"] / "checkpoints" / "last.pt")
    cfg = compose_cfg([*PLAIN, EMA])
    ema, raw = _val_scores(cfg, last["model"]), _val_scores(cfg, last["train_model"])
    assert ema["loss"] != pytest.approx(raw["loss"], rel=1e-3)  # the two weights tell apart
    for key, value in ema.items():
        assert last["metrics"][f"val/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_resume_after_an_interrupt_with_ema_is_exact(tmp_path: Path) -> None:
    """Stopped in the middle of epoch 2, resumed: raw weights, EMA, its step count and curves as straight."""
    common = [*PLAIN, EMA, "augmentation=strong", "scheduler=cosine", "trainer.epochs=3"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    fit(compose_cfg(common, straight), straight)
    _fit_interrupted(compose_cfg(common, stopped), stopped, stop_after_steps=STEPS_PER_EPOCH + 1)
    assert load_checkpoint(stopped / "checkpoints" / "last.pt")["ema_steps"] == STEPS_PER_EPOCH + 1
    fit(compose_cfg([*common, "resume=auto"], stopped), stopped)
    a, b = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (straight, stopped))
    assert b["epoch"] == 3 and b["ema_steps"] == a["ema_steps"] == 3 * STEPS_PER_EPOCH
    assert _same(a["model"], b["model"]) and _same(a["train_model"], b["train_model"])
    assert a["metrics"] == b["metrics"]


def test_turning_the_ema_on_or_off_at_a_resume_warns_and_trains_the_raw_weights_on(
    runs: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Either way the raw weights go on exactly: 1 epoch, then 1 more with the EMA switched, equals the
    plain run's 2 epochs."""
    on, off = tmp_path / "on", tmp_path / "off"
    fit(compose_cfg([*PLAIN, "trainer.epochs=1"], on), on)
    fit(compose_cfg([*PLAIN, EMA, "trainer.epochs=1"], off), off)
    with caplog.at_level(logging.WARNING, logger="seg"):
        fit(compose_cfg([*PLAIN, EMA, "resume=auto"], on), on)
        fit(compose_cfg([*PLAIN, "resume=auto"], off), off)
    assert "kept no EMA of its weights: the average (trainer.ema_decay=0.9) starts from" in caplog.text
    assert "kept an EMA of its weights, but trainer.ema_decay is null: training goes on from its raw" in caplog.text
    plain = load_checkpoint(runs["plain"] / "checkpoints" / "last.pt")["model"]
    turned_on, turned_off = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (on, off))
    assert turned_on["ema_steps"] == STEPS_PER_EPOCH and _same(turned_on["train_model"], plain)
    assert "train_model" not in turned_off and _same(turned_off["model"], plain)


def test_compile_with_ema_keeps_plain_state_dicts(tmp_path: Path) -> None:
    """torch.compile wraps the trained model; the EMA averages the plain module (aot_eager: a quick check)."""
    cfg = compose_cfg([*PLAIN, EMA, "trainer.compile=true", "trainer.compile_backend=aot_eager", "trainer.epochs=1"],
                      tmp_path)
    fit(cfg, tmp_path)
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["ema_steps"] == STEPS_PER_EPOCH and last["model"].keys() == last["train_model"].keys()
    assert not any(k.startswith("_orig_mod") for k in last["model"])


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.5", "nan"])
def test_a_bad_decay_is_one_config_error(value: str) -> None:
    shown = re.escape(str(float(value)))  # the schema makes it a float: 1 -> 1.0
    with pytest.raises(ConfigError, match=rf"trainer\.ema_decay={shown} must be a number between 0 and 1 "
                                          r"\(exclusive, e\.g\. 0\.999\), or null"):
        check_train_config(compose_cfg([f"trainer.ema_decay={value}"]))


def test_a_stored_decay_that_is_not_a_number_is_refused() -> None:
    """A resumed run's config is the checkpoint's plain data, not typed by the schema."""
    cfg = OmegaConf.create(OmegaConf.to_container(compose_cfg([])))  # untyped, as resumed_config makes it
    for bad in ("abc", True):
        cfg.trainer.ema_decay = bad
        with pytest.raises(ConfigError, match=r"trainer\.ema_decay=\S+ must be a number between 0 and 1"):
            check_train_config(cfg)


def test_seg_train_refuses_a_bad_decay_in_one_line(tmp_path: Path) -> None:
    proc = run("seg-train", *CLI_TINY, "trainer.ema_decay=1", "hydra.run.dir=r", cwd=tmp_path)
    assert_user_error(proc, "trainer.ema_decay=1.0 must be a number between 0 and 1")
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.parametrize("change", [{"ema_steps": "x"}, {"ema_steps": -1}, {"train_model": [1, 2]},
                                    {"train_model": None}])
def test_a_crafted_ema_state_is_refused_before_training(runs: dict[str, Path], tmp_path: Path, change) -> None:
    ckpt = load_checkpoint(runs["ema"] / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError, match="its EMA state is damaged"):
        ema_state({**ckpt, **change}, "x.pt")
    copied = tmp_path / "run"
    shutil.copytree(runs["ema"], copied)
    save_checkpoint({**ckpt, **change}, copied / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError, match=r"last\.pt: its EMA state is damaged"):
        fit(compose_cfg([*PLAIN, EMA, "trainer.epochs=3", "resume=auto"], copied), copied)
