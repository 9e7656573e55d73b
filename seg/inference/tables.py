"""seg-eval's files and printed table: metrics.json, per_image.csv, reliability.png, and one table of
class x metric (mean, std, median over images) followed by the pooled metrics."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from seg.calibration import reliability_png
from seg.inference.outputs import OutputFolder
from seg.inference.report import SCORES, Collector, finite

REPORTS = ("metrics.json", "per_image.csv", "reliability.png")
SUMMARY_KEYS = ("dice", "iou", "precision", "recall", "f1", "dice_per_image")
SURFACE_KEYS = ("hd95", "assd", "surface_dice")


def _cell(value: Any) -> Any:
    """CSV text: floats to 6 decimals, inf as `inf`, a missing value (NaN) empty."""
    if isinstance(value, float):
        return "" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.6f}")
    return value


def csv_rows(collector: Collector, detection: bool) -> tuple[list[str], list[dict[str, Any]]]:
    """per_image.csv's columns and rows: id and the per-image means as before; per class Dice for
    multi-class sets; the detection scores where detection is reported; surface values if measured."""
    fields = ["id", *SCORES]
    multi = collector.n_classes > 1
    if multi:
        fields += [f"dice_{name}" for name in collector.class_names]
    if detection:
        fields += ["true_pixels", "pred_pixels", "max_prob"]
    names = collector.surface_names() if collector.surface else []
    fields += [f"{key}_{name}" if multi else key for name in names for key in SURFACE_KEYS]
    rows = []
    for row in collector.rows:
        out = {k: row[k] for k in fields if k in row}
        if multi:
            out.update({f"dice_{n}": (c["dice"] if c["present"] else float("nan")) for n, c in row["class"].items()})
        for name in names:
            value = row["surface"][name]
            out.update({(f"{key}_{name}" if multi else key): getattr(value, key) for key in SURFACE_KEYS})
        rows.append(out)
    return fields, rows


def write_reports(outputs: OutputFolder, report: dict[str, Any], collector: Collector, title: str) -> None:
    """The three files, each recorded in the folder's record as soon as it is complete."""
    folder = outputs.folder
    (folder / "metrics.json").write_text(json.dumps(finite(report), indent=1, allow_nan=False))
    outputs.wrote(folder / "metrics.json")
    detection = "sensitivity" in report.get("detection", {})
    fields, rows = csv_rows(collector, detection)
    with open(folder / "per_image.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    outputs.wrote(folder / "per_image.csv")
    reliability_png(report["calibration"], folder / "reliability.png", title)
    outputs.wrote(folder / "reliability.png")


def _line(name: str, metric: str, stats: dict[str, Any], n: Any, width: int) -> str:
    cells = [f"{v:>9.4f}" if isinstance(v, float) and math.isfinite(v) else f"{'-':>9}"
             for v in (stats.get("mean"), stats.get("std"), stats.get("median"))]
    return f"{name:<{width}}  {metric:<14}{''.join(cells)}  {n}"


def table(report: dict[str, Any], values: dict[str, float], path: Path) -> str:
    """The printed summary (metrics.json holds the same numbers); `values`: the pooled metrics."""
    pp = report.get("postprocess") or "none"
    lines = [f"{path} on {report['split']} ({report['n_images']} images; post-processing: {pp})"]
    per_class = report["per_class"]
    surface = report.get("surface", {})
    unit = surface.get("distance_unit", "px")
    width = max([len(n) for n in per_class] + [5])
    lines.append(f"{'class':<{width}}  {'metric':<14}{'mean':>9}{'std':>9}{'median':>9}  n")
    for name, scores in per_class.items():
        lines += [_line(name, key, scores[key], scores["n_images"], width) for key in SCORES]
        scored = surface.get("classes", {}).get(name)
        for key in SURFACE_KEYS if scored else ():
            label = key if key == "surface_dice" else f"{key} ({unit})"
            stats = {"mean": scored[key], "std": scored[f"{key}_std"], "median": scored[f"{key}_median"]}
            n = scored["n_scored"] + (scored["n_one_empty"] if key == "surface_dice" else 0)
            lines.append(_line(name, label, stats, f"{n} (one empty: {scored['n_one_empty']}, both empty: "
                                                  f"{scored['n_both_empty']})", width))
    lines.append("binary: the foreground class only" if not report["mean_includes_background"] else
                 "multi-class: the means below average all classes present, the background class included")
    lines.append("rows leave out the images where the class is in neither truth nor prediction (n: images kept)")
    keys = [k for k in SUMMARY_KEYS if k in values] + sorted(k for k in values if k not in SUMMARY_KEYS)
    lines.append("pooled over the split:")
    lines += [f"  {k:<16}{values[k]:>9.4f}" for k in keys]
    lines += _extras(report)
    return "\n".join(lines)


def _extras(report: dict[str, Any]) -> list[str]:
    lines = []
    detection = report.get("detection", {})
    if "sensitivity" in detection:
        lines.append("detection (image has the finding): sensitivity {sensitivity:.4f}  specificity {specificity:.4f}  "
                     "AUROC area {auroc_area:.4f} / max prob {auroc_max_prob:.4f}  AP area {ap_area:.4f} / max prob "
                     "{ap_max_prob:.4f}".format(**detection))
    calibration = report["calibration"]
    if calibration.get("ece") is not None and math.isfinite(calibration["ece"]):
        lines.append(f"calibration: ECE {calibration['ece']:.4f} ({calibration['n_bins']} bins, "
                     f"{calibration['confidence']}; reliability.png)")
    if "tuning" in report:
        t = report["tuning"]
        same = " (no candidate beat the defaults)" if t["score_after"] == t["score_before"] else ""
        lines.append(f"tuned: {t['settings']}; {t['objective']} {t['score_before']:.4f} -> "
                     f"{t['score_after']:.4f}{same} (written to {t['file']}; applies from the next seg-eval / "
                     "seg-predict)")
    return lines
