"""The Augment module as the engine uses it: training-only, aligned, label-exact, seeded, configurable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from augment_helpers import blob_mask, one_hot_image
from hydra.utils import instantiate
from omegaconf import OmegaConf

import seg.augment.geometric as geometric
from seg.augment import Augment
from seg.constants import IGNORE_INDEX
from seg.errors import ConfigError, DatasetError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "augmentation"
AFFINE = dict(affine_p=1.0, max_offset=0.1, max_scale=0.2, max_rotation=180.0)
ELASTIC = dict(elastic_p=1.0, elastic_alpha=4.0, elastic_sigma=12.0)
TONE = dict(intensity_p=1.0, brightness=0.1, contrast=0.2, gamma=0.3, blur_p=1.0)
STRONG = dict(hflip_p=0.5, vflip_p=0.5, rot90_p=0.5, **AFFINE, **ELASTIC, **TONE, noise_std=0.03)


def _config(name: str) -> Augment:
    return instantiate(OmegaConf.load(CONFIGS / f"{name}.yaml"))


@pytest.fixture
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    mask = blob_mask(6, 64, 64)
    return one_hot_image(mask, 3), mask


def test_identity_settings_return_the_inputs_bitwise(blobs: tuple[torch.Tensor, torch.Tensor]) -> None:
    image, mask = blobs
    weight = torch.rand(mask.shape)
    no_effect = Augment(affine_p=1.0, elastic_p=1.0, intensity_p=1.0)  # chosen, but with zero magnitude
    for aug in (Augment(), _config("none"), no_effect):
        assert aug.training and aug.is_identity and aug.describe() == ["identity"]
        out = aug(image, mask, weight)
        assert out[0] is image and out[1] is mask and out[2] is weight


def test_eval_mode_returns_inputs_unchanged(blobs: tuple[torch.Tensor, torch.Tensor]) -> None:
    image, mask = blobs
    aug = Augment(**STRONG).eval()
    out_image, out_mask, out_weight = aug(image, mask)
    assert out_image is image and out_mask is mask and out_weight is None


def test_training_never_modifies_the_callers_tensors(blobs: tuple[torch.Tensor, torch.Tensor]) -> None:
    image, mask = blobs
    image_before, mask_before = image.clone(), mask.clone()
    Augment(**STRONG)(image, mask, torch.ones(mask.shape))
    assert torch.equal(image, image_before) and torch.equal(mask, mask_before)


@pytest.mark.parametrize("padding", ["reflection", "border", "zeros"])
def test_mask_values_stay_in_the_label_set(padding: str) -> None:
    torch.manual_seed(0)
    mask = blob_mask(6, 48, 48, labels=(2, 7))
    mask[:, :3, :] = IGNORE_INDEX
    image = torch.rand(6, 3, 48, 48)
    out_image, out_mask, _ = Augment(**STRONG, padding_mode=padding)(image, mask)
    assert out_mask.dtype == torch.long and out_image.dtype == torch.float32
    assert set(out_mask.unique().tolist()) <= {0, 2, 7, IGNORE_INDEX}
    assert {2, 7} <= set(out_mask.unique().tolist())


def test_outside_pixels_are_ignored_only_with_zeros_padding() -> None:
    torch.manual_seed(1)
    mask = torch.ones(8, 32, 32, dtype=torch.long)
    image = torch.rand(8, 1, 32, 32)
    settings = dict(affine_p=1.0, max_rotation=45.0, max_scale=0.5)
    _, zeros, _ = Augment(**settings, padding_mode="zeros")(image, mask)
    _, reflected, _ = Augment(**settings, padding_mode="reflection")(image, mask)
    assert zeros.eq(IGNORE_INDEX).any() and set(zeros.unique().tolist()) == {1, IGNORE_INDEX}
    assert reflected.eq(1).all()


def test_flips_and_turns_are_exact_and_skip_resampling(
    blobs: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_resampling(*args: object, **kwargs: object) -> None:
        raise AssertionError("flips and 90-degree turns must not call grid_sample")

    monkeypatch.setattr(geometric.F, "grid_sample", no_resampling)
    torch.manual_seed(2)
    image, mask = blobs
    weight = (mask == 2).float() * 5.0
    out_image, out_mask, out_weight = Augment(hflip_p=0.5, vflip_p=0.5, rot90_p=0.5)(image, mask, weight)
    assert torch.equal(out_image, one_hot_image(out_mask, 3))
    assert torch.equal(out_weight, (out_mask == 2).float() * 5.0)
    assert not torch.equal(out_mask, mask)
    # an affine op that happens to draw no sample also leaves the batch alone
    rare = Augment(affine_p=1e-12, max_rotation=10.0)
    assert torch.equal(rare(image, mask)[0], image)


def test_single_axis_flips_with_probability_one(blobs: tuple[torch.Tensor, torch.Tensor]) -> None:
    image, mask = blobs
    h_image, h_mask, _ = Augment(hflip_p=1.0)(image, mask)
    v_image, v_mask, _ = Augment(vflip_p=1.0)(image, mask)
    assert torch.equal(h_image, image.flip(-1)) and torch.equal(h_mask, mask.flip(-1))
    assert torch.equal(v_image, image.flip(-2)) and torch.equal(v_mask, mask.flip(-2))


@pytest.mark.parametrize("settings", [AFFINE, ELASTIC, {**AFFINE, **ELASTIC, "hflip_p": 0.5, "rot90_p": 0.5}])
def test_image_mask_and_weight_stay_aligned(blobs: tuple[torch.Tensor, torch.Tensor], settings: dict) -> None:
    torch.manual_seed(3)
    image, mask = blobs
    weight = (mask == 1).float()
    out_image, out_mask, out_weight = Augment(**settings)(image, mask, weight)
    assert not torch.equal(out_mask, mask)
    inner = (slice(None), slice(4, -4), slice(4, -4))
    assert out_image.argmax(1).eq(out_mask)[inner].float().mean() >= 0.99
    assert (out_weight > 0.5).eq(out_mask == 1)[inner].float().mean() >= 0.99


def test_context_channels_move_and_change_together() -> None:
    torch.manual_seed(4)
    mask = blob_mask(4, 40, 40)
    image = torch.rand(4, 1, 40, 40).expand(-1, 7, -1, -1).contiguous()
    settings = {k: v for k, v in STRONG.items() if k != "noise_std"}
    out, _, _ = Augment(**settings)(image, mask)
    assert not torch.equal(out, image)
    assert torch.equal(out, out[:, :1].expand_as(out))


def test_same_seed_same_output_and_samples_differ() -> None:
    mask = blob_mask(1, 48, 48).expand(6, -1, -1).contiguous()
    image = one_hot_image(mask, 3) + 0.1 * torch.rand(1, 3, 48, 48)
    aug = Augment(**STRONG)
    torch.manual_seed(5)
    first = aug(image, mask)
    torch.manual_seed(5)
    second = aug(image, mask)
    third = aug(image, mask)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], third[0])
    pairs_equal = [torch.equal(first[1][i], first[1][j]) for i in range(6) for j in range(i + 1, 6)]
    assert not any(pairs_equal)


def test_intensity_probability_selects_samples() -> None:
    torch.manual_seed(6)
    image = torch.rand(64, 2, 16, 16)
    mask = torch.zeros(64, 16, 16, dtype=torch.long)
    out, out_mask, _ = Augment(intensity_p=0.5, brightness=0.2, noise_std=0.05)(image, mask)
    changed = (out != image).flatten(1).any(1)
    assert 16 <= int(changed.sum()) <= 48
    assert torch.equal(out_mask, mask)


@pytest.mark.parametrize("name", ["none", "flip", "affine", "strong"])
def test_configs_build_and_run(name: str) -> None:
    torch.manual_seed(7)
    aug = _config(name)
    assert isinstance(aug, Augment)
    mask = blob_mask(4, 32, 32)
    image = torch.rand(4, 3, 32, 32)
    weight = torch.rand(4, 32, 32)
    out_image, out_mask, out_weight = aug(image, mask, weight)
    assert out_image.shape == image.shape and out_mask.shape == mask.shape and out_weight.shape == weight.shape
    assert set(out_mask.unique().tolist()) <= {0, 1, 2, IGNORE_INDEX}
    expected = {
        "none": ["identity"],
        "flip": ["hflip", "vflip"],
        "affine": ["hflip", "vflip", "affine", "noise", "padding=border"],
        "strong": ["hflip", "vflip", "affine", "elastic", "tone", "noise", "blur", "padding=reflection"],
    }[name]
    assert [line.split(" ")[0] for line in aug.describe()] == expected
    assert repr(aug).startswith("Augment(")


@pytest.mark.parametrize(
    ("settings", "word"),
    [
        ({"hflip_p": 1.5}, "hflip_p"),
        ({"affine_p": -0.1}, "affine_p"),
        ({"max_scale": 1.0}, "max_scale"),
        ({"contrast": 1.2}, "contrast"),
        ({"noise_std": -1.0}, "noise_std"),
        ({"elastic_sigma": 0.0}, "elastic_sigma"),
        ({"blur_sigma": [1.0]}, "blur_sigma"),
        ({"blur_sigma": [2.0, 1.0]}, "blur_sigma"),
        ({"padding_mode": "wrap"}, "padding_mode"),
    ],
)
def test_bad_settings_raise_config_errors(settings: dict, word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        Augment(**settings)


def test_mismatched_batches_raise_dataset_errors() -> None:
    aug = Augment(hflip_p=0.5)
    image = torch.rand(2, 3, 16, 16)
    with pytest.raises(DatasetError, match="mask"):
        aug(image, torch.zeros(2, 16, 15, dtype=torch.long))
    with pytest.raises(DatasetError, match="weight"):
        aug(image, torch.zeros(2, 16, 16, dtype=torch.long), torch.ones(2, 8, 8))
    with pytest.raises(DatasetError, match="float"):
        aug(image.to(torch.uint8), torch.zeros(2, 16, 16, dtype=torch.long))


def test_channels_last_layout_is_kept() -> None:
    torch.manual_seed(8)
    image = torch.rand(2, 3, 24, 24).to(memory_format=torch.channels_last)
    mask = torch.zeros(2, 24, 24, dtype=torch.long)
    out, _, _ = Augment(**STRONG)(image, mask)
    assert out.is_contiguous(memory_format=torch.channels_last) and not torch.equal(out, image)
