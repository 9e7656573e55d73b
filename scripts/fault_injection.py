"""SIGKILL a small seg-train run at random moments, resume it each time, and check what it left.

    nice .venv/bin/python scripts/fault_injection.py [--kills 24] [--seed 0] [--keep DIR]

The run is tiny (built-in synthetic data, a 2-level U-Net, 6 epochs) so that one takes seconds. First it
trains once straight through (the reference, and the time span kills are drawn from); then it starts the
run and kills it with SIGKILL again and again, each time after a random part of that span: every other
kill right then (imports, data, training, validation, saving), the others at the first checkpoint write
after it, the moment its temporary file appears; it resumes with `resume=auto hydra.run.dir=<dir>` each
time. After each kill it checks:
- every checkpoint present loads with seg's load_checkpoint (weights_only, CRCs verified);
- best.pt agrees with last.pt's record (best_epoch, best_score), or is in the one state a kill between
  the two writes can leave (last.pt recording itself as the new best before best.pt points at it),
  which the next start must repair;
- the temporary files a kill left are gone once the next invocation got past its start.
When a run reaches its last epoch a new one starts, until enough kills landed. At the end `resume=auto`
must finish the run; its final weights are compared with the reference run's (on the CPU, with the same
seed, a resumed run replays the lost epochs exactly). Prints a summary and exits 1 if a check failed.
Not part of the test suite (it takes minutes); docs/robustness.md has its results.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from seg.checkpoint import PARTIAL_WRITE, load_checkpoint
from seg.errors import CheckpointError

RUN = ["dataset.n_images=40", "dataset.image_size=32", "trainer.batch_size=4", "model.depth=2", "model.wf=3",
       "trainer.epochs=6", "trainer.preview_images=1", "trainer.num_workers=0"]
STARTED = "model UNet:"  # logged once an invocation is built (and repaired): after the start's checks


def seg_train() -> list[str]:
    exe = Path(sys.executable).parent / "seg-train"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "seg.cli.train"]


def start(run_dir: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    resume = ["resume=auto"] if (run_dir / "checkpoints" / "last.pt").is_file() else []
    with open(log, "ab") as out:
        return subprocess.Popen([*seg_train(), *RUN, *resume, f"hydra.run.dir={run_dir}"], env=env,
                                stdout=subprocess.DEVNULL, stderr=out, start_new_session=True)


def partial_writes(ckpts: Path) -> set[str]:
    return {p.name for p in ckpts.iterdir() if PARTIAL_WRITE.fullmatch(p.name)} if ckpts.is_dir() else set()


def kill_at(proc: subprocess.Popen, ckpts: Path, delay: float, at_write: bool, limit: float, old: set[str]) -> str:
    """SIGKILL after `delay` s or, `at_write`, at the first checkpoint write after `delay` s (as soon as a
    new temporary file exists, not one of the `old` ones an earlier kill left). Returns 'killed' or
    'finished' (the run ended first)."""
    began = time.perf_counter()
    while proc.poll() is None:
        elapsed = time.perf_counter() - began
        due = elapsed >= delay and (not at_write or bool(partial_writes(ckpts) - old))
        if due or elapsed > limit:
            os.kill(proc.pid, signal.SIGKILL)  # the process this script started, by its id
            proc.wait()
            return "killed"
        time.sleep(0.001 if at_write else 0.01)
    return "finished"


def records(ckpts: Path) -> tuple[dict[str, dict], list[str]]:
    """The loadable checkpoints' records, and the problems found."""
    found, problems = {}, []
    for path in sorted(ckpts.glob("*.pt")) if ckpts.is_dir() else []:
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as exc:
            problems.append(f"{path.name} does not load: {exc}")
            continue
        found[path.name] = {"epoch": ckpt["epoch"], "best_epoch": ckpt.get("best_epoch"),
                            "best_score": ckpt.get("best_score"), "mid_epoch": ckpt.get("epoch_progress") is not None}
    return found, problems


def agreement(found: dict[str, dict]) -> str:
    """'agree', 'pending' (the repairable state) or 'DISAGREE'."""
    last, best = found.get("last.pt"), found.get("best.pt")
    if last is None or last["best_epoch"] is None:
        return "agree" if best is None else "DISAGREE"
    if best is not None and (best["epoch"], best["best_score"]) == (last["best_epoch"], last["best_score"]):
        return "agree"
    holds_best = last["epoch"] == last["best_epoch"] and not last["mid_epoch"]
    return "pending" if holds_best else "DISAGREE"


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


class Campaign:
    """The kills, the runs they hit, and what the checks found."""

    def __init__(self, work: Path, rng: random.Random, span: float) -> None:
        self.work, self.rng, self.span = work, rng, span
        self.env = {**os.environ, "SEG_CACHE_DIR": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
        self.log = work / "stderr.log"
        self.failures: list[str] = []
        self.stats: Counter[str] = Counter()
        self.rounds = self.kills = 0

    def kill_once(self, run_dir: Path, leftover: set[str]) -> tuple[bool, set[str]]:
        """Start the run, kill it (unless it finishes first), check. Returns (killed, temporary files left)."""
        ckpts, train_log = run_dir / "checkpoints", run_dir / "train.log"
        started_before = train_log.read_text().count(STARTED) if train_log.exists() else 0
        at_write = self.kills % 2 == 1  # every other kill lands inside a write
        delay = self.rng.uniform(0, self.span)
        proc = start(run_dir, self.env, self.log)
        outcome = kill_at(proc, ckpts, delay, at_write, limit=self.span * 3, old=leftover)
        survived = leftover & partial_writes(ckpts)
        if train_log.exists() and train_log.read_text().count(STARTED) > started_before and survived:
            self.failures.append(f"kill {self.kills}: temporary files {sorted(survived)} survived a start")
        found, problems = records(ckpts)
        self.failures += problems
        state = agreement(found)
        if outcome == "finished":
            self.stats["runs finished between kills"] += 1
            if proc.returncode != 0 or state != "agree":
                self.failures.append(f"{run_dir.name}: a run ended with exit {proc.returncode}, best/last {state}")
            return False, set()
        self.kills += 1
        self.stats["kills at a checkpoint write" if at_write else "kills at a random moment"] += 1
        left = partial_writes(ckpts)
        self.stats["kills that left a new temporary file (killed inside a write)"] += bool(left - leftover)
        self.stats[f"best/last after a kill: {state}"] += 1
        self.stats["checkpoints checked"] += len(found)
        if state == "DISAGREE":
            self.failures.append(f"kill {self.kills}: best.pt and last.pt disagree: {found}")
        epoch = found.get("last.pt", {}).get("epoch", 0)
        when = f"{'at the first write after' if at_write else 'after'} {delay:5.2f} s"
        print(f"kill {self.kills:2d} ({when}): last.pt epoch {epoch}, {state}, temporary files: "
              f"{len(left - leftover)} new, {len(left & leftover)} left by an earlier kill", flush=True)
        return True, left

    def finish(self, run_dir: Path, reference: Path) -> None:
        """resume=auto must carry a killed run to its end, cleanly, to the reference run's weights."""
        proc = start(run_dir, self.env, self.log)
        if proc.wait() != 0:
            self.failures.append(f"{run_dir.name}: the final resume=auto exited {proc.returncode} (see {self.log})")
            return
        found, problems = records(run_dir / "checkpoints")
        self.failures += problems
        if partial_writes(run_dir / "checkpoints"):
            self.failures.append(f"{run_dir.name}: temporary files remain after the final resume")
        if agreement(found) != "agree" or found["last.pt"]["epoch"] != 6:
            self.failures.append(f"{run_dir.name}: after the final resume: {found}")
        self.stats["best.pt repairs logged"] += (run_dir / "train.log").read_text().count("best.pt rewritten from it")
        a, b = final_weights(reference), final_weights(run_dir)
        same = all(torch.equal(a[k], b[k]) for k in a)
        self.stats["runs whose final weights equal the reference's" if same else "runs whose final weights differ"] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder (kept) instead of a temporary one")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="seg-fault-"))
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    campaign = Campaign(work, random.Random(args.seed), span=0.0)
    reference = work / "reference"
    if start(reference, campaign.env, campaign.log).wait() != 0:
        print(f"the reference run failed; see {campaign.log}")
        return 1
    campaign.span = time.perf_counter() - began
    print(f"reference run: {campaign.span:.1f} s straight through; kills after a random [0, {campaign.span:.1f}] s, "
          "every other one at the first checkpoint write after that", flush=True)
    leftover: set[str] = set()
    while campaign.kills < args.kills:
        killed, leftover = campaign.kill_once(work / f"run{campaign.rounds}", leftover)
        if not killed:  # that run reached its last epoch: the next kills go to a new one
            campaign.rounds += 1
    for n in range(campaign.rounds + 1):
        campaign.finish(work / f"run{n}", reference)
    print(f"\n{campaign.kills} kills over {campaign.rounds + 1} run(s) in {time.perf_counter() - began:.0f} s ({work})")
    for key, value in sorted(campaign.stats.items()):
        print(f"  {key}: {value}")
    print("FAILED:\n  " + "\n  ".join(campaign.failures) if campaign.failures else "all checks passed")
    return 1 if campaign.failures else 0


if __name__ == "__main__":
    sys.exit(main())
