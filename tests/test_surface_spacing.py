"""Surface distances in mm: HD95 scales with the pixel spacing (anisotropic checked against a brute
force with the same sampling), the split's unit is mm only when every image has a spacing, and the
seg-eval collector measures each image with its own."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from seg.inference.report import Collector, summary
from seg.surface import split_spacing, surface_metrics, valid_spacing


def square(shape: tuple[int, int], top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def brute_hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float]) -> float:
    """Over all boundary-point pairs (a mask pixel with a 4-neighbour outside), in `spacing` units."""

    def points(mask: np.ndarray) -> np.ndarray:
        p = np.pad(mask, 1)
        edge = ~p[:-2, 1:-1] | ~p[2:, 1:-1] | ~p[1:-1, :-2] | ~p[1:-1, 2:]
        return np.argwhere(mask & edge) * np.asarray(spacing)

    a, b = points(pred), points(truth)
    pairwise = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    return float(max(np.percentile(pairwise.min(1), 95), np.percentile(pairwise.min(0), 95)))


# A 16-px square and the same square 3 rows down and 5 columns right: directed distances are known.
PRED, TRUTH = square((40, 40), 8, 8, 16), square((40, 40), 11, 13, 16)


def test_hd95_scales_with_an_isotropic_spacing() -> None:
    px = surface_metrics(PRED, TRUTH)
    mm = surface_metrics(PRED, TRUTH, spacing=(2.0, 2.0), tolerance=4.0)
    assert px.hd95 == pytest.approx(brute_hd95(PRED, TRUTH, (1.0, 1.0)))
    assert mm.hd95 == pytest.approx(2 * px.hd95) and mm.assd == pytest.approx(2 * px.assd)
    assert mm.surface_dice == pytest.approx(px.surface_dice)  # a tolerance scaled alike counts alike


def test_anisotropic_spacing_matches_a_brute_force() -> None:
    got = surface_metrics(PRED, TRUTH, spacing=(1.0, 3.0))
    assert got.hd95 == pytest.approx(brute_hd95(PRED, TRUTH, (1.0, 3.0)))
    assert got.hd95 != pytest.approx(surface_metrics(PRED, TRUTH, spacing=(3.0, 1.0)).hd95)  # order matters


def test_split_unit_is_mm_only_when_every_image_has_a_spacing() -> None:
    full = split_spacing(lambda i: (0.5, 0.7 + i), 3)
    assert full.unit == "mm" and full.of(2) == (0.5, 2.7) and full.n_spaced == 3
    partial = split_spacing(lambda i: None if i == 1 else (0.5, 0.5), 3)
    assert partial.unit == "px" and partial.of(0) == (1.0, 1.0) and partial.n_spaced == 2
    assert split_spacing(None, 3).unit == "px" and split_spacing(lambda i: (0.5, 0.5), 0).unit == "px"
    assert split_spacing(lambda i: (0.0, 0.5), 2).unit == "px"  # a zero spacing counts as none
    assert valid_spacing(("0.5", "0.25")) == (0.5, 0.25) and valid_spacing((float("nan"), 1)) is None


class Spaced(torch.utils.data.Dataset):
    """Two images, PRED as the prediction (from the logits below) and TRUTH as the mask."""

    def __init__(self, spacing: list[tuple[float, float] | None]) -> None:
        self.ids, self.spacing = ["a", "b"], spacing

    def __len__(self) -> int:
        return 2

    def pixel_spacing(self, index: int) -> tuple[float, float] | None:
        return self.spacing[index]


def collect(spacing: list[tuple[float, float] | None]) -> dict[str, Any]:
    cfg = OmegaConf.create({"surface": True, "surface_tolerance": 2.0})
    collector = Collector(cfg, SimpleNamespace(n_classes=1, class_names=["lesion"]), Spaced(spacing), None, None)
    logits = torch.from_numpy(np.where(PRED, 10.0, -10.0)).float()[None, None].repeat(2, 1, 1, 1)
    mask = torch.from_numpy(TRUTH.astype(np.int64))[None].repeat(2, 1, 1)
    collector({"index": torch.tensor([0, 1])}, logits, mask)
    return summary(collector, {}, None)["surface"]


def test_collector_measures_each_image_with_its_spacing(caplog: pytest.LogCaptureFixture) -> None:
    mm = collect([(1.0, 3.0), (2.0, 2.0)])
    expected = [brute_hd95(PRED, TRUTH, (1.0, 3.0)), brute_hd95(PRED, TRUTH, (2.0, 2.0))]
    assert mm["distance_unit"] == "mm" and mm["classes"]["lesion"]["hd95"] == pytest.approx(np.mean(expected))
    with caplog.at_level(logging.INFO, logger="seg"):
        px = collect([(1.0, 3.0), None])
    assert px["distance_unit"] == "px"
    assert px["classes"]["lesion"]["hd95"] == pytest.approx(brute_hd95(PRED, TRUTH, (1.0, 1.0)))
    assert "in px for all 2 images: only 1 have a pixel spacing" in caplog.text
