"""Shared-machine and signal robustness: unique default run and sweep folders, group-readable outputs, this
machine's cache for seg-eval, file-system errors and SIGTERM as one line."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from seg.checkpoint import save_checkpoint
from seg.cli.callbacks import _claim
from seg.cli.common import interrupts, user_errors
from seg.data.cache import decode_workers
from seg.errors import ConfigError
from seg.inference.core import stored_config


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path: Path) -> None:
    first = _claim(tmp_path / "outputs" / "12-00-00")
    second = _claim(tmp_path / "outputs" / "12-00-00")
    assert (first.name, second.name) == ("12-00-00", "12-00-00-1") and first.is_dir() and second.is_dir()


def test_sweeps_started_in_the_same_second_get_their_own_folders(tmp_path: Path) -> None:
    """The claimed folder reaches the jobs as an override: Hydra composes each job from them."""
    from seg.cli.callbacks import RunDirGuard

    def master(*hydra_overrides: str):
        return OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "multirun" / "12-00-00")},
                                           "overrides": {"hydra": list(hydra_overrides), "task": []}}})

    first, second, named = master(), master(), master("hydra.sweep.dir=mine")
    for config in (first, second, named):
        RunDirGuard().on_multirun_start(config=config)
    assert Path(first.hydra.sweep.dir).name == "12-00-00" and Path(second.hydra.sweep.dir).name == "12-00-00-1"
    assert second.hydra.overrides.hydra[-1] == f"hydra.sweep.dir='{tmp_path / 'multirun' / '12-00-00-1'}'"
    assert list(named.hydra.overrides.hydra) == ["hydra.sweep.dir=mine"]  # a folder the user named is kept


def test_a_sweep_whose_default_folder_is_taken_trains_its_jobs_in_its_own(tmp_path: Path) -> None:
    """Every second of the next minute is taken, as if other sweeps had started then."""
    import time

    from tests.cli.test_cli import TINY, run

    now = time.time()
    for seconds in range(0, 60):
        stamp = time.localtime(now + seconds)
        (tmp_path / "multirun" / time.strftime("%Y-%m-%d", stamp) / time.strftime("%H-%M-%S", stamp)).mkdir(
            parents=True, exist_ok=True)
    proc = run("seg-train", "--multirun", *TINY, "trainer.epochs=1", "model.wf=2,3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = [p.parent for p in (tmp_path / "multirun").rglob("multirun.yaml")]
    assert sweep.name.endswith("-1")
    assert {p.parent.parent.name for p in sweep.glob("*/checkpoints/best.pt")} == {"0_model.wf=2", "1_model.wf=3"}
    assert len(list((tmp_path / "multirun").rglob("checkpoints"))) == 2  # no job trained anywhere else


def test_checkpoints_follow_the_umask_not_mkstemps_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = save_checkpoint({"epoch": 1}, tmp_path / "best.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_seg_eval_uses_this_machines_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "mine"))
    stored = {"dataset": {"_target_": "x", "cache_dir": "/home/colleague/.cache/seg"}, "model": {}, "loss": {}}
    # Only the cache folder is under test: the made-up class "x" allowed, nothing built, so nothing checked complete.
    ckpt, bare = {"config": stored}, {"allowed_targets": ["x"], "nodes": ()}
    assert stored_config(ckpt, None, tmp_path / "c.pt", **bare).dataset.cache_dir == str(tmp_path / "mine")
    again = stored_config(ckpt, OmegaConf.create({"cache_dir": "/elsewhere"}), tmp_path / "c.pt", **bare)
    assert again.dataset.cache_dir == "/elsewhere"  # dataset.cache_dir=... on the command line still wins


def test_file_system_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exc, user_errors("seg-eval"):
        (blocker / "out").mkdir(parents=True)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("seg-eval: error: ") and str(blocker) in err
    assert len(err.strip().splitlines()) == 1


def test_sigterm_unwinds_and_exits_143(capsys: pytest.CaptureFixture[str]) -> None:
    cleaned = []
    with pytest.raises(SystemExit) as exc, interrupts("seg-predict"):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            cleaned.append(True)  # finally-blocks (temporary files) run
    assert exc.value.code == 143 and cleaned == [True]
    assert "seg-predict: stopped by SIGTERM" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_decode_workers_must_be_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEG_DECODE_WORKERS", "abc")
    with pytest.raises(ConfigError, match="SEG_DECODE_WORKERS"):
        decode_workers()
    monkeypatch.setenv("SEG_DECODE_WORKERS", "3")
    assert decode_workers() == 3


@pytest.mark.parametrize("module, argv", [("seg.download.cli", ["nope", "--root", "x"]),
                                          ("seg.data.luna.prepare", ["--workers", "many"]),
                                          ("seg.bench.cli", ["--steps", "0"])])
def test_argparse_errors_are_one_line(module: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    with pytest.raises(SystemExit) as exc:
        importlib.import_module(module).main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and ": error: " in err and "--help" in err
