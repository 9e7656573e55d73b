"""seg-predict: masks for new, unlabelled images from a checkpoint.

Each image is read the way training read its dataset (seg/inference/inputs.py). In resize mode it is
resized to the stored `dataset.image_size`, predicted, and the class probabilities are resized back
to the image's own size before thresholding; in slide mode windows of the training size run over the
image at its own size (seg/inference/sliding.py). Either way every mask lines up with its input
pixel for pixel. Multi-class masks are palette PNGs: class ids as pixel values, shown in colour.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from seg.checkpoint import load_checkpoint, sha256
from seg.config import INFERENCE_BATCH_SIZE
from seg.data.base import as_size, resize_image
from seg.data.rle import ENCODERS
from seg.engine.amp import Amp
from seg.errors import CheckpointError, ConfigError, DatasetError
from seg.inference.core import (
    Inference,
    ensemble_output_dir,
    infer_probs,
    load_model,
    output_dir,
    resolve_inference,
    stored_config,
)
from seg.inference.ensemble import average, ensemble_paths, load_members, note_postprocess, write_members
from seg.inference.inputs import find_inputs, multi_page, read_input
from seg.inference.outputs import OutputFolder
from seg.inference.postprocess import load_postprocess, to_mask
from seg.logger.overlay import CLASS_PALETTE, class_overlay, save_png, to_display

if TYPE_CHECKING:
    from seg.inference.onnx_runner import OnnxPredictor

log = logging.getLogger("seg")


@dataclass
class Predictor:
    """The checkpoint's model with how its inputs were prepared."""

    model: torch.nn.Module
    amp: Amp
    device: torch.device
    channels: int
    n_classes: int
    size: tuple[int, int] | None  # resize mode: the training image size; None = each image at its own size
    how: Inference = field(default_factory=Inference)
    channels_last: bool = False
    postprocess: Any = None  # what post-processes the masks, if anything: predictions.csv names it
    members: list[Predictor] = field(default_factory=list)  # an ensemble: the mean of their probabilities

    def probs(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities of a batch: the model's, or an ensemble's members' mean."""
        if self.members:
            return average(m.probs(batch) for m in self.members)
        return infer_probs(self.model, batch, self.amp, self.how, channels_last=self.channels_last)

    def __call__(self, images: list[np.ndarray], threshold: float) -> list[np.ndarray]:
        """One mask per image (HxW uint8 at the image's own size); images of one size when `size` is None."""
        resized = [resize_image(im, self.size) if self.size else im for im in images]
        batch = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).to(self.device).float().div_(255)
        probs = self.probs(batch)
        return [to_mask(p, im.shape[:2], threshold, self.postprocess) for p, im in zip(probs, images)]

    def settings_row(self) -> dict[str, str]:
        """predictions.csv's record of how the masks were made; `input_size`: what the model saw at once
        (the resize target, the sliding window, or `native`)."""
        size = self.how.window if self.how.sliding else self.size
        return {"tta": str(self.how.tta).lower(), "sliding": str(self.how.sliding).lower(),
                "input_size": f"{size[0]}x{size[1]}" if size else "native",
                "postprocess": _name(self.postprocess)}


def _name(step: Any) -> str:
    """How predictions.csv names a post-processing step: `none`, a string as is, else its `name`
    attribute or class name."""
    if step is None:
        return "none"
    return step if isinstance(step, str) else str(getattr(step, "name", None) or type(step).__name__)


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
    how = resolve_inference(cfg.get("inference"), ckpt["config"], tta=bool(cfg.tta))
    image_size = train_cfg.dataset.image_size
    # Slide mode never resizes: each image keeps its own size, the windows have the training size.
    size = as_size(image_size) if image_size is not None and not how.sliding else None
    # Resized inputs and windows have one shape; at native sizes each new shape would be autotuned.
    loaded = load_model(ckpt, path, train_cfg, device=cfg.device, precision=cfg.precision,
                        autotune=size is not None or how.sliding)
    settings = loaded.settings
    log.info("seg-predict: %s", how.describe())
    # Tuned on validation (seg-eval tune=true) and stored beside the checkpoint: binary models only.
    postprocess = load_postprocess(path, sha256(path)) if cfg.postprocess and n_classes == 1 else None
    if postprocess is not None:
        log.info("seg-predict: post-processing tuned on validation: %s (postprocess=false to skip)", postprocess.name)
    return Predictor(loaded.model, settings.amp, settings.device, channels, n_classes, size, how,
                     settings.channels_last, postprocess)


def load_ensemble(cfg: DictConfig, paths: list[Path]) -> Predictor:
    """Each member's predictor (checked alike: seg.inference.ensemble); their mean probabilities are
    thresholded as one model's, not post-processed (a .postprocess.json is tuned for its checkpoint alone)."""
    alone = OmegaConf.merge(cfg, {"postprocess": False})
    members = load_members(paths, cfg.get("inference"), lambda ckpt, path, _digest: load_predictor(alone, ckpt, path),
                           tta=bool(cfg.tta))
    if cfg.postprocess:
        note_postprocess(paths, "seg-predict")
    return replace(members[0], members=members)


def _load(cfg: DictConfig, path: Path) -> Predictor | OnnxPredictor:
    """A seg-train checkpoint runs in PyTorch; a seg-export .onnx file in onnxruntime (its threshold and
    image-level rule are inside the graph)."""
    if path.suffix.lower() != ".onnx":
        return load_predictor(cfg, load_checkpoint(path), path)
    if str(getattr(cfg.inference.mode, "value", cfg.inference.mode)) == "slide":
        raise ConfigError("inference.mode=slide runs seg's PyTorch model: give the checkpoint, not the .onnx file")
    from seg.inference.onnx_runner import load_onnx_predictor  # onnxruntime: the seg[onnx] extra

    return load_onnx_predictor(path, device=str(cfg.device), tta=bool(cfg.tta), postprocess=bool(cfg.postprocess))


def mask_paths(files: list[Path], root: Path) -> list[Path]:
    """`masks/<relative path>.png`; files that would share one (x.png and x.jpg) keep their suffix in
    the name (x_png.png, x_jpg.png) instead of overwriting each other."""
    plain = [f.relative_to(root).with_suffix(".png") for f in files]
    counts = Counter(plain)
    return [p if counts[p] == 1 else p.with_name(f"{f.stem}_{f.suffix.lstrip('.').lower()}.png")
            for p, f in zip(plain, files)]


def class_palette(n_classes: int) -> list[int]:
    """The PNG palette of a multi-class mask: class k in the overlays' colour for k (seg.logger.overlay;
    class 0 black), flattened as PIL's putpalette takes it."""
    return [c for k in range(n_classes) for c in CLASS_PALETTE[k % len(CLASS_PALETTE)]]


def write_mask(mask: np.ndarray, n_classes: int, target: Path) -> None:
    """Binary: 0/255 grey. Multi-class: a palette ("P") PNG whose pixel values stay the class ids (what
    np.asarray(Image.open(...)) returns) while any viewer shows them in colour."""
    if n_classes == 1:
        Image.fromarray(mask * 255).save(target)
        return
    image = Image.fromarray(mask)
    image.putpalette(class_palette(n_classes))  # an "L" image becomes "P", pixel values unchanged
    image.save(target)


def write_overlay(image: np.ndarray, mask: np.ndarray, n_classes: int, target: Path) -> None:
    """The prediction drawn on its input (one colour per class; binary: the foreground in blue)."""
    display = to_display(torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float().div_(255))  # may be read-only
    save_png(class_overlay(display, torch.from_numpy(mask)[None].long(), n_classes)[0], target)


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
    paths = ensemble_paths(cfg.ckpt, cfg.get("members"))  # None: one checkpoint (or .onnx) file
    members = paths if paths and len(paths) > 1 else None  # an ensemble's checkpoints
    path, source = paths[0] if paths else Path(str(cfg.ckpt)).expanduser(), Path(cfg.input).expanduser()
    _check_settings(cfg)
    form = None if cfg.submission is None else str(getattr(cfg.submission, "value", cfg.submission))
    encode = ENCODERS[form] if form is not None else None
    predictor = load_ensemble(cfg, members) if members else _load(cfg, path)
    if form is not None and predictor.n_classes != 1:
        raise ConfigError(f"submission={form} writes run-length encoded binary masks, but this model has "
                          f"{predictor.n_classes} classes; leave submission=null (PNG masks hold the class ids)")
    files = find_inputs(source, bool(cfg.recursive))
    name = source.stem if source.is_file() else source.resolve().name
    default = ensemble_output_dir(members, "predictions", name) if members else output_dir(path, "predictions", name)
    out = Path(cfg.out_dir).expanduser() if cfg.out_dir else default
    targets = dict(zip(files, mask_paths(files, source if source.is_dir() else source.parent)))
    outputs = OutputFolder(out, "seg-predict")
    kinds = ("masks", "overlays") if cfg.get("overlays") else ("masks",)
    outputs.claim(["predictions.csv", *(["submission.csv"] if form else []), *(["ensemble.json"] if members else []),
                   *(f"{kind}/{t.as_posix()}" for kind in kinds for t in targets.values())])
    _make_out_dir(out)
    stacks = multi_page(files)
    if stacks:
        log.warning("%d file(s) hold several pages; only the first page of each is predicted: %s", len(stacks),
                    ", ".join(stacks[:5]))
    try:  # what was written is recorded even when a stop or an error comes in the middle
        rows, skipped = _predict_all(cfg, predictor, files, targets, outputs, encode)
        if not rows:
            raise DatasetError(f"none of the {len(files)} image(s) under {source} could be read: {skipped[0]}")
        _write_rows(out / "predictions.csv", rows)
        outputs.wrote(out / "predictions.csv")
        if members:
            write_members(outputs, members)
        if form is not None:
            _write_submission(out / "submission.csv", rows)
            outputs.wrote(out / "submission.csv")
    finally:
        outputs.save_record()
    made_by = f"an ensemble of {len(members)}: ensemble.json" if members else f"checkpoint sha256={sha256(path)}"
    log.info("wrote %d mask(s)%s to %s (%s)", len(rows), " and submission.csv" if form else "", out, made_by)
    return {"out_dir": str(out), "n_images": len(rows), "skipped": len(skipped)}


def _predict_all(cfg: DictConfig, predictor: Predictor | OnnxPredictor, files: list[Path], targets: dict[Path, Path],
                 outputs: OutputFolder, encode: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Masks for every readable file, in batches; the rows of predictions.csv and the skipped files."""
    out = outputs.folder
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    # Resized images form a batch; at native sizes (and in slide mode, whose windows are batched) one at a time.
    step = int(cfg.batch_size or INFERENCE_BATCH_SIZE) if predictor.size else 1
    for start in range(0, len(files), step):
        part, images = [], []
        for file in files[start : start + step]:
            try:  # one unreadable file in a large folder is reported, not fatal
                images.append(read_input(file, predictor.channels))
                part.append(file)
            except DatasetError as exc:
                skipped.append(f"{file} ({str(exc).split(': ', 1)[-1]})")
        masks = predictor(images, float(cfg.threshold)) if images else []
        for file, image, mask in zip(part, images, masks):
            target = out / "masks" / targets[file]
            target.parent.mkdir(parents=True, exist_ok=True)
            write_mask(mask, predictor.n_classes, target)
            outputs.wrote(target)
            if cfg.get("overlays"):
                drawn = out / "overlays" / targets[file]
                drawn.parent.mkdir(parents=True, exist_ok=True)
                write_overlay(image, mask, predictor.n_classes, drawn)
                outputs.wrote(drawn)
            counts = np.bincount(mask.ravel(), minlength=max(2, predictor.n_classes))
            rows.append({"input": str(file), "mask": str(target.relative_to(out)), "height": mask.shape[0],
                         "width": mask.shape[1], "class_pixels": " ".join(map(str, counts.tolist())),
                         **predictor.settings_row(), "rle": encode(mask) if encode is not None else None})
        log.info("predicted %d/%d", len(rows), len(files))
    if skipped:
        log.warning("skipped %d unreadable file(s): %s", len(skipped), "; ".join(skipped[:5]))
    return rows, skipped


def _write_rows(target: Path, rows: list[dict[str, Any]]) -> None:
    # class_pixels: pixels of class 0, 1, ... (binary: 0 = background); then how the masks were made
    fields = ["input", "mask", "height", "width", "class_pixels", "tta", "sliding", "input_size", "postprocess"]
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
