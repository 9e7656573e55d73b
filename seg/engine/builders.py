"""Config -> objects. Every `_target_` node is instantiated here, so errors from a constructor reach
the user as one SegError message instead of Hydra's wrapped traceback, and every `_target_` is checked
against seg.allowlist before anything runs."""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Sampler

from seg.allowlist import check_targets, config_targets
from seg.config import PRECISIONS
from seg.data.base import SegDataModule
from seg.engine.amp import Amp
from seg.engine.seeding import EpochItems, EpochShuffle, Shard, worker_init_fn
from seg.errors import ConfigError, SegError

log = logging.getLogger("seg")


def build(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """instantiate() of an allowed config (seg.allowlist, plus the command's allowed_targets) that
    surfaces our own errors as they are and names the group for the rest."""
    missing = sorted(OmegaConf.missing_keys(node)) if isinstance(node, DictConfig) else []
    if missing:  # full keys when the node sits in a composed config (dataset.root), else relative
        keys = [k if k.startswith(f"{what}.") else f"{what}.{k}" for k in missing]
        raise ConfigError(
            f"missing required value(s) {', '.join(keys)}: set them on the command line, e.g. {keys[0]}=..."
        )
    if isinstance(node, DictConfig) and "_target_" not in node:  # instantiate would hand the node back
        raise ConfigError(f"the {what} config has no _target_ (the class to build); choose one with {what}=<option>")
    # Before instantiate: it would call any callable a `_target_` names, nested and `_args_` ones too.
    extra = config_targets(node)
    check_targets(node, what, extra)
    check_targets(kwargs, what, extra)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, SegError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, SegError):
            raise cause from None
        target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
        lines = [line.strip() for line in str(exc.__cause__ or exc).splitlines()]
        reason = next((line for line in reversed(lines) if len(line.strip("\"' .")) > 2), type(exc.__cause__).__name__)
        raise ConfigError(f"could not build the {what} ({target}): {reason}. Check the {what}.* options.") from None


def resolve_device(spec: str, key: str = "trainer.device") -> torch.device:
    """`key`: the setting's name in the command's config (seg-eval and seg-predict call it `device`)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"{key}={spec!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={spec} but CUDA is not available here: use {key}=cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}=mps but MPS is not available here: use {key}=cpu or auto")
    return device


def set_determinism(deterministic: bool, cudnn_benchmark: bool, device: torch.device) -> None:
    """On a GPU, cuDNN's autotuner and kernels that add with atomics make two runs of the same seed
    differ in the last bits (CPU kernels are deterministic already). `deterministic` trades speed
    for bit-identical reruns and resumes; ops without a deterministic kernel warn instead of failing."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    # Only on a change: the call imports torch._inductor (1.4 s at every start, measured on a 2-core CPU).
    if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) != (
            deterministic, deterministic):
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic and device.type == "cuda"


def build_data(node: DictConfig) -> SegDataModule:
    data = build(node, "dataset")
    if not isinstance(data, SegDataModule):
        raise ConfigError(f"dataset._target_ must build a seg.data.base.SegDataModule, got {type(data).__name__}")
    return data


def build_module(node: DictConfig, what: str) -> torch.nn.Module:
    """A model, loss or augmentation: whatever the config builds must be a torch module."""
    module = build(node, what)
    if not isinstance(module, torch.nn.Module):
        target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
        raise ConfigError(f"{what}._target_={target} built a {type(module).__name__}, not a torch.nn.Module")
    return module


def build_model(node: DictConfig, weight_init: str) -> torch.nn.Module:
    model = build_module(node, "model")
    if weight_init != "default":
        from seg.models.init import init_weights

        skip = model.pretrained_modules() if hasattr(model, "pretrained_modules") else []
        init_weights(model, weight_init, skip=skip)
    return model


def build_optimizer(node: DictConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """Only trainable parameters go to the optimizer (a frozen encoder stays out); fused kernels on
    CUDA where the optimizer has them."""
    factory = build(node, "optimizer")
    # a model that unfreezes layers later (MobileNetUNet.unfreeze_after) names what the optimizer holds
    chosen = getattr(model, "optimizer_parameters", None)
    params = chosen() if callable(chosen) else [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters (is everything frozen?)")
    return _call(factory, "optimizer", params, **fused_kwargs(factory, device))


def fused_kwargs(factory: Any, device: torch.device) -> dict[str, Any]:
    """`fused=True` on CUDA for optimizers that have a fused kernel (Adam, AdamW, SGD), unless set."""
    takes_fused = "fused" in inspect.signature(factory.func).parameters
    if device.type == "cuda" and takes_fused and "fused" not in factory.keywords:
        return {"fused": True}
    return {}


def build_scheduler(node: DictConfig | None, optimizer: torch.optim.Optimizer, epochs: int, mode: str) -> Any:
    if node is None or "_target_" not in node:
        return None
    factory = build(node, "scheduler")
    return _call(factory, "scheduler", optimizer, epochs=epochs, mode=mode)


def _call(factory: Any, what: str, *args: Any, **kwargs: Any) -> Any:
    """Complete a `_partial_` config; a bad value (lr=abc, a negative momentum) is a config error."""
    try:
        return factory(*args, **kwargs)
    except (TypeError, ValueError, IndexError) as exc:  # IndexError: betas=[0.9] (one value of two)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"invalid {what} settings {dict(factory.keywords)}: {reason}") from None


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX): only then is CPU autocast to bf16 a speed-up."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_precision(precision: str, device: torch.device, key: str = "trainer.precision") -> str:
    """`auto`: bf16 autocast where the hardware computes in bf16 (CUDA since Ampere, CPUs with
    AVX512-BF16/AMX), fp16 with a grad scaler on older GPUs, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{key}={precision!r}: expected one of {list(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "16"
    if device.type == "cpu" and cpu_has_bf16():
        return "bf16"
    return "32"


def build_amp(precision: str, device: torch.device, key: str = "trainer.precision") -> Amp:
    resolved = resolve_precision(precision, device, key)
    if resolved == "16" and device.type == "cpu":
        log.warning("trainer.precision=16 on the CPU is emulated and slow (measured 40x slower than bf16 "
                    "here); use trainer.precision=bf16 or 32")
    return Amp.create(resolved, device)


def resolve_channels_last(setting: bool | None, amp: Amp) -> bool:
    """`null` (auto): NHWC on the CPU (oneDNN's convolutions are faster in it, fp32 included: 1.35-1.7x
    measured, docs/benchmarks.md) and on GPUs under bf16/fp16 autocast (tensor-core kernels); NCHW for
    fp32 on GPUs."""
    if setting is not None:
        return bool(setting)
    return amp.device_type == "cpu" or amp.dtype is not None


def resolve_num_workers(setting: int | None, device: torch.device) -> int:
    """`null` (auto): on a GPU, loader workers keep batches coming while the main process launches
    kernels (0 workers cost 7% on an H100 even with cached data, docs/benchmarks.md); on a CPU the model
    needs every core, and cached batches are cheap to load in the main process."""
    if setting is not None:
        return int(setting)
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(8, max(1, cores // 2))


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    shuffle_seed: int | None = None,
    drop_last: bool = False,
    pin_memory: bool = True,
    prefetch_factor: int = 4,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """`shuffle_seed` set: an EpochShuffle sampler (call `loader.sampler.set_epoch(e)` before each
    epoch) over the dataset wrapped in EpochItems; workers persist across epochs and prefetch; pinned
    memory feeds non-blocking copies. The loader has its own generator, so starting one never draws
    from the global RNG that augmentation uses (a resumed run keeps that stream exact).
    `world` > 1: this process's shard (rank) of either order (seg/engine/seeding.py)."""
    if batch_size < 1:
        raise ConfigError(f"trainer.batch_size must be >= 1, got {batch_size}")
    workers = max(0, int(num_workers))
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor, "worker_init_fn": worker_init_fn}
    sampler: Sampler | None = None
    per_process = len(dataset) // world
    if shuffle_seed is not None:
        sampler = EpochShuffle(len(dataset), shuffle_seed, rank=rank, world=world)
        dataset = EpochItems(dataset, shuffle_seed)
    elif world > 1:
        sampler = Shard(len(dataset), rank=rank, world=world)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last and per_process > batch_size,
        pin_memory=pin_memory and device.type == "cuda",
        generator=torch.Generator().manual_seed(0 if shuffle_seed is None else shuffle_seed),
        **extra,
    )
