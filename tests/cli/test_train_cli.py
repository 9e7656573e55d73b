"""seg-train's run folder as a user meets it: a refused run leaves the earlier run's record alone,
`resume=PATH` continues the stored run in its own folder, a sweep outlives one bad job."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.cli.test_cli import TINY, assert_user_error, run


def test_refused_and_resumed_runs_keep_the_runs_own_record(tmp_path: Path) -> None:
    first = run("seg-train", *TINY, "trainer.epochs=1", "model.wf=2", "hydra.run.dir=r", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    hydra_dir = tmp_path / "r" / ".hydra"
    record = {p.name: p.read_text() for p in hydra_dir.glob("*.yaml")}

    refused = run("seg-train", "trainer.epochs=1", "hydra.run.dir=r", cwd=tmp_path)
    assert_user_error(refused, "already holds checkpoints", "resume=auto")
    assert {p.name: p.read_text() for p in hydra_dir.glob("*.yaml")} == record  # nothing rewritten

    # Only the new epoch count on the command line: the stored run (wf=2, 20 images) goes on, in r/.
    resumed = run("seg-train", f"resume={tmp_path / 'r' / 'checkpoints' / 'last.pt'}", "trainer.epochs=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert {p.name: p.read_text() for p in hydra_dir.glob("*.yaml")} == record
    (extra,) = hydra_dir.glob("resume-*")
    assert yaml.safe_load((extra / "config.yaml").read_text())["model"]["wf"] == 5  # what this command composed
    assert not (tmp_path / "outputs").exists()
    log = (tmp_path / "r" / "train.log").read_text()
    assert "epoch 1/1" in log and "epoch 2/2" in log and "resuming with settings changed" in log

    changed = run("seg-train", "resume=auto", "hydra.run.dir=r", "model=segnet", "trainer.epochs=3", cwd=tmp_path)
    assert_user_error(changed, "model=segnet would change model._target_")
    zero = run("seg-train", "resume=auto", "hydra.run.dir=r", "trainer.epochs=0", cwd=tmp_path)
    assert_user_error(zero, "trainer.epochs=0 must be an integer >= 1")
    assert len(list(hydra_dir.glob("resume-*"))) == 1  # refused resumes leave no record in the run


def test_a_sweep_reports_a_failed_job_and_runs_the_others(tmp_path: Path) -> None:
    proc = run("seg-train", "--multirun", *TINY, "trainer.epochs=1", "loss=ce,bce", "hydra.sweep.dir=sweep",
               cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "1 sweep job(s) failed" in proc.stderr and "loss=ce" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "sweep" / "1_loss=bce" / "checkpoints" / "best.pt").is_file()  # the bce job still ran


def test_sigterm_mid_run_saves_and_exits_143(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "seg-train"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "seg.cli.train"]
    proc = subprocess.Popen([*command, *TINY, "dataset.n_images=200", "trainer.epochs=50", "hydra.run.dir=r"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM received" in out + err and "Traceback" not in out + err


def test_bad_overrides_and_values_are_one_line_and_exit_2(tmp_path: Path) -> None:
    assert_user_error(run("seg-train", "trainer.epoch=3", cwd=tmp_path), "did you mean trainer.epochs?")
    assert_user_error(run("seg-train", "model=unett", cwd=tmp_path), "Available options in 'model'")
    zero = run("seg-train", *TINY, "trainer.epochs=0", "hydra.run.dir=z", cwd=tmp_path)
    assert_user_error(zero, "trainer.epochs")
    assert not (tmp_path / "z" / "split.json").exists()  # checked before anything is written
    assert len(zero.stderr.strip().splitlines()) == 1


def test_a_run_that_fails_at_start_leaves_no_empty_folder_behind(tmp_path: Path) -> None:
    nowhere = f"dataset.root={tmp_path / 'nowhere'}"
    default = run("seg-train", "dataset=ph2", nowhere, cwd=tmp_path)
    assert_user_error(default, "PH2")
    assert not (tmp_path / "outputs").exists()  # Hydra's outputs/<date>/<time>/ with only .hydra/ and a log

    chosen = run("seg-train", "dataset=ph2", nowhere, "hydra.run.dir=runs/deep/r", cwd=tmp_path)
    assert_user_error(chosen, "PH2")
    assert not (tmp_path / "runs").exists()

    kept = tmp_path / "mine"  # a folder the user made is theirs, even empty
    kept.mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "notes.txt").write_text("keep")
    for folder in (kept, tmp_path / "runs" / "r"):
        proc = run("seg-train", "dataset=ph2", nowhere, f"hydra.run.dir={folder}", cwd=tmp_path)
        assert_user_error(proc, "PH2")
    assert kept.is_dir() and (kept / "train.log").is_file()
    assert not (tmp_path / "runs" / "r").exists() and (tmp_path / "runs" / "notes.txt").read_text() == "keep"


def test_a_resume_refused_after_the_data_is_built_leaves_no_record(tmp_path: Path) -> None:
    first = run("seg-train", *TINY, "trainer.epochs=1", "hydra.run.dir=r", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = sorted(p.name for p in (tmp_path / "r").rglob("*"))
    moved = run("seg-train", "resume=auto", "hydra.run.dir=r", "trainer.epochs=2", "dataset.split_seed=7",
                cwd=tmp_path)
    assert_user_error(moved, "another split")
    wider = run("seg-train", "resume=auto", "hydra.run.dir=r", "trainer.epochs=2", "model.wf=4", cwd=tmp_path)
    assert_user_error(wider, "r/checkpoints/last.pt")  # refused by the checkpoint's weights, after the build
    assert not list((tmp_path / "r" / ".hydra").glob("resume-*"))  # the refused resumes' records are gone
    assert sorted(p.name for p in (tmp_path / "r").rglob("*")) == before  # and nothing else changed

    (tmp_path / "backup").mkdir()  # a loose copy resumes into a new default folder: refused, it goes again
    (tmp_path / "backup" / "old.pt").write_bytes((tmp_path / "r" / "checkpoints" / "last.pt").read_bytes())
    loose = run("seg-train", f"resume={tmp_path / 'backup' / 'old.pt'}", "model.wf=4", cwd=tmp_path)
    assert_user_error(loose, "old.pt")
    # A new run aimed at r through run_dir= is refused in the callback; its claimed folder goes too.
    aimed = run("seg-train", *TINY, f"run_dir={tmp_path / 'r'}", cwd=tmp_path)
    assert_user_error(aimed, "already holds checkpoints")
    assert not (tmp_path / "outputs").exists()


def test_only_new_folders_are_removed_and_each_run_starts_a_fresh_record(tmp_path: Path) -> None:
    from seg.cli.callbacks import StartRecord

    mine = tmp_path / "keepme"  # `nd/../keepme` names an existing folder although nd/ is new
    (mine / ".hydra").mkdir(parents=True)
    (mine / "train.log").write_text("an earlier log")
    proc = run("seg-train", "dataset=ph2", f"dataset.root={tmp_path / 'nowhere'}", "hydra.run.dir=nd/../keepme",
               cwd=tmp_path)
    assert_user_error(proc, "PH2")
    assert (mine / "train.log").is_file() and (mine / ".hydra").is_dir()

    record, kept = StartRecord(), tmp_path / "kept-record"
    kept.mkdir()
    record.begin([], {".hydra", "train.log"})
    record.resume_record = kept
    record.mark_started()
    record.discard()  # the run had started: nothing goes
    assert kept.is_dir()
    record.begin([], {".hydra", "train.log"})  # the same process runs seg-train again
    assert record.resume_record is None and not record.started
    record.discard()
    assert kept.is_dir()


def test_a_failure_inside_the_folder_checks_stops_before_hydra_writes(tmp_path: Path) -> None:
    """Hydra only warns about an exception in a callback and goes on: the guard must stop itself."""
    first = run("seg-train", *TINY, "trainer.epochs=1", "hydra.run.dir=r", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    record = {p.name: p.read_bytes() for p in (tmp_path / "r" / ".hydra").glob("*.yaml")}
    unresolved = run("seg-train", "resume=auto", "hydra.run.dir=r", "trainer.epochs=${oc.env:SEG_NOT_SET_ANYWHERE}",
                     cwd=tmp_path)
    assert_user_error(unresolved, "SEG_NOT_SET_ANYWHERE")
    assert {p.name: p.read_bytes() for p in (tmp_path / "r" / ".hydra").glob("*.yaml")} == record
    assert not list((tmp_path / "r" / ".hydra").glob("resume-*"))

    flat = run("seg-train", "dataset=ph2", f"dataset.root={tmp_path / 'nowhere'}", "hydra.output_subdir=.",
               cwd=tmp_path)
    assert_user_error(flat, "PH2")
    assert "raised" not in flat.stderr  # no callback exception that Hydra turned into a warning
    dotted = run("seg-train", "dataset=ph2", f"dataset.root={tmp_path / 'nowhere'}", "hydra.run.dir=a/../fresh",
                 cwd=tmp_path)
    assert_user_error(dotted, "PH2")
    assert not (tmp_path / "a").exists() and not (tmp_path / "fresh").exists()


def test_a_new_sweep_never_rewrites_an_earlier_sweeps_records(tmp_path: Path) -> None:
    sweep = ["--multirun", *TINY, "trainer.epochs=1", "model.wf=2,3", "hydra.sweep.dir=S"]
    first = run("seg-train", *sweep, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    record = {p: p.read_bytes() for p in (tmp_path / "S").rglob("*.yaml")}
    again = run("seg-train", *sweep, cwd=tmp_path)
    assert_user_error(again, "already holds checkpoints of an earlier sweep", "resume=auto")
    assert {p: p.read_bytes() for p in (tmp_path / "S").rglob("*.yaml")} == record

    resumed = run("seg-train", *sweep, "resume=auto", "trainer.epochs=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for job in ("0_model.wf=2", "1_model.wf=3"):  # named by what varies, the same when resumed
        hydra_dir = tmp_path / "S" / job / ".hydra"
        assert (hydra_dir / "config.yaml").read_bytes() == record[hydra_dir / "config.yaml"]  # the original
        (extra,) = hydra_dir.glob("resume-*")
        assert yaml.safe_load((extra / "config.yaml").read_text())["trainer"]["epochs"] == 2
        assert "epoch 2/2" in (tmp_path / "S" / job / "train.log").read_text()


def test_an_interrupted_sweep_finishes_with_resume_auto(tmp_path: Path) -> None:
    """A job that never saved a checkpoint (the sweep was stopped before it) starts when the sweep resumes."""
    sweep = ["--multirun", *TINY, "trainer.epochs=1", "model.wf=2,3", "hydra.sweep.dir=S"]
    first = run("seg-train", *sweep, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    import shutil

    shutil.rmtree(tmp_path / "S" / "1_model.wf=3" / "checkpoints")  # as if stopped before job 1 saved anything
    resumed = run("seg-train", *sweep, "resume=auto", "trainer.epochs=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for job in ("0_model.wf=2", "1_model.wf=3"):
        assert (tmp_path / "S" / job / "checkpoints" / "last.pt").is_file()
        assert "epoch 2/2" in (tmp_path / "S" / job / "train.log").read_text()
