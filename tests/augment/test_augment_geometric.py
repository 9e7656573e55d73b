"""Geometric building blocks: exact dihedral turns, the affine convention, elastic field, warping."""

from __future__ import annotations

import torch
from augment_helpers import blob_mask, one_hot_image

from seg.augment.geometric import (
    affine_theta,
    apply_dihedral,
    elastic_displacement,
    identity_theta,
    sample_dihedral,
    warp,
)
from seg.constants import IGNORE_INDEX


def _matches_any(sample: torch.Tensor, candidates: list[torch.Tensor]) -> list[int]:
    return [k for k, c in enumerate(candidates) if torch.equal(sample, c)]


def test_rot90_flags_reproduce_torch_rot90_for_every_sample() -> None:
    torch.manual_seed(0)
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).view(1, 2, 5, 5).expand(64, -1, -1, -1)
    flags = sample_dihedral(64, hflip_p=0.0, vflip_p=0.0, rot90_p=1.0, square=True, like=x)
    out = apply_dihedral(x, *flags)
    turns = [torch.rot90(x[0], k, dims=(-2, -1)) for k in (1, 2, 3)]
    seen = set()
    for sample in out:
        hits = _matches_any(sample, turns)
        assert len(hits) == 1
        seen.add(hits[0])
    assert seen == {0, 1, 2}


def test_flips_then_turns_cover_the_dihedral_group_exactly() -> None:
    torch.manual_seed(1)
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4).expand(256, -1, -1, -1)
    flags = sample_dihedral(256, hflip_p=0.5, vflip_p=0.5, rot90_p=0.75, square=True, like=x)
    out = apply_dihedral(x, *flags)
    base = x[0]
    group = [torch.rot90(g, k, dims=(-2, -1)) for g in (base, base.flip(-1)) for k in range(4)]
    hits = {_matches_any(sample, group)[0] for sample in out}
    assert hits == set(range(8))


def test_non_square_batches_only_turn_by_180_degrees() -> None:
    torch.manual_seed(2)
    x = torch.rand(1, 3, 6, 10).expand(32, -1, -1, -1)
    transpose, vflip, hflip = sample_dihedral(32, hflip_p=0.0, vflip_p=0.0, rot90_p=1.0, square=False, like=x)
    assert not transpose.any()
    out = apply_dihedral(x, transpose, vflip, hflip)
    assert out.shape == x.shape
    assert torch.equal(out, x.flip(-1, -2))


def test_identity_theta_resamples_to_the_input() -> None:
    mask = blob_mask(3, 20, 28, labels=(2, 7))
    image = torch.rand(3, 4, 20, 28)
    weight = torch.rand(3, 20, 28)
    for padding in ("zeros", "border", "reflection"):
        out, out_mask, out_weight = warp(image, mask, weight, identity_theta(3, image), None, padding)
        torch.testing.assert_close(out, image, atol=1e-5, rtol=0)
        torch.testing.assert_close(out_weight, weight, atol=1e-5, rtol=0)
        assert torch.equal(out_mask, mask)


def test_affine_rotation_is_rigid_in_pixels_for_non_square_images() -> None:
    # A centred disc stays a disc (not an ellipse) under rotation, even when H != W.
    torch.manual_seed(3)
    h, w = 48, 96
    yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    mask = ((yy**2 + xx**2) < 15**2).long().expand(8, -1, -1).contiguous()
    theta = affine_theta(8, (h, w), max_offset=0.0, max_scale=0.0, max_rotation=180.0, like=mask.float())
    _, out, _ = warp(mask[:, None].float(), mask, None, theta, None, "zeros")
    area = out.eq(1).sum(dim=(1, 2)).float()
    rows = out.eq(1).any(dim=2).sum(dim=1)
    cols = out.eq(1).any(dim=1).sum(dim=1)
    assert torch.all((area - mask[0].sum()).abs() / mask[0].sum() < 0.05)
    assert torch.all((rows - cols).abs() <= 2)


def test_offset_moves_content_by_at_most_the_configured_fraction() -> None:
    torch.manual_seed(4)
    h, w = 40, 60
    mask = torch.zeros(16, h, w, dtype=torch.long)
    mask[:, 15:25, 25:35] = 1
    theta = affine_theta(16, (h, w), max_offset=0.2, max_scale=0.0, max_rotation=0.0, like=mask.float())
    _, out, _ = warp(mask[:, None].float(), mask, None, theta, None, "zeros")
    ys, xs = torch.arange(h).view(1, h, 1).float(), torch.arange(w).view(1, 1, w).float()
    fg = out.eq(1).float()
    cy = (fg * ys).sum(dim=(1, 2)) / fg.sum(dim=(1, 2))
    cx = (fg * xs).sum(dim=(1, 2)) / fg.sum(dim=(1, 2))
    assert torch.all((cy - 19.5).abs() <= 0.2 * h + 0.5)
    assert torch.all((cx - 29.5).abs() <= 0.2 * w + 0.5)
    assert (cx - 29.5).abs().max() > 2.0  # it does move


def test_zeros_padding_marks_outside_pixels_ignored_and_weights_zero() -> None:
    mask = torch.ones(2, 16, 16, dtype=torch.long)
    image = torch.ones(2, 1, 16, 16)
    weight = torch.full((2, 16, 16), 3.0)
    theta = identity_theta(2, image) * 2.0  # zoom out by 2: a border of outside pixels
    theta[:, :, 2] = 0.0
    _, out, out_weight = warp(image, mask, weight, theta, None, "zeros")
    assert out[:, 0, 0].eq(IGNORE_INDEX).all() and out[:, 8, 8].eq(1).all()
    assert out_weight[:, 0, 0].eq(0).all() and out_weight[:, 8, 8].eq(3.0).all()
    _, reflected, _ = warp(image, mask, weight, theta, None, "reflection")
    assert reflected.eq(1).all()


def test_elastic_field_has_the_requested_pixel_std_and_is_smooth() -> None:
    torch.manual_seed(5)
    h, w = 64, 48
    field = elastic_displacement(12, (h, w), alpha=3.0, sigma=8.0, like=torch.zeros(1))
    assert field.shape == (12, h, w, 2)
    pixels = field * torch.tensor([w / 2, h / 2])
    std = pixels.std(dim=(0, 1, 2))
    assert torch.all((std - 3.0).abs() < 0.6)
    step = (pixels[:, 1:] - pixels[:, :-1]).abs().mean()
    assert step < 0.2 * pixels.abs().mean()


def test_elastic_warp_keeps_image_and_mask_aligned() -> None:
    torch.manual_seed(6)
    mask = blob_mask(4, 64, 64)
    image = one_hot_image(mask, 3)
    field = elastic_displacement(4, (64, 64), alpha=4.0, sigma=12.0, like=image)
    out, out_mask, _ = warp(image, mask, None, identity_theta(4, image), field, "reflection")
    assert not torch.equal(out_mask, mask)
    agree = out.argmax(1).eq(out_mask)[:, 4:-4, 4:-4].float().mean()
    assert agree >= 0.99
