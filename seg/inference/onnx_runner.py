"""seg-predict with a model exported by seg-export to ONNX: onnxruntime runs the graph, and the images
are read, resized, padded and the probabilities resized back exactly as seg's own Predictor does
(seg.inference.predict), so the masks are the same as the checkpoint's.

The exported graph takes uint8 N x H x W x C images whose H and W are multiples of STRIDE and has no
resize inside: the training image size, the channels and the classes travel in the model's
`metadata_props` (seg.* keys, written by seg.inference.export) and are read back here, with the tuned
post-processing the graph was exported with (`OnnxPredictor.tuned`: seg-predict can apply what the graph
leaves out, the component steps, to its masks).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seg.data.base import resize_image
from seg.errors import CheckpointError, ConfigError
from seg.inference.core import SIZE_MULTIPLE
from seg.inference.postprocess import Settings, to_mask

STRIDE = SIZE_MULTIPLE
INPUT, OUTPUTS = "image", ("probabilities", "mask")
FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (1,), (1, 2))  # NHWC axes of core.predict_probs' (W, H, both)
INSTALL_HINT = "pip install 'seg[onnx]' (onnx, onnxruntime, onnxscript)"


def pad_to_stride(batch: np.ndarray, multiple: int = STRIDE) -> np.ndarray:
    """N x H x W x C padded at the bottom/right to a multiple, as core.pad_to_stride pads (reflected where
    the image is big enough, else the edge repeated): on uint8 before scaling, which gives the same values."""
    h, w = batch.shape[1:3]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return batch
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(batch, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)


def onnxruntime() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError(f"running an ONNX model needs onnxruntime, which is not installed: {INSTALL_HINT}") from None
    return ort


def onnx_session(path: Path, device: str = "cpu") -> Any:
    """An onnxruntime session on `device` (auto: CUDA where this onnxruntime has it, else the CPU)."""
    ort = onnxruntime()
    available = ort.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" not in available:
        raise ConfigError(f"device={device}: this onnxruntime has no CUDA support (providers: {', '.join(available)}); "
                          "install onnxruntime-gpu or use device=cpu")
    gpu = device.startswith("cuda") or (device == "auto" and "CUDAExecutionProvider" in available)
    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") and device[5:].isdigit() else 0
    providers: list[Any] = [("CUDAExecutionProvider", {"device_id": index})] if gpu else []
    providers.append("CPUExecutionProvider")
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; give the .onnx file seg-export wrote")
    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...) share no public base
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable ONNX model ({first}); export it with seg-export") from None


def read_metadata(meta: Mapping[str, str], path: Path) -> dict[str, Any]:
    """The seg.* metadata_props seg-export writes, decoded (JSON values)."""
    needed = ("seg.channels", "seg.n_classes", "seg.image_size", "seg.threshold")
    missing = [k for k in needed if k not in meta]
    if missing:
        raise CheckpointError(f"{path} lacks seg's metadata ({', '.join(missing)}): not written by seg-export, it "
                              "does not say how its inputs were prepared; export the checkpoint with seg-export")
    try:
        return {k.removeprefix("seg."): json.loads(v) for k, v in meta.items() if k.startswith("seg.")}
    except ValueError as exc:
        raise CheckpointError(f"{path}: damaged seg metadata ({exc})") from None


@dataclass
class OnnxPredictor:
    """An exported model with how its inputs were prepared, called like seg.inference.predict.Predictor:
    resize mode only (sliding windows are seg's PyTorch path), flip TTA by `tta` or per call."""

    session: Any  # onnxruntime.InferenceSession
    channels: int
    n_classes: int
    size: tuple[int, int] | None  # the training image size; None = images were used at native size
    threshold: float | None  # the graph's own mask threshold (0.5 or the tuned one); None: multi-class
    tuned: Settings | None = None  # the tuned post-processing the graph was exported with (seg.postprocess)
    tta: bool = False
    postprocess: Any = None  # as Predictor.postprocess: what post-processes the masks, if anything
    meta: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, batch: np.ndarray, tta: bool = False) -> np.ndarray:
        """N x K x H x W float32 for N x H x W x C uint8 images of any size (padded here, cropped back).
        `tta` averages the four flips in core.predict_probs' order, flipped before padding."""
        h, w = batch.shape[1:3]
        total = np.zeros((), np.float32)
        for axes in FLIPS if tta else FLIPS[:1]:
            x = np.ascontiguousarray(np.flip(batch, axes) if axes else batch)
            probs = self.session.run([OUTPUTS[0]], {INPUT: pad_to_stride(x)})[0][..., :h, :w]
            probs = np.flip(probs, tuple(a + 1 for a in axes)) if axes else probs  # H, W: axes 1, 2 in, 2, 3 out
            total = total + probs  # 0 + p is p exactly: the sums are core.predict_probs' own
        return np.ascontiguousarray(total / np.float32(len(FLIPS) if tta else 1))

    def __call__(self, images: list[np.ndarray], threshold: float, tta: bool | None = None) -> list[np.ndarray]:
        """One mask per image (HxW uint8 at the image's own size); `tta` None: the runner's own."""
        resized = [resize_image(im, self.size) if self.size else im for im in images]
        probs = torch.from_numpy(self.probabilities(np.stack(resized), self.tta if tta is None else tta))
        # The tuned settings the graph was exported with apply as seg-predict applies them to a checkpoint
        # (their threshold, the image-level rule and the component steps the graph could not hold).
        return [to_mask(p, im.shape[:2], threshold, self.postprocess) for p, im in zip(probs, images)]

    def settings_row(self) -> dict[str, str]:
        """predictions.csv's record of how the masks were made, as Predictor.settings_row."""
        step = self.postprocess
        name = "none" if step is None else step if isinstance(step, str) else str(getattr(step, "name", None)
                                                                                   or type(step).__name__)
        return {"tta": str(self.tta).lower(), "sliding": "false",
                "input_size": f"{self.size[0]}x{self.size[1]}" if self.size else "native", "postprocess": name}


def load_onnx_predictor(path: str | Path, device: str = "cpu", tta: bool = False,
                        postprocess: bool = True) -> OnnxPredictor:
    """The runner for an .onnx file written by seg-export (device: cpu, cuda or auto); `postprocess`:
    apply the tuned settings it was exported with (seg-predict's postprocess=)."""
    path = Path(path).expanduser()
    session = onnx_session(path, device)
    meta = read_metadata(session.get_modelmeta().custom_metadata_map, path)
    channels, n_classes = int(meta["channels"]), int(meta["n_classes"])
    if channels not in (1, 3):
        raise ConfigError(f"{path} takes {channels}-channel inputs; seg-predict reads grey (1) or RGB (3) images")
    size, threshold = meta["image_size"], meta["threshold"]
    try:
        tuned = Settings.from_dict(meta["postprocess"]) if meta.get("postprocess") else None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged seg.postprocess metadata ({exc})") from None
    return OnnxPredictor(session, channels, n_classes, (int(size[0]), int(size[1])) if size else None,
                         None if threshold is None else float(threshold), tuned, tta,
                         postprocess=tuned if postprocess else None, meta=meta)
