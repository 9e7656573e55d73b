"""Precision modes, channels_last, torch.compile, clipping, weight init and SIGINT, on the CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seg.checkpoint import load_checkpoint
from seg.engine.builders import build_amp, build_model
from seg.engine.loop import _clip
from seg.errors import ConfigError
from seg.train.fit import fit
from tests.tiny import compose_cfg


@pytest.mark.parametrize("precision, scaler", [("32", False), ("bf16", False), ("16", True)])
def test_precisions_train_on_cpu(tmp_path: Path, precision: str, scaler: bool) -> None:
    cfg = compose_cfg([f"trainer.precision={precision}", "trainer.epochs=1"], tmp_path)
    result = fit(cfg, tmp_path)
    assert result["val/loss"] == result["val/loss"]  # not NaN
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (ckpt["scaler"] is not None) == scaler
    assert all(v.dtype != torch.bfloat16 for v in ckpt["model"].values())  # weights stay fp32


def test_auto_loader_workers_follow_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import seg.engine.builders as builders

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert builders.resolve_num_workers(None, torch.device("cpu")) == 0  # the model needs the cores
    assert builders.resolve_num_workers(None, torch.device("cuda")) == 8  # half of 16
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert builders.resolve_num_workers(None, torch.device("cuda")) == 1
    assert builders.resolve_num_workers(3, torch.device("cuda")) == 3  # an explicit choice wins
    assert builders.resolve_num_workers(2, torch.device("cpu")) == 2
    assert compose_cfg([]).trainer.num_workers is None  # the shipped default is auto


def test_auto_precision_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    import seg.engine.builders as builders

    cpu = torch.device("cpu")
    monkeypatch.setattr(builders, "cpu_has_bf16", lambda: False)
    assert builders.resolve_precision("auto", cpu) == "32"
    amp = build_amp("auto", cpu)
    assert amp.dtype is None and builders.resolve_channels_last(None, amp) is True  # NHWC pays on CPUs
    gpu_fp32 = builders.Amp("32", "cuda", None, None)
    assert builders.resolve_channels_last(None, gpu_fp32) is False
    monkeypatch.setattr(builders, "cpu_has_bf16", lambda: True)
    amp = build_amp("auto", cpu)
    assert amp.dtype == torch.bfloat16 and builders.resolve_channels_last(None, amp) is True
    assert builders.resolve_channels_last(False, amp) is False  # an explicit choice wins
    assert builders.resolve_precision("16", cpu) == "16"
    with pytest.raises(ConfigError, match="bf16"):
        build_amp("fp8", cpu)


def test_channels_last_and_compile_paths(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_cfg(["trainer.channels_last=true", "trainer.compile=true", "trainer.compile_backend=aot_eager",
                       "trainer.epochs=1"], tmp_path)
    with caplog.at_level("INFO", logger="seg"):
        result = fit(cfg, tmp_path)
    assert "torch.compile (aot_eager): the first training steps compile the model" in caplog.text
    state = load_checkpoint(tmp_path / "checkpoints" / "best.pt")["model"]
    assert not any(k.startswith("_orig_mod") for k in state)  # plain, unwrapped state_dict
    assert result["val/dice"] >= 0


def test_gradient_clipping() -> None:
    model = torch.nn.Linear(4, 4)
    model(torch.randn(8, 4) * 100).pow(2).sum().backward()
    _clip(model, norm=None, value=0.01)
    assert all(p.grad.abs().max() <= 0.01 + 1e-9 for p in model.parameters())
    _clip(model, norm=0.001, value=None)
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
    assert total <= 0.001 + 1e-6


def test_weight_init_and_frozen_encoder_reach_the_optimizer(tmp_path: Path) -> None:
    cfg = compose_cfg(["model=mobilenet_unet", "model.width_mult=0.35", "model.decoder_channels=[16,16,8,8]",
                       "model.freeze_encoder=true", "trainer.weight_init=kaiming", "trainer.epochs=1"], tmp_path)
    with pytest.warns(UserWarning, match="freezes a random encoder"):
        fit(cfg, tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    n_trainable_tensors = len(ckpt["optimizer"]["param_groups"][0]["params"])
    with pytest.warns(UserWarning):
        names = [name for name, _ in build_model(cfg.model, "default").named_parameters()]
    decoder = [n for n in names if not n.startswith("encoder.")]
    assert 0 < len(decoder) < len(names)
    assert n_trainable_tensors == len(decoder)  # exactly the decoder reaches the optimizer


def test_sigint_saves_last_and_says_how_to_resume(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "seg-train"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "seg.cli.train"]
    args = ["dataset.n_images=400", "dataset.image_size=32", "trainer.batch_size=2", "model.depth=2", "model.wf=3",
            "trainer.epochs=50", "hydra.run.dir=run"]
    proc = subprocess.Popen([*command, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert last.exists(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]  # saved, but not a finished run
    assert "seg-train resume=" in out + err
    assert "Traceback" not in err
    assert load_checkpoint(last)["epoch"] >= 1


def test_loader_workers_give_the_same_run_as_the_main_process(tmp_path: Path) -> None:
    """Shuffling happens in the main process (EpochShuffle), so worker count never changes the batches."""
    weights = []
    for workers in (0, 2):
        run = tmp_path / f"w{workers}"
        fit(compose_cfg([f"trainer.num_workers={workers}", "trainer.epochs=2", "augmentation=none"], run), run)
        weights.append(load_checkpoint(run / "checkpoints" / "last.pt")["model"])
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_fused_optimizers_are_chosen_for_cuda_and_run() -> None:
    from hydra.utils import instantiate

    from seg.engine.builders import fused_kwargs
    from tests.test_config import compose_train

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for name, fused in (("adam", True), ("adamw", True), ("sgd", True), ("rmsprop", False)):
        factory = instantiate(compose_train([f"optimizer={name}"]).optimizer)
        assert fused_kwargs(factory, cuda) == ({"fused": True} if fused else {}), name
        assert fused_kwargs(factory, cpu) == {}
        if fused:  # the same fused kernels exist on the CPU: run one step there
            model = torch.nn.Linear(3, 1)
            optimizer = factory(model.parameters(), fused=True)
            model(torch.randn(4, 3)).sum().backward()
            optimizer.step()


def test_deterministic_sets_the_torch_flags_and_a_default_run_clears_them(tmp_path: Path) -> None:
    import seg.train.run as run_module

    seen = {}
    real = run_module.builders.build_model

    def spy(*args, **kwargs):  # the flags as the model is built, mid start_run
        seen[len(seen)] = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                           torch.backends.cudnn.benchmark)
        return real(*args, **kwargs)

    run_module.builders.build_model = spy
    try:
        fit(compose_cfg(["trainer.epochs=1", "trainer.deterministic=true"], tmp_path / "a"), tmp_path / "a")
        fit(compose_cfg(["trainer.epochs=1"], tmp_path / "b"), tmp_path / "b")
    finally:
        run_module.builders.build_model = real
    assert seen[0] == (True, True, False)
    assert seen[1] == (False, False, torch.cuda.is_available())  # the autotuner: CUDA only (device=auto)
    assert not torch.are_deterministic_algorithms_enabled()
