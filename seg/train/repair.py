"""What a run's next start puts right after the previous invocation was killed (SIGKILL, OOM killer,
power cut): temporary files of checkpoint writes cut short, and a best.pt that disagrees with the best
that last.pt records.

Why they can disagree at all: fit writes last.pt first (recording the new best) and then makes best.pt
a hard link to it (seg.checkpoint.publish_copy), two renames. No order of two renames keeps both
files in agreement at every instant; this one leaves only one mismatch, and it can be repaired exactly:
a kill between them leaves a last.pt whose record says "best at epoch N" while it *is* epoch N, so
best.pt is rebuilt from it. (best.pt first would leave a best.pt from epoch N beside a last.pt of epoch
N-1 recording an older best whose weights best.pt no longer holds.)
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from seg.checkpoint import load_checkpoint, publish_copy, remove_partial_writes
from seg.engine.state import TrainState
from seg.errors import CheckpointError
from seg.train.plan import RunPlan

log = logging.getLogger("seg")


def repair_run_folder(plan: RunPlan, state: TrainState) -> None:
    """Called once the run is built, where the folder gets its first file: a start that fails earlier
    leaves the folder exactly as it was."""
    removed = remove_partial_writes(plan.ckpt_dir)
    if removed:
        log.info("removed %d partial checkpoint write(s) that a killed run left in %s: %s", len(removed),
                 plan.ckpt_dir, ", ".join(removed))
    if plan.resuming:
        reconcile_best(plan, state)


def _best_record(path: Path) -> tuple[int, float] | None:
    """(epoch, score) of best.pt, or None when it is missing or unreadable (a damaged file is reported)."""
    if not path.is_file():
        return None
    try:
        ckpt = load_checkpoint(path, mmap=True)
    except CheckpointError as exc:
        log.warning("%s", exc)
        return None
    score = ckpt.get("best_score")
    if not isinstance(score, (int, float)) or not math.isfinite(score):
        return None
    return int(ckpt.get("best_epoch") or ckpt["epoch"]), float(score)


def _agree(a: tuple[int, float], epoch: int, score: float) -> bool:
    return a[0] == epoch and math.isclose(a[1], score, rel_tol=1e-12, abs_tol=1e-12)


def reconcile_best(plan: RunPlan, state: TrainState) -> None:
    """Make best.pt and the resumed checkpoint's best record agree, in the run's own folder only (a loose
    copy resumed into a new folder has no best.pt there, as before). In order of preference:
    - the resumed checkpoint holds the recorded best's weights (its epoch is the best epoch and it was
      saved at that validation, not mid-epoch): best.pt becomes a copy of it, exactly what the killed
      write would have made;
    - best.pt is a readable checkpoint with another best: the record follows best.pt, the weights the
      user has (an improvement is then measured against them, so best.pt is never replaced by a worse model);
    - neither: the record is cleared, so the next validation writes a new best.pt."""
    resumed, best_path = plan.resume_from, plan.ckpt_dir / "best.pt"
    if resumed is None or state.best_epoch is None or state.best_score is None:
        return
    if resumed.resolve().parent != plan.ckpt_dir.resolve() or resumed.resolve() == best_path.resolve():
        return
    record = _best_record(best_path)
    if record is not None and _agree(record, state.best_epoch, state.best_score):
        return
    found = "is missing or unreadable" if record is None else f"holds epoch {record[0]} (score {record[1]:.4f})"
    ckpt: dict[str, Any] = plan.checkpoint()
    said = f"{resumed.name} records the best at epoch {state.best_epoch} (score {state.best_score:.4f})"
    if int(ckpt["epoch"]) == state.best_epoch and ckpt.get("epoch_progress") is None:
        publish_copy(resumed, best_path)
        log.warning("best.pt %s but %s and holds those weights (a run killed between the two writes): best.pt "
                    "rewritten from it", found, said)
    elif record is not None:
        state.best_epoch, state.best_score = record
        log.warning("best.pt %s but %s, whose weights are gone: the best record now follows best.pt", found, said)
    else:
        state.best_epoch = state.best_score = None
        log.warning("best.pt %s but %s, whose weights are gone: the next validation writes a new best.pt",
                    found, said)
