"""Hydra callback for seg-train: settle the run folder before Hydra writes anything into it.

Hydra saves `.hydra/config.yaml` and `overrides.yaml` into the run folder before the task starts, so
the checks must run earlier, at `on_run_start`:
- a new run aimed at a folder that already holds checkpoints stops here (exit 2), leaving that run's
  `.hydra/` record as it was;
- `resume=PATH/checkpoints/last.pt` runs in that run's own folder (its train.log goes on there);
- a resume that cannot start (not a checkpoint, another model class, bad values) stops here too;
- a resumed invocation records its config under `.hydra/resume-<time>/`, keeping the original;
- the folders this invocation creates are noted in NEW_FOLDERS, so that a run stopped at start by a
  user error can remove them again (seg.cli.train) instead of leaving an empty run behind.
"""

from __future__ import annotations

import copy
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from seg.cli.common import fail
from seg.engine.run import refuse_earlier_checkpoints
from seg.errors import SegError

NEW_FOLDERS: list[Path] = []  # absolute, outermost first; the run folder last


class RunDirGuard(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        resume = config.get("resume")
        with read_write(config.hydra), open_dict(config.hydra):
            if resume and resume != "auto":
                checkpoint = Path(str(resume)).expanduser()
                # Only a real checkpoint inside a run's checkpoints/ moves the run there.
                if checkpoint.parent.name == "checkpoints" and zipfile.is_zipfile(checkpoint):
                    config.hydra.run.dir = str(checkpoint.resolve().parent.parent)
            # Resolve ${now:...} once, so the folder checked here is the folder Hydra creates.
            config.hydra.run.dir = str(config.hydra.run.dir)
            chosen = any(o.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for o in config.hydra.overrides.hydra)
            target = Path(config.hydra.run.dir).absolute()
            NEW_FOLDERS[:] = [p for p in (*reversed(target.parents), target) if not p.exists()]
            if not resume and not chosen:
                claimed = _claim(target)
                config.hydra.run.dir = str(claimed)
                NEW_FOLDERS[:] = [*(p for p in NEW_FOLDERS if p != target), claimed.absolute()]
            run_dir = Path(config.get("run_dir") or config.hydra.run.dir)
            try:
                if resume:
                    _check_resume(config, run_dir)
                else:
                    refuse_earlier_checkpoints(run_dir)
            except SegError as exc:
                fail("seg-train", str(exc))
            if resume and (Path(config.hydra.run.dir) / ".hydra").is_dir():
                config.hydra.output_subdir = f".hydra/resume-{datetime.now():%Y-%m-%d_%H-%M-%S}"


def _check_resume(config: DictConfig, run_dir: Path) -> None:
    """What can be checked without the data (the checkpoint file, group choices, the merged config's
    values), so a resume that cannot start leaves no record in the run's folder."""
    from seg.config import check_train_config
    from seg.engine.resume import resumed_config

    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    overrides = list(config.hydra.overrides.task)
    merged = resumed_config(task, run_dir, overrides, groups=set(config.hydra.runtime.choices), quiet=True)
    check_train_config(merged)


def _claim(folder: Path) -> Path:
    """The timestamped default folder, created here and now: mkdir fails if it exists, so two runs
    started in the same second get `<time>` and `<time>-1` instead of training into one folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        candidate = folder if n == 0 else folder.with_name(f"{folder.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise SystemExit(f"seg-train: error: cannot find a free run folder next to {folder}")
