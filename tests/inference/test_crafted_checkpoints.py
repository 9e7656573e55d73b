"""A checkpoint is data: a crafted stored config (a `_target_` anywhere, a resolver, an interpolation,
its own allowed_targets) makes seg-eval, seg-predict and `seg-train resume=` fail with one line naming
the key, before anything runs; the user's own classes load only when this command allows them."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from seg.allowlist import ENV_VAR
from seg.checkpoint import save_checkpoint
from seg.config import EvalConfig, PredictConfig
from seg.errors import CheckpointError, ConfigError
from seg.inference.core import load_model, stored_config
from seg.inference.evaluate import run_eval
from seg.inference.predict import run_predict
from seg.models import UNet
from seg.train.fit import fit
from seg.train.plan import plan_run
from seg.train.resume import resumed_config
from tests.tiny import compose_cfg

GROUPS = {"dataset", "model", "loss", "augmentation", "optimizer", "scheduler", "experiment"}
MY_NET = f"{__name__}.MyNet"


class MyNet(UNet):
    """A user's own model class (a U-Net subclass, so the trained weights fit it)."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The last.pt of a tiny real run (one epoch), loaded: each test alters a copy of its config."""
    run = tmp_path_factory.mktemp("run")
    fit(compose_cfg(["trainer.epochs=1", "trainer.precision=32", "trainer.device=cpu"], run), run)
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "a.png")
    return folder


def opener(marker: Path) -> dict[str, Any]:
    return {"_target_": "builtins.open", "_args_": [str(marker), "w"]}


def toucher(marker: Path) -> dict[str, Any]:
    return {"_target_": "pathlib.Path.touch", "_args_": [{"_target_": "pathlib.Path", "_args_": [str(marker)]}]}


def _set(config: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        config = config[part]
    config[last] = value


# name -> (change to the stored config, given the marker file; what the one-line error names)
CASES: dict[str, tuple[Callable[[dict, Path], None], list[str]]] = {
    "model": (lambda c, m: _set(c, "model", opener(m)), ["model._target_=builtins.open"]),
    "dataset": (lambda c, m: _set(c, "dataset", toucher(m)), ["dataset._target_=pathlib.Path.touch"]),
    "loss": (lambda c, m: _set(c, "loss", opener(m)), ["loss._target_=builtins.open"]),
    "optimizer": (lambda c, m: _set(c, "optimizer", {**opener(m), "_partial_": True}),
                  ["optimizer._target_=builtins.open"]),
    "scheduler": (lambda c, m: _set(c, "scheduler", opener(m)), ["scheduler._target_=builtins.open"]),
    "augmentation": (lambda c, m: _set(c, "augmentation", toucher(m)), ["augmentation._target_=pathlib.Path.touch"]),
    "nested": (lambda c, m: _set(c, "model.encoder", opener(m)), ["model.encoder._target_=builtins.open"]),
    "args": (lambda c, m: _set(c, "model._args_", [opener(m)]), ["model._args_[0]._target_=builtins.open"]),
    "list value": (lambda c, m: _set(c, "augmentation.blur_sigma", [0.1, toucher(m)]),
                   ["augmentation.blur_sigma[1]._target_=pathlib.Path.touch"]),
    "resolver": (lambda c, m: _set(c, "dataset.noise_std", "${oc.env:HOME}"),
                 ["dataset.noise_std=${oc.env:HOME}", "interpolation or resolver"]),
    "interpolation": (lambda c, m: _set(c, "model.wf", "${trainer.batch_size}"),
                      ["model.wf=${trainer.batch_size}", "interpolation or resolver"]),
    "stored allowed_targets": (lambda c, m: c.update(allowed_targets=["builtins.open"], model=opener(m)),
                               ["model._target_=builtins.open"]),
    "non-plain value": (lambda c, m: _set(c, "model.wf", torch.tensor(3)), ["model.wf holds a Tensor"]),
}


def craft(trained: dict[str, Any], folder: Path, case: str) -> tuple[Path, Path]:
    """A copy of the trained checkpoint with `case` applied to its stored config; the marker file a
    successful attack would create."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "marker"
    ckpt = {**trained, "config": copy.deepcopy(trained["config"])}
    CASES[case][0](ckpt["config"], marker)
    return save_checkpoint(ckpt, folder / "crafted.pt"), marker


def eval_cfg(path: Path, tmp_path: Path, **values: Any):
    return OmegaConf.merge(OmegaConf.structured(EvalConfig),
                           {"ckpt": str(path), "device": "cpu", "split": "val", "out_dir": str(tmp_path / "out"),
                            "overlays": "none", **values})


def predict_cfg(path: Path, images: Path, tmp_path: Path, **values: Any):
    return OmegaConf.merge(OmegaConf.structured(PredictConfig),
                           {"ckpt": str(path), "input": str(images), "device": "cpu",
                            "out_dir": str(tmp_path / "out"), **values})


def resume(path: Path, run_dir: Path) -> None:
    """What `seg-train resume=PATH` does, in process: the stored config, then the run built from it."""
    overrides = [f"resume={path}", "trainer.epochs=2", "trainer.device=cpu"]
    cfg = compose_cfg(overrides)
    plan = plan_run(cfg, run_dir)
    fit(resumed_config(cfg, plan, overrides, GROUPS), plan)


@pytest.mark.parametrize("command", ["seg-eval", "seg-predict", "resume"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_crafted_checkpoint_is_refused(trained, images: Path, tmp_path: Path, case: str, command: str) -> None:
    path, marker = craft(trained, tmp_path / "ckpt", case)
    with pytest.raises((CheckpointError, ConfigError)) as err:
        if command == "seg-eval":
            run_eval(eval_cfg(path, tmp_path))
        elif command == "seg-predict":
            run_predict(predict_cfg(path, images, tmp_path))
        else:
            resume(path, tmp_path / "resumed")
    message = str(err.value)
    assert "\n" not in message and all(fragment in message for fragment in CASES[case][1]), message
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "resumed" / "checkpoints").exists()
    if case == "resolver":  # the environment stays out of the message (and of any new checkpoint)
        assert f"={os.environ.get('HOME')}" not in message


def custom(trained: dict[str, Any], folder: Path) -> Path:
    """The trained checkpoint as if its model were the user's own class, which it also lists in its
    stored allowed_targets (which must not count)."""
    config = copy.deepcopy(trained["config"])
    config["model"]["_target_"] = MY_NET
    config["allowed_targets"] = [MY_NET]
    folder.mkdir(parents=True, exist_ok=True)
    return save_checkpoint({**trained, "config": config}, folder / "custom.pt")


def test_the_users_own_class_needs_this_commands_allowance(trained, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = custom(trained, tmp_path)
    with pytest.raises(CheckpointError, match=rf"model\._target_={MY_NET} is not a callable seg builds.*{ENV_VAR}"):
        run_eval(eval_cfg(path, tmp_path))
    ckpt = torch.load(path, weights_only=True)
    loaded = load_model(ckpt, path, stored_config(ckpt, None, path, [MY_NET]), device="cpu", precision=None)
    assert type(loaded.model) is MyNet and list(loaded.train_cfg.allowed_targets) == [MY_NET]
    monkeypatch.setenv(ENV_VAR, MY_NET)
    assert run_eval(eval_cfg(path, tmp_path))["n_images"] > 0


def test_seg_eval_and_seg_predict_take_allowed_targets_from_their_command_line(trained, images: Path,
                                                                               tmp_path: Path) -> None:
    path = custom(trained, tmp_path)
    assert run_eval(eval_cfg(path, tmp_path, allowed_targets=[MY_NET]))["n_images"] > 0
    assert run_predict(predict_cfg(path, images, tmp_path, allowed_targets=[MY_NET]))["n_images"] == 1


def seg_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "seg-train"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "seg.cli.train"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["args", "resolver"])
def test_seg_train_resume_of_a_crafted_checkpoint_is_one_line(trained, tmp_path: Path, case: str) -> None:
    path, marker = craft(trained, tmp_path / "ckpt", case)
    proc = seg_train(f"resume={path}", "trainer.epochs=2", "trainer.device=cpu", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("seg-train: error: ")]
    assert len(errors) == 1 and all(fragment in errors[0] for fragment in CASES[case][1]), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not marker.exists() and not (tmp_path / "run" / "checkpoints").exists()
