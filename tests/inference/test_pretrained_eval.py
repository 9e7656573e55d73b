"""A frozen, pretrained MobileNetV2 U-Net trains, and seg-eval rebuilds it without the weights file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from seg.checkpoint import load_checkpoint
from seg.cli.common import config_dir
from seg.inference.evaluate import run_eval
from seg.models.mobilenetv2 import MobileNetV2Encoder
from seg.train.fit import fit
from tests.tiny import compose_cfg


def test_pretrained_frozen_encoder_round_trip(tmp_path: Path) -> None:
    weights = tmp_path / "mobilenet_v2.pth"
    published = dict(MobileNetV2Encoder().state_dict())  # torchvision's features.* layout
    torch.save(published, weights)
    run = tmp_path / "run"
    cfg = compose_cfg(["model=mobilenet_unet", f"model.pretrained={weights}", "model.freeze_encoder=true",
                       "model.decoder_channels=[32,16,16,8]", "trainer.epochs=1"], run)
    fit(cfg, run)
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    encoder = {k.removeprefix("encoder."): v for k, v in ckpt["model"].items() if k.startswith("encoder.")}
    conv_weights = [k for k in published if k.endswith(".weight")]
    assert conv_weights and all(torch.equal(encoder[k], published[k]) for k in conv_weights)  # frozen
    weights.unlink()  # seg-eval must not need the file again
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        eval_cfg = compose(config_name="eval", overrides=[f"ckpt={run / 'checkpoints' / 'best.pt'}", "split=val",
                                                          f"out_dir={tmp_path / 'eval'}"])
    report = run_eval(eval_cfg)
    for key in ("dice", "iou", "loss"):
        assert report[key] == pytest.approx(ckpt["metrics"][f"val/{key}"], abs=1e-4), key
