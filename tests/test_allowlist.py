"""seg.allowlist: only the callables seg's config groups name are built, nested and `_args_` targets
included; the user adds their own from the command or the environment; a stored config is plain data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra._internal.utils import _locate
from omegaconf import OmegaConf, open_dict

from seg.allowlist import ENV_VAR, SEG_TARGETS, check_targets, safe_stored_config
from seg.cli.common import config_dir
from seg.engine.builders import build
from seg.errors import CheckpointError, ConfigError
from tests.tiny import compose_cfg

IDENTITY = "torch.nn.Identity"  # stands for a user's own class: callable, harmless, not seg's


def opener(marker: Path) -> dict:
    return {"_target_": "builtins.open", "_args_": [str(marker), "w"]}


def test_the_list_is_exactly_the_configs_targets() -> None:
    """Every `_target_` of configs/ is allowed, each name imports, and nothing else is on the list."""
    used = set()
    for path in config_dir().rglob("*.yaml"):
        text = path.read_text()
        lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        used |= {line.split(":", 1)[1].strip() for line in lines if line.startswith("_target_:")}
    used.discard("seg.cli.callbacks.RunDirGuard")  # Hydra's own callback (train.yaml), never built by seg
    assert used == SEG_TARGETS
    for name in SEG_TARGETS:
        assert callable(_locate(name)), name


@pytest.mark.parametrize(
    "node, key",
    [
        ({"_target_": "builtins.open"}, "model._target_"),
        ({"_target_": "seg.models.UNet", "encoder": {"_target_": "builtins.open"}}, "model.encoder._target_"),
        ({"_target_": "seg.models.UNet", "_args_": [{"_target_": "builtins.open"}]}, "model._args_[0]._target_"),
        ({"_target_": "seg.models.UNet", "sizes": [1, [{"_target_": "builtins.open"}]]}, "model.sizes[1][0]._target_"),
        ({"_target_": "seg.models.UNet", "_partial_": True, "_recursive_": False,
          "x": {"_convert_": "all", "_target_": "builtins.open"}}, "model.x._target_"),
    ],
)
def test_any_target_anywhere_is_checked(node: dict, key: str) -> None:
    for config in (node, OmegaConf.create(node)):
        with pytest.raises(ConfigError) as err:
            check_targets(config, "model")
        message = str(err.value)
        assert f"{key}=builtins.open is not a callable seg builds" in message and "\n" not in message
        assert "allowed_targets=[...]" in message and ENV_VAR in message


def test_a_target_must_be_a_plain_name() -> None:
    with pytest.raises(ConfigError, match=r"model\._target_ must be a dotted name \(a string\), got builtin_function"):
        check_targets({"_target_": print}, "model")
    with pytest.raises(ConfigError, match=r"model\._target_=' torch\.optim\.Adam' is not"):
        check_targets({"_target_": " torch.optim.Adam"}, "model")  # exact names only


def test_interpolated_targets_are_checked_resolved() -> None:
    cfg = OmegaConf.create({"name": "builtins.open", "model": {"_target_": "${name}"}})
    with pytest.raises(ConfigError, match=r"model\._target_=builtins\.open"):
        check_targets(cfg.model, "model")


def fresh(group: str, node: dict, allowed: list[str] | None = None):
    """A composed training config (what seg-train builds from) with `group` replaced by `node`."""
    cfg = compose_cfg([] if allowed is None else [f"allowed_targets=[{','.join(allowed)}]"])
    with open_dict(cfg):
        cfg[group] = node
    return cfg


@pytest.mark.parametrize("group", ["dataset", "model", "loss", "augmentation", "optimizer", "scheduler"])
def test_build_refuses_before_anything_runs(group: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    cfg = fresh(group, {"_target_": "seg.augment.Augment", "_args_": [opener(marker)]})
    with pytest.raises(ConfigError, match=rf"^{group}\._args_\[0\]\._target_=builtins\.open is not"):
        build(cfg[group], group)
    assert not marker.exists()


def test_a_fresh_run_builds_the_users_own_targets_when_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"augmentation\._target_=torch\.nn\.Identity is not"):
        build(fresh("augmentation", {"_target_": IDENTITY})["augmentation"], "augmentation")
    cfg = fresh("augmentation", {"_target_": IDENTITY}, allowed=[IDENTITY])
    assert list(cfg.allowed_targets) == [IDENTITY]  # the schema's key, set from the command line
    assert isinstance(build(cfg.augmentation, "augmentation"), torch.nn.Identity)
    monkeypatch.setenv(ENV_VAR, f"mypkg.Other, {IDENTITY} ,")
    assert isinstance(build(fresh("augmentation", {"_target_": IDENTITY})["augmentation"], "augmentation"),
                      torch.nn.Identity)


def test_a_loose_node_cannot_allow_its_own_target() -> None:
    node = OmegaConf.create({"_target_": IDENTITY, "allowed_targets": [IDENTITY]})
    with pytest.raises(ConfigError, match="torch.nn.Identity is not"):
        build(node, "model")


def test_build_checks_its_keyword_arguments_too(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    cfg = fresh("loss", {"_target_": "seg.losses.DiceLoss"})
    with pytest.raises(ConfigError, match=r"loss\.extra\._target_=builtins\.open"):
        build(cfg.loss, "loss", extra=opener(marker))
    assert not marker.exists()


STORED = {"seed": 1, "trainer": {"epochs": 1}, "dataset": {"_target_": "seg.data.folder.FolderData",
                                                           "value_map": {0: 0, 255: 1}, "split": [0.7, 0.3]},
          "model": {"_target_": "seg.models.UNet", "depth": 2}, "loss": {"_target_": "seg.losses.DiceLoss"}}


def stored(**changes) -> dict:
    config = OmegaConf.to_container(OmegaConf.merge(STORED, changes))
    return {"config": config}


def test_a_plain_stored_config_passes_with_the_commands_allowed_targets() -> None:
    config = safe_stored_config({"config": {**STORED, "allowed_targets": ["builtins.open"]}}, "x.pt", ["my.Net"])
    assert config["allowed_targets"] == ["my.Net"]  # the command's, never the checkpoint's
    assert {k: v for k, v in config.items() if k != "allowed_targets"} == STORED


@pytest.mark.parametrize(
    "config, fragment",
    [
        (stored(model={"_target_": "builtins.open"}), "key model._target_=builtins.open is not a callable seg builds"),
        ({"config": {**STORED, "allowed_targets": ["builtins.open"], "loss": {"_target_": "builtins.open"}}},
         "key loss._target_=builtins.open is not"),
        (stored(model={"_args_": [{"_target_": "os.system"}]}), "key model._args_[0]._target_=os.system is not"),
        (stored(dataset={"root": "${oc.env:HOME}"}), "key dataset.root=${oc.env:HOME} is an interpolation or resolver"),
        (stored(model={"depth": "x${seed}"}), "key model.depth=x${seed} is an interpolation"),
        (stored(model={"depth": "\\${seed}"}), "key model.depth=\\${seed} is an interpolation"),
        ({"config": {**STORED, "model": {"depth": torch.tensor(2)}}}, "key model.depth holds a Tensor"),
        ({"config": {**STORED, "model": {"depth": b"2"}}}, "key model.depth holds a bytes"),
        ({"config": {**STORED, "model": {"_target_": 3}}}, "key model._target_=3 is not"),
        ({"config": {**STORED, "model": {("a",): 3}}}, "has a key of type tuple"),
        ({"config": {**STORED, "bad\nkey": object()}}, "key 'bad\\nkey' holds a object"),
        ({"config": [1]}, "carries no training config"),
    ],
)
def test_a_stored_config_is_refused_as_data(config: dict, fragment: str) -> None:
    with pytest.raises(CheckpointError) as err:
        safe_stored_config(config, "x.pt")
    message = str(err.value)
    assert message.startswith("x.pt") and fragment in message and "\n" not in message
