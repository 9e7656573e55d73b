"""SegMetrics, per_image_stats and prediction on small hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seg.errors import ConfigError
from seg.metrics import SegMetrics, per_image_stats, prediction


def binary_logits(pred: torch.Tensor) -> torch.Tensor:
    return (pred.float() * 2 - 1).unsqueeze(1) * 5


def multi_logits(pred: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(pred, k).permute(0, 3, 1, 2).float() * 5


@pytest.fixture
def binary_example() -> tuple[torch.Tensor, torch.Tensor]:
    """Image 0: TP 3, FP 1, FN 1 (bottom row ignored, where the prediction is wrong); image 1 empty."""
    mask = torch.zeros(2, 4, 4, dtype=torch.long)
    mask[0, :2, :2] = 1
    mask[0, 3, 2:] = 255
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    pred[0, :2, 0] = 1
    pred[0, 1, 1:3] = 1
    pred[0, 3, 2:] = 1
    return binary_logits(pred), mask


@pytest.fixture
def multi_example() -> tuple[torch.Tensor, torch.Tensor]:
    """3 classes. Image 0 per class (TP, FP, FN): c0 (2,1,1), c1 (2,1,1), c2 (1,1,1), one pixel
    ignored; image 1 all class 0 and predicted so (9 TP)."""
    mask = torch.tensor([[[0, 0, 1], [0, 1, 1], [2, 2, 255]], [[0, 0, 0]] * 3])
    pred = torch.tensor([[[0, 1, 1], [0, 1, 2], [2, 0, 0]], [[0, 0, 0]] * 3])
    return multi_logits(pred, 3), mask


def test_binary_every_key(binary_example: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, mask = binary_example
    metrics = SegMetrics(1)
    metrics.update(logits, mask)
    out = metrics.compute()
    expected = {
        "dice": 0.75, "iou": 0.6, "precision": 0.75, "recall": 0.75, "f1": 0.75,
        "dice_per_image": 0.875, "percent_tp": 75.0, "percent_fn": 25.0, "percent_fp": 25.0,
    }
    assert out.keys() == expected.keys()
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, abs=1e-6), key
    counts = metrics.counts()
    assert [int(counts[k][0]) for k in ("tp", "fp", "fn", "tn")] == [3, 1, 1, 25]


def test_binary_kaggle_key_loss_mean_and_threshold(binary_example: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, mask = binary_example
    metrics = SegMetrics(1, kaggle=True, class_names=["lesion"])
    metrics.update(logits, mask, loss=torch.tensor(0.5))
    metrics.update(logits, mask, loss=torch.tensor(1.5))
    out = metrics.compute()
    assert out["dice_kaggle"] == pytest.approx(0.875) and out["dice_per_image"] == pytest.approx(0.875)
    assert out["loss"] == pytest.approx(1.0)
    # sigmoid(5) = 0.9933: a threshold above it predicts nothing -> recall 0, per-image Dice 0 and 1
    strict = SegMetrics(1, threshold=0.995)
    strict.update(logits, mask)
    out = strict.compute()
    assert out["recall"] == 0.0 and out["precision"] == 0.0 and out["dice"] == 0.0 and out["f1"] == 0.0
    assert out["dice_per_image"] == pytest.approx(0.5)
    assert out["percent_fn"] == pytest.approx(100.0)


def test_multiclass_every_key(multi_example: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, mask = multi_example
    metrics = SegMetrics(3, class_names=["bg", "pet", "edge"])
    metrics.update(logits, mask)
    out = metrics.compute()
    dice = [22 / 24, 4 / 6, 2 / 4]
    iou = [11 / 13, 2 / 4, 1 / 3]
    mean = sum(dice) / 3
    expected = {
        "dice": mean, "iou": sum(iou) / 3, "precision": mean, "recall": mean, "f1": mean,
        "pixel_accuracy": 14 / 17, "dice_per_image": ((2 / 3 + 2 / 3 + 1 / 2) / 3 + 1) / 2,
        "dice_bg": dice[0], "dice_pet": dice[1], "dice_edge": dice[2],
        "iou_bg": iou[0], "iou_pet": iou[1], "iou_edge": iou[2],
    }
    assert out.keys() == expected.keys()
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, abs=1e-6), key


def test_multiclass_absent_class_is_one_and_left_out_of_means() -> None:
    mask = torch.tensor([[[0, 0], [1, 1]]])
    pred = torch.tensor([[[0, 1], [1, 1]]])
    metrics = SegMetrics(3)
    metrics.update(multi_logits(pred, 3), mask)
    out = metrics.compute()
    assert out["dice_2"] == 1.0 and out["iou_2"] == 1.0
    d0, d1 = 2 / 3, 4 / 5
    assert out["dice"] == pytest.approx((d0 + d1) / 2)
    assert out["precision"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert out["recall"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["f1"] == pytest.approx((d0 + d1) / 2)


def test_accumulation_equals_one_update_over_concatenation(
    binary_example: tuple[torch.Tensor, torch.Tensor], multi_example: tuple[torch.Tensor, torch.Tensor]
) -> None:
    g = torch.Generator().manual_seed(0)
    for n_classes, (logits, mask) in ((1, binary_example), (3, multi_example)):
        extra_logits = torch.randn(3, logits.shape[1], *mask.shape[1:], generator=g)
        extra_mask = torch.randint(0, max(n_classes, 2), (3, *mask.shape[1:]), generator=g)
        split, whole = SegMetrics(n_classes), SegMetrics(n_classes)
        split.update(logits, mask, loss=torch.tensor(2.0))
        split.update(extra_logits, extra_mask, loss=torch.tensor(4.0))
        # the loss is a mean over images: the concatenation's is the image-weighted mean of the two
        b = logits.shape[0]
        whole.update(torch.cat([logits, extra_logits]), torch.cat([mask, extra_mask]),
                     loss=torch.tensor((2.0 * b + 4.0 * 3) / (b + 3), dtype=torch.float64))
        a, b = split.compute(), whole.compute()
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-9), key


def test_all_empty_never_nan_and_reset() -> None:
    for n_classes in (1, 4):
        metrics = SegMetrics(n_classes)
        empty = metrics.compute()  # nothing seen yet
        assert all(math.isfinite(v) for v in empty.values())
        logits = torch.full((2, max(n_classes, 1), 3, 3), -5.0)
        mask = torch.zeros(2, 3, 3, dtype=torch.long)
        metrics.update(logits, mask)
        out = metrics.compute()
        assert all(math.isfinite(v) for v in out.values())
        assert out["dice"] == 1.0 and out["dice_per_image"] == 1.0
        metrics.update(logits, torch.full_like(mask, 255))  # nothing labelled at all
        assert all(math.isfinite(v) for v in metrics.compute().values())
        metrics.reset()
        assert metrics.n_images == 0 and "loss" not in metrics.compute()


def test_binary_empty_target_with_prediction_and_percent_denominator() -> None:
    mask = torch.zeros(1, 2, 2, dtype=torch.long)
    pred = torch.tensor([[[1, 0], [0, 0]]])
    metrics = SegMetrics(1)
    metrics.update(binary_logits(pred), mask)
    out = metrics.compute()
    assert out["precision"] == 0.0 and out["recall"] == 0.0 and out["dice"] == 0.0 and out["iou"] == 0.0
    assert out["percent_fp"] == 100.0 and out["percent_tp"] == 0.0  # labelled count 0 counts as 1


def test_ignored_pixels_change_nothing(binary_example: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, mask = binary_example
    flipped = logits.clone()
    flipped[0, 0, 3, 2:] *= -1  # change predictions under the ignored pixels only
    a, b = SegMetrics(1), SegMetrics(1)
    a.update(logits, mask)
    b.update(flipped, mask)
    assert a.compute() == b.compute()
    custom = SegMetrics(1, ignore_index=9)
    custom.update(logits, torch.where(mask == 255, 9, mask))
    assert custom.compute() == a.compute()


def test_per_image_stats(binary_example: tuple[torch.Tensor, torch.Tensor], multi_example) -> None:
    logits, mask = binary_example
    stats = per_image_stats(logits, mask)
    assert set(stats) == {"dice", "iou", "precision", "recall"}
    torch.testing.assert_close(stats["dice"], torch.tensor([0.75, 1.0], dtype=torch.float64))
    torch.testing.assert_close(stats["iou"], torch.tensor([0.6, 1.0], dtype=torch.float64))
    torch.testing.assert_close(stats["precision"], torch.tensor([0.75, 1.0], dtype=torch.float64))
    torch.testing.assert_close(stats["recall"], torch.tensor([0.75, 1.0], dtype=torch.float64))
    none = per_image_stats(logits, mask, threshold=0.999)
    torch.testing.assert_close(none["recall"], torch.tensor([0.0, 1.0], dtype=torch.float64))
    logits, mask = multi_example
    stats = per_image_stats(logits, mask)
    torch.testing.assert_close(stats["dice"], torch.tensor([(2 / 3 + 2 / 3 + 1 / 2) / 3, 1.0], dtype=torch.float64))
    torch.testing.assert_close(stats["iou"], torch.tensor([(0.5 + 0.5 + 1 / 3) / 3, 1.0], dtype=torch.float64))
    custom = per_image_stats(logits, torch.where(mask == 255, 7, mask), ignore_index=7)
    torch.testing.assert_close(custom["dice"], stats["dice"])


def test_prediction() -> None:
    logits = torch.tensor([[[[-1.0, 0.1], [2.0, 0.0]]]])
    assert prediction(logits).tolist() == [[[0, 1], [1, 0]]]
    assert prediction(logits, threshold=0.6).tolist() == [[[0, 0], [1, 0]]]
    multi = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]], [[3.0, 1.0]]]])
    out = prediction(multi)
    assert out.dtype == torch.long and out.tolist() == [[[2, 1]]]


def test_errors() -> None:
    with pytest.raises(ConfigError, match="class_names"):
        SegMetrics(3, class_names=["a", "b"])
    with pytest.raises(ConfigError, match="threshold"):
        SegMetrics(1, threshold=1.5)
    with pytest.raises(ConfigError, match="n_classes"):
        SegMetrics(0)
    with pytest.raises(ConfigError, match="n_classes=3"):
        SegMetrics(3).update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ConfigError, match="same B, H, W"):
        SegMetrics(1).update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 2, dtype=torch.long))
