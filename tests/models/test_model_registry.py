"""Registry, build_model and the model YAMLs (instantiated the way the CLI does)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from seg.errors import ConfigError
from seg.models import MODELS, MobileNetUNet, SegNet, UNet, UNetWrapper, build_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"


def test_registry_names() -> None:
    assert MODELS == {"segnet": SegNet, "unet": UNet, "unet_wrapper": UNetWrapper, "mobilenet_unet": MobileNetUNet}


def test_build_model_by_name() -> None:
    model = build_model("unet", in_channels=2, n_classes=3, depth=2, wf=2)
    assert isinstance(model, UNet)
    assert model(torch.rand(1, 2, 16, 16)).shape == (1, 3, 16, 16)


def test_unknown_model_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"'resnet'.*\['mobilenet_unet', 'segnet', 'unet', 'unet_wrapper'\]"):
        build_model("resnet", in_channels=3, n_classes=1)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_yaml_spells_out_every_constructor_argument(name: str) -> None:
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    params = inspect.signature(MODELS[name].__init__).parameters
    args = [p for p in params if p != "self"]
    assert sorted(k for k in cfg if k != "_target_") == sorted(args)
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
    root.model = OmegaConf.load(CONFIGS / f"{name}.yaml")
    values = OmegaConf.to_container(root.model, resolve=True)
    assert {k: values[k] for k in expected} == expected
    model = instantiate(root.model)
    assert type(model) is MODELS[name]
    assert model.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)
