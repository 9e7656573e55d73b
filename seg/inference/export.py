"""seg-export: a checkpoint's model as one self-contained ONNX or TorchScript file, checked against PyTorch.

The exported model takes what a user has, the raw image: uint8, N x H x W x C in the training's channel
order (C=1 grey, C=3 RGB), batch and size dynamic, H and W multiples of STRIDE (32, the deepest stride of
seg's models; pad at the bottom/right, e.g. by reflection, and crop the outputs). It returns the class
probabilities (float32 N x K x H x W; K=1: the foreground's, by sigmoid) and the mask (uint8 N x H x W:
0/1, or class ids). Inside the graph: the /255 scaling of seg's loop, the model's own normalisation, the
threshold (0.5, or the one tuned beside the checkpoint: seg.inference.postprocess) and the tuned
empty-image rule. Outside it: the resize to the training image size (stored in the file's metadata) and
the tuned connected-component steps (min_size, keep_largest), which ONNX cannot express: the export's
JSON lists them as "not_in_graph" and the file's metadata carries them for seg-predict.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from seg.checkpoint import load_checkpoint, sha256
from seg.data.base import as_size
from seg.engine import builders
from seg.errors import CheckpointError, ConfigError, SegError
from seg.inference.core import load_model, output_dir, predict_probs, stored_config
from seg.inference.onnx_runner import INPUT, INSTALL_HINT, OUTPUTS, STRIDE, onnx_session, pad_to_stride
from seg.inference.outputs import OutputFolder
from seg.inference.postprocess import Settings, apply, load_postprocess, postprocess_path
from seg.stored import require_complete

log = logging.getLogger("seg")

OPSET = 18  # torch's ONNX translations are written for 18; its IR version 10 needs onnxruntime >= 1.18
MAX_PROB_DIFF, MIN_AGREEMENT = 1e-3, 0.999  # fp32 export vs the PyTorch model
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
Run = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def in_graph(settings: Settings | None) -> tuple[Settings | None, list[str]]:
    """The part of the tuned settings the graph holds (threshold, empty-image rule) and the names of the
    rest: connected components need a labelling loop, which no ONNX operator does."""
    if settings is None:
        return None, []
    left_out = [name for name, used in (("min_size", settings.min_size > 0), ("keep_largest", settings.keep_largest))
                if used]
    return replace(settings, min_size=0, keep_largest=False), left_out


class ExportWrapper(torch.nn.Module):
    """uint8 N x H x W x C -> (probabilities float32 N x K x H x W, mask uint8 N x H x W), as seg runs it;
    the mask as postprocess.apply makes it from `rules` (threshold and empty-image rule only)."""

    def __init__(self, model: torch.nn.Module, n_classes: int, rules: Settings | None) -> None:
        super().__init__()
        self.model, self.n_classes, self.rules = model, n_classes, rules or Settings()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = image.permute(0, 3, 1, 2).float() / 255  # the scaling of seg's loop (engine.loop)
        logits = self.model(x).float()
        if self.n_classes > 1:
            probs = torch.softmax(logits, dim=1)
            return probs, probs.argmax(dim=1).to(torch.uint8)
        probs = torch.sigmoid(logits)
        p, rules = probs[:, 0], self.rules
        mask = p > rules.threshold
        if rules.empty_threshold is not None and rules.empty_min_pixels > 0:
            count = (p > rules.empty_threshold).sum(dim=(1, 2)).float()
            need = torch.full_like(count, float(rules.empty_min_pixels))
            if rules.pixels_at is not None:  # counted at the tuning's size: scaled by area as Settings.scaled does
                area = torch.ones_like(p).sum(dim=(1, 2))
                need = torch.round(area / float(rules.pixels_at[0] * rules.pixels_at[1]) * rules.empty_min_pixels)
            mask = mask & (count >= need)[:, None, None]
        return probs, mask.to(torch.uint8)


def reference_masks(probs: np.ndarray, rules: Settings | None) -> np.ndarray:
    """seg's own post-processing (postprocess.apply) of PyTorch's probabilities: what the graph must match."""
    shape = probs.shape[-2:]
    return np.stack([apply(p, None if rules is None else rules.scaled(shape)) for p in probs])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' own chatter (torchvision ops skipped, the optimizer's rewrites, pytree deprecations,
    the stride check traced as a constant, true for every input of the contract) is not the user's business."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning, torch.jit.TracerWarning):
                warnings.simplefilter("ignore", category)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def write_onnx(wrapper: ExportWrapper, example: torch.Tensor, target: Path, meta: dict[str, str]) -> None:
    if importlib.util.find_spec("onnxscript") is None:
        raise ConfigError(f"format=onnx needs onnxscript (torch's ONNX exporter), not installed: {INSTALL_HINT}")
    dims = {0: torch.export.Dim("batch", min=1), 1: STRIDE * torch.export.Dim("h", min=1),
            2: STRIDE * torch.export.Dim("w", min=1)}
    with _quiet():
        # torch.export itself (not torch.onnx's fallbacks): a size the model fixes is an error, not a
        # graph that claims dynamic sizes and works at one.
        program = torch.export.export(wrapper, (example,), dynamic_shapes={"image": dims}, strict=False)
        onnx_program = torch.onnx.export(program, (example,), dynamo=True, opset_version=OPSET, verbose=False,
                                         input_names=[INPUT], output_names=list(OUTPUTS))
    assert onnx_program is not None
    onnx_program.model.metadata_props.update(meta)
    onnx_program.save(str(target), external_data=False)  # one file: the weights inside
    _name_sizes(target)


def _name_sizes(target: Path) -> None:
    """torch.export calls the dynamic sizes s40, 32*s39, ...: the file says batch, height and width."""
    import onnx

    proto = onnx.load(str(target))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    names = {dims[i].dim_param: name for i, name in enumerate(("batch", "height", "width")) if dims[i].dim_param}
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in names:  # assigning would clear a dim_value
                dim.dim_param = names[dim.dim_param]
    onnx.save(proto, str(target))


def write_torchscript(wrapper: ExportWrapper, example: torch.Tensor, target: Path, meta: dict[str, str]) -> None:
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
        torch.jit.save(traced, str(target), _extra_files={"seg.json": json.dumps(meta)})


def exported_runner(fmt: str, target: Path) -> Run:
    if fmt == "onnx":
        session = onnx_session(target, "cpu")
        return lambda batch: tuple(session.run(list(OUTPUTS), {INPUT: batch}))  # type: ignore[return-value]
    with _quiet():  # torch 2.13 deprecates TorchScript; the format is still what the user asked for
        module = torch.jit.load(str(target), map_location="cpu")

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            probs, mask = module(torch.from_numpy(batch))
        return probs.numpy(), mask.numpy()

    return run


def check_parity(run: Run, model: torch.nn.Module, rules: Settings | None, images: list[np.ndarray]
                 ) -> dict[str, Any]:
    """The exported model against seg's PyTorch path (core.predict_probs at fp32) on the same uint8 inputs:
    the images of each padded size as one batch, and the first alone (two batch sizes)."""
    padded = [pad_to_stride(im[None])[0] for im in images]
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    for im in padded:
        groups.setdefault(im.shape, []).append(im)
    batches = [np.stack(g) for g in groups.values()] + [padded[0][None]]
    amp = builders.build_amp("32", torch.device("cpu"))
    diff, equal, total = 0.0, 0, 0
    for batch in batches:
        probs, mask = (np.asarray(a) for a in run(batch))
        ref = predict_probs(model, torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255), amp).numpy()
        ref_mask = reference_masks(ref, rules)
        if (probs.shape, mask.shape, probs.dtype, mask.dtype) != (ref.shape, ref_mask.shape, np.float32, np.uint8):
            raise SegError(f"the exported model returned {probs.dtype}{list(probs.shape)} and {mask.dtype}"
                           f"{list(mask.shape)} for a {list(batch.shape)} input; nothing was written")
        diff = max(diff, float(np.abs(probs - ref).max()))
        equal, total = equal + int((mask == ref_mask).sum()), total + mask.size
    return {"batches": [list(b.shape) for b in batches], "max_prob_diff": diff, "mask_agreement": equal / total,
            "max_prob_diff_allowed": MAX_PROB_DIFF, "min_mask_agreement": MIN_AGREEMENT}


def parity_images(train_cfg: DictConfig, path: Path, channels: int, size: tuple[int, int] | None,
                  n: int) -> tuple[list[np.ndarray], str]:
    """Up to n validation images (HxWxC uint8) of the stored dataset; random ones, with a warning, where
    the data is not on this machine."""
    try:
        require_complete(OmegaConf.to_container(train_cfg), path, ("dataset",))  # type: ignore[arg-type]
        dataset = builders.build_data(train_cfg.dataset).dataset("val")
        items = [dataset[i]["image"] for i in range(min(n, len(dataset)))]
        if not items:
            raise ConfigError("its val split is empty")
    except (SegError, OSError) as exc:
        log.warning("no validation images on this machine (%s); the parity check uses %d random images",
                    str(exc).splitlines()[0], n)
        h, w = size or (64, 64)
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (h, w, channels), dtype=np.uint8) for _ in range(n)], "random"
    if any(item.dtype != torch.uint8 for item in items):
        raise ConfigError(f"{path} was trained on {items[0].dtype} images, not uint8 ones; the exported model takes "
                          "uint8 images scaled by 1/255 as seg's loop scales them, which this model never saw")
    return [item.permute(1, 2, 0).numpy() for item in items], "val"


def model_facts(train_cfg: DictConfig, path: Path) -> tuple[int, int, tuple[int, int] | None]:
    """Input channels, classes and the training image size (None: native sizes), as seg-predict reads them."""
    channels, n_classes = int(train_cfg.model.in_channels), int(train_cfg.model.n_classes)
    if channels not in (1, 3):
        raise ConfigError(f"{path} was trained on {channels}-channel inputs; seg-export writes models that take "
                          "grey (1) or RGB (3) uint8 images")
    if "image_size" not in train_cfg.dataset:
        raise CheckpointError(f"{path}: its stored config lacks dataset.image_size; the checkpoint is damaged or "
                              "was not written by seg-train")
    image_size = train_cfg.dataset.image_size
    return channels, n_classes, as_size(image_size) if image_size is not None else None


def export_path(cfg: DictConfig, path: Path, fmt: str) -> Path:
    if not cfg.out:
        return output_dir(path, "export", path.stem + SUFFIXES[fmt])
    out = Path(cfg.out).expanduser()
    if out.is_dir():
        raise ConfigError(f"out={out} is a folder; give the file to write, e.g. out={out / ('model' + SUFFIXES[fmt])}")
    if (out.suffix.lower() == ".onnx") != (fmt == "onnx"):  # seg-predict tells ONNX models by the suffix
        raise ConfigError(f"out={out}: name ONNX models (and only them) *.onnx, e.g. {out.with_suffix(SUFFIXES[fmt])}")
    return out


def run_export(cfg: DictConfig) -> dict[str, Any]:
    path, fmt = Path(cfg.ckpt).expanduser(), str(getattr(cfg.format, "value", cfg.format))
    if int(cfg.parity_images) < 1:
        raise ConfigError(f"parity_images must be >= 1, got {cfg.parity_images}")
    out = export_path(cfg, path, fmt)
    outputs = OutputFolder(out.parent, "seg-export")  # a file of the user's under that name stays
    outputs.claim([out.name, out.name + ".parity.json"])
    ckpt = load_checkpoint(path)
    digest = sha256(path)
    train_cfg = stored_config(ckpt, cfg.dataset, path, cfg.allowed_targets, nodes=("model",))
    channels, n_classes, size = model_facts(train_cfg, path)
    # Tuned beside the checkpoint (seg-eval tune=true; refused if for another checkpoint); binary only.
    tuned = load_postprocess(path, digest) if n_classes == 1 else None
    rules, not_in_graph = in_graph(tuned)
    model = load_model(ckpt, path, train_cfg, device="cpu", precision="32", autotune=False).model
    images, source = parity_images(train_cfg, path, channels, size, int(cfg.parity_images))
    report = _describe(fmt, out, path, digest, channels, n_classes, size, tuned, not_in_graph)
    meta = {f"seg.{k}": json.dumps(report[k]) for k in ("channels", "n_classes", "image_size", "threshold",
                                                          "empty_rule", "postprocess", "checkpoint_sha256")}
    meta["seg.stride"] = str(STRIDE)
    # Traced at a size and batch the parity check does not use, so a size fixed at trace time shows there.
    height, width = (-(-max(im.shape[i] for im in images) // STRIDE) * STRIDE for i in (0, 1))
    example = torch.zeros(2, height + STRIDE, width + 2 * STRIDE, channels, dtype=torch.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = [out.with_name(f".{out.name}.{part}{os.getpid()}.tmp") for part in ("", "parity.")]
    try:  # temporary files renamed into place: a failed export or check leaves nothing half-written
        write = write_onnx if fmt == "onnx" else write_torchscript
        write(ExportWrapper(model, n_classes, rules).eval(), example, temporary[0], meta)
        report["parity"] = {"images": len(images), "source": source,
                            **check_parity(exported_runner(fmt, temporary[0]), model, rules, images)}
        _check(report["parity"], out)
        temporary[1].write_text(json.dumps(report, indent=1))
        os.replace(temporary[0], out)
        os.replace(temporary[1], out.with_name(out.name + ".parity.json"))
        outputs.wrote(out)
        outputs.wrote(out.with_name(out.name + ".parity.json"))
        outputs.save_record()
    finally:
        for file in temporary:
            file.unlink(missing_ok=True)
    parity = report["parity"]
    log.info("exported %s (%s): on %d %s image(s) the largest probability difference to PyTorch is %.2e and "
             "%.6f of mask pixels agree; wrote %s", out, fmt, len(images), source, parity["max_prob_diff"],
             parity["mask_agreement"], out.name + ".parity.json")
    if not_in_graph:
        log.warning("%s of %s is not in the exported graph (connected components cannot be expressed in ONNX): "
                    "apply it to the masks yourself", ", ".join(not_in_graph), report["tuned_file"])
    return report


def _check(parity: dict[str, Any], out: Path) -> None:
    if parity["mask_agreement"] < MIN_AGREEMENT or parity["max_prob_diff"] > MAX_PROB_DIFF:
        raise SegError(f"the exported model differs from the checkpoint's on {parity['images']} {parity['source']} "
                       f"image(s): mask agreement {parity['mask_agreement']:.6f} (at least {MIN_AGREEMENT} needed), "
                       f"largest probability difference {parity['max_prob_diff']:.2e} (at most {MAX_PROB_DIFF}); "
                       f"{out} was not written")


def _describe(fmt: str, out: Path, path: Path, digest: str, channels: int, n_classes: int,
              size: tuple[int, int] | None, tuned: Settings | None, not_in_graph: list[str]) -> dict[str, Any]:
    """What the export JSON (and the file's metadata) says: how to feed the model and what is (not) inside."""
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(tuned).items()} if tuned else None
    empty = plain is not None and plain["empty_threshold"] is not None and plain["empty_min_pixels"] > 0
    rule = {k: plain[k] for k in ("empty_threshold", "empty_min_pixels", "pixels_at")} if plain and empty else None
    return {"model": str(out.resolve()), "format": fmt, "opset": OPSET if fmt == "onnx" else None,
            "checkpoint": str(path.resolve()), "checkpoint_sha256": digest, "channels": channels,
            "n_classes": n_classes, "image_size": list(size) if size else None, "stride": STRIDE,
            "input": {"name": INPUT, "dtype": "uint8", "shape": ["batch", "height", "width", channels]},
            "outputs": [{"name": OUTPUTS[0], "dtype": "float32", "shape": ["batch", n_classes, "height", "width"]},
                        {"name": OUTPUTS[1], "dtype": "uint8", "shape": ["batch", "height", "width"]}],
            "threshold": (tuned.threshold if tuned else 0.5) if n_classes == 1 else None, "empty_rule": rule,
            "tuned_file": str(postprocess_path(path)) if tuned else None, "not_in_graph": not_in_graph,
            "postprocess": plain,
            "outside_graph": f"resize to image_size, pad height and width to multiples of {STRIDE}",
            "versions": _versions(fmt)}


def _versions(fmt: str) -> dict[str, str]:
    names = ("torch", "onnx", "onnxscript", "onnxruntime") if fmt == "onnx" else ("torch",)
    return {name: importlib.import_module(name).__version__ for name in names}
