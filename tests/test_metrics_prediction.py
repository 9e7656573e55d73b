"""SegMetrics from predicted masks (post-processed ones) agrees with SegMetrics from logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seg.errors import ConfigError
from seg.metrics import SegMetrics, per_image_prediction_stats, per_image_stats, prediction


def examples() -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    gen = torch.Generator().manual_seed(0)
    binary_mask = (torch.rand(3, 6, 7, generator=gen) > 0.6).long()
    binary_mask[0, 0, :3] = 255
    binary_mask[2] = 0  # an empty image
    multi_mask = torch.randint(0, 3, (3, 6, 7), generator=gen)
    multi_mask[1, 2, 2:5] = 255
    return [(torch.randn(3, 1, 6, 7, generator=gen) * 2, binary_mask, 1),
            (torch.randn(3, 3, 6, 7, generator=gen), multi_mask, 3)]


@pytest.mark.parametrize("case", [0, 1])
def test_update_prediction_gives_what_update_gives(case: int) -> None:
    logits, mask, n_classes = examples()[case]
    from_logits, from_masks = SegMetrics(n_classes, kaggle=True), SegMetrics(n_classes, kaggle=True)
    from_logits.update(logits, mask)
    from_masks.update_prediction(prediction(logits), mask)
    assert from_masks.compute() == from_logits.compute()
    stats = per_image_prediction_stats(prediction(logits), mask, n_classes)
    for key, value in per_image_stats(logits, mask).items():
        assert torch.equal(stats[key], value), key
    assert stats["class_dice"].shape == (3, 1 if n_classes == 1 else n_classes)


def test_update_prediction_checks_shapes() -> None:
    with pytest.raises(ConfigError, match="one shape"):
        SegMetrics(1).update_prediction(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))


def test_per_class_values_behind_the_means() -> None:
    mask = torch.tensor([[[0, 1], [1, 1]]])
    pred = torch.tensor([[[0, 1], [0, 1]]])  # TP 2, FN 1: dice 0.8
    stats = per_image_prediction_stats(pred, mask, 1)
    assert float(stats["class_dice"][0, 0]) == pytest.approx(0.8) and bool(stats["present"][0, 0])
    assert int(stats["n_pred"][0, 0]) == 2 and int(stats["n_target"][0, 0]) == 3
    logits = F.one_hot(pred, 2).permute(0, 3, 1, 2).float()
    assert float(per_image_stats(logits[:, 1:] * 10 - 5, mask)["dice"][0]) == pytest.approx(0.8)
