"""unpack(): content lands in <root>/<into> whatever the archive's top folder; unsafe members refused;
RAR goes through an external tool or prints the exact command."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from seg.download.extract import RAR_MAGIC, STATE_DIR, rar_commands, unpack
from seg.download.fetch import DownloadError


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and STATE_DIR not in p.parts and p.suffix not in (".gz", ".zip", ".rar")}


def test_wrapped_tar_lands_in_its_folder(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "images.tar.gz", {"images/a.jpg": b"A", "images/b.jpg": b"B"})
    assert unpack(archive, tmp_path, into="images")
    assert _tree(tmp_path) == {"images/a.jpg": b"A", "images/b.jpg": b"B"}
    assert not (tmp_path / STATE_DIR / "unpack-images.tar.gz").exists()


def test_unwrapped_zip_is_put_under_into(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "subset1.zip", {"s.mhd": b"hdr", "s.raw": b"vox"})
    assert unpack(archive, tmp_path, into="subset1")
    assert _tree(tmp_path) == {"subset1/s.mhd": b"hdr", "subset1/s.raw": b"vox"}


def test_macos_metadata_does_not_break_the_wrapped_rule(tmp_path: Path) -> None:
    files = {"PH2Dataset/Readme.txt": b"r", "__MACOSX/PH2Dataset/._Readme.txt": b"m"}
    archive = _zip(tmp_path / "PH2Dataset.zip", files)
    assert unpack(archive, tmp_path, into="PH2Dataset")
    assert _tree(tmp_path) == {"PH2Dataset/Readme.txt": b"r"}


def test_extraction_merges_into_an_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "mine.txt").write_bytes(b"keep")
    archive = _tar(tmp_path / "annotations.tar.gz", {"annotations/test.txt": b"new"})
    assert unpack(archive, tmp_path, into="annotations")
    assert _tree(tmp_path) == {"annotations/mine.txt": b"keep", "annotations/test.txt": b"new"}


def test_pick_flattens_named_members_only(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "isbi.zip", {"d/train-volume.tif": b"V", "d/train-labels.tif": b"L",
                                            "d/test-volume.tif": b"T"})
    assert unpack(archive, tmp_path, pick=("train-volume.tif", "train-labels.tif"))
    assert _tree(tmp_path) == {"train-labels.tif": b"L", "train-volume.tif": b"V"}


def test_pick_names_what_is_missing(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "isbi.zip", {"d/train-volume.tif": b"V"})
    with pytest.raises(DownloadError, match=r"does not contain train-labels\.tif .*d/train-volume\.tif"):
        unpack(archive, tmp_path, pick=("train-volume.tif", "train-labels.tif"))


@pytest.mark.parametrize("name", ["../evil.txt", "images/../../evil.txt", "/tmp/evil.txt", "C:/evil.txt"])
@pytest.mark.parametrize("make", [_tar, _zip])
def test_traversal_members_are_refused(tmp_path: Path, name: str, make) -> None:
    root = tmp_path / "root"
    root.mkdir()
    archive = make(root / ("bad.tar.gz" if make is _tar else "bad.zip"), {"images/ok.jpg": b"ok", name: b"x"})
    with pytest.raises(DownloadError, match=r"unsafe member path"):
        unpack(archive, root, into="images")
    assert not (tmp_path / "evil.txt").exists()
    assert not (root / "images").exists()


def test_tar_symlink_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "links.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        link = tarfile.TarInfo("images/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(DownloadError, match=r"link or special file"):
        unpack(archive, tmp_path, into="images")
    assert not (tmp_path / "images").exists()


def test_html_error_page_is_not_an_archive(tmp_path: Path) -> None:
    page = tmp_path / "images.tar.gz"
    page.write_bytes(b"<html><body>Quota exceeded</body></html>")
    with pytest.raises(DownloadError, match=r"neither a tar, zip nor RAR"):
        unpack(page, tmp_path, into="images")


def test_truncated_tar_is_a_clear_error(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "images.tar.gz", {"images/a.jpg": os.urandom(50_000)})
    archive.write_bytes(archive.read_bytes()[:20_000])
    with pytest.raises(DownloadError, match=r"not a readable, safe tar archive"):
        unpack(archive, tmp_path, into="images")


def _rar(path: Path) -> Path:
    path.write_bytes(RAR_MAGIC + b"\x00fake body")
    return path


def test_rar_without_tool_prints_exact_commands(tmp_path: Path, monkeypatch, capsys) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    root = tmp_path / "my data"
    root.mkdir()
    archive = _rar(root / "PH2Dataset.rar")
    assert unpack(archive, root, into="PH2Dataset") is False
    out = capsys.readouterr().out
    assert f"unrar x -o+ -y '{archive}' '{root}/'" in out
    assert f"bsdtar -xf '{archive}' -C '{root}'" in out
    assert archive.exists() and not (root / "PH2Dataset").exists()


def test_rar_is_extracted_with_a_tool_on_path(tmp_path: Path, monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "unrar-args.txt"
    script = bin_dir / "unrar"
    # Stands in for unrar: records its arguments and writes the PH2 layout into the destination ($5).
    script.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$@\" > '{log}'\n"
        'mkdir -p "$5/PH2Dataset/PH2 Dataset images/IMD002/IMD002_lesion"\n'
        'printf lesion > "$5/PH2Dataset/PH2 Dataset images/IMD002/IMD002_lesion/IMD002_lesion.bmp"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ.get("PATH", ""))
    root = tmp_path / "root"
    root.mkdir()
    archive = _rar(root / "PH2Dataset.rar")
    assert unpack(archive, root, into="PH2Dataset")
    staging = root / STATE_DIR / "unpack-PH2Dataset.rar"
    assert log.read_text().splitlines() == rar_commands(archive, staging)["unrar"][1:]
    assert _tree(root) == {"PH2Dataset/PH2 Dataset images/IMD002/IMD002_lesion/IMD002_lesion.bmp": b"lesion"}


def test_failing_rar_tool_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "7z"
    script.write_text("#!/bin/sh\necho 'ERROR: Data Error in encrypted file' >&2\nexit 2\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir))
    archive = _rar(tmp_path / "PH2Dataset.rar")
    with pytest.raises(DownloadError, match=r"7z could not extract .*exit 2.*Data Error"):
        unpack(archive, tmp_path, into="PH2Dataset")
