"""A run that diverges (nan/inf loss, gradient or weights) stops with one line naming where, keeps the
checkpoints it had, and never saves a non-finite model or a NaN best score; a healthy run is unaffected
and its steps still never read the device back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from seg.checkpoint import load_checkpoint
from seg.engine.amp import Amp
from seg.engine.loop import FiniteWatch, StepSettings, nonfinite_weights, train_one_epoch, train_step
from seg.engine.state import TrainState
from seg.errors import TrainingDiverged
from seg.train.fit import fit
from tests.cli.test_cli import TINY, run
from tests.tiny import compose_cfg


def test_a_huge_lr_stops_at_the_first_nan_step_and_saves_nothing(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match=r"the loss was not finite \(nan or inf\) at epoch 1, step \d+") as err:
        fit(compose_cfg(["optimizer.lr=1e30"], tmp_path), tmp_path)
    text = str(err.value)
    for tip in ("optimizer.lr (now 1e+30)", "trainer.precision=32", "trainer.grad_clip_norm=1.0"):
        assert tip in text
    assert "no checkpoint had been written yet" in text and "\n" not in text
    assert err.value.epoch == 1 and err.value.step >= 1
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "result.json").exists()


class _NanAfter(torch.nn.Module):
    """The run's loss, turned nan from the `k`-th call on."""

    def __init__(self, loss: torch.nn.Module, k: int) -> None:
        super().__init__()
        self.loss, self.k, self.calls = loss, k, 0

    def forward(self, logits: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        value = self.loss(logits, mask, weight=weight)
        return value * math.nan if self.calls >= self.k else value


def _patch_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int, *, nan_from_step: int | None = None,
                 nan_weights: bool = False) -> None:
    """Make epoch `epoch` of the next fit go wrong: its loss nan from a step on, or its weights nan after it."""
    import seg.train.fit as fit_module

    real = fit_module.train_one_epoch

    def patched(model, loader, loss_fn, *args, **kwargs):
        if kwargs["start"].epoch != epoch:
            return real(model, loader, loss_fn, *args, **kwargs)
        if nan_from_step is not None:
            loss_fn = _NanAfter(loss_fn, nan_from_step)
        stats = real(model, loader, loss_fn, *args, **kwargs)
        if nan_weights:
            with torch.no_grad():
                next(model.parameters())[0].fill_(math.inf)
        return stats

    monkeypatch.setattr(fit_module, "train_one_epoch", patched)


@pytest.mark.parametrize("how", ["loss", "weights"])
def test_divergence_after_good_epochs_keeps_the_checkpoints_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    fit(compose_cfg(["trainer.epochs=1"], tmp_path), tmp_path)
    ckpts = tmp_path / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpts.iterdir()}
    result_before = (tmp_path / "result.json").read_text()
    assert set(before) == {"last.pt", "best.pt"}
    if how == "loss":
        _patch_epoch(monkeypatch, 2, nan_from_step=2)
        expected = r"the loss was not finite \(nan or inf\) at epoch 2, step 2"
    else:
        _patch_epoch(monkeypatch, 2, nan_weights=True)
        expected = r"the model's weights became nan or inf during epoch 2"
    with pytest.raises(TrainingDiverged, match=expected) as err:
        fit(compose_cfg(["trainer.epochs=3", "resume=auto"], tmp_path), tmp_path)
    assert "last.pt and best.pt in" in str(err.value) and "keep the last finite state" in str(err.value)
    assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before  # untouched, no temporary file
    assert (tmp_path / "result.json").read_text() == result_before
    assert load_checkpoint(ckpts / "last.pt")["epoch"] == 1


def test_a_nan_score_never_becomes_best() -> None:
    assert not TrainState().improves(math.nan, "max")
    assert not TrainState(best_score=0.5, best_epoch=1).improves(math.nan, "min")


def test_the_watch_names_the_first_bad_step_and_what_was_bad() -> None:
    cpu, finite, inf, nan = torch.device("cpu"), torch.tensor(1.0), torch.tensor(math.inf), torch.tensor(math.nan)
    watch = FiniteWatch(cpu, epoch=4, step=10)  # a resumed epoch: 10 steps were done before the interrupt
    watch.update(finite, finite)
    watch.check()
    watch.update(finite, inf)  # step 12: the gradient norm (where clipping computes it)
    watch.update(nan, finite)
    with pytest.raises(TrainingDiverged, match="the gradient norm was not finite .* at epoch 4, step 12") as err:
        watch.check()
    assert (err.value.epoch, err.value.step) == (4, 12)
    loss_first = FiniteWatch(cpu, epoch=1)
    loss_first.update(nan, inf)
    with pytest.raises(TrainingDiverged, match="the loss was not finite .* step 1"):
        loss_first.check()


def test_under_a_grad_scaler_only_the_loss_counts() -> None:
    """fp16's GradScaler skips a step with inf gradients itself (and lowers its scale): routine, not
    divergence. A nan loss still is."""
    watch = FiniteWatch(torch.device("cpu"), epoch=1)
    watch.update(torch.tensor(0.3), torch.tensor(math.inf), scaled=True)
    watch.check()
    watch.update(torch.tensor(math.nan), torch.tensor(1.0), scaled=True)
    with pytest.raises(TrainingDiverged, match="the loss .* step 2"):
        watch.check()


class _Overflowing(torch.nn.Module):
    """A finite loss whose gradient, once the scaler multiplies it by 65536, overflows float32."""

    def forward(self, logits: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return (logits * 1e34).sum()


def test_a_step_the_grad_scaler_skips_is_not_divergence() -> None:
    model = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        model.weight.fill_(1e-3)
        model.bias.zero_()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    settings = StepSettings(torch.device("cpu"), Amp("16", "cpu", None, scaler), clip_norm=1.0)
    batch = {"image": torch.full((2, 1, 2, 2), 255, dtype=torch.uint8), "mask": torch.zeros(2, 2, 2, dtype=torch.uint8)}
    watch = FiniteWatch(torch.device("cpu"), epoch=1)
    loss, _ = train_step(model, batch, _Overflowing(), optimizer, settings, watch=watch)
    assert torch.isfinite(loss)
    assert scaler.get_scale() < 65536.0  # the scaler saw inf gradients and skipped the step
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    watch.check()  # no error


def test_nonfinite_weights_names_parameters_and_buffers() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    assert nonfinite_weights(model) == []
    model[1].running_var[0] = math.inf
    model[0].weight.data[0] = math.nan
    assert nonfinite_weights(model) == ["0.weight", "1.running_var"]


def test_a_healthy_epoch_reads_the_device_only_at_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch adds no host read per step: with the progress bar's reads off, one epoch reads back
    twice in all (the watch and the summed loss), whatever its number of steps."""
    model = torch.nn.Conv2d(1, 1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [{"image": torch.rand(2, 1, 4, 4), "mask": torch.randint(0, 2, (2, 4, 4), dtype=torch.uint8)}] * 12
    reads = {"n": 0}
    for name in ("item", "tolist"):
        real = getattr(torch.Tensor, name)

        def counting(self, *args, _real=real, **kwargs):
            reads["n"] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    from seg.losses import DiceBCELoss

    stats = train_one_epoch(model, batches, DiceBCELoss(), optimizer,
                            StepSettings(torch.device("cpu"), Amp("32", "cpu", None, None), clip_norm=1.0),
                            progress_every=0)
    assert stats.steps == 12 and math.isfinite(stats.loss)
    assert reads["n"] == 2


def test_seg_train_reports_divergence_in_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = run("seg-train", *TINY, "trainer.epochs=2", "optimizer.lr=1e30", "hydra.run.dir=r", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "training diverged" in lines[0] and "at epoch 1, step" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    run_dir = tmp_path / "r"
    assert not (run_dir / "checkpoints" / "best.pt").exists()
    result = run_dir / "result.json"
    if result.exists():  # a diverged run writes none; one that exists must not report NaN
        assert not any(isinstance(v, float) and math.isnan(v) for v in json.loads(result.read_text()).values())
    assert "training diverged" in (run_dir / "train.log").read_text()
    for path in (run_dir / "checkpoints").glob("*.pt"):  # none is expected; any that exists must be finite
        ckpt = load_checkpoint(path)
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
        assert ckpt["best_score"] is None or math.isfinite(ckpt["best_score"])


def test_finite_weights_with_non_finite_outputs_stop_before_saving(tmp_path: Path) -> None:
    """One step per epoch: the loss of that step is finite, the update makes the model output inf/NaN;
    the validation sees it first, and nothing is saved."""
    cfg = compose_cfg(["optimizer.lr=1e30", "trainer.batch_size=16", "trainer.precision=32"], tmp_path)
    with pytest.raises(TrainingDiverged, match="validation loss of epoch 1"):
        fit(cfg, tmp_path)
    assert not (tmp_path / "checkpoints" / "best.pt").exists() and not (tmp_path / "result.json").exists()
