"""Typed schemas for the top-level config, registered in Hydra's ConfigStore.

The group configs (dataset, model, loss, ...) are free-form `_target_` nodes checked by the classes they
build; the keys around them are typed here, so `trainer.epochs=ten` or `trainer.epoch=3` fails at start
with Hydra's own message instead of deep inside training.

The defaults below are the only home of every top-level default: configs/train.yaml, eval.yaml and
predict.yaml hold only the group choices and Hydra's settings, so `--cfg job` and `--help` show these.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from seg.errors import ConfigError
from seg.search.config import register_sweeper


class MonitorMode(str, Enum):
    max = "max"
    min = "min"


PRECISIONS = ("auto", "32", "bf16", "16")  # auto: see seg.engine.builders.resolve_precision


class OverlayChoice(str, Enum):
    worst = "worst"
    all = "all"
    none = "none"


class InferenceMode(str, Enum):
    resize = "resize"  # seg-predict resizes images to the training size; seg-eval runs the dataset's size
    slide = "slide"  # windows of the training size over the image at its own resolution


@dataclass
class RecipeInference:
    """How seg-eval and seg-predict run the trained model unless their command line says otherwise."""

    mode: InferenceMode = InferenceMode.resize
    window: Any = None  # slide: [h, w] or one int; null = the training size (dataset.image_size or crop_size)


@dataclass
class InferenceConfig:
    """seg-eval's and seg-predict's `inference.*`: resize or sliding windows (seg/inference/sliding.py)."""

    mode: Optional[InferenceMode] = None  # null = the checkpoint's recipe (its inference.mode), else resize
    window: Any = None  # slide: [h, w] or one int; null = the recipe's, else the training size
    overlap: float = 0.5  # slide: the fraction of a window shared with its neighbour, in [0, 1)
    batch: int = 8  # slide: windows per forward pass (bounds the memory)


# seg-eval and seg-predict when neither the command nor the checkpoint's trainer names a batch size.
INFERENCE_BATCH_SIZE = 16


@dataclass
class TrainerConfig:
    epochs: int = 12
    batch_size: int = 16
    # null = auto: 0 on CPUs (workers would take the model's cores), half the cores (<= 8) on GPUs
    num_workers: Optional[int] = None
    val_every: int = 1  # validate at the first epoch, then every N epochs (and at the last)
    device: str = "auto"  # auto = cuda if available, else cpu; or cpu, cuda, cuda:1, mps
    monitor: str = "val/dice"
    monitor_mode: MonitorMode = MonitorMode.max
    # one of PRECISIONS (a str: `trainer.precision=16` must work); auto: bf16 where the GPU/CPU
    # computes in bf16, else 16 (old GPUs) or 32
    precision: str = "auto"
    channels_last: Optional[bool] = None  # null = auto: NHWC on CPUs, and on GPUs with bf16/16
    compile: bool = False
    compile_backend: str = "inductor"  # aot_eager checks the compiled path quickly on a CPU
    cudnn_benchmark: bool = True
    deterministic: bool = False  # true: bit-identical reruns/resumes on GPUs as well (slower kernels)
    grad_clip_norm: Optional[float] = None
    grad_clip_value: Optional[float] = None
    early_stopping: Optional[int] = None  # patience, in validations without improvement
    weight_init: str = "default"  # kaiming, xavier, normal, orthogonal, default
    preview_images: int = 4  # fixed images shown with overlays in TensorBoard
    progress_every: int = 10  # steps between progress-bar loss updates (each one is a host sync)
    pin_memory: bool = True
    prefetch_factor: int = 4
    # EMA of the weights (seg/engine/ema.py), e.g. 0.999: validated and saved as the checkpoint's model; null = off
    ema_decay: Optional[float] = None
    # K batches' gradients summed before each optimizer step: the step of a K x batch_size batch, in the
    # memory of one (data-parallel: batch_size is per process, and only the K-th batch all-reduces)
    accumulate_grad_batches: int = 1
    sync_batchnorm: bool = False  # data-parallel on GPUs: BatchNorm statistics over every process's batch
    ddp_static_graph: bool = False  # DDP's static_graph: for models whose used parameters never change


@dataclass
class MLflowLoggerConfig:
    """logger=mlflow's keys and types (seg/logger/mlflow_logger.py); their defaults live in
    configs/logger/mlflow.yaml, which extends this schema."""

    _target_: str = MISSING
    tracking_uri: Optional[str] = MISSING  # null: $MLFLOW_TRACKING_URI, else mlflow.db beside the run folder
    experiment_name: Optional[str] = MISSING  # null: seg-<dataset>, e.g. seg-ph2
    run_name: Optional[str] = MISSING  # null: the run folder's name
    log_checkpoint: bool = MISSING  # the best checkpoint as an artifact when the run ends
    artifact_location: Optional[str] = MISSING  # null: mlartifacts/ beside an SQLite store, else the store's


# The keys each logger option takes, by its node's _target_ (check_train_config refuses others, `+` ones too).
LOGGER_KEYS = {"seg.logger.tensorboard.TensorBoardLogger": ["_target_"],
               "seg.logger.mlflow_logger.MLflowLogger": [f.name for f in fields(MLflowLoggerConfig)]}


@dataclass
class SearchConfig:
    """The Optuna trial a job reports its validations to (seg/search/report.py). The Optuna sweeper
    (hparams_search=...) sets all three for each of its jobs; null = not a search job."""

    storage: Optional[str] = None  # the study's storage URL, e.g. sqlite:///<sweep dir>/optuna.db
    study: Optional[str] = None
    trial: Optional[int] = None  # the trial's number, also its job folder's


@dataclass
class TrainConfig:
    seed: int = 42
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    dataset: Any = MISSING
    model: Any = MISSING
    loss: Any = MISSING
    augmentation: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = None
    resume: Optional[str] = None  # PATH/last.pt, or `auto` for <run dir>/checkpoints/last.pt
    run_dir: Optional[str] = None  # default: Hydra's output directory
    inference: RecipeInference = field(default_factory=RecipeInference)  # stored: seg-eval/-predict's default
    search: SearchConfig = field(default_factory=SearchConfig)  # set by the Optuna sweeper for its jobs
    logger: Any = None  # configs/logger/: tensorboard (the default) or mlflow beside it; null = TensorBoard only
    # Your own `_target_` classes (exact dotted names) on top of seg.allowlist's, e.g. [mypkg.MyNet].
    allowed_targets: List[str] = field(default_factory=list)


# seg-eval's and seg-predict's `ckpt`: a checkpoint file, a list of them (an ensemble: ckpt=[a.pt,b.pt]), or a
# folder of runs (every checkpoints/best.pt below it; `members` filters them). Any: str or list.
@dataclass
class EvalConfig:
    ckpt: Any = MISSING
    members: Optional[str] = None  # ckpt=FOLDER: a glob on the run folders' paths below it, e.g. '*model=unet*'
    split: str = "test"
    out_dir: Optional[str] = None  # default: <run dir of the checkpoint>/eval/<split>
    dataset: Dict[str, Any] = field(default_factory=dict)  # overrides on top of the stored dataset
    device: str = "auto"
    batch_size: Optional[int] = None  # default: the training batch size
    num_workers: Optional[int] = None  # null = auto: 0 on CPUs, half the cores (at most 8) on GPUs
    precision: Optional[str] = None  # default: the training precision
    overlays: OverlayChoice = OverlayChoice.worst
    n_overlays: int = 8
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    # Post-processing (seg/inference/postprocess.py): tune=true searches it on split=val and writes
    # <checkpoint stem>.postprocess.json beside the checkpoint; postprocess=false ignores that file.
    tune: bool = False
    tune_objective: Optional[str] = None  # null = the training's trainer.monitor, e.g. val/dice_kaggle
    postprocess: bool = True
    surface: bool = False  # HD95, ASSD and surface Dice per image (seg/surface.py; costs time)
    surface_tolerance: float = 2.0  # surface Dice tolerance, in mm where the data has a spacing, else px
    # Your own `_target_` classes (exact dotted names) on top of seg.allowlist; a checkpoint's are ignored.
    allowed_targets: List[str] = field(default_factory=list)


class RleForm(str, Enum):
    relative = "relative"  # SIIM's form: train-rle.csv, stage_2_train.csv and both stages' submissions
    absolute = "absolute"  # the usual Kaggle form (1-based absolute starts)


@dataclass
class PredictConfig:
    ckpt: Any = MISSING  # as EvalConfig's: one checkpoint, a list (an ensemble), or a folder of runs
    members: Optional[str] = None  # ckpt=FOLDER: a glob on the run folders' paths below it
    input: str = MISSING  # an image file or a folder of images (DICOM too)
    out_dir: Optional[str] = None  # default: <run dir of the checkpoint>/predictions/<input name>
    recursive: bool = True  # also images in subfolders (SIIM's dicom-images-test/<study>/<series>/)
    device: str = "auto"
    batch_size: Optional[int] = None  # default: INFERENCE_BATCH_SIZE
    precision: Optional[str] = None  # default: the training precision
    threshold: float = 0.5  # binary models: foreground where the probability exceeds it
    tta: bool = False  # average over the four flips
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    overlays: bool = False  # also write overlays/<name>.png: the prediction drawn on the input
    postprocess: bool = True  # apply <checkpoint stem>.postprocess.json (seg-eval tune=true) if present
    submission: Optional[RleForm] = None  # also write submission.csv (ImageId,EncodedPixels) in this form
    # Your own `_target_` classes (exact dotted names) on top of seg.allowlist; a checkpoint's are ignored.
    allowed_targets: List[str] = field(default_factory=list)


class ExportFormat(str, Enum):
    onnx = "onnx"  # run by onnxruntime (seg-predict ckpt=model.onnx too)
    torchscript = "torchscript"  # torch.jit.load, no seg needed


@dataclass
class ExportConfig:
    ckpt: str = MISSING
    format: ExportFormat = ExportFormat.onnx
    out: Optional[str] = None  # default: <run dir of the checkpoint>/export/<ckpt stem>.onnx (.torchscript.pt)
    parity_images: int = 8  # validation images the exported model is checked on against PyTorch
    dataset: Dict[str, Any] = field(default_factory=dict)  # overrides (dataset.root=...) to find the val images
    # Your own `_target_` classes (exact dotted names) on top of seg.allowlist; a checkpoint's are ignored.
    allowed_targets: List[str] = field(default_factory=list)


# Lower bounds of trainer settings that type-check but make no sense (e.g. epochs=0 trains nothing and
# still exits 0); early_stopping may also be null (off), num_workers null (auto).
TRAINER_MINIMUMS: tuple[tuple[str, int, str], ...] = (
    ("epochs", 1, "the number of epochs to train"),
    ("val_every", 1, "validate every N epochs"),
    ("batch_size", 1, "images per step"),
    ("num_workers", 0, "0 loads data in the main process, null picks for the device"),
    ("progress_every", 0, "steps between progress-bar updates"),
    ("preview_images", 0, "0 turns previews off"),
    ("early_stopping", 1, "validations without improvement; null turns it off"),
    ("prefetch_factor", 1, "batches loaded ahead per worker"),
    ("accumulate_grad_batches", 1, "batches whose gradients make one optimizer step"),
)


def check_train_config(cfg: DictConfig) -> None:
    """Reject what the schema lets through: out-of-range trainer values, and keys added with Hydra's
    `+` (`+trainer.epoch=3` composes, then is silently ignored). All problems in one ConfigError."""
    problems = _unknown_keys(cfg, [f.name for f in fields(TrainConfig)], "")
    trainer = cfg.get("trainer") if "trainer" in cfg else None
    if not isinstance(trainer, DictConfig):
        problems.append("the trainer settings are missing (do not delete them with ~trainer)")
    else:
        problems += _unknown_keys(trainer, [f.name for f in fields(TrainerConfig)], "trainer.")
        for key, low, meaning in TRAINER_MINIMUMS:
            if key not in trainer or OmegaConf.is_missing(trainer, key):
                continue
            value = trainer[key]
            if value is None and key in ("early_stopping", "num_workers"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                problems.append(f"trainer.{key}={value} must be an integer >= {low} ({meaning})")
        for key in ("grad_clip_norm", "grad_clip_value"):  # a negative bound would flip the gradients
            value = trainer.get(key)
            if value is not None and not value > 0:
                problems.append(f"trainer.{key}={value} must be > 0, or null for no clipping")
        decay = trainer.get("ema_decay")
        if decay is not None and (isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1):
            problems.append(f"trainer.ema_decay={decay} must be a number between 0 and 1 (exclusive, e.g. 0.999), "
                            "or null for no EMA of the weights")
    logger = cfg.get("logger") if "logger" in cfg else None
    if isinstance(logger, DictConfig) and logger.get("_target_") in LOGGER_KEYS:
        problems += _unknown_keys(logger, LOGGER_KEYS[logger.get("_target_")], "logger.")
    if problems:
        raise ConfigError("invalid training config: " + "; ".join(problems))


def _unknown_keys(node: DictConfig, valid: list[str], prefix: str) -> list[str]:
    """'unknown key trainer.epoch (did you mean trainer.epochs?)' for each key the schema lacks."""
    problems = []
    for key in (str(k) for k in node.keys()):
        if key in valid or (not prefix and key == "hydra"):
            continue
        match = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f"did you mean {prefix}{match[0]}?" if match else f"valid keys: {', '.join(valid)}"
        problems.append(f"unknown key {prefix}{key} ({hint})")
    return problems


def _ctx_channels(k: Any) -> int:
    return 2 * int(k) + 1


def register() -> None:
    """Register schemas and resolvers once; safe to call again."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="mlflow_logger_schema", node=MLflowLoggerConfig)  # extended by configs/logger/mlflow.yaml
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="predict_schema", node=PredictConfig)
    cs.store(name="export_schema", node=ExportConfig)
    register_sweeper(cs)  # hydra/sweeper=seg_optuna, which configs/hparams_search/ select
    if not OmegaConf.has_resolver("seg.ctx_channels"):
        OmegaConf.register_new_resolver("seg.ctx_channels", _ctx_channels)


register()
