"""The leaderboard of a folder of runs or sweeps: `summary.csv` and `summary.md`, one row per job, and
when the runs vary dataset.fold or seed, `summary_groups.csv` (and a second table in summary.md): per
configuration, the mean and sample std of every metric over its folds and seeds.

Every run writes `result.json` (seg.train.fit; a sweep job that fails on a user error gets one with
status "failed" from seg-train), so the answer of a sweep, or of any folder of runs, is rebuilt from
those files alone: at the end of each sweep (seg.cli.callbacks) and by `seg-summary DIR`. This module
imports no torch, so `seg-summary` starts at once.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shlex
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from seg.errors import EXIT_USER_ERROR, OneLineParser

RESULT = "result.json"
STATUSES = ("finished", "stopped", "pruned", "failed")  # pruned: stopped early by an Optuna search (seg.search)
# Overrides that say how a job ran, not what it trained: not shown (the storage, the same long path in every
# row of an Optuna search) or not in the best run's command (seg-train with them would not train it anew).
# hparams_search=... stays in the command: in a single run it only picks its settings (e.g. model=unet).
HIDDEN = ("search.storage=", "search.study=")
INVOCATION = ("resume=", "run_dir=", "search.", "hydra.")


def write_atomic(path: Path, text: str) -> None:
    """A reader (a sweep's leaderboard, seg-summary run meanwhile) never sees half a file: write a
    temporary file beside it, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_result(folder: Path, result: dict[str, Any]) -> Path:
    path = folder / RESULT
    write_atomic(path, json.dumps(result, indent=1))
    return path


def collect(folder: Path) -> list[dict[str, Any]]:
    """One row per result.json below `folder`, at any depth (a run, a sweep, a folder of sweeps).
    Files that are not a run's result (seg-bench writes its own result.json) or cannot be read are
    skipped: one broken run must not hide the others."""
    folder = Path(folder)
    rows = []
    for path in sorted(folder.rglob(RESULT)):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and ("best_score" in data or data.get("status") in STATUSES):
            rows.append(_row(folder, path, data))
    return rows


def _row(folder: Path, path: Path, data: dict[str, Any]) -> dict[str, Any]:
    overrides = data.get("overrides")
    if overrides is None:  # a result.json from before overrides were recorded: Hydra's own record
        overrides = _hydra_overrides(path.parent)
    status = data.get("status") or ("stopped" if data.get("stopped_by") else "finished")
    best = data.get("best_score")
    overrides = [str(o) for o in overrides]
    return {
        "overrides": " ".join(o for o in overrides if not o.startswith(HIDDEN)), "arguments": overrides,
        "status": status, "reason": data.get("reason", ""),
        "best": float(best) if isinstance(best, (int, float)) else math.nan, "best_epoch": data.get("best_epoch"),
        "epoch": data.get("epoch"), "monitor": data.get("monitor"), "monitor_mode": data.get("monitor_mode"),
        "metrics": {k: v for k, v in data.items() if k.startswith("val/")}, "wall_s": data.get("wall_s"),
        # Where the file is now, not where it was written: the folder may have been moved since.
        "run_dir": path.parent.relative_to(folder).as_posix() or ".", "job": data.get("job"),
        "written": path.stat().st_mtime,
    }


def _hydra_overrides(run_dir: Path) -> list[str]:
    try:
        loaded = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [str(o) for o in loaded] if isinstance(loaded, list) else []


def monitor_of(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """The metric the runs were selected on and its direction: what most of them recorded."""
    pairs = Counter((r["monitor"], r["monitor_mode"]) for r in rows if r["monitor"] and r["monitor_mode"])
    return pairs.most_common(1)[0][0] if pairs else ("best_score", "max")


def ranked(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Best first by the monitored value, the trials an Optuna search pruned after the others (their value
    is from fewer epochs); runs without one (no validation yet) after those, failed jobs last, in job order."""
    sign = -1.0 if mode == "max" else 1.0

    def key(row: dict[str, Any]) -> tuple:
        failed = row["status"] == "failed"
        scored = not failed and math.isfinite(row["best"])
        return (failed, not scored, row["status"] == "pruned", sign * row["best"] if scored else 0.0,
                _natural(row["run_dir"]))

    return sorted(rows, key=key)


def _natural(text: str) -> list[Any]:
    """Job folders 2 before 10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def table(rows: list[dict[str, Any]], monitor: str, precise: bool) -> tuple[list[str], list[list[str]]]:
    """The header and the cells; `precise` keeps every digit (the CSV), else 4 decimals (to read)."""
    metrics = sorted({k for r in rows for k in r["metrics"]})
    header = ["overrides", "status", "reason", f"best {monitor}", "best_epoch", "epoch", *metrics, "wall_s", "run_dir"]

    def cell(value: Any, digits: int = 4) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, float):
            return repr(value) if precise else f"{value:.{digits}f}"
        return str(value)

    body = [[r["overrides"], r["status"], r["reason"], cell(r["best"]), cell(r["best_epoch"]), cell(r["epoch"]),
             *(cell(r["metrics"].get(k)) for k in metrics), cell(r["wall_s"], 1), r["run_dir"]] for r in rows]
    return header, body


def markdown(header: list[str], body: list[list[str]]) -> str:
    """A Markdown table padded to line up, so that it reads as well printed on a console."""
    cells = [header, *([c.replace("|", "\\|") for c in line] for line in body)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in cells]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines) + "\n"


# Overrides that repeat one configuration (another fold of the data, another seed): grouped over.
REPEATS = ("dataset.fold=", "seed=")
GROUPS_TITLE = "Mean \u00b1 sample std (ddof=1) over dataset.fold and seed, per configuration"


def configuration(overrides: str) -> str:
    return " ".join(o for o in overrides.split() if not o.startswith(REPEATS))


def groups(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """One entry per configuration when the rows vary dataset.fold or seed (else none): n non-failed
    jobs and, per metric, (mean, sample std, count) over those that recorded it; best mean first."""
    repeats = {p: {next((o for o in r["overrides"].split() if o.startswith(p)), "") for r in rows} for p in REPEATS}
    if all(len(values) < 2 for values in repeats.values()):
        return []
    by_config: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_config.setdefault(configuration(row["overrides"]), []).append(row)
    out = []
    for config, members in by_config.items():
        done = [r for r in members if r["status"] != "failed"]
        values = {"best": [r["best"] for r in done]}
        for key in sorted({k for r in done for k in r["metrics"]}):
            values[key] = [r["metrics"][key] for r in done if isinstance(r["metrics"].get(key), (int, float))]
        stats = {k: _mean_std([float(x) for x in v if math.isfinite(x)]) for k, v in values.items()}
        out.append({"configuration": config, "n": len(done), "failed": len(members) - len(done), "stats": stats})
    sign = -1.0 if mode == "max" else 1.0
    return sorted(out, key=lambda g: (not math.isfinite(g["stats"]["best"][0]),
                                      sign * g["stats"]["best"][0] if math.isfinite(g["stats"]["best"][0]) else 0.0,
                                      g["configuration"]))


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    """Mean and sample std (ddof=1; NaN below two values), and how many values."""
    n = len(values)
    mean = sum(values) / n if n else math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std, n


def group_table(entries: list[dict[str, Any]], monitor: str, precise: bool) -> tuple[list[str], list[list[str]]]:
    """CSV: a mean and a std column per metric; Markdown: one "mean ± std" cell per metric."""
    keys = ["best", *sorted({k for g in entries for k in g["stats"] if k != "best"})]
    names = [f"best {monitor}" if k == "best" else k for k in keys]
    header = ["configuration", "n", "failed"]
    header += [f"{n} {part}" for n in names for part in ("mean", "std")] if precise else names

    def num(value: float) -> str:
        return "" if math.isnan(value) else repr(value) if precise else f"{value:.4f}"

    body = []
    for g in entries:
        cells = [g["configuration"], str(g["n"]), str(g["failed"])]
        for k in keys:
            mean, std, _ = g["stats"].get(k, (math.nan, math.nan, 0))
            if precise:
                cells += [num(mean), num(std)]
            else:
                cells.append(num(mean) + (f" \u00b1 {num(std)}" if not math.isnan(std) else ""))
        body.append(cells)
    return header, body


def _csv(header: list[str], body: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(body)
    return out.getvalue()


def best_command(rows: list[dict[str, Any]], monitor: str) -> str:
    """Markdown: the best finished run's overrides as the seg-train command that trains it again as a single
    run (without this sweep's resume and search settings); empty when no run finished."""
    best = next((r for r in rows if r["status"] == "finished" and math.isfinite(r["best"])), None)
    if best is None:
        return ""
    args = [o for o in best.get("arguments", best["overrides"].split()) if not o.lstrip("+~").startswith(INVOCATION)]
    command = " ".join(["seg-train", *(shlex.quote(a) for a in args)])
    return (f"Best finished run ({best['run_dir']}: best {monitor}={best['best']:.4f}), as one command:\n\n"
            f"```bash\n{command}\n```\n\n")


def write_summary(folder: Path, rows: list[dict[str, Any]], monitor: str, mode: str) -> str:
    """Write summary.csv and summary.md into `folder`, ranked, and summary_groups.csv when the rows
    vary dataset.fold or seed; returns the Markdown table(s)."""
    folder = Path(folder)
    rows = ranked(rows, mode)
    write_atomic(folder / "summary.csv", _csv(*table(rows, monitor, precise=True)))
    shown = markdown(*table(rows, monitor, precise=False))
    entries = groups(rows, mode)
    if entries:
        write_atomic(folder / "summary_groups.csv", _csv(*group_table(entries, monitor, precise=True)))
        shown += f"\n## {GROUPS_TITLE}\n\n" + markdown(*group_table(entries, monitor, precise=False))
    else:  # a stale table from runs since moved away must not be read as this folder's answer
        (folder / "summary_groups.csv").unlink(missing_ok=True)
    title = f"# Runs below {folder.name or folder}, by {monitor} ({mode})\n\n"
    write_atomic(folder / "summary.md", title + best_command(rows, monitor) + shown)
    return shown


def leaderboard(folder: Path) -> tuple[list[dict[str, Any]], str]:
    """Collect, rank and write the summary of `folder`; the ranked rows and the printable table."""
    rows = collect(folder)
    monitor, mode = monitor_of(rows)
    shown = write_summary(folder, rows, monitor, mode)
    return ranked(rows, mode), shown


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="seg-summary", description="Rebuild and print the leaderboard of a folder of "
                           "runs or sweeps (every result.json below it), writing summary.csv and summary.md there.")
    parser.add_argument("folder", metavar="DIR", type=Path, help="a run, a sweep or a folder of them")
    folder: Path = parser.parse_args(argv).folder
    if not folder.is_dir():
        _fail(f"{folder} is not a folder")
    rows = collect(folder)
    if not rows:
        _fail(f"{folder} holds no run's result.json (a run writes one when it ends)")
    monitor, mode = monitor_of(rows)
    try:
        shown = write_summary(folder, rows, monitor, mode)
    except OSError as exc:
        _fail(f"cannot write the summary into {folder}: {exc.strerror or exc}")
    print(f"{len(rows)} run(s) below {folder}, by {monitor} ({mode}); summary.csv, summary.md:\n{shown}", end="")


def _fail(message: str) -> None:
    print(f"seg-summary: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
