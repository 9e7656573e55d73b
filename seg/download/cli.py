"""`seg-download <dataset> --root DIR`: fetch a public dataset into the layout its reader expects.

Each archive is fetched (resumable, checksummed), unpacked, then recorded by a marker in
`<root>/.seg-download/`, so running the same command again only checks and never re-extracts.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from seg.download import registry
from seg.download.extract import STATE_DIR, unpack
from seg.download.fetch import DownloadError, fetch, sidecar
from seg.download.registry import Source
from seg.errors import OneLineParser, SegError

BASE_URL_ENV = "SEG_DOWNLOAD_BASE_URL"

_EPILOG = f"""\
pets, luna16 and isbi2012 download and extract fully. ph2 is a RAR archive: it is extracted with unrar,
unar, 7z or bsdtar when one is on PATH, otherwise it is downloaded and the exact command is printed
(exit 0); a PH2Dataset.zip placed in the root is used instead of downloading. siim needs a Kaggle
account: the command prints the steps and exits 0. Interrupted downloads resume on the next run, and
re-running a finished one only checks (each unpacked archive leaves a marker in <root>/{STATE_DIR}/).
{BASE_URL_ENV} sets the default of --base-url. Errors print 'seg-download: error: ...' and exit 2."""


def download_dataset(
    dataset: str,
    root: str | Path,
    *,
    base_url: str | None = None,
    subsets: Sequence[int] | None = None,
    keep_archives: bool = False,
    timeout: float = 30.0,
    progress: bool = True,
    sources: Iterable[Source] | None = None,
) -> bool:
    """Install `dataset` under `root`; `sources` replaces the registry's list (mirrors, tests).

    Returns False when a step is left to the user (SIIM, or a RAR archive without an extractor).
    """
    root = Path(root).expanduser()
    if dataset == "siim":
        print(registry.siim_steps(root))
        return False
    if sources is None:
        sources = registry.sources(dataset, base_url=base_url, subsets=subsets)
    try:
        (root / STATE_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        message = f"cannot create the dataset root {root} ({exc}); use a writable --root."
        raise DownloadError(message) from None
    results = [
        _install(s, root, keep_archives=keep_archives, timeout=timeout, progress=progress) for s in sources
    ]
    if all(results):
        print(f"{dataset}: ready: {registry.LAYOUTS[dataset].format(root=root)}")
        print(f"train with: seg-train dataset={dataset} dataset.root={root}")
    return all(results)


def _install(source: Source, root: Path, *, keep_archives: bool, timeout: float, progress: bool) -> bool:
    dest = root / source.filename
    marker = root / STATE_DIR / f"{source.filename}.done"
    if source.archive and marker.is_file():
        print(f"{source.filename}: already extracted (delete {marker} to extract again)")
        return True
    local = next((root / name for name in source.local_copies if (root / name).is_file()), None)
    if local is not None:
        print(f"{source.filename}: using {local.name} found in {root} instead of downloading")
        record = f"{local.name}\n"
    else:
        digest = fetch(
            source.urls, dest, sha256=source.sha256, md5=source.md5, timeout=timeout, progress=progress
        )
        record = f"{digest}  {dest.name}\n"
    if not source.archive:
        return True
    if not unpack(local or dest, root, into=source.into, pick=source.pick):
        return False
    marker.write_text(record, encoding="utf-8")
    if local is None and not keep_archives:
        dest.unlink()
        sidecar(dest).unlink(missing_ok=True)  # the marker keeps the SHA-256
        print(f"{dest.name}: extracted and deleted (use --keep-archives to keep it)")
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="seg-download",
        description="Download a public segmentation dataset into the layout seg's readers expect.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", choices=registry.DATASETS)
    parser.add_argument("--root", required=True, type=Path, metavar="DIR",
                        help="dataset folder (created if missing)")
    parser.add_argument("--subsets", metavar="N,M",
                        help="luna16 only: subset numbers, e.g. 0,1 (default: all ten)")
    parser.add_argument("--base-url", default=os.environ.get(BASE_URL_ENV) or None, metavar="URL",
                        help=f"fetch each file from URL/<filename> (a mirror); default ${BASE_URL_ENV}")
    parser.add_argument("--keep-archives", action="store_true", help="keep archives after extraction")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="network timeout in seconds (default 30)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 also when steps are left to the user)."""
    args = build_parser().parse_args(argv)
    try:
        subsets = registry.parse_subsets(args.subsets) if args.subsets is not None else None
        download_dataset(
            args.dataset, args.root, base_url=args.base_url, subsets=subsets,
            keep_archives=args.keep_archives, timeout=args.timeout,
        )
    except SegError as exc:
        print(f"seg-download: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seg-download: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130
    return 0
