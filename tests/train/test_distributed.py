"""Data-parallel training with PyTorch's own launcher (torchrun, gloo, 2 CPU processes) and Hydra's
submitit launcher (submitit_local): the same weights as one process with the global batch, one run
folder written by rank 0 alone, stops that every process agrees on, and exact resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seg.checkpoint import load_checkpoint
from tests.tiny import compose_cfg

# No BatchNorm (each process would normalise its own half batch), no augmentation (each rank draws its
# own), a loss that is a mean over pixels, fp32: then 2 x 4 images are exactly one step of 8.
EXACT = ["dataset.n_images=20", "dataset.image_size=32", "model.depth=2", "model.wf=3", "model.batch_norm=false",
         "augmentation=none", "loss=bce", "trainer.preview_images=1", "trainer.precision=32"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}", "-m", "seg.cli.train", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(command: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _why(proc: subprocess.CompletedProcess) -> str:
    """The processes' own lines, before torchrun's failure report."""
    return proc.stderr.split("ChildFailedError")[0][-4000:]


def _seg_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "seg.cli.train", *args], cwd)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_two_processes_train_the_weights_one_process_trains_with_their_global_batch(tmp_path: Path) -> None:
    two = _run(_torchrun([*EXACT, "trainer.epochs=2", "trainer.batch_size=4", "hydra.run.dir=two"]), tmp_path)
    assert two.returncode == 0, _why(two)
    one = _seg_train([*EXACT, "trainer.epochs=2", "trainer.batch_size=8", "hydra.run.dir=one"], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = _weights(tmp_path / "one/checkpoints/last.pt"), _weights(tmp_path / "two/checkpoints/last.pt")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    ra, rb = (json.loads((tmp_path / run / "result.json").read_text()) for run in ("one", "two"))
    for key in ("val/dice", "val/iou", "val/loss", "val/precision", "val/recall"):  # sharded, then summed
        assert rb[key] == pytest.approx(ra[key], abs=1e-6), key
    assert (tmp_path / "two/split.json").read_bytes() == (tmp_path / "one/split.json").read_bytes()
    # One folder, written by rank 0 alone: one log (no line twice), one event file, one Hydra record.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    log = (tmp_path / "two/train.log").read_text()
    assert log.count("data: 14 train / 2 val") == 1 and "batch per optimizer step: 8 = 2 process(es)" in log
    assert len(list((tmp_path / "two/tb").iterdir())) == 1 and len(list(tmp_path.rglob("config.yaml"))) == 2
    ckpt = load_checkpoint(tmp_path / "two/checkpoints/last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rank_rng"]) == 2 and ckpt["samples_seen"] == 16


def test_with_batchnorm_every_rank_validates_the_model_rank_0_saves(tmp_path: Path) -> None:
    """DDP broadcasts BatchNorm statistics before each training forward, but each rank's last step updates
    its own: they are made rank 0's before validation, so the logged metrics are those of the checkpoint."""
    args = [*EXACT, "model.batch_norm=true", "dataset.n_images=30", "trainer.epochs=2", "trainer.batch_size=4"]
    two = _run(_torchrun([*args, "hydra.run.dir=bn"]), tmp_path)
    assert two.returncode == 0, _why(two)
    ev = _run([sys.executable, "-m", "seg.cli.evaluate", f"ckpt={tmp_path / 'bn/checkpoints/last.pt'}", "split=val",
               f"out_dir={tmp_path / 'ev'}"], tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    logged = json.loads((tmp_path / "bn/result.json").read_text())
    scored = json.loads((tmp_path / "ev/metrics.json").read_text())
    for key in ("dice", "iou", "loss"):  # 3 validation images: shards of 2 and 1, weighted by image
        assert scored[key] == pytest.approx(logged[f"val/{key}"], abs=1e-6), key


def test_a_divergence_one_rank_sees_stops_every_rank_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject/sitecustomize.py").write_text(  # rank 1 alone sees a nan loss from epoch 2 on
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    from seg.engine import loop\n"
        "    update = loop.FiniteWatch.update\n"
        "    def nan_update(self, loss, grad_norm=None, scaled=False):\n"
        "        update(self, loss * float('nan') if self.epoch >= 2 else loss, grad_norm, scaled)\n"
        "    loop.FiniteWatch.update = nan_update\n")
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(tmp_path / "inject"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(_torchrun([*EXACT, "trainer.epochs=3", "trainer.batch_size=4", "hydra.run.dir=d"]),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "seg-train: error: training diverged: the loss was not finite (nan or inf) at epoch 2" in proc.stderr
    assert "/seg/" not in "".join(line for line in proc.stderr.splitlines() if line.lstrip().startswith("File "))
    assert load_checkpoint(tmp_path / "d/checkpoints/last.pt")["epoch"] == 1  # the diverged epoch is not saved


def test_a_multirun_under_torchrun_is_refused_before_any_folder(tmp_path: Path) -> None:
    env = {**_env(), "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    proc = subprocess.run([sys.executable, "-m", "seg.cli.train", "-m", *EXACT, "seed=1,2"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--multirun under torchrun" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_accumulated_batches_make_the_step_of_one_larger_batch(tmp_path: Path) -> None:
    from seg.train.fit import fit

    def weights(run: str, *overrides: str) -> dict[str, torch.Tensor]:
        # 16 training images: two steps of 8, or two groups of 2 x 4 (a last, smaller group also steps)
        split = ["dataset.split.train=0.8", "dataset.split.test=0.1"]
        fit(compose_cfg([*EXACT, *split, "trainer.epochs=2", *overrides]), tmp_path / run)
        return _weights(tmp_path / run / "checkpoints/last.pt")

    large = weights("large", "trainer.batch_size=8")
    summed = weights("summed", "trainer.batch_size=4", "trainer.accumulate_grad_batches=2")
    assert all(torch.allclose(large[k], summed[k], atol=1e-6) for k in large)
    single = weights("single", "trainer.batch_size=4")  # the same batches, stepped one by one, differ
    assert not all(torch.allclose(single[k], summed[k], atol=1e-6) for k in single)


def _worker_pid(launcher: int, rank: int) -> int | None:
    """The pid of torchrun's worker of `rank` (its environment says RANK)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)


def test_sigterm_to_one_process_stops_both_and_the_resume_is_exact(tmp_path: Path) -> None:
    run = [*EXACT, "dataset.n_images=120", "augmentation=flip", "trainer.epochs=6", "trainer.batch_size=2"]
    ref = _run(_torchrun([*run, "hydra.run.dir=ref"]), tmp_path)
    assert ref.returncode == 0, _why(ref)
    proc = subprocess.Popen(_torchrun([*run, "hydra.run.dir=r"]), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "r/checkpoints/last.pt", proc)
    rank1 = _worker_pid(proc.pid, 1)
    assert rank1 is not None and proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(rank1, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0  # unfinished, for the scheduler
    log = (tmp_path / "r/train.log").read_text()
    assert "SIGTERM received during epoch" in log  # rank 0 saved, stopped by rank 1's signal
    assert "torchrun --nproc_per_node=2 -m seg.cli.train resume=" in log  # the exact resume's command
    stopped = load_checkpoint(tmp_path / "r/checkpoints/last.pt")
    assert stopped["epoch"] < 6 and stopped["world_size"] == 2
    resumed = _run(_torchrun([*run, "resume=auto", "hydra.run.dir=r"]), tmp_path)
    assert resumed.returncode == 0, _why(resumed)
    a, b = _weights(tmp_path / "ref/checkpoints/last.pt"), _weights(tmp_path / "r/checkpoints/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # every rank's sampler position and random streams


def test_when_rank_0_refuses_the_folder_every_rank_stops_with_its_one_line(tmp_path: Path) -> None:
    (tmp_path / "x/checkpoints").mkdir(parents=True)
    (tmp_path / "x/checkpoints/last.pt").write_bytes(b"an earlier run's")
    proc = _run(_torchrun([*EXACT, "hydra.run.dir=x"]), tmp_path)
    assert proc.returncode != 0
    assert "seg-train: error:" in proc.stderr and "already holds checkpoints" in proc.stderr
    # torchrun adds its own failure report; no traceback runs through seg's code
    assert "/seg/" not in "".join(line for line in proc.stderr.splitlines() if line.lstrip().startswith("File "))
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["checkpoints"]  # nothing written there


def _submitit_sweep(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "seg.cli.train", "-m", "hydra/launcher=submitit_local", *args],
                            cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_submitit_sweep_runs_each_job_on_two_tasks(tmp_path: Path) -> None:
    proc = _submitit_sweep([*EXACT, "trainer.epochs=1", "trainer.batch_size=4", "hydra.launcher.tasks_per_node=2",
                            "seed=1,2", "hydra.sweep.dir=S"], tmp_path)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert "2 job(s) in S" in out
    for job in ("0_seed=1", "1_seed=2"):
        assert load_checkpoint(tmp_path / "S" / job / "checkpoints/last.pt")["world_size"] == 2
        assert (tmp_path / "S" / job / "train.log").read_text().count("data: 14 train") == 1  # rank 0's log


def test_a_preempted_submitit_job_requeues_and_continues_from_last_pt(tmp_path: Path) -> None:
    proc = _submitit_sweep([*EXACT, "dataset.n_images=120", "trainer.epochs=10", "trainer.batch_size=2",
                            "hydra.sweep.dir=S"], tmp_path)
    _wait_for(tmp_path / "S/0/checkpoints/last.pt", proc)
    tasks = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p).find("submitit.core._submit") >= 0]
    assert len(tasks) == 1 and proc.poll() is None, "the job ended before it could be preempted"
    os.kill(int(tasks[0].name), signal.SIGUSR2)  # what SLURM sends ahead of a time limit (submitit's signal)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    log = (tmp_path / "S/0/train.log").read_text()
    assert "SIGUSR2 received during epoch" in log and "job 0 was requeued: it continues from" in log
    assert load_checkpoint(tmp_path / "S/0/checkpoints/last.pt")["epoch"] == 10
    assert json.loads((tmp_path / "S/0/result.json").read_text())["status"] == "finished"


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_the_slurm_launcher_config_composes_on_submitits(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    from seg.cli.common import config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4",
                                                      "hydra.launcher.tasks_per_node=4"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.cpus_per_task) == (4, 4, 8)
    assert (launcher.timeout_min, launcher.signal_delay_s, launcher.max_num_timeout) == (240, 120, 5)
