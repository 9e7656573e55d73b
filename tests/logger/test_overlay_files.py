"""Overlay files and previews: upscaling, the legend strip, the class palette, TensorBoard panels."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import Subset

from seg.engine.amp import Amp
from seg.engine.loop import StepSettings
from seg.engine.preview import Preview
from seg.logger.overlay import (
    CLASS_PALETTE,
    FN_ORANGE,
    FP_RED,
    TP_GREEN,
    TRUTH_BLUE,
    legend_entries,
    legend_strip,
    overlay_panels,
    save_png,
)
from seg.logger.tensorboard import TensorBoardLogger

ERROR_COLOURS = [tuple(round(c * 255) for c in colour) for colour in (TP_GREEN, FP_RED, FN_ORANGE, TRUTH_BLUE)]
CPU = StepSettings(torch.device("cpu"), Amp.create("32", torch.device("cpu")))


class Fixed(nn.Module):
    """Returns the same logits whatever the input: a known prediction to draw."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.logits


class Items(torch.utils.data.Dataset):
    def __init__(self, masks: torch.Tensor) -> None:
        self.masks, self.ids = masks, [f"case{i}" for i in range(len(masks))]
        self.class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int) -> dict:
        ramp = torch.linspace(0, 1, 32).expand(3, 32, 32).clone()
        return {"image": ramp, "mask": self.masks[i], "index": i}


def _square(size: int = 32, label: int = 1) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.long)
    mask[8:24, 8:24] = label
    return mask


def _pixels(array: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in p) for p in array.reshape(-1, 3)}


def test_class_palette_is_stable_distinct_and_clear_of_error_colours() -> None:
    assert isinstance(CLASS_PALETTE, list) and len(CLASS_PALETTE) >= 20
    assert all(isinstance(c, tuple) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
               for c in CLASS_PALETTE)  # fmt: skip
    assert len(set(CLASS_PALETTE)) == len(CLASS_PALETTE)
    assert min(math.dist(c, e) for c in CLASS_PALETTE for e in ERROR_COLOURS) >= 100
    assert min(math.dist(a, b) for a, b in itertools.combinations(CLASS_PALETTE, 2)) >= 50
    assert CLASS_PALETTE[0] == (0, 0, 0)  # background of palette masks


def test_upscaling_is_smooth_for_the_image_and_crisp_for_the_masks() -> None:
    image = torch.linspace(0, 1, 32).expand(1, 3, 32, 32)
    mask = _square()[None]
    panel = overlay_panels(image, mask, mask, n_classes=1, min_side=256)[0]
    assert panel.shape == (3, 256, 2 * 256 + 2)
    tp = panel[:, 64:192, 64:192] - 0.5 * torch.linspace(0, 1, 32).repeat_interleave(8)[64:192]
    assert torch.allclose(tp, (torch.tensor(TP_GREEN) * 0.5).view(3, 1, 1).expand_as(tp), atol=0.06)
    untouched = panel[0, 0, :64]  # image row outside the square: a bilinear ramp, many more grey levels
    assert len(torch.unique(untouched)) > 32
    # the colour edge falls exactly at 8 * 8 px: no blended mask edge
    green = panel[1, 100] - panel[0, 100]
    assert (green[:64] <= 1e-6).all() and (green[64:192] > 0.3).all()
    assert overlay_panels(image, mask, mask, n_classes=1)[0].shape == (3, 32, 66)  # default: native size


def test_saved_binary_overlay_is_large_with_a_legend(tmp_path: Path) -> None:
    pred = _square()
    pred[4:8, 4:8] = 1  # a false positive
    pred[20:24, 20:24] = 0  # a miss
    logits = (pred.float() * 20 - 10)[None, None]
    preview = Preview(Items(_square()[None]), [0], n_classes=1, class_names=["lesion"])
    panel = preview.render(Fixed(logits), CPU)[0]
    save_png(panel, tmp_path / "binary.png")
    saved = np.asarray(Image.open(tmp_path / "binary.png"))
    assert min(saved.shape[:2]) >= 256 and saved.shape[1] == 2 * 256 + 2 and saved.shape[0] > 256
    legend = saved[256:]
    assert (legend[0] == 255).all()  # a white strip, below the panels
    assert set(ERROR_COLOURS) <= _pixels(legend)  # each swatch in its exact colour
    assert (legend.min(axis=-1) < 60).any()  # and dark text
    assert [label for _, label in legend_entries(1, ["lesion"])][-1] == "ground truth (lesion)"


def test_multiclass_overlay_uses_the_palette_and_names_classes(tmp_path: Path) -> None:
    mask = _square(label=1)
    mask[0:4] = 2
    logits = torch.nn.functional.one_hot(mask, 3).permute(2, 0, 1)[None].float()
    data = Items(mask[None])
    data.class_names = ["pet", "background", "border"]
    preview = Preview(Subset(data, [0]), [0], n_classes=3)  # names found through the Subset
    assert preview.class_names == ["pet", "background", "border"]
    panel = preview.render(Fixed(logits), CPU)[0]
    save_png(panel, tmp_path / "classes.png")
    saved = np.asarray(Image.open(tmp_path / "classes.png"))
    assert min(saved.shape[:2]) >= 256
    legend = _pixels(saved[256:])
    assert set(CLASS_PALETTE[:3]) <= legend and not set(ERROR_COLOURS) & legend
    assert [label for _, label in legend_entries(3, data.class_names)] == ["0: pet", "1: background", "2: border"]
    assert [label for _, label in legend_entries(3)] == ["class 0", "class 1", "class 2"]


def test_legend_wraps_and_widens_only_when_an_entry_needs_it() -> None:
    entries = legend_entries(24)
    narrow, wide = legend_strip(entries, 200), legend_strip(entries, 2000)
    assert narrow.shape[-1] == 200 and wide.shape[-1] == 2000 and narrow.shape[-2] > wide.shape[-2]
    assert legend_strip(legend_entries(1), 20).shape[-1] > 20  # too narrow for one label: widened


def test_preview_without_legend_or_upscaling_keeps_native_panels() -> None:
    logits = torch.zeros(1, 1, 32, 32)
    panels = Preview(Items(_square()[None]), [0], n_classes=1, min_side=0, legend=False).render(Fixed(logits), CPU)
    assert panels.shape == (1, 3, 32, 66)


def test_tensorboard_panels_log_one_image_per_sample(tmp_path: Path) -> None:
    masks = torch.stack([_square(), _square()])
    preview = Preview(Items(masks), [0, 1], n_classes=1)
    logger = TensorBoardLogger(tmp_path / "tb")
    for step in (1, 2):
        logger.panels("val/overlay", preview.render(Fixed(torch.zeros(2, 1, 32, 32)), CPU), step, preview.names)
    logger.close()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    assert sorted(events.Tags()["images"]) == ["val/overlay/case0", "val/overlay/case1"]
    shown = events.Images("val/overlay/case0")
    assert [e.step for e in shown] == [1, 2] and shown[0].height > 256 and shown[0].width == 514
