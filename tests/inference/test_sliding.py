"""Sliding-window inference (seg/inference/sliding.py): the window grid covers every pixel, Gaussian
weights normalise exactly, mirrored borders, one window = resize mode, flip TTA composes, and on a
large image with small structures windows find what resizing erases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg.config import InferenceMode
from seg.engine.amp import Amp
from seg.inference.core import Inference, infer_probs, predict_probs
from seg.inference.predict import Predictor
from seg.inference.sliding import border_pads, gaussian_weights, mirror_pad, slide_probs, window_starts
from seg.models import UNet

FP32 = Amp("32", "cpu", None, None)


class Constant(nn.Module):
    """Logits that ignore the input: the same value at every pixel."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, *x.shape[-2:])


class DotDetector(nn.Module):
    """Foreground where the 3x3 mean is bright: finds 3x3 bright dots at native resolution exactly,
    and nothing once a resize to a small size has blurred them into the background."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 40 * (F.avg_pool2d(x, 3, stride=1, padding=1) - 0.5)


def small_unet(n_classes: int = 2) -> UNet:
    torch.manual_seed(0)
    return UNet(in_channels=3, n_classes=n_classes, depth=2, wf=2).eval()


@pytest.mark.parametrize("length, window, overlap", [
    (32, 32, 0.5), (33, 32, 0.5), (100, 32, 0.5), (545, 64, 0.5), (97, 31, 0.0), (200, 17, 0.75), (64, 8, 0.9),
])  # fmt: skip
def test_window_starts_cover_every_pixel_evenly(length: int, window: int, overlap: float) -> None:
    starts = window_starts(length, window, overlap)
    assert starts[0] == 0 and starts[-1] == length - window and starts == sorted(set(starts))
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + window] = True
    assert covered.all()
    stride = max(1, round(window * (1 - overlap)))
    assert all(b - a <= stride + 1 for a, b in zip(starts, starts[1:]))  # +1: whole pixels, mirrored halves
    mirrored = sorted(length - window - s for s in starts)
    assert max(abs(a - b) for a, b in zip(starts, mirrored)) <= 1  # symmetric up to the middle's half pixel


def test_gaussian_weights() -> None:
    weights = gaussian_weights((64, 40))
    assert weights.shape == (64, 40) and (weights > 0).all()
    torch.testing.assert_close(weights, weights.flip(0))
    torch.testing.assert_close(weights, weights.flip(1))
    assert weights.max() == pytest.approx(1.0, abs=0.01)  # the centre (n-1)/2 lies between pixels: nearly 1
    row = gaussian_weights((1, 64))[0]  # sigma = 64/8 = 8 pixels, centred at 31.5
    x = np.arange(64) - 31.5
    np.testing.assert_allclose(row.numpy(), np.exp(-(x**2) / (2 * 8**2)), rtol=1e-5)


@pytest.mark.parametrize("size, pads", [((3, 4), (7, 5, 9, 2)), ((2, 2), (11, 0, 0, 6)), ((5, 7), (1, 1, 1, 1))])
def test_mirror_pad_reflects_by_any_amount(size: tuple[int, int], pads: tuple[int, int, int, int]) -> None:
    image = np.random.default_rng(0).random(size, dtype=np.float32)
    top, bottom, left, right = pads
    padded = mirror_pad(torch.from_numpy(image)[None, None], *pads)[0, 0].numpy()
    np.testing.assert_array_equal(padded, np.pad(image, ((top, bottom), (left, right)), mode="reflect"))
    line = mirror_pad(torch.ones(1, 2, 1, 3), 2, 3, 0, 0)  # a one-pixel axis cannot reflect: it repeats
    assert line.shape == (1, 2, 6, 3) and bool((line == 1).all())


def test_border_pads() -> None:
    assert border_pads(32, 32, 8) == (0, 0)  # the training size: one window, no padding, as resize mode
    assert border_pads(7, 32, 8) == (12, 13)  # smaller than a window: mirrored up to it, split evenly
    assert border_pads(33, 32, 8) == (8, 8)  # larger: a margin of context around the border


@pytest.mark.parametrize("size", [(32, 32), (37, 53), (5, 7), (1, 1), (130, 64)])
def test_a_constant_model_gives_a_constant_map(size: tuple[int, int]) -> None:
    """The summed weights normalise exactly, whatever the image size (odd, smaller than a window)."""
    image = torch.rand(2, 3, *size)
    binary = slide_probs(Constant([0.7]), image, FP32, window=(32, 32), batch=3)
    assert binary.shape == (2, 1, *size)
    torch.testing.assert_close(binary, torch.full_like(binary, float(torch.sigmoid(torch.tensor(0.7)))))
    multi = slide_probs(Constant([0.0, 1.0, -2.0]), image, FP32, window=(16, 24), overlap=0.25)
    expected = torch.softmax(torch.tensor([0.0, 1.0, -2.0]), 0).view(1, 3, 1, 1).expand_as(multi)
    torch.testing.assert_close(multi, expected)


def test_one_window_equals_resize_mode() -> None:
    """An image of the window's size is one window: the same probabilities as the plain model call."""
    model, image = small_unet(), torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(slide_probs(model, image, FP32, window=(32, 32)), predict_probs(model, image, FP32))
    torch.testing.assert_close(slide_probs(model, image, FP32, window=(32, 32), tta=True),
                               predict_probs(model, image, FP32, tta=True))
    how = Inference(InferenceMode.slide, (32, 32))
    torch.testing.assert_close(infer_probs(model, image, FP32, how), infer_probs(model, image, FP32, Inference()))


def test_slide_with_tta_is_flip_equivariant_and_batch_free() -> None:
    model, image = small_unet(3), torch.rand(1, 3, 45, 70)
    probs = slide_probs(model, image, FP32, window=(32, 32), tta=True)
    assert probs.shape == (1, 3, 45, 70)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 45, 70))
    for dims in ((-1,), (-2,), (-2, -1)):
        torch.testing.assert_close(slide_probs(model, image.flip(dims), FP32, window=(32, 32), tta=True),
                                   probs.flip(dims))
    plain = slide_probs(model, image, FP32, window=(32, 32), batch=1)
    torch.testing.assert_close(slide_probs(model, image, FP32, window=(32, 32), batch=64), plain)
    torch.testing.assert_close(slide_probs(model, image, FP32, window=(32, 32), channels_last=True), plain)
    assert not torch.allclose(plain, probs)  # TTA does change the result


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))


def test_windows_keep_small_structures_that_resizing_erases() -> None:
    """256x256 image with 3x3 dots, a model trained (here: made) for 32x32 inputs at native scale:
    resizing to 32 blurs the dots away, windows of 32 at the image's own resolution find them."""
    rng = np.random.default_rng(0)
    image = np.full((256, 256), 50, np.uint8)
    truth = np.zeros((256, 256), bool)
    for y, x in rng.integers(0, 254, (60, 2)):
        truth[y : y + 3, x : x + 3] = True
    image[truth] = 255
    common = {"model": DotDetector(), "amp": FP32, "device": torch.device("cpu"), "channels": 1, "n_classes": 1}
    resized = Predictor(**common, size=(32, 32))([image[..., None]], 0.5)[0].astype(bool)
    slid = Predictor(**common, size=None, how=Inference(InferenceMode.slide, (32, 32)))([image[..., None]], 0.5)[0]
    assert resized.shape == slid.shape == (256, 256)
    assert dice(slid.astype(bool), truth) > 0.95 > 0.2 > dice(resized, truth)
