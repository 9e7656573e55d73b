"""The model registry is the config group configs/model/: its options, their YAMLs, and building them
the way the CLI does (compose, then seg.engine.builders.build)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf
from torch import nn

from seg.cli.common import describe_hydra_error
from seg.engine.builders import build
from seg.models import MobileNetUNet, SegNet, UNet, UNetWrapper

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CLASSES: dict[str, type[nn.Module]] = {
    "segnet": SegNet, "unet": UNet, "unet_wrapper": UNetWrapper, "mobilenet_unet": MobileNetUNet,
}
# Classes that take another model's arguments through **kwargs, and that model.
FORWARDS_TO: dict[type[nn.Module], type[nn.Module]] = {UNetWrapper: UNet}


def options() -> list[str]:
    return sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))


def compose_model(overrides: list[str]) -> nn.Module:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        cfg = compose(config_name="train", overrides=overrides)
    return build(cfg.model, "model")


def constructor_args(cls: type[nn.Module]) -> list[str]:
    """Named keyword arguments, following `**kwargs` to the model they are passed on to."""
    params = inspect.signature(cls.__init__).parameters.values()
    named = [p.name for p in params if p.name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        named += [a for a in constructor_args(FORWARDS_TO[cls]) if a not in named]
    return named


def test_registry_names() -> None:
    assert options() == sorted(CLASSES)
    for name, cls in CLASSES.items():
        assert OmegaConf.load(CONFIGS / "model" / f"{name}.yaml")._target_ == f"seg.models.{cls.__name__}"


def test_build_model_by_name() -> None:
    model = compose_model(["model=unet", "model.depth=2", "model.wf=2", "dataset.in_channels=2", "dataset.n_classes=3"])
    assert isinstance(model, UNet)
    assert model(torch.rand(1, 2, 16, 16)).shape == (1, 3, 16, 16)


def test_unknown_model_lists_the_choices() -> None:
    with pytest.raises(MissingConfigException) as info:
        compose_model(["model=resnet"])
    line = describe_hydra_error(info.value)
    assert "'model/resnet'" in line
    assert "Available options in 'model': mobilenet_unet, segnet, unet, unet_wrapper" in line


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_yaml_spells_out_every_constructor_argument(name: str) -> None:
    cfg = OmegaConf.load(CONFIGS / "model" / f"{name}.yaml")
    assert sorted(k for k in cfg if k != "_target_") == sorted(constructor_args(CLASSES[name]))
    raw = OmegaConf.to_container(cfg, resolve=False)
    assert raw["in_channels"] == "${dataset.in_channels}" and raw["n_classes"] == "${dataset.n_classes}"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("segnet", {"base_channels": 16}),
        ("unet", {"depth": 4, "wf": 5, "padding": True, "batch_norm": True, "up_mode": "upconv"}),
        ("unet_wrapper", {"depth": 3, "wf": 4, "padding": True, "batch_norm": True, "up_mode": "upconv"}),
        (
            "mobilenet_unet",
            {"pretrained": None, "freeze_encoder": False, "decoder_channels": [512, 256, 128, 64], "width_mult": 1.0},
        ),
    ],
)
def test_yaml_values_and_instantiation(name: str, expected: dict) -> None:
    root = OmegaConf.create({"dataset": {"in_channels": 1, "n_classes": 2}})
    root.model = OmegaConf.load(CONFIGS / "model" / f"{name}.yaml")
    values = OmegaConf.to_container(root.model, resolve=True)
    assert {k: values[k] for k in expected} == expected
    model = build(root.model, "model")
    assert type(model) is CLASSES[name]
    assert model.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)
