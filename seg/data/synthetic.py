"""The built-in dataset: procedurally drawn dermoscopy-like images, so `seg-train` runs with no download.

Each case is rendered from (seed, index) alone, so any case can be redrawn on its own, the set never
depends on the global seed, and the usual cache/split machinery applies unchanged. Lesions are darker,
brownish, smooth irregular blobs on textured skin with noise, faint hairs and a vignette: clearly
learnable by a small network in a few epochs, yet not separable by one global threshold.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from seg.data.base import CachedArrayData
from seg.errors import ConfigError, DatasetError

# Bump when the drawing changes, so cached arrays from an older generator are never reused.
GENERATOR_VERSION = 1

SKIN = np.array([214.0, 168.0, 142.0])
LESION = np.array([112.0, 68.0, 50.0])


def _grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1] along each axis (aspect kept per axis)."""
    h, w = size
    yy = (np.arange(h, dtype=np.float64) + 0.5) / h
    xx = (np.arange(w, dtype=np.float64) + 0.5) / w
    return np.meshgrid(yy, xx, indexing="ij")


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, waves: int, max_freq: float) -> np.ndarray:
    """Low-frequency texture in about [-1, 1]: a sum of random plane waves."""
    freq = rng.uniform(0.5, max_freq, size=waves)
    angle = rng.uniform(0, 2 * np.pi, size=waves)
    phase = rng.uniform(0, 2 * np.pi, size=waves)
    fy, fx = freq * np.sin(angle), freq * np.cos(angle)
    arg = 2 * np.pi * (fy[:, None, None] * yy + fx[:, None, None] * xx) + phase[:, None, None]
    return np.cos(arg).sum(axis=0) / np.sqrt(waves / 2)


def _blob(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, scale: float) -> np.ndarray:
    """Signed distance-like field (>0 inside) of a smooth irregular blob: a rotated ellipse whose
    radius is modulated by a few random angular harmonics."""
    cy, cx = rng.uniform(0.22, 0.78, size=2)
    radius = rng.uniform(0.14, 0.30) * scale
    rot = rng.uniform(0, np.pi)
    aspect = rng.uniform(0.65, 1.0)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(rot) + dy * np.sin(rot)
    v = (-dx * np.sin(rot) + dy * np.cos(rot)) / aspect
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    k = np.arange(2, 6)
    amp = rng.uniform(0.0, 0.22, size=k.size) / np.sqrt(k - 1)
    phase = rng.uniform(0, 2 * np.pi, size=k.size)
    wobble = (amp[:, None, None] * np.cos(k[:, None, None] * theta + phase[:, None, None])).sum(axis=0)
    return radius * np.clip(1.0 + wobble, 0.4, None) - rho


def _hairs(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, count: int, width: float) -> np.ndarray:
    """Coverage in [0, 1] of thin, gently curved dark lines (hairs are not lesion)."""
    cover = np.zeros_like(yy)
    for _ in range(count):
        py, px = rng.uniform(0, 1, size=2)
        angle = rng.uniform(0, np.pi)
        bend, freq = rng.uniform(0.0, 0.04), rng.uniform(1.0, 3.0)
        along = (xx - px) * np.cos(angle) + (yy - py) * np.sin(angle)
        across = -(xx - px) * np.sin(angle) + (yy - py) * np.cos(angle)
        across = across - bend * np.sin(2 * np.pi * freq * along)
        cover = np.maximum(cover, np.clip(1.0 - np.abs(across) / width, 0.0, 1.0))
    return cover


def render_case(
    index: int,
    *,
    seed: int,
    size: tuple[int, int],
    min_blobs: int,
    max_blobs: int,
    empty_fraction: float,
    noise_std: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw case `index` of the set `seed`: (HxWx3 uint8 image, HxW uint8 mask in {0,1})."""
    rng = np.random.default_rng([int(seed), int(index), GENERATOR_VERSION])
    yy, xx = _grid(size)
    short = min(size)

    skin = SKIN * rng.uniform(0.72, 1.1) + rng.normal(0, 6, size=3)
    texture = _texture(rng, yy, xx, waves=6, max_freq=3.0)
    image = skin * (1.0 + 0.05 * texture)[..., None]

    empty = rng.random() < empty_fraction
    n_blobs = 0 if empty else int(rng.integers(min_blobs, max_blobs + 1))
    scale = max(n_blobs, 1) ** -0.25  # several blobs are each a little smaller
    field = np.full(size, -np.inf)
    for _ in range(n_blobs):
        field = np.maximum(field, _blob(rng, yy, xx, scale=scale))
    mask = (field > 0).astype(np.uint8)

    if n_blobs:
        softness = 1.2 / short
        alpha = 1.0 / (1.0 + np.exp(-np.clip(field / softness, -40, 40)))
        opacity = rng.uniform(0.6, 0.9)
        lesion = LESION * rng.uniform(0.8, 1.35) + rng.normal(0, 6, size=3)
        # Darker core, lighter rim, and its own mottled texture, as in pigmented lesions.
        core = np.clip(field / (0.08 * scale), 0.0, 1.0)
        inner = _texture(rng, yy, xx, waves=8, max_freq=7.0)
        colour = lesion * (1.12 - 0.25 * core + 0.08 * inner)[..., None]
        image = image * (1 - opacity * alpha[..., None]) + colour * (opacity * alpha[..., None])

    hairs = _hairs(rng, yy, xx, count=int(rng.integers(0, 3)), width=0.9 / short)
    image = image * (1.0 - 0.35 * hairs[..., None])
    vignette = 1.0 - rng.uniform(0.0, 0.25) * np.clip(np.hypot(yy - 0.5, xx - 0.5) / 0.7071, 0, 1) ** 3
    image = image * vignette[..., None] + rng.normal(0.0, noise_std, size=(*size, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


class SyntheticData(CachedArrayData):
    """Generated RGB lesion images with binary masks; reads no files (`root` must stay null)."""

    name = "synthetic"
    in_channels = 3
    n_classes = 1
    class_names = ["lesion"]

    def __init__(
        self,
        *,
        n_images: int = 240,
        image_size: int | Sequence[int] = 64,
        seed: int = 0,
        min_blobs: int = 1,
        max_blobs: int = 3,
        empty_fraction: float = 0.05,
        noise_std: float = 8.0,
        root: str | None = None,
        **common: Any,
    ) -> None:
        """`common`: CachedArrayData's other arguments (split, split_seed, cache_dir, ...)."""
        if root is not None:
            raise ConfigError(
                f"dataset.root={root!r} was given, but the synthetic dataset is generated and reads no "
                "files: set dataset.root=null, or choose a dataset that reads files (e.g. dataset=ph2)"
            )
        super().__init__(root=None, image_size=image_size, **common)
        self.require("in_channels", self.in_channels, 3)
        self.require("n_classes", self.n_classes, 1)
        self.n_images = int(n_images)
        self.seed = int(seed)
        self.min_blobs, self.max_blobs = int(min_blobs), int(max_blobs)
        self.empty_fraction = float(empty_fraction)
        self.noise_std = float(noise_std)
        self._check_params()

    def _check_params(self) -> None:
        problems = []
        if self.n_images < 1:
            problems.append(f"n_images={self.n_images} (need >= 1)")
        if min(self.image_size) < 8:
            problems.append(f"image_size={list(self.image_size)} (need >= 8 pixels per side)")
        if not 0 <= self.min_blobs <= self.max_blobs:
            problems.append(f"min_blobs={self.min_blobs}, max_blobs={self.max_blobs} (need 0 <= min <= max)")
        if not 0.0 <= self.empty_fraction <= 1.0:
            problems.append(f"empty_fraction={self.empty_fraction} (need a fraction in [0, 1])")
        if self.noise_std < 0:
            problems.append(f"noise_std={self.noise_std} (need >= 0)")
        if problems:
            raise ConfigError("synthetic dataset settings out of range: " + "; ".join(problems))

    def cache_fields(self) -> dict[str, Any]:
        return {
            **super().cache_fields(),
            "generator": GENERATOR_VERSION,
            "n_images": self.n_images,
            "seed": self.seed,
            "min_blobs": self.min_blobs,
            "max_blobs": self.max_blobs,
            "empty_fraction": self.empty_fraction,
            "noise_std": self.noise_std,
        }

    def source_fingerprint(self) -> None:
        return None  # drawn from its settings (all in the cache key): no file to fingerprint or re-check

    def list_cases(self) -> list[str]:
        width = max(4, len(str(self.n_images - 1)))
        return [f"synthetic_{i:0{width}d}" for i in range(self.n_images)]

    def load_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        match = re.fullmatch(r"synthetic_(\d+)", case_id)
        if match is None or int(match.group(1)) >= self.n_images:
            raise DatasetError(
                f"unknown synthetic case {case_id!r}: expected 'synthetic_<i>' with i below n_images={self.n_images}"
            )
        return render_case(
            int(match.group(1)),
            seed=self.seed,
            size=self.image_size,
            min_blobs=self.min_blobs,
            max_blobs=self.max_blobs,
            empty_fraction=self.empty_fraction,
            noise_std=self.noise_std,
        )
