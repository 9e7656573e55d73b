"""Loss values against hand computation and torch references, gradients, ignore pixels, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from seg.errors import ConfigError
from seg.losses import (
    BCELoss,
    CELoss,
    DiceBCELoss,
    DiceCELoss,
    DiceLoss,
    DiceRecallLoss,
    WeightedBCELoss,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "loss"


def binary_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 1, 6, 6, generator=g)
    mask = (torch.rand(2, 6, 6, generator=g) > 0.6).long()
    mask[0, 0, :3] = 255
    return logits, mask


def multi_batch(seed: int = 0, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, k, 5, 5, generator=g)
    mask = torch.randint(0, k, (2, 5, 5), generator=g)
    mask[1, 4, :] = 255
    return logits, mask


def soft_dice(p: torch.Tensor, t: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    return (2 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)


def test_bce_matches_torch_on_labelled_pixels() -> None:
    logits, mask = binary_batch()
    valid = mask != 255
    ref = F.binary_cross_entropy_with_logits(logits[:, 0][valid], mask[valid].float())
    torch.testing.assert_close(BCELoss()(logits, mask), ref)
    ref_pw = F.binary_cross_entropy_with_logits(
        logits[:, 0][valid], mask[valid].float(), pos_weight=torch.tensor(3.0)
    )
    torch.testing.assert_close(BCELoss(pos_weight=3.0)(logits, mask), ref_pw)


def test_bce_weight_map_is_a_weighted_mean() -> None:
    logits, mask = binary_batch()
    weight = torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(3)) + 0.5
    valid = mask != 255
    per = F.binary_cross_entropy_with_logits(logits[:, 0][valid], mask[valid].float(), reduction="none")
    ref = (per * weight[valid]).sum() / weight[valid].sum()
    torch.testing.assert_close(BCELoss()(logits, mask, weight=weight), ref)
    torch.testing.assert_close(WeightedBCELoss()(logits, mask, weight=weight), ref)


def test_weighted_bce_requires_weight_map() -> None:
    logits, mask = binary_batch()
    with pytest.raises(ConfigError, match="weight_map"):
        WeightedBCELoss()(logits, mask)


def test_dice_binary_hand_computed_batch_and_per_image() -> None:
    logits = torch.zeros(2, 1, 2, 2)  # p = 0.5 everywhere
    mask = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [0, 255]]])
    # whole batch: 7 labelled pixels, sum p = 3.5, sum t = 3, intersection = 1.5
    expected = 1 - (2 * 1.5 + 1) / (3.5 + 3 + 1)
    torch.testing.assert_close(DiceLoss()(logits, mask), torch.tensor(expected))
    img0 = 1 - (2 * 0.5 + 1) / (2.0 + 1 + 1)
    img1 = 1 - (2 * 1.0 + 1) / (1.5 + 2 + 1)
    torch.testing.assert_close(DiceLoss(per_image=True)(logits, mask), torch.tensor((img0 + img1) / 2))
    torch.testing.assert_close(DiceLoss(smooth=2.0)(logits, mask), torch.tensor(1 - (3 + 2) / (6.5 + 2)))


def test_dice_multiclass_matches_manual_softmax_onehot() -> None:
    logits, mask = multi_batch()
    valid = (mask != 255).unsqueeze(1).float()
    p = torch.softmax(logits, 1) * valid
    t = F.one_hot(torch.where(mask == 255, 0, mask), 3).permute(0, 3, 1, 2).float() * valid
    per_class = torch.stack([soft_dice(p[:, c], t[:, c]) for c in range(3)])
    torch.testing.assert_close(DiceLoss()(logits, mask), (1 - per_class).mean())
    torch.testing.assert_close(DiceLoss(include_background=False)(logits, mask), (1 - per_class[1:]).mean())
    per_image = torch.stack([torch.stack([soft_dice(p[b, c], t[b, c]) for c in range(3)]) for b in range(2)])
    torch.testing.assert_close(DiceLoss(per_image=True)(logits, mask), (1 - per_image).mean())


@pytest.mark.parametrize("loss", [DiceLoss(), DiceLoss(per_image=True), DiceRecallLoss(), DiceBCELoss()])
def test_perfect_binary_prediction_gives_near_zero_dice(loss: torch.nn.Module) -> None:
    mask = torch.zeros(2, 8, 8, dtype=torch.long)
    mask[0, 2:6, 2:6] = 1
    logits = (mask.float() * 2 - 1).unsqueeze(1) * 30
    assert float(loss(logits, mask)) < 1e-3


def test_perfect_multiclass_prediction_gives_near_zero_dice() -> None:
    mask = torch.randint(0, 3, (2, 6, 6), generator=torch.Generator().manual_seed(1))
    logits = F.one_hot(mask, 3).permute(0, 3, 1, 2).float() * 40
    assert float(DiceLoss()(logits, mask)) < 1e-3
    assert float(DiceCELoss()(logits, mask)) < 1e-3


def test_dice_bce_is_weighted_sum() -> None:
    logits, mask = binary_batch()
    combo = DiceBCELoss(smooth=0.5, bce_weight=0.3, dice_weight=2.0, pos_weight=2.0, per_image=True)
    ref = 0.3 * BCELoss(pos_weight=2.0)(logits, mask) + 2.0 * DiceLoss(smooth=0.5, per_image=True)(logits, mask)
    torch.testing.assert_close(combo(logits, mask), ref)


def test_dice_recall_matches_luna_formula() -> None:
    logits, mask = binary_batch(seed=5)
    mask[mask == 255] = 0
    p, t = torch.sigmoid(logits[:, 0]), mask.float()
    dice = torch.stack([1 - soft_dice(p[b], t[b]) for b in range(2)])
    fn = torch.stack([1 - soft_dice(p[b] * t[b], t[b]) for b in range(2)])
    torch.testing.assert_close(DiceRecallLoss()(logits, mask), dice.mean() + 8 * fn.mean())
    pooled = (1 - soft_dice(p, t, 2.0)) + 3 * (1 - soft_dice(p * t, t, 2.0))
    torch.testing.assert_close(DiceRecallLoss(smooth=2.0, recall_weight=3.0, per_image=False)(logits, mask), pooled)


def test_dice_recall_punishes_misses_more_than_false_positives() -> None:
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, 2:6, 2:6] = 1  # 16 foreground pixels
    missed = mask.clone()
    missed[0, 2:4, 2:6] = 0  # 8 foreground pixels missed
    extra = mask.clone()
    extra[0, 0, :8] = 1  # 8 false positives
    as_logits = lambda m: (m.float() * 2 - 1).unsqueeze(1) * 20  # noqa: E731
    loss = DiceRecallLoss()
    miss_cost = float(loss(as_logits(missed), mask))
    fp_cost = float(loss(as_logits(extra), mask))
    assert miss_cost > 5 * fp_cost
    # plain Dice sees the two errors as comparable; the recall term is what separates them
    plain = DiceLoss(per_image=True)
    assert float(plain(as_logits(missed), mask)) < 2 * float(plain(as_logits(extra), mask))


def test_ce_matches_torch_with_options() -> None:
    logits, mask = multi_batch()
    torch.testing.assert_close(CELoss()(logits, mask), F.cross_entropy(logits, mask, ignore_index=255))
    cw = [0.5, 2.0, 1.0]
    ref = F.cross_entropy(logits, mask, weight=torch.tensor(cw), ignore_index=255, label_smoothing=0.1)
    torch.testing.assert_close(CELoss(class_weights=cw, label_smoothing=0.1)(logits, mask), ref)
    mask7 = torch.where(mask == 255, 7, mask)
    torch.testing.assert_close(CELoss(ignore_index=7)(logits, mask7), F.cross_entropy(logits, mask7, ignore_index=7))


def test_ce_pixel_weight_map() -> None:
    logits, mask = multi_batch()
    weight = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(2)) + 0.1
    valid = mask != 255
    per = F.cross_entropy(logits, torch.where(valid, mask, 0), reduction="none")
    ref = (per * weight * valid).sum() / (weight * valid).sum()
    torch.testing.assert_close(CELoss()(logits, mask, weight=weight), ref)


def test_dice_ce_is_weighted_sum() -> None:
    logits, mask = multi_batch(k=4)
    cw = [1.0, 2.0, 3.0, 4.0]
    combo = DiceCELoss(smooth=0.5, ce_weight=0.7, dice_weight=1.5, class_weights=cw, include_background=False)
    ref = 0.7 * CELoss(class_weights=cw)(logits, mask) + 1.5 * DiceLoss(smooth=0.5, include_background=False)(
        logits, mask
    )
    torch.testing.assert_close(combo(logits, mask), ref)


BINARY = [BCELoss(), DiceLoss(), DiceBCELoss(), DiceRecallLoss(), WeightedBCELoss()]
MULTI = [DiceLoss(), CELoss(label_smoothing=0.1), DiceCELoss(class_weights=[1.0, 2.0, 0.5])]


@pytest.mark.parametrize("loss", BINARY + MULTI, ids=lambda m: type(m).__name__)
def test_gradients_finite_and_zero_on_ignored_pixels(loss: torch.nn.Module) -> None:
    binary = loss in BINARY
    logits, mask = binary_batch() if binary else multi_batch()
    ignored = mask == 255
    logits = logits.clone().requires_grad_(True)
    weight = torch.full(mask.shape, 2.0)
    value = loss(logits, mask, weight=weight)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    grad = logits.grad
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    assert torch.all(grad.permute(0, 2, 3, 1)[ignored] == 0)


@pytest.mark.parametrize("loss", BINARY + MULTI, ids=lambda m: type(m).__name__)
def test_all_ignored_batch_gives_finite_loss(loss: torch.nn.Module) -> None:
    k = 1 if loss in BINARY else 3
    logits = torch.randn(2, k, 4, 4, requires_grad=True)
    mask = torch.full((2, 4, 4), 255, dtype=torch.long)
    value = loss(logits, mask, weight=torch.ones(2, 4, 4))
    value.backward()
    assert torch.isfinite(value) and torch.all(logits.grad == 0)


@pytest.mark.parametrize(
    ("loss", "suggestion"),
    [
        (BCELoss(), "loss=ce"), (DiceBCELoss(), "loss=dice_ce"), (DiceRecallLoss(), "loss=ce"),
        (WeightedBCELoss(), "loss=ce"),
    ],
)
def test_binary_losses_reject_multiclass_logits(loss: torch.nn.Module, suggestion: str) -> None:
    logits, mask = multi_batch()
    with pytest.raises(ConfigError, match=suggestion):
        loss(logits, mask, weight=torch.ones(mask.shape))


@pytest.mark.parametrize(("loss", "suggestion"), [(CELoss(), "loss=bce"), (DiceCELoss(), "loss=dice_bce")])
def test_multiclass_losses_reject_binary_logits(loss: torch.nn.Module, suggestion: str) -> None:
    logits, mask = binary_batch()
    with pytest.raises(ConfigError, match=suggestion):
        loss(logits, mask)


def test_shape_and_option_errors() -> None:
    logits, mask = binary_batch()
    with pytest.raises(ConfigError, match="same B, H, W"):
        BCELoss()(logits[:, :, :5], mask)
    with pytest.raises(ConfigError, match="weight map"):
        BCELoss()(logits, mask, weight=torch.ones(2, 1, 6, 6))
    with pytest.raises(ConfigError, match="class_weights has 2"):
        CELoss(class_weights=[1.0, 2.0])(*multi_batch())
    for bad in (
        lambda: CELoss(class_weights=[1.0, -1.0, 1.0]),
        lambda: CELoss(label_smoothing=1.0),
        lambda: DiceLoss(smooth=0.0),
        lambda: BCELoss(pos_weight=-2.0),
        lambda: DiceRecallLoss(recall_weight=-1.0),
    ):
        with pytest.raises(ConfigError):
            bad()


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("bce", BCELoss), ("dice", DiceLoss), ("dice_bce", DiceBCELoss), ("dice_recall", DiceRecallLoss),
        ("ce", CELoss), ("dice_ce", DiceCELoss), ("weighted_bce", WeightedBCELoss),
    ],
)
def test_yaml_configs_instantiate_with_defaults(name: str, cls: type) -> None:
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    loss = instantiate(cfg)
    assert type(loss) is cls
    defaults = cls()
    assert vars(loss).keys() == vars(defaults).keys()
    binary = cls in (BCELoss, DiceLoss, DiceBCELoss, DiceRecallLoss, WeightedBCELoss)
    logits, mask = binary_batch() if binary else multi_batch()
    weight = torch.ones(mask.shape)
    torch.testing.assert_close(loss(logits, mask, weight=weight), defaults(logits, mask, weight=weight))


def test_yaml_class_weights_list_is_accepted() -> None:
    cfg = OmegaConf.load(CONFIGS / "dice_ce.yaml")
    cfg.class_weights = [1.0, 2.0, 3.0]
    loss = instantiate(cfg)
    logits, mask = multi_batch()
    torch.testing.assert_close(loss(logits, mask), DiceCELoss(class_weights=[1.0, 2.0, 3.0])(logits, mask))
