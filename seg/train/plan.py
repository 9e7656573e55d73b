"""Which folder a seg-train invocation trains in, and what it resumes: the one home of that rule.

`plan_run` is called by the Hydra callback for a single run (before Hydra writes its record into the
folder), by each sweep job, by `fit` when it is handed a bare folder (tests, scripts), and it decides
the same for the same inputs:

- a new run trains in the folder it was given, which must not hold checkpoints of an earlier run;
- `resume=auto` continues `<folder>/checkpoints/last.pt` in that folder;
- `resume=PATH` inside a run's `checkpoints/` continues that run's own folder (its train.log and
  TensorBoard curves go on); a loose copy (`backup/old.pt`) continues in the folder given.

The checkpoint is read once per invocation, when first needed (`RunPlan.checkpoint`), and serves both
the stored config and the restored state.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from seg.checkpoint import load_checkpoint
from seg.errors import CheckpointError, ConfigError, SegError


@dataclass
class RunPlan:
    run_dir: Path  # where this invocation trains: split.json, checkpoints/, tb/, result.json
    resume_from: Path | None = None  # the checkpoint it continues; None for a new run
    started: bool = False  # set by fit once the run is built (and restored): later failures keep the folder
    _checkpoint: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def resuming(self) -> bool:
        return self.resume_from is not None

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def checkpoint(self) -> dict[str, Any]:
        """The resumed checkpoint, loaded on first use. Memory-mapped: the stored config is read
        without reading the tensors, and the restore copies them out of the map."""
        if self.resume_from is None:
            raise ValueError("a new run has no checkpoint to resume")
        if self._checkpoint is None:
            self._checkpoint = load_checkpoint(self.resume_from, mmap=True)
            if "optimizer" not in self._checkpoint or "rng" not in self._checkpoint:
                raise CheckpointError(f"{self.resume_from} has no training state to resume from (was it "
                                      "exported for inference only?)")
        return self._checkpoint


class StartFailed(SegError):
    """A user error before the run was built: seg-train removes what the invocation had created."""


def plan_run(cfg: DictConfig, run_dir: Path) -> RunPlan:
    """`run_dir`: the folder this invocation was given (Hydra's run or job folder, or `run_dir=`)."""
    resume = cfg.get("resume")
    if not resume:
        refuse_earlier_checkpoints(run_dir)
        return RunPlan(run_dir)
    path = run_dir / "checkpoints" / "last.pt" if resume == "auto" else Path(str(resume)).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"resume={resume}: no checkpoint at {path}. Pass resume=PATH/last.pt, or resume=auto together "
            "with hydra.run.dir=<the run directory> to continue that run."
        )
    if resume != "auto" and continues_its_run(path):
        run_dir = path.resolve().parent.parent
        _refuse_rewinding(path, run_dir)
    elif path.resolve().parent != (run_dir / "checkpoints").resolve():
        refuse_earlier_checkpoints(run_dir)  # a loose copy never trains over another run's checkpoints
    return RunPlan(run_dir, resume_from=path)


def continues_its_run(checkpoint: Path) -> bool:
    """Only a real checkpoint inside a seg run's checkpoints/ folder (the run wrote split.json beside
    it) moves the run there: a user's own folder that happens to be named `checkpoints` is not a run."""
    return (checkpoint.parent.name == "checkpoints" and zipfile.is_zipfile(checkpoint)
            and (checkpoint.parent.parent / "split.json").is_file())


def _refuse_rewinding(path: Path, run_dir: Path) -> None:
    """Resuming best.pt (or any checkpoint but last.pt) inside its run would overwrite that run's later
    last.pt with a rewound one."""
    last = run_dir / "checkpoints" / "last.pt"
    if path.name != "last.pt" and last.is_file() and not last.samefile(path):
        raise ConfigError(
            f"resume={path} would continue that run from {path.name} and overwrite its later {last.name}; it is "
            f"kept. Continue the run with resume={last}, or copy {path.name} out of checkpoints/ to start a "
            "branch in a new folder."
        )


def refuse_earlier_checkpoints(run_dir: Path) -> None:
    """A new run never writes into a folder holding another run's checkpoints."""
    earlier = sorted((run_dir / "checkpoints").glob("*.pt"))
    if earlier:
        raise ConfigError(
            f"{run_dir} already holds checkpoints of an earlier run ({', '.join(p.name for p in earlier)}); "
            "they are kept. Continue that run with resume=auto, or train into another hydra.run.dir."
        )
