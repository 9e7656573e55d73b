"""Overlay colours and display conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seg.logger.overlay import FN_ORANGE, FP_RED, TP_GREEN, TRUTH_BLUE, overlay_panels, save_png, to_display


def test_to_display_handles_rgb_grey_context_stacks_and_hu() -> None:
    rgb = torch.rand(2, 3, 4, 4)
    assert torch.equal(to_display(rgb), rgb)
    grey = to_display(torch.rand(1, 1, 4, 4))
    assert grey.shape == (1, 3, 4, 4) and torch.equal(grey[:, 0], grey[:, 1])
    ct = torch.full((1, 7, 4, 4), -1000.0)
    ct[:, 3, 0, 0] = 1000.0  # only the centre channel is shown, min-max scaled
    shown = to_display(ct)
    assert shown[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0] and shown[0, :, 1, 1].tolist() == [0.0, 0.0, 0.0]


def test_binary_colours_tp_fp_fn_and_truth() -> None:
    image = torch.zeros(1, 3, 1, 4)
    pred = torch.tensor([[[1, 1, 0, 0]]])
    target = torch.tensor([[[1, 0, 1, 0]]])
    panel = overlay_panels(image, pred, target, n_classes=1)[0]
    assert panel.shape == (3, 1, 4 * 2 + 2)
    left, right = panel[:, 0, :4], panel[:, 0, 6:]

    def colour(c: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(c) * 0.5

    assert torch.allclose(left[:, 0], colour(TP_GREEN))
    assert torch.allclose(left[:, 1], colour(FP_RED))
    assert torch.allclose(left[:, 2], colour(FN_ORANGE))
    assert torch.equal(left[:, 3], torch.zeros(3))  # true negative: the input
    assert torch.allclose(right[:, 0], torch.tensor(TRUTH_BLUE) * 0.45)
    assert torch.equal(right[:, 1], torch.zeros(3))


def test_multiclass_and_ignored_pixels(tmp_path: Path) -> None:
    image = torch.full((1, 3, 2, 2), 0.5)  # grey, so class 0's dark colour differs from an uncoloured pixel
    target = torch.tensor([[[0, 1], [2, 255]]])
    panel = overlay_panels(image, target.clone(), target, n_classes=3)[0]
    right = panel[:, :, 4:]
    colours = {tuple(right[:, i, j].tolist()) for i in range(2) for j in range(2)}
    assert len(colours) == 4 and (0.5, 0.5, 0.5) in colours  # three classes + uncoloured ignore pixel
    save_png(panel, tmp_path / "p.png")
    saved = np.asarray(Image.open(tmp_path / "p.png"))
    assert saved.shape == (2, 6, 3) and saved.dtype == np.uint8
