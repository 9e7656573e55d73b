"""End to end against the loopback server: fixture archives in each dataset's official packaging are
downloaded, checked and unpacked into the readers' layouts; re-runs only check; errors exit 2."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from seg.download import download_dataset, sources
from seg.download.cli import BASE_URL_ENV, main
from seg.download.extract import STATE_DIR

PETS = ("Abyssinian_1", "beagle_2")


def _png(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _pets_archives(folder: Path) -> dict[str, bytes]:
    """images.tar.gz / annotations.tar.gz as released: top folders images/ and annotations/."""
    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {}
    for name in PETS:
        files[f"images/{name}.jpg"] = _png(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), "JPEG")
        files[f"annotations/trimaps/{name}.png"] = _png(rng.integers(1, 4, (12, 16), dtype=np.uint8), "PNG")
    files["annotations/list.txt"] = (b"#Image CLASS-ID SPECIES BREED ID\n"
                                     b"Abyssinian_1 1 1 1\nbeagle_2 13 2 2\n")
    files["annotations/trainval.txt"] = b"Abyssinian_1 1 1 1\n"
    files["annotations/test.txt"] = b"beagle_2 13 2 2\n"
    for archive, top in (("images.tar.gz", "images/"), ("annotations.tar.gz", "annotations/")):
        with tarfile.open(folder / archive, "w:gz") as tar:
            for name, data in files.items():
                if name.startswith(top):
                    _add(tar, name, data)
    return files


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and STATE_DIR not in p.parts}


def _pets_sources(http_server) -> list:
    """The registry's pets sources pointed at the server, with the fixtures' own SHA-256 pinned."""
    def sha(name: str) -> str:
        return hashlib.sha256((http_server.folder / name).read_bytes()).hexdigest()

    return [replace(s, md5=None, sha256=sha(s.filename)) for s in sources("pets", base_url=http_server.url)]


def test_pets_download_extracts_layout_and_rerun_is_a_no_op(http_server, tmp_path: Path, capsys) -> None:
    files = _pets_archives(http_server.folder)
    root = tmp_path / "pets"
    assert download_dataset("pets", root, sources=_pets_sources(http_server), timeout=5) is True
    assert _tree(root) == files  # archives deleted after extraction, nothing else left
    markers = sorted(p.name for p in (root / STATE_DIR).iterdir())
    assert markers == ["annotations.tar.gz.done", "images.tar.gz.done"]
    assert len(http_server.requests) == 2
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    capsys.readouterr()

    assert download_dataset("pets", root, sources=_pets_sources(http_server), timeout=5) is True
    assert len(http_server.requests) == 2
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps
    out = capsys.readouterr().out
    assert out.count("already extracted") == 2
    assert f"train with: seg-train dataset=pets dataset.root={root}" in out


def test_pets_keep_archives(http_server, tmp_path: Path) -> None:
    _pets_archives(http_server.folder)
    root = tmp_path / "pets"
    download_dataset("pets", root, sources=_pets_sources(http_server), keep_archives=True, timeout=5)
    for name in ("images.tar.gz", "annotations.tar.gz"):
        assert (root / name).read_bytes() == (http_server.folder / name).read_bytes()
    assert (root / "images" / "beagle_2.jpg").is_file()


def test_pinned_pets_md5_rejects_a_wrong_mirror(http_server, tmp_path: Path, capsys) -> None:
    _pets_archives(http_server.folder)
    root = tmp_path / "pets"
    served = (http_server.folder / "images.tar.gz").read_bytes()
    assert main(["pets", "--root", str(root), "--base-url", http_server.url, "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seg-download: error: checksum mismatch for images.tar.gz")
    assert "5c4f3ee8e5d25df40f4fd59a7f44e54c" in err and hashlib.md5(served).hexdigest() in err
    assert not (root / "images.tar.gz").exists() and not (root / "images").exists()
    assert (root / "images.tar.gz.bad").read_bytes() == served


def _tiff_stack(seed: int) -> bytes:
    pages = [Image.fromarray(np.random.default_rng(seed + i).integers(0, 255, (8, 8), dtype=np.uint8))
             for i in range(3)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    return buffer.getvalue()


def test_isbi_cli_extracts_the_two_training_stacks(http_server, tmp_path: Path, capsys) -> None:
    stacks = {"train-volume.tif": _tiff_stack(0), "train-labels.tif": _tiff_stack(10)}
    with zipfile.ZipFile(http_server.folder / "ISBI-2012-challenge.zip", "w") as zf:
        for name, data in stacks.items():
            zf.writestr(f"ISBI-2012-challenge/{name}", data)
        zf.writestr("ISBI-2012-challenge/test-volume.tif", _tiff_stack(20))
    zip_sha = hashlib.sha256((http_server.folder / "ISBI-2012-challenge.zip").read_bytes()).hexdigest()
    root = tmp_path / "isbi"
    assert main(["isbi2012", "--root", str(root), "--base-url", http_server.url + "/", "--timeout", "5"]) == 0
    assert _tree(root) == stacks
    with Image.open(root / "train-volume.tif") as image:
        assert image.n_frames == 3
    out = capsys.readouterr().out
    assert zip_sha in out  # no published checksum: printed so users can pin it
    marker = root / STATE_DIR / "ISBI-2012-challenge.zip.done"
    assert marker.read_text() == f"{zip_sha}  ISBI-2012-challenge.zip\n"


def _mhd_pair(folder: Path, uid: str) -> dict[str, bytes]:
    image = sitk.GetImageFromArray(np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 1000)
    image.SetSpacing((0.7, 0.7, 2.5))
    sitk.WriteImage(image, str(folder / f"{uid}.mhd"))
    return {name: (folder / name).read_bytes() for name in (f"{uid}.mhd", f"{uid}.raw")}


def test_luna_subsets_and_csvs_then_rerun_only_checks(http_server, tmp_path: Path, monkeypatch,
                                                      capsys) -> None:
    served = http_server.folder
    work = tmp_path / "work"
    work.mkdir()
    pair0, pair1 = _mhd_pair(work, "1.3.6.1.4.1.14519.5.2.1.6279.6001.100"), _mhd_pair(work, "1.3.6.1.4.1.99")
    with zipfile.ZipFile(served / "subset0.zip", "w") as zf:  # as on Zenodo: wrapped in subset0/
        for name, data in pair0.items():
            zf.writestr(f"subset0/{name}", data)
    with zipfile.ZipFile(served / "subset1.zip", "w") as zf:  # an unwrapped copy lands in subset1/ too
        for name, data in pair1.items():
            zf.writestr(name, data)
    (served / "subset2.zip").write_bytes(b"never requested")
    csvs = {
        "annotations.csv": b"seriesuid,coordX,coordY,coordZ,diameter_mm\n1.3.6.1.4.1.99,-1.5,2.0,-30.2,5.1\n",
        "candidates.csv": b"seriesuid,coordX,coordY,coordZ,class\n1.3.6.1.4.1.99,-1.5,2.0,-30.2,1\n",
    }
    for name, data in csvs.items():
        (served / name).write_bytes(data)
    monkeypatch.setenv(BASE_URL_ENV, http_server.url)
    root = tmp_path / "luna"
    assert main(["luna16", "--root", str(root), "--subsets", "1,0", "--timeout", "5"]) == 0
    expected = {**csvs, **{f"subset0/{k}": v for k, v in pair0.items()},
                **{f"subset1/{k}": v for k, v in pair1.items()}}
    for name, data in csvs.items():  # no published checksums: pinned next to each file
        expected[f"{name}.sha256"] = f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode()
    assert _tree(root) == expected
    assert sorted(path for path, _ in http_server.requests) == [
        "/annotations.csv", "/candidates.csv", "/subset0.zip", "/subset1.zip"]
    image = sitk.ReadImage(str(root / "subset0" / "1.3.6.1.4.1.14519.5.2.1.6279.6001.100.mhd"))
    assert image.GetSize() == (4, 3, 2) and image.GetSpacing() == pytest.approx((0.7, 0.7, 2.5))
    capsys.readouterr()

    assert main(["luna16", "--root", str(root), "--subsets", "0,1", "--timeout", "5"]) == 0
    assert len(http_server.requests) == 4
    out = capsys.readouterr().out
    assert out.count("checksum OK") == 2 and out.count("already extracted") == 2


def test_ph2_uses_a_local_zip_copy_without_downloading(http_server, tmp_path: Path) -> None:
    root = tmp_path / "ph2"
    root.mkdir()
    rng = np.random.default_rng(1)
    case = "PH2Dataset/PH2 Dataset images/IMD002"
    image = rng.integers(0, 255, (9, 11, 3), dtype=np.uint8)
    lesion = (rng.random((9, 11)) > 0.5).astype(np.uint8) * 255
    files = {f"{case}/IMD002_Dermoscopic_Image/IMD002.bmp": _png(image, "BMP"),
             f"{case}/IMD002_lesion/IMD002_lesion.bmp": _png(lesion, "BMP")}
    with zipfile.ZipFile(root / "PH2Dataset.zip", "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    assert download_dataset("ph2", root, base_url=http_server.url, timeout=5) is True
    assert http_server.requests == []
    user_zip = (root / "PH2Dataset.zip").read_bytes()
    assert _tree(root) == {**files, "PH2Dataset.zip": user_zip}  # the user's own zip is not deleted


def test_ph2_rar_without_extractor_downloads_and_explains(http_server, tmp_path: Path, monkeypatch,
                                                          capsys) -> None:
    (http_server.folder / "PH2Dataset.rar").write_bytes(b"Rar!\x1a\x07\x00" + bytes(range(256)) * 8)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    root = tmp_path / "ph2"
    assert main(["ph2", "--root", str(root), "--base-url", http_server.url, "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    assert "unrar x -o+ -y" in out and "7z x -y" in out and "run this command again" in out
    assert (root / "PH2Dataset.rar").read_bytes() == (http_server.folder / "PH2Dataset.rar").read_bytes()
    assert not (root / STATE_DIR / "PH2Dataset.rar.done").exists()


def test_siim_prints_kaggle_steps_and_exits_0(tmp_path: Path, capsys) -> None:
    root = tmp_path / "siim"
    assert main(["siim", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    for needle in ("Kaggle account", "accept", "pip install kaggle", "~/.kaggle/kaggle.json",
                   "kaggle datasets download -d jesperdramsch/siim-acr-pneumothorax-segmentation-data",
                   f"{root}/dicom-images-train/", f"{root}/train-rle.csv"):
        assert needle in out
    assert not root.exists()


def test_unreachable_server_exits_2_with_a_clear_message(tmp_path: Path, capsys) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["isbi2012", "--root", str(tmp_path / "isbi"), "--base-url", f"http://127.0.0.1:{port}",
                 "--timeout", "5"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("seg-download: error: could not download ISBI-2012-challenge.zip: ")
    assert f"127.0.0.1:{port}" in err and "cannot connect" in err and "run the command again" in err


@pytest.mark.parametrize("argv, needle", [
    (["luna16", "--subsets", "0,12"], "subset numbers 0-9"),
    (["luna16", "--subsets", "one"], "subset numbers 0-9"),
    (["pets", "--subsets", "0"], "--subsets applies to luna16 only"),
])
def test_bad_subsets_exit_2(argv: list[str], needle: str, tmp_path: Path, capsys) -> None:
    assert main([*argv, "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seg-download: error: ") and needle in err


def test_registry_urls_follow_the_official_records() -> None:
    luna = {s.filename: s.urls[0] for s in sources("luna16", subsets=[6, 7])}
    assert luna["subset6.zip"] == "https://zenodo.org/record/3723295/files/subset6.zip"
    assert luna["subset7.zip"] == "https://zenodo.org/record/4121926/files/subset7.zip"
    assert luna["candidates.csv"] == "https://zenodo.org/record/3723295/files/candidates.csv"
    pets = sources("pets")
    assert pets[0].urls == ("https://thor.robots.ox.ac.uk/datasets/pets/images.tar.gz",
                            "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz")
    assert [s.into for s in pets] == ["images", "annotations"]
