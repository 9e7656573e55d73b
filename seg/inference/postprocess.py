"""Post-processing of a binary model's probabilities, tuned on validation (seg-eval split=val tune=true)
and stored beside the checkpoint it belongs to: `<checkpoint stem>.postprocess.json` next to it.

`apply` runs, per image and in this order: the image-level empty rule (the SIIM winners': the image
is empty unless at least `empty_min_pixels` pixels exceed `empty_threshold`), the threshold, removal of
connected components (8-connected) smaller than `min_size` pixels, and keep-largest-component. Pixel
counts are those of the resolution tuning saw (`pixels_at`, the dataset's image size); a mask made at
another size (seg-predict's, at each input's own size) scales them by the area ratio.

The file carries the checkpoint's SHA-256: one that belongs to another checkpoint (best.pt replaced
by a later best) is refused instead of being applied to a model it was not tuned for.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from seg.data.io import share_like_umask
from seg.errors import CheckpointError, ConfigError

log = logging.getLogger("seg")
FORMAT = "seg-postprocess/1"
SUFFIX = ".postprocess.json"
EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity: a diagonal touch joins two blobs


@dataclass(frozen=True)
class Settings:
    threshold: float = 0.5
    min_size: int = 0  # remove components with fewer pixels; 0 keeps all
    keep_largest: bool = False
    empty_threshold: float | None = None  # None: no image-level rule
    empty_min_pixels: int = 0
    pixels_at: tuple[int, int] | None = None  # (H, W) the pixel counts refer to; None: each image's own

    def describe(self) -> str:
        """One short line, e.g. for predictions.csv's `postprocess` column."""
        parts = [f"threshold={self.threshold:g}"]
        if self.min_size:
            parts.append(f"min_size={self.min_size}")
        if self.keep_largest:
            parts.append("keep_largest")
        if self.empty_threshold is not None:
            parts.append(f"empty_unless={self.empty_min_pixels}px>{self.empty_threshold:g}")
        return " ".join(parts)

    @property
    def name(self) -> str:
        """What seg-predict's predictions.csv writes in its `postprocess` column."""
        return self.describe()

    def scaled(self, shape: tuple[int, int]) -> Settings:
        """The pixel counts for masks of `shape` instead of `pixels_at`."""
        if self.pixels_at is None or tuple(shape) == tuple(self.pixels_at):
            return self
        ratio = (shape[0] * shape[1]) / (self.pixels_at[0] * self.pixels_at[1])
        return Settings(self.threshold, int(round(self.min_size * ratio)), self.keep_largest, self.empty_threshold,
                        int(round(self.empty_min_pixels * ratio)), tuple(shape))  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Settings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}")
        values = dict(values)
        # A file may be damaged or crafted: every value is checked for its type and range here, once.
        probability = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 < v < 1.0  # noqa: E731
        count = lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**40  # noqa: E731
        at = values.get("pixels_at")
        checks = {"threshold": probability(values.get("threshold", 0.5)),
                  "min_size": count(values.get("min_size", 0)),
                  "keep_largest": isinstance(values.get("keep_largest", False), bool),
                  "empty_threshold": values.get("empty_threshold") is None or probability(values["empty_threshold"]),
                  "empty_min_pixels": count(values.get("empty_min_pixels", 0)),
                  "pixels_at": at is None or (isinstance(at, (list, tuple)) and len(at) == 2
                                              and all(count(v) and v > 0 for v in at))}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            shown = ", ".join(f"{k}={values.get(k)!r}" for k in bad)
            raise ValueError(f"settings out of range or of the wrong type: {shown}")
        if at is not None:
            values["pixels_at"] = (int(at[0]), int(at[1]))
        return cls(**values)


def postprocess_path(ckpt: Path) -> Path:
    """`best.pt` -> `best.postprocess.json` beside it."""
    return ckpt.with_name(ckpt.stem + SUFFIX)


def keep_components(fg: np.ndarray, min_size: int, keep_largest: bool) -> np.ndarray:
    """`fg` without its 8-connected components under `min_size` pixels, and with only the largest one
    (the first in scan order among equals) if `keep_largest`."""
    if not (min_size > 0 or keep_largest) or not fg.any():
        return fg
    labels, n = ndimage.label(fg, structure=EIGHT)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    keep = areas >= min_size
    if keep_largest:
        keep &= np.arange(n + 1) == int(np.argmax(areas[1:])) + 1
    keep[0] = False
    return keep[labels]


def apply(probs: torch.Tensor | np.ndarray, settings: Settings | None, threshold: float = 0.5) -> np.ndarray:
    """A mask [H,W] uint8 from one image's probabilities [K,H,W] or [H,W]: binary (K=1 or [H,W]) by
    `settings` (or `threshold` without them), multi-class by argmax (settings are binary-only)."""
    array = probs.detach().float().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    if array.ndim == 3 and array.shape[0] > 1:
        if settings is not None:
            raise ConfigError(f"post-processing settings are for binary models; got {array.shape[0]} classes")
        return array.argmax(0).astype(np.uint8)
    p = array[0] if array.ndim == 3 else array
    if settings is None:
        return (p > threshold).astype(np.uint8)
    if settings.empty_threshold is not None and int((p > settings.empty_threshold).sum()) < settings.empty_min_pixels:
        return np.zeros(p.shape, dtype=np.uint8)
    fg = keep_components(p > settings.threshold, settings.min_size, settings.keep_largest)
    return fg.astype(np.uint8)


def to_mask(probs: torch.Tensor, size: tuple[int, int], threshold: float, settings: Settings | None) -> np.ndarray:
    """seg-predict's mask: probabilities [K,h,w] resized (bilinear) to the image's `size`, then `apply`
    with the pixel counts scaled to that size (settings=None: plain threshold / argmax)."""
    if tuple(probs.shape[-2:]) != tuple(size):
        probs = F.interpolate(probs[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return apply(probs, None if settings is None else settings.scaled(tuple(size)), threshold)  # type: ignore[arg-type]


def load_postprocess(ckpt_path: Path, ckpt_sha256: str) -> Settings | None:
    """The settings stored beside `ckpt_path`, None when there is none. A record tuned for another
    checkpoint (a later best.pt replaced the tuned one) is not applied, with a warning: training on must
    not break seg-eval. A file that is not a seg record stops the command in one line."""
    path = postprocess_path(Path(ckpt_path))
    if not path.is_file():
        return None
    record = read_record(path)
    if record is None:
        raise CheckpointError(f"{path} is not a seg post-processing file ({FORMAT}); move it away, or pass "
                              "postprocess=false")
    if record.get("checkpoint_sha256") != ckpt_sha256:
        theirs = str(record.get("checkpoint_sha256"))[:12]
        log.warning("%s was tuned for another checkpoint (sha256 %s..., this one is %s...): not applied; tune "
                    "this one with seg-eval split=val tune=true", path, theirs, ckpt_sha256[:12])
        return None
    try:
        return Settings.from_dict(record["settings"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} holds unusable settings ({exc}); remove it and tune again, or pass "
                              "postprocess=false") from None


def read_record(path: Path) -> dict[str, Any] | None:
    """The file's JSON if it is a seg post-processing record, else None."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def check_writable(ckpt_path: Path, ckpt_sha256: str) -> Path:
    """Where tuning will write; refuses (one line) to replace a file that is not a seg record (seg's own
    record, for this checkpoint or an earlier one under the same name, is replaced)."""
    path = postprocess_path(Path(ckpt_path))
    if path.exists() and read_record(path) is None:
        raise ConfigError(f"{path} already exists and is not a seg post-processing record; it is kept. Move it "
                          "away to tune this checkpoint")
    return path


def save_postprocess(ckpt_path: Path, ckpt_sha256: str, settings: Settings, details: dict[str, Any]) -> Path:
    """Write the record beside the checkpoint: a temporary file in the same folder, then a rename, so a
    reader never sees half a file."""
    path = check_writable(ckpt_path, ckpt_sha256)
    record = {"format": FORMAT, "checkpoint": Path(ckpt_path).name, "checkpoint_sha256": ckpt_sha256,
              "written_by": "seg-eval tune=true", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
              "describe": settings.describe(), **details}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        share_like_umask(Path(tmp))  # mkstemp makes it 0600; teammates read checkpoints, so this too
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
