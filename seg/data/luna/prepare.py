"""Convert each LUNA16 series once into a compact on-disk cache, and the `seg-prepare` command.

Cache entry `<cache_dir>/luna16-<key>/` (the key hashes the settings that change the arrays: clip
range, mask threshold, format), per series:
  <uid>.hu.npy   int16 (index, row, col) HU, clipped   -- opened with np.load(mmap_mode="r")
  <uid>.mask.npy uint8 {0,1} nodule mask, same shape
  <uid>.json     shape, positive slices, nodule centres in voxels, the annotations it was built from,
                 and the size and mtime of the .mhd and .raw it was read from
The JSON is written last and every file goes through a temporary name and os.replace, so an
interrupted run leaves no half-written series behind. A series whose annotations changed, or whose
.mhd/.raw changed size or modification time (replaced, truncated), is converted again; annotations
are compared by value per series rather than by annotations.csv's mtime, so editing one series' rows
does not convert all of them again.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from seg.data.cache import cache_key, cache_root
from seg.data.luna.geometry import Geometry, world_to_voxel
from seg.data.luna.volume import find_series, nodule_mask, read_annotations, read_ct
from seg.data.sources import Stat, path_key, stat_file
from seg.errors import EXIT_USER_ERROR, ConfigError, DatasetError, OneLineParser, SegError

log = logging.getLogger("seg.data")

FORMAT = 1


@dataclass(frozen=True)
class PrepareSettings:
    """Everything that changes the cached arrays."""

    hu_clip: tuple[float, float] = (-1000.0, 1000.0)
    mask_threshold_hu: float = -700.0

    @classmethod
    def create(cls, hu_clip: Sequence[float], mask_threshold_hu: float) -> PrepareSettings:
        values = [float(v) for v in hu_clip]
        if len(values) != 2 or not -32768 <= values[0] < values[1] <= 32767:
            raise ConfigError(
                f"dataset.hu_clip must be [low, high] with -32768 <= low < high <= 32767, got {list(hu_clip)}"
            )
        threshold = float(mask_threshold_hu)
        if not values[0] < threshold < values[1]:
            raise ConfigError(
                f"dataset.mask_threshold_hu={threshold:g} must lie inside hu_clip {values} "
                "(otherwise every voxel or none is 'tissue')"
            )
        return cls(hu_clip=(values[0], values[1]), mask_threshold_hu=threshold)

    def key(self) -> str:
        return cache_key({"name": "luna16", "format": FORMAT, **asdict(self)})


@dataclass(frozen=True)
class SeriesIndex:
    """The small per-series summary training reads instead of the volume."""

    uid: str
    shape: tuple[int, int, int]
    positive_slices: list[int]
    nodules: list[list[int]]  # (index, row, col) of each annotated centre inside the volume
    annotations: list[list[float]]  # (x, y, z) mm it was built from, to notice an edited CSV
    outside: int  # annotations whose centre fell outside the volume
    geometry: dict[str, list[float]]
    sources: list[list[Any]] | None = None  # [name, size, mtime_ns] of the .mhd and .raw; None: older cache

    def pixel_spacing(self) -> tuple[float, float]:
        """(row mm, column mm) of the series' slices, from the geometry every cached series records."""
        return Geometry(**{k: tuple(v) for k, v in self.geometry.items()}).pixel_spacing  # type: ignore[arg-type]


@dataclass(frozen=True)
class Release:
    """What is on disk: every series, and the annotations of the series present (others dropped)."""

    series: dict[str, Path]
    annotations: dict[str, np.ndarray]  # uid -> (N, 3) xyz mm
    ignored: int  # annotated series that are not on disk


def scan_release(root: str | Path | None) -> Release:
    series = find_series(root)
    table = read_annotations(Path(root).expanduser() / "annotations.csv")  # type: ignore[arg-type]
    present = {uid: rows[:, :3] for uid, rows in table.items() if uid in series}
    if not present:
        raise DatasetError(
            f"none of the {len(table)} series named in {Path(root) / 'annotations.csv'} is on disk "  # type: ignore[arg-type]
            f"({len(series)} series found under subset*/): extract the subsets the annotations refer to"
        )
    return Release(series=series, annotations=present, ignored=len(table) - len(present))


def entry_dir(cache_dir: str | Path | None, settings: PrepareSettings) -> Path:
    root = cache_root(cache_dir)
    return root / f"luna16-{settings.key()}"


def array_paths(entry: Path, uid: str) -> tuple[Path, Path]:
    return entry / f"{uid}.hu.npy", entry / f"{uid}.mask.npy"


def series_files(mhd: Path) -> tuple[Path, Path]:
    """The header and the voxel file beside it (the release names both after the series uid)."""
    return mhd, mhd.with_suffix(".raw")


def series_sources(mhd: Path, stats: Mapping[str, Stat] | None = None) -> list[list[Any]]:
    """[name, size, mtime_ns] of a series' two files; from `stats` (abs path -> stat) when it has them."""
    out = []
    for path in series_files(mhd):
        key = path_key(path)
        stat = stats[key] if stats is not None and key in stats else stat_file(key)
        out.append([path.name, *(stat or (None, None))])
    return out


def _replace_into(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            write(handle)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_index(entry: Path, uid: str) -> SeriesIndex | None:
    path = entry / f"{uid}.json"
    if not path.is_file() or not all(p.is_file() for p in array_paths(entry, uid)):
        return None
    data = json.loads(path.read_text())
    data["shape"] = tuple(data["shape"])
    return SeriesIndex(**data)


def prepare_series(
    uid: str, mhd: Path, xyz: np.ndarray, settings: PrepareSettings, entry: Path,
    sources: list[list[Any]] | None = None,
) -> SeriesIndex:
    """Read one series, build its mask and write the three cache files. `sources`: the stats of its
    files taken before reading (so a file changed while it is read is converted again next time)."""
    sources = sources if sources is not None else series_sources(mhd)
    hu, geometry = read_ct(mhd, settings.hu_clip)
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    centres = world_to_voxel(xyz, geometry).reshape(-1, 3)
    inside = np.all((centres >= 0) & (centres < np.asarray(hu.shape)), axis=1)
    mask = nodule_mask(hu, centres[inside], settings.mask_threshold_hu)
    index = SeriesIndex(
        uid=uid,
        shape=tuple(int(s) for s in hu.shape),  # type: ignore[arg-type]
        positive_slices=np.flatnonzero(mask.any(axis=(1, 2))).tolist(),
        nodules=centres[inside].tolist(),
        annotations=xyz.tolist(),
        outside=int((~inside).sum()),
        geometry=geometry.to_dict(),
        sources=sources,
    )
    hu_file, mask_file = array_paths(entry, uid)
    _replace_into(hu_file, lambda f: np.save(f, hu))
    _replace_into(mask_file, lambda f: np.save(f, mask))
    _replace_into(entry / f"{uid}.json", lambda f: f.write(json.dumps(asdict(index)).encode()))
    return index


def _job(args: tuple[str, Path, np.ndarray, PrepareSettings, Path, list[list[Any]]]) -> SeriesIndex:
    return prepare_series(*args)


def prepare(
    release: Release,
    uids: Sequence[str],
    *,
    cache_dir: str | Path | None,
    settings: PrepareSettings,
    workers: int = 1,
    progress: bool = True,
    stats: Mapping[str, Stat] | None = None,
) -> tuple[Path, dict[str, SeriesIndex], int]:
    """Make sure every series in `uids` is cached; returns (entry folder, indices, how many were built).

    Only series not cached yet, or cached from other annotations or other .mhd/.raw files, are read,
    so this is cheap to call at every start (one stat per file; `stats`, abs path -> stat, when the
    caller has them). Work runs in `workers` spawned processes (each holds one volume at a time).
    """
    entry = entry_dir(cache_dir, settings)
    entry.mkdir(parents=True, exist_ok=True)
    settings_file = entry / "settings.json"
    if not settings_file.is_file():
        _replace_into(settings_file, lambda f: f.write(json.dumps(asdict(settings)).encode()))
    empty = np.zeros((0, 3))
    indices: dict[str, SeriesIndex] = {}
    todo, again = [], []
    for uid in sorted(uids):
        xyz = release.annotations.get(uid, empty)
        sources = series_sources(release.series[uid], stats)
        cached = load_index(entry, uid)
        if cached is not None and cached.annotations == xyz.tolist() and cached.sources == sources:
            indices[uid] = cached
        else:
            todo.append((uid, release.series[uid], xyz, settings, entry, sources))
            again += [uid] if cached is not None else []
    if again:
        shown = ", ".join(again[:5]) + (f", ... ({len(again) - 5} more)" if len(again) > 5 else "")
        log.info("luna16: converting %d series again, as their .mhd/.raw or annotations changed since they "
                 "were cached: %s", len(again), shown)
    bar = tqdm(total=len(todo), desc="preparing LUNA16", unit="series", disable=not progress or None)
    with bar:
        if workers > 1 and len(todo) > 1:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                for future in as_completed([pool.submit(_job, job) for job in todo]):
                    index = future.result()
                    indices[index.uid] = index
                    bar.update()
        else:
            for job in todo:
                indices[job[0]] = _job(job)
                bar.update()
    return entry, {uid: indices[uid] for uid in sorted(indices)}, len(todo)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="seg-prepare",
        description="Convert LUNA16 series into the cache that `seg-train dataset=luna16` reads "
        "(otherwise done lazily at the first training start).",
    )
    parser.add_argument("--root", required=True, help="folder holding subset0..subset9 and annotations.csv")
    parser.add_argument("--cache-dir", default=None, help="cache folder (default: $SEG_CACHE_DIR or ~/.cache/seg)")
    parser.add_argument("--workers", type=int, default=1, help="series converted in parallel (default 1)")
    parser.add_argument("--hu-clip", type=float, nargs=2, default=[-1000.0, 1000.0], metavar=("LOW", "HIGH"))
    parser.add_argument("--mask-threshold-hu", type=float, default=-700.0)
    parser.add_argument(
        "--annotated-only", action="store_true", help="skip series without nodules (not needed unless full_ct)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `seg-prepare`: exit status 0, or 2 (EXIT_USER_ERROR, as every seg command and
    argparse itself use) with a one-line message on a user error."""
    args = _parser().parse_args(argv)
    try:
        if args.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {args.workers}")
        settings = PrepareSettings.create(args.hu_clip, args.mask_threshold_hu)
        release = scan_release(args.root)
        uids = sorted(release.annotations) if args.annotated_only else sorted(release.series)
        entry, indices, built = prepare(release, uids, cache_dir=args.cache_dir, settings=settings,
                                        workers=args.workers)
    except SegError as err:
        print(f"seg-prepare: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    nodules = sum(len(ix.nodules) for ix in indices.values())
    slices = sum(len(ix.positive_slices) for ix in indices.values())
    outside = sum(ix.outside for ix in indices.values())
    print(
        f"{len(indices)} series in {entry} ({built} converted now, {len(indices) - built} already cached); "
        f"{nodules} nodules on {slices} positive slices; {release.ignored} annotated series not on disk "
        f"ignored; {outside} annotation(s) outside their volume"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
