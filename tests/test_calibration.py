"""Expected calibration error on hand-computed bins, and the reliability diagram."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from seg.calibration import Calibration, reliability_png


def test_binary_ece_by_hand() -> None:
    # bin 0: p=0.05 twice, one foreground (gap 0.45); bin 14: p=0.95 twice, both foreground (gap 0.05);
    # the ignored pixel (255) counts nowhere.
    probs = torch.tensor([0.05, 0.05, 0.95, 0.95, 0.5]).view(1, 1, 1, 5)
    mask = torch.tensor([0, 1, 1, 1, 255]).view(1, 1, 5)
    calibration = Calibration()
    calibration.update(probs, mask)
    result = calibration.compute()
    assert result["ece"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)
    assert result["n_pixels"] == 4 and result["count"][0] == 2 and result["count"][14] == 2
    assert result["frequency"][0] == pytest.approx(0.5) and result["confidence"][14] == pytest.approx(0.95)
    assert result["frequency"][7] is None  # empty bins are null


def test_multiclass_uses_the_top_probability_and_batches_add_up() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]).T.reshape(1, 3, 1, 2)  # confidences 0.7, 0.8
    mask = torch.tensor([[[0, 1]]])  # the first is right, the second wrong
    calibration = Calibration()
    calibration.update(probs, mask)
    calibration.update(probs, mask)
    result = calibration.compute()
    assert result["ece"] == pytest.approx(0.5 * 0.3 + 0.5 * 0.8)
    assert result["n_pixels"] == 4


def test_probability_one_lands_in_the_last_bin(tmp_path: Path) -> None:
    calibration = Calibration()
    calibration.update(torch.ones(1, 1, 2, 2), torch.ones(1, 2, 2, dtype=torch.long))
    result = calibration.compute()
    assert result["count"][-1] == 4 and result["ece"] == pytest.approx(0.0)
    reliability_png(result, tmp_path / "reliability.png", "test")
    with Image.open(tmp_path / "reliability.png") as image:
        assert image.format == "PNG" and image.size == (360, 360)
