"""Run a checkpoint's model over images as its training did: the one core that seg-eval and
seg-predict (and later post-processing and export) share. `infer_probs` is the one place either
command gets probabilities from: resize mode runs the model on the image as given (seg-predict
resized it to the training size), slide mode runs windows of the training size over the image at its
own resolution (seg/inference/sliding.py).

A checkpoint carries its training config; the model is rebuilt from it, loaded with the stored
weights and run with the training's precision and memory layout (they change speed, not results
beyond rounding: docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from seg.allowlist import safe_stored_config
from seg.checkpoint import load_model_state
from seg.config import InferenceMode
from seg.data.base import as_size
from seg.data.cache import default_cache_dir
from seg.engine import builders
from seg.engine.amp import Amp
from seg.engine.loop import StepSettings
from seg.errors import CheckpointError, ConfigError
from seg.stored import require_complete

MAX_WINDOW = 16384
SIZE_MULTIPLE = 32  # the deepest stride of the models: inputs are padded up to it
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))  # TTA: none, H, V, both


def output_dir(ckpt: Path, kind: str, name: str) -> Path:
    """Where a command writes for a checkpoint by default: `<run>/<kind>/<name>` for a checkpoint in
    a run's checkpoints/ folder, `<its folder>/<kind>-<name>` for a loose one."""
    if ckpt.parent.name == "checkpoints":
        return ckpt.parent.parent / kind / name
    return ckpt.parent / f"{kind}-{name}"


def ensemble_output_dir(ckpts: Sequence[Path], kind: str, name: str) -> Path:
    """Where a command writes for an ensemble by default: `<common folder>/ensemble-<kind>/<name>-<8 hex>`,
    the common folder of the members' runs (a sweep's folder for its jobs' checkpoints); the hex digits
    name the set of members, so another ensemble of the same sweep gets its own folder. Members with no
    common folder but the file system's root or the home folder: out_dir= must say where."""
    runs = [c.parent.parent if c.parent.name == "checkpoints" else c.parent for c in ckpts]
    common = Path(os.path.commonpath([str(r.absolute()) for r in runs]))
    if common in (Path(common.anchor), Path.home()):
        raise ConfigError(f"the ensemble's members share no folder but {common}: give the folder to write to "
                          "with out_dir=PATH")
    members = hashlib.sha1("\n".join(sorted(str(c.absolute()) for c in ckpts)).encode()).hexdigest()[:8]
    return common / f"ensemble-{kind}" / f"{name}-{members}"


def stored_config(ckpt: dict[str, Any], dataset_overrides: Any, path: Path, allowed_targets: Sequence[str] = (),
                  nodes: Sequence[str] = ("dataset", "model", "loss")) -> DictConfig:
    """The training config stored in a checkpoint, with this machine's cache folder and the
    command's `dataset.*` overrides on top. It is data: checked (plain values, no `${...}`, allowed
    `_target_`s) before OmegaConf sees it; `allowed_targets` are the command's own (never the stored
    ones). The `nodes` the command builds must be complete (seg.stored)."""
    config = ckpt.get("config")
    if not isinstance(config, dict) or not all(k in config for k in ("dataset", "model", "loss")):
        raise CheckpointError(
            f"{path} carries no usable training config (dataset/model/loss); was it written by seg-train?"
        )
    cfg = OmegaConf.create(safe_stored_config(ckpt, path, allowed_targets))
    if "cache_dir" in cfg.dataset:  # this machine's cache (SEG_CACHE_DIR), not the training machine's
        cfg.dataset.cache_dir = str(default_cache_dir())
    if dataset_overrides:
        cfg.dataset = OmegaConf.merge(cfg.dataset, dataset_overrides)
    # After the overrides: `dataset.image_size=...` on the command line supplies a missing key.
    require_complete(OmegaConf.to_container(cfg), path, nodes)  # type: ignore[arg-type]
    return cfg


def for_inference(model_cfg: DictConfig) -> DictConfig:
    """Weights (and the input normalisation buffers) come from the checkpoint: never fetch pretrained
    encoder weights again, and freezing means nothing for inference."""
    model_cfg = model_cfg.copy()
    if model_cfg.get("pretrained") is not None:  # `False` or "" would be looked up as a file
        model_cfg.pretrained = None
    if model_cfg.get("freeze_encoder"):
        model_cfg.freeze_encoder = False
    if model_cfg.get("unfreeze_after") is not None:
        model_cfg.unfreeze_after = None
    return model_cfg


def inference_settings(trainer: Any, precision: str | None, device: torch.device, *,
                       autotune: bool = True) -> StepSettings:
    """The training run's precision, memory layout and cuDNN autotuning. `precision` (seg-eval's or
    seg-predict's own) overrides the stored one; `autotune=False` where input shapes vary, since cuDNN
    tunes every new shape afresh."""
    amp = builders.build_amp(str(precision or trainer.get("precision", "auto")), device, key="precision")
    autotune = autotune and bool(trainer.get("cudnn_benchmark", True))
    builders.set_determinism(bool(trainer.get("deterministic", False)), autotune, device)
    return StepSettings(device, amp, builders.resolve_channels_last(trainer.get("channels_last"), amp))


@dataclass
class LoadedModel:
    """A checkpoint's model in eval mode on its device, with the settings to run it and the config
    it was trained with."""

    model: torch.nn.Module
    settings: StepSettings
    train_cfg: DictConfig


def load_model(ckpt: dict[str, Any], path: Path, train_cfg: DictConfig, *, device: str, precision: str | None,
               autotune: bool = True) -> LoadedModel:
    """Rebuild the stored model (`train_cfg`: the checkpoint's `stored_config`), load its weights, and
    put it on `device` in the training's layout."""
    settings = inference_settings(train_cfg.get("trainer", {}), precision,
                                  builders.resolve_device(device, key="device"), autotune=autotune)
    model = builders.build_module(for_inference(train_cfg.model), "model")
    load_model_state(model, ckpt["model"], path)
    model = model.to(settings.device, memory_format=settings.memory_format).eval()
    return LoadedModel(model, settings, train_cfg)


def pad_to_stride(x: torch.Tensor, multiple: int = SIZE_MULTIPLE) -> torch.Tensor:
    """Pad H and W at the bottom/right up to a multiple (reflected where the image is big enough), so
    the output's top-left [:h, :w] lines up with the input."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


@torch.no_grad()
def predict_probs(model: torch.nn.Module, image: torch.Tensor, amp: Amp, tta: bool = False) -> torch.Tensor:
    """Class probabilities [B,K,H,W] (K=1: foreground, by sigmoid) for images [B,C,H,W] in [0,1].
    `tta` averages over the four flips (none, H, V, both), which makes the result flip-equivariant."""
    h, w = image.shape[-2:]
    flips = FLIPS if tta else ((),)
    total = None
    for dims in flips:
        x = pad_to_stride(image.flip(dims) if dims else image)  # flipped before padding: exact equivariance
        with amp.autocast():
            logits = model(x)[..., :h, :w].float()
        probs = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
        probs = probs.flip(dims) if dims else probs
        total = probs if total is None else total + probs
    return total / len(flips)


@dataclass(frozen=True)
class Inference:
    """How probabilities are computed: `resize` runs the model on the image as given, `slide` runs
    windows of `window` (h, w) over it (sliding.slide_probs); `tta` averages the four flips."""

    mode: InferenceMode = InferenceMode.resize
    window: tuple[int, int] | None = None
    overlap: float = 0.5
    batch: int = 8
    tta: bool = False

    @property
    def sliding(self) -> bool:
        return self.mode == InferenceMode.slide

    def describe(self) -> str:
        flips = ", flip TTA" if self.tta else ""
        if not self.sliding or self.window is None:
            return f"resize mode{flips}"
        return f"sliding windows {self.window[0]}x{self.window[1]}, overlap {self.overlap}{flips}"


def training_window(stored: Mapping[str, Any]) -> tuple[int, int] | None:
    """The input size the stored model was trained on: its dataset's `crop_size` for crop-trained sets
    (LUNA16), else `image_size`; None when it trained at native sizes. Read from the stored config
    before any command-line `dataset.*` override (seg-eval may evaluate at another resolution)."""
    dataset = stored.get("dataset")
    dataset = dataset if isinstance(dataset, Mapping) else {}
    size = dataset.get("crop_size") if dataset.get("crop_size") is not None else dataset.get("image_size")
    return as_size(size) if size is not None else None


def _window(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, int) else list(value) if isinstance(value, Sequence) else []
    values = values * 2 if len(values) == 1 else values
    # The largest side bounds a batch of windows in memory (16384^2 x 8 windows of fp32 is already 8 GiB).
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_WINDOW
                                   for v in values):
        raise ConfigError(f"inference.window={value!r} must be a positive int up to {MAX_WINDOW} or "
                          "[height, width] (or null)")
    return values[0], values[1]


def resolve_inference(node: Any, stored: Mapping[str, Any], *, tta: bool = False) -> Inference:
    """The command's `inference.*` (seg.config.InferenceConfig) over the checkpoint's recipe (its
    stored `inference` node): the command line wins, the recipe fills what it leaves null, resize and
    the training size fill the rest. Checked here, before any image is read."""
    node = node if node is not None else {}
    recipe = stored.get("inference")
    recipe = recipe if isinstance(recipe, Mapping) else {}
    chosen = node.get("mode") or recipe.get("mode") or InferenceMode.resize
    try:
        mode = InferenceMode(getattr(chosen, "value", chosen))
    except ValueError:
        raise ConfigError(f"inference.mode={chosen!r} must be resize or slide") from None
    window = _window(node.get("window")) or _window(recipe.get("window"))
    overlap, batch = node.get("overlap", 0.5), node.get("batch", 8)
    if not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        raise ConfigError(f"inference.overlap={overlap} must lie in [0, 1) (0.5: each window shares half)")
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"inference.batch={batch} must be >= 1 (windows per forward pass)")
    if mode == InferenceMode.slide:
        window = window or training_window(stored)
        if window is None:
            raise ConfigError("inference.mode=slide needs a window size, and this checkpoint's model was trained at "
                              "native image sizes; set inference.window=SIZE (or [height, width])")
    return Inference(mode, window, float(overlap), batch, bool(tta))


def infer_probs(model: torch.nn.Module, image: torch.Tensor, amp: Amp, how: Inference, *,
                channels_last: bool = False) -> torch.Tensor:
    """Class probabilities [B,K,H,W] for images [B,C,H,W] in [0,1], as `how` says: what seg-eval and
    seg-predict both call."""
    if not how.sliding or how.window is None:
        return predict_probs(model, image, amp, how.tta)
    from seg.inference.sliding import slide_probs  # sliding builds on this module's predict_probs

    return slide_probs(model, image, amp, window=how.window, overlap=how.overlap, batch=how.batch, tta=how.tta,
                       channels_last=channels_last)


def probs_to_logits(probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Logits whose sigmoid (K=1) or softmax (K>1) gives back `probs` (clamped away from 0 and 1):
    metrics, losses and overlays take logits."""
    if probs.shape[1] == 1:
        return torch.logit(probs, eps=eps)
    return probs.clamp_min(eps).log()


class InferredLogits(torch.nn.Module):
    """`model` run through `infer_probs`, returning logits: a drop-in model for code that calls a
    model on a batch (engine.loop.evaluate, Preview), so seg-eval scores sliding windows unchanged."""

    def __init__(self, model: torch.nn.Module, amp: Amp, how: Inference, channels_last: bool = False) -> None:
        super().__init__()
        self.model, self.amp, self.how, self.channels_last = model, amp, how, channels_last

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        probs = infer_probs(self.model, image, self.amp, self.how, channels_last=self.channels_last)
        return probs_to_logits(probs)
