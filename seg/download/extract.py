"""Unpacking a downloaded archive into the folder layout a reader expects, refusing unsafe members.

Everything is first unpacked into a private staging folder under the root, then moved into place, so
one rule fits every archive whatever its top folder: content lands in `<root>/<into>` whether or not
the archive wraps it in a folder of that name. tar and zip use the standard library; RAR (PH2) needs an
external tool, and without one the user gets the exact command instead of a new dependency.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from seg.download.fetch import DownloadError

RAR_MAGIC = b"Rar!\x1a\x07"
STATE_DIR = ".seg-download"  # markers and staging, inside the dataset root
_INSTALL_HINT = (
    "install one (Debian/Ubuntu: `sudo apt-get install unar` or `unrar` or `p7zip-full` or "
    "`libarchive-tools`; macOS: `brew install unar`)"
)


def rar_commands(archive: Path, dest: Path) -> dict[str, list[str]]:
    """Command line per supported RAR tool, extracting `archive` into `dest` with overwrite."""
    a, d = str(archive), str(dest)
    return {
        "unrar": ["unrar", "x", "-o+", "-y", a, d + os.sep],
        "unar": ["unar", "-force-overwrite", "-no-directory", "-output-directory", d, a],
        "7z": ["7z", "x", "-y", f"-o{d}", a],
        "bsdtar": ["bsdtar", "-xf", a, "-C", d],
    }


def unpack(archive: Path, root: Path, *, into: str = "", pick: Sequence[str] = ()) -> bool:
    """Extract `archive` so its content sits in `<root>/<into>`; with `pick`, only those file names.

    Returns False (after printing the exact commands) when the archive is RAR and no tool is found.
    """
    root = Path(root)
    staging = root / STATE_DIR / f"unpack-{archive.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if not _extract_any(archive, staging, root):
            return False
        shutil.rmtree(staging / "__MACOSX", ignore_errors=True)  # Finder metadata in hand-made zips
        target = root / into if into else root
        if pick:
            _place_picked(staging, target, pick, archive)
        else:
            entries = list(staging.iterdir())
            if not entries:
                raise DownloadError(f"{archive} is an empty archive; delete it and run the command again.")
            wrapped = into and [e.name for e in entries] == [PurePosixPath(into).name] and entries[0].is_dir()
            _merge(entries[0] if wrapped else staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def _extract_any(archive: Path, staging: Path, root: Path) -> bool:
    with archive.open("rb") as handle:
        magic = handle.read(len(RAR_MAGIC))
    if magic == RAR_MAGIC:
        return _extract_rar(archive, staging, root)
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, staging)
    elif tarfile.is_tarfile(archive):
        _extract_tar(archive, staging)
    else:
        raise DownloadError(
            f"{archive} is neither a tar, zip nor RAR archive (an HTML error page saved by a proxy?); "
            "delete it and run the command again."
        )
    return True


def _check_name(name: str, archive: Path) -> None:
    """Reject members that would land outside the destination (absolute, drive-qualified or `..`)."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix) or ".." in PurePosixPath(posix).parts:
        raise DownloadError(
            f"{archive} contains an unsafe member path {name!r} (it would be written outside the "
            "destination); refusing to extract. Delete the archive and download it from the official source."
        )


def _extract_zip(archive: Path, staging: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                _check_name(name, archive)
            zf.extractall(staging)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DownloadError(
            f"{archive} is not a readable zip archive ({exc}); delete it and run the command again."
        ) from None


def _extract_tar(archive: Path, staging: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_name(member.name, archive)
                if not (member.isfile() or member.isdir()):
                    raise DownloadError(
                        f"{archive} contains {member.name!r}, which is a link or special file; the "
                        "dataset archives hold only files and folders, so refusing to extract it."
                    )
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, members=members, filter="data")
            else:  # Python without extraction filters; members were checked above
                tar.extractall(staging, members=members)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DownloadError(
            f"{archive} is not a readable, safe tar archive ({exc}); delete it and run the command again."
        ) from None


def _extract_rar(archive: Path, staging: Path, root: Path) -> bool:
    commands = rar_commands(archive, staging)
    tool = next((name for name in commands if shutil.which(name)), None)
    if tool is None:
        manual = rar_commands(archive, root)
        lines = "\n".join(f"  {shlex.join(cmd)}" for cmd in manual.values())
        print(
            f"{archive.name} is downloaded but is a RAR archive, and none of {', '.join(commands)} is on "
            f"PATH (Python cannot read RAR by itself). Extract it yourself with any one of:\n{lines}\n"
            f"or {_INSTALL_HINT} and run this command again."
        )
        return False
    print(f"{archive.name}: extracting with {tool}")
    done = subprocess.run(commands[tool], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise DownloadError(
            f"{tool} could not extract {archive} (exit {done.returncode}): {done.stderr.strip()[-500:]}. "
            "The archive may be corrupt: delete it and run the command again."
        )
    return True


def _place_picked(staging: Path, target: Path, pick: Sequence[str], archive: Path) -> None:
    found = {p.name: p for p in sorted(staging.rglob("*")) if p.is_file() and p.name in pick}
    missing = [name for name in pick if name not in found]
    if missing:
        present = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        raise DownloadError(
            f"{archive} does not contain {', '.join(missing)} (it holds: "
            f"{', '.join(present[:10]) or 'nothing'}); it is not the expected download: delete it and check "
            "the source or --base-url."
        )
    target.mkdir(parents=True, exist_ok=True)
    for name in pick:
        os.replace(found[name], target / name)


def _merge(src: Path, dst: Path) -> None:
    """Move the content of `src` into `dst`, merging folders and replacing files of the same name."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir() and target.is_dir():
            _merge(entry, target)
        else:
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
