"""seg-predict: masks for new, unlabelled images from a checkpoint.

Each image is read and resized the way training read its dataset (grey or RGB by the model's input
channels, DICOM through SimpleITK, the stored `dataset.image_size`), predicted, and the class
probabilities are resized back to the image's own size before thresholding, so every mask lines up
with its input pixel for pixel.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image

from seg.checkpoint import load_checkpoint, sha256
from seg.config import INFERENCE_BATCH_SIZE
from seg.data.base import as_size, resize_image
from seg.data.io import DICOM_SUFFIXES, IMAGE_SUFFIXES, read_dicom_gray, read_gray, read_rgb
from seg.data.rle import ENCODERS
from seg.engine.amp import Amp
from seg.errors import CheckpointError, ConfigError, DatasetError
from seg.inference.core import load_model, output_dir, predict_probs, stored_config
from seg.inference.outputs import OutputFolder

log = logging.getLogger("seg")

INPUT_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES


def find_inputs(path: Path, recursive: bool) -> list[Path]:
    """The image files to predict: `path` itself, or those in the folder (and below, if recursive)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetError(f"input={path} does not exist; give an image file or a folder of images")
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
    if not files:
        where = "in or below" if recursive else "directly in"
        raise DatasetError(f"no images {where} {path} (looked for {', '.join(INPUT_SUFFIXES)})")
    return files


def read_input(path: Path, channels: int) -> np.ndarray:
    """HxWxC uint8, as the training readers decode: grey for 1-channel models, RGB for 3."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        gray = read_dicom_gray(path)
        return gray[..., None] if channels == 1 else np.repeat(gray[..., None], 3, axis=-1)
    return read_gray(path)[..., None] if channels == 1 else read_rgb(path)


def to_mask(probs: torch.Tensor, size: tuple[int, int], threshold: float) -> np.ndarray:
    """Probabilities [K,h,w] resized (bilinear) to `size`, then thresholded (binary) or argmax."""
    probs = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
    labels = (probs[0] > threshold) if probs.shape[0] == 1 else probs.argmax(0)
    return labels.to(torch.uint8).cpu().numpy()


@dataclass
class Predictor:
    """The checkpoint's model with how its inputs were prepared."""

    model: torch.nn.Module
    amp: Amp
    device: torch.device
    channels: int
    n_classes: int
    size: tuple[int, int] | None  # the training image size; None = images were used at native size

    def __call__(self, images: list[np.ndarray], threshold: float, tta: bool) -> list[np.ndarray]:
        """One mask per image (HxW uint8 at the image's own size)."""
        resized = [resize_image(im, self.size) if self.size else im for im in images]
        batch = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).to(self.device).float().div_(255)
        probs = predict_probs(self.model, batch, self.amp, tta)
        return [to_mask(p, im.shape[:2], threshold) for p, im in zip(probs, images)]


def load_predictor(cfg: DictConfig, ckpt: dict[str, Any], path: Path) -> Predictor:
    train_cfg = stored_config(ckpt, None, path, cfg.allowed_targets, nodes=("model",))  # the data is not built
    channels, n_classes = int(train_cfg.model.in_channels), int(train_cfg.model.n_classes)
    if channels not in (1, 3):
        raise ConfigError(
            f"{path} was trained on {channels}-channel inputs ({train_cfg.dataset.get('_target_', '?')}); "
            "seg-predict reads 1-channel (grey) or 3-channel (RGB) images. Score such models with seg-eval."
        )
    if "image_size" not in train_cfg.dataset:  # null means native size: a missing key must not read as that
        raise CheckpointError(f"{path}: its stored config lacks dataset.image_size; the checkpoint is damaged or "
                              "was not written by seg-train")
    image_size = train_cfg.dataset.image_size
    size = as_size(image_size) if image_size is not None else None
    # Inputs are resized to the training size; at native sizes each new shape would be autotuned.
    loaded = load_model(ckpt, path, train_cfg, device=cfg.device, precision=cfg.precision, autotune=size is not None)
    return Predictor(loaded.model, loaded.settings.amp, loaded.settings.device, channels, n_classes, size)


def mask_paths(files: list[Path], root: Path) -> list[Path]:
    """`masks/<relative path>.png`; files that would share one (x.png and x.jpg) keep their suffix in
    the name (x_png.png, x_jpg.png) instead of overwriting each other."""
    plain = [f.relative_to(root).with_suffix(".png") for f in files]
    counts = Counter(plain)
    return [p if counts[p] == 1 else p.with_name(f"{f.stem}_{f.suffix.lstrip('.').lower()}.png")
            for p, f in zip(plain, files)]


def page_count(path: Path) -> int:
    """Frames in a multi-page file (a TIFF stack); 1 for anything PIL cannot count."""
    try:
        with Image.open(path) as image:
            return int(getattr(image, "n_frames", 1))
    except (OSError, ValueError, SyntaxError):
        return 1


def _check_settings(cfg: DictConfig) -> None:
    if not 0.0 < float(cfg.threshold) < 1.0:
        raise ConfigError(f"threshold must lie in (0, 1), got {cfg.threshold}")
    if cfg.batch_size is not None and int(cfg.batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1 (or null for 16), got {cfg.batch_size}")


def _make_out_dir(out: Path) -> None:
    try:
        (out / "masks").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write to out_dir={out}: {exc.strerror or exc}; choose another out_dir") from None


def run_predict(cfg: DictConfig) -> dict[str, Any]:
    path, source = Path(cfg.ckpt).expanduser(), Path(cfg.input).expanduser()
    _check_settings(cfg)
    form = None if cfg.submission is None else str(getattr(cfg.submission, "value", cfg.submission))
    encode = ENCODERS[form] if form is not None else None
    ckpt = load_checkpoint(path)
    predictor = load_predictor(cfg, ckpt, path)
    if form is not None and predictor.n_classes != 1:
        raise ConfigError(f"submission={form} writes run-length encoded binary masks, but this model has "
                          f"{predictor.n_classes} classes; leave submission=null (PNG masks hold the class ids)")
    files = find_inputs(source, bool(cfg.recursive))
    name = source.stem if source.is_file() else source.resolve().name
    out = Path(cfg.out_dir).expanduser() if cfg.out_dir else output_dir(path, "predictions", name)
    targets = dict(zip(files, mask_paths(files, source if source.is_dir() else source.parent)))
    outputs = OutputFolder(out, "seg-predict")
    outputs.claim(["predictions.csv", *(["submission.csv"] if form else []),
                   *(f"masks/{t.as_posix()}" for t in targets.values())])
    _make_out_dir(out)
    stacks = [f.name for f in files if f.suffix.lower() in (".tif", ".tiff", ".gif") and page_count(f) > 1]
    if stacks:
        log.warning("%d file(s) hold several pages; only the first page of each is predicted: %s", len(stacks),
                    ", ".join(stacks[:5]))
    try:  # what was written is recorded even when a stop or an error comes in the middle
        rows, skipped = _predict_all(cfg, predictor, files, targets, outputs, encode)
        if not rows:
            raise DatasetError(f"none of the {len(files)} image(s) under {source} could be read: {skipped[0]}")
        _write_rows(out / "predictions.csv", rows)
        outputs.wrote(out / "predictions.csv")
        if form is not None:
            _write_submission(out / "submission.csv", rows)
            outputs.wrote(out / "submission.csv")
    finally:
        outputs.save_record()
    log.info("wrote %d mask(s)%s to %s (checkpoint sha256=%s)", len(rows),
             " and submission.csv" if form else "", out, sha256(path))
    return {"out_dir": str(out), "n_images": len(rows), "skipped": len(skipped)}


def _predict_all(cfg: DictConfig, predictor: Predictor, files: list[Path], targets: dict[Path, Path],
                 outputs: OutputFolder, encode: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Masks for every readable file, in batches; the rows of predictions.csv and the skipped files."""
    out = outputs.folder
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    # Images of one size form a batch; native-size models take one image at a time.
    step = int(cfg.batch_size or INFERENCE_BATCH_SIZE) if predictor.size else 1
    for start in range(0, len(files), step):
        part, images = [], []
        for file in files[start : start + step]:
            try:  # one unreadable file in a large folder is reported, not fatal
                images.append(read_input(file, predictor.channels))
                part.append(file)
            except DatasetError as exc:
                skipped.append(f"{file} ({str(exc).split(': ', 1)[-1]})")
        for file, mask in zip(part, predictor(images, float(cfg.threshold), bool(cfg.tta)) if images else []):
            target = out / "masks" / targets[file]
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask * 255 if predictor.n_classes == 1 else mask).save(target)
            outputs.wrote(target)
            counts = np.bincount(mask.ravel(), minlength=max(2, predictor.n_classes))
            rows.append({"input": str(file), "mask": str(target.relative_to(out)), "height": mask.shape[0],
                         "width": mask.shape[1], "class_pixels": " ".join(map(str, counts.tolist())),
                         "rle": encode(mask) if encode is not None else None})
        log.info("predicted %d/%d", len(rows), len(files))
    if skipped:
        log.warning("skipped %d unreadable file(s): %s", len(skipped), "; ".join(skipped[:5]))
    return rows, skipped


def _write_rows(target: Path, rows: list[dict[str, Any]]) -> None:
    fields = ["input", "mask", "height", "width", "class_pixels"]  # pixels of class 0, 1, ... (binary: 0 = background)
    with open(target, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _write_submission(target: Path, rows: list[dict[str, Any]]) -> None:
    """Kaggle's `ImageId,EncodedPixels` (SIIM: the id is the DICOM's file stem, `-1` when empty)."""
    stems = Counter(Path(row["input"]).stem for row in rows)
    twice = sorted(stem for stem, n in stems.items() if n > 1)
    if twice:
        log.warning("submission.csv has %d ImageId(s) from several files each: %s", len(twice), ", ".join(twice[:5]))
    with open(target, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "EncodedPixels"])
        for row in rows:
            writer.writerow([Path(row["input"]).stem, row["rle"]])
