"""HD95, ASSD and surface Dice against a brute-force calculation over boundary points, closed forms
on shapes with known distances, and the empty-mask rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seg.surface import BOTH, BOTH_EMPTY, ONE_EMPTY, Surface, directed_distances, summarise, surface_metrics


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def square(shape: tuple[int, int], top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def boundary_points(mask: np.ndarray) -> np.ndarray:
    """Independent of seg.surface: a pixel of the mask with a 4-neighbour outside (the image edge is outside)."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1]
    outside = ~padded[:-2, 1:-1] | ~padded[2:, 1:-1] | ~padded[1:-1, :-2] | ~padded[1:-1, 2:]
    return np.argwhere(inner & outside).astype(np.float64)


def brute_force(pred: np.ndarray, truth: np.ndarray, spacing=(1.0, 1.0), tolerance: float = 2.0) -> tuple[float, ...]:
    a, b = boundary_points(pred) * spacing, boundary_points(truth) * spacing
    pairwise = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    d_ab, d_ba = pairwise.min(1), pairwise.min(0)
    hd95 = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    assd = (d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size)
    nsd = ((d_ab <= tolerance).sum() + (d_ba <= tolerance).sum()) / (d_ab.size + d_ba.size)
    return hd95, assd, nsd


CASES = {
    "discs 5 px apart": (disc((48, 48), (20, 20), 9), disc((48, 48), (23, 24), 9)),
    "squares offset by 3": (square((40, 40), 8, 8, 15), square((40, 40), 8, 11, 15)),
    "square on the image edge": (square((30, 30), 0, 0, 12), square((30, 30), 2, 0, 14)),
    "disc and a far square": (disc((64, 64), (15, 15), 6), square((64, 64), 40, 44, 10)),
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.7, 1.6)])
def test_values_match_a_brute_force_over_boundary_points(name: str, spacing: tuple[float, float]) -> None:
    pred, truth = CASES[name]
    got = surface_metrics(pred, truth, spacing=spacing, tolerance=2.0)
    hd95, assd, nsd = brute_force(pred, truth, spacing, 2.0)
    assert got.state == BOTH
    assert (got.hd95, got.assd, got.surface_dice) == pytest.approx((hd95, assd, nsd), abs=1e-9)


def test_closed_forms() -> None:
    same = square((32, 32), 5, 5, 12)
    assert surface_metrics(same, same) == Surface(0.0, 0.0, 1.0, BOTH)
    # A square shrunk by k on every side: each inner boundary pixel is exactly k from the outer boundary.
    k = 3
    outer, inner = square((40, 40), 5, 5, 20), square((40, 40), 5 + k, 5 + k, 20 - 2 * k)
    inner_to_outer, outer_to_inner = directed_distances(inner, outer)
    assert np.allclose(inner_to_outer, k)
    assert outer_to_inner.max() == pytest.approx(k * math.sqrt(2))  # the corners
    assert outer_to_inner.min() == pytest.approx(k)
    # Equal discs d apart: the Hausdorff distance of the circles is d (to within a pixel once drawn).
    d = 6
    a, b = disc((64, 64), (30, 25), 12), disc((64, 64), (30, 25 + d), 12)
    to_b, to_a = directed_distances(a, b)
    assert abs(max(to_b.max(), to_a.max()) - d) <= 1.0
    # Tolerance: a 1-pixel shift is within 2 px everywhere, a 3-pixel one is not.
    assert surface_metrics(same, np.roll(same, 1, axis=1), tolerance=2.0).surface_dice == 1.0
    assert surface_metrics(same, np.roll(same, 3, axis=1), tolerance=2.0).surface_dice < 1.0


def test_spacing_scales_distances() -> None:
    pred, truth = CASES["squares offset by 3"]
    px = surface_metrics(pred, truth)
    mm = surface_metrics(pred, truth, spacing=(0.5, 0.5), tolerance=1.0)
    assert mm.hd95 == pytest.approx(px.hd95 / 2) and mm.assd == pytest.approx(px.assd / 2)
    assert mm.surface_dice == pytest.approx(px.surface_dice)


def test_empty_masks_get_defined_values_and_are_counted_apart() -> None:
    empty, blob = np.zeros((20, 20), bool), square((20, 20), 4, 4, 6)
    both = surface_metrics(empty, empty)
    assert both.state == BOTH_EMPTY and math.isnan(both.hd95) and math.isnan(both.surface_dice)
    one = surface_metrics(blob, empty)
    assert one == Surface(math.inf, math.inf, 0.0, ONE_EMPTY) == surface_metrics(empty, blob)
    scored = surface_metrics(blob, np.roll(blob, 2, axis=0))
    summary = summarise([both, one, scored, scored])
    assert summary["n_images"] == 4 and summary["n_both_empty"] == 1 and summary["n_one_empty"] == 1
    assert summary["n_scored"] == 2
    assert summary["hd95"] == pytest.approx(scored.hd95) and summary["assd"] == pytest.approx(scored.assd)
    assert summary["surface_dice"] == pytest.approx((0.0 + 2 * scored.surface_dice) / 3)  # one-empty: 0, averaged
    assert math.isnan(summarise([both])["hd95"])


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="one shape"):
        surface_metrics(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
