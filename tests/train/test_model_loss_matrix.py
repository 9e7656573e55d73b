"""One short training per model x loss: a few optimizer steps through the engine's own loop."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from seg.cli.common import config_dir
from seg.engine import builders
from seg.engine.loop import StepSettings, evaluate, train_one_epoch
from seg.metrics import SegMetrics

MODELS = {
    "segnet": ["model.base_channels=4"],
    "unet": ["model.depth=2", "model.wf=3"],
    "unet_wrapper": ["model.depth=2", "model.wf=3"],
    "mobilenet_unet": ["model.width_mult=0.35", "model.decoder_channels=[16,16,8,8]"],
}
LOSSES = {"bce": 1, "dice": 1, "dice_bce": 1, "dice_recall": 1, "weighted_bce": 1, "ce": 3, "dice_ce": 3}


def batches(n_classes: int, steps: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        image = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
        mask = torch.randint(0, max(2, n_classes), (4, 32, 32), generator=g).to(torch.uint8)
        out.append({"image": image, "mask": mask, "weight": torch.rand(4, 32, 32, generator=g) + 0.5,
                    "index": torch.arange(4)})
    return out


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("model", sorted(MODELS))
def test_model_and_loss_train_together(model: str, loss: str) -> None:
    n_classes = LOSSES[loss]
    overrides = [f"model={model}", *MODELS[model], f"loss={loss}", f"dataset.n_classes={n_classes}",
                 f"dataset.class_names={['a', 'b', 'c'][:n_classes] if n_classes > 1 else ['a']}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name="train", overrides=overrides)
    torch.manual_seed(0)
    device = torch.device("cpu")
    net = builders.build_model(cfg.model, "default")
    loss_fn = builders.build(cfg.loss, "loss")
    optimizer = builders.build_optimizer(cfg.optimizer, net, device)
    amp = builders.build_amp("32", device)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    data = batches(n_classes)
    stats = train_one_epoch(net, data, loss_fn, optimizer, StepSettings(device, amp),
                            metrics=SegMetrics(n_classes=n_classes))
    assert stats.steps == 3 and stats.samples == 12 and stats.loss == stats.loss and stats.loss > 0
    changed = [k for k, v in net.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert changed, "no parameter moved"
    values = evaluate(net, data, loss_fn, SegMetrics(n_classes=n_classes), StepSettings(device, amp))
    assert 0 <= values["dice"] <= 1 and 0 <= values["iou"] <= 1 and values["loss"] > 0
