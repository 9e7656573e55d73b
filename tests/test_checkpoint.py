"""Checkpoints: round trip, atomic writes that never damage an existing file, clear load errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seg.checkpoint import load_checkpoint, load_model_state, make_checkpoint, save_checkpoint, sha256
from seg.errors import CheckpointError


def _state(model: torch.nn.Module) -> dict:
    return make_checkpoint(model=model.state_dict(), config={"model": {}}, epoch=3, metrics={"val/dice": 0.5})


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    model = torch.nn.Conv2d(3, 2, 3)
    path = save_checkpoint(_state(model), tmp_path / "ckpt" / "best.pt")
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and loaded["metrics"] == {"val/dice": 0.5}
    assert {"argv", "created", "versions"} <= set(loaded)
    other = torch.nn.Conv2d(3, 2, 3)
    load_model_state(other, loaded["model"], path)
    assert torch.equal(other.weight, model.weight)
    assert len(sha256(path)) == 64 and sha256(path) == sha256(path)


def test_failed_write_leaves_the_old_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Conv2d(3, 2, 3)
    path = save_checkpoint(_state(model), tmp_path / "best.pt")
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(_state(torch.nn.Conv2d(3, 2, 3)), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temporary file left behind


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not a checkpoint", "not a readable seg checkpoint"),
        (None, "not a seg checkpoint"),
    ],
)
def test_not_a_checkpoint(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "x.pt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_text_file_is_named_as_not_written_by_torch_save(tmp_path: Path) -> None:
    path = tmp_path / "notckpt.pt"
    path.write_text("hello, not a checkpoint\n")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert "not a readable seg checkpoint: not a zip archive written by torch.save" in text
    assert "it starts with b'hello, not a'" in text and "seg-train" in text and "\n" not in text
    assert "(101)" not in text


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.999])
def test_truncated_checkpoint_says_truncated_in_one_line(tmp_path: Path, keep: float) -> None:
    path = save_checkpoint(_state(torch.nn.Conv2d(3, 16, 3)), tmp_path / "best.pt")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert "truncated or damaged" in text and "copy it again" in text, text
    assert "\n" not in text and "miniz" not in text and len(text) < 300


def test_empty_and_foreign_zip_files(tmp_path: Path) -> None:
    import zipfile

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"it is empty \(0 bytes\)"):
        load_checkpoint(empty)
    other = tmp_path / "other.pt"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("notes.txt", "hi")
    with pytest.raises(CheckpointError, match="a zip archive, but not one torch.save wrote"):
        load_checkpoint(other)
    module = tmp_path / "module.pt"
    torch.save(torch.nn.Conv2d(1, 1, 1), module)  # a whole pickled module: refused by the safe load
    with pytest.raises(CheckpointError, match="Python objects that a safe load refuses"):
        load_checkpoint(module)


def test_missing_and_folder_paths(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint(tmp_path)


def test_mismatched_weights_name_the_keys(tmp_path: Path) -> None:
    state = torch.nn.Conv2d(3, 2, 3).state_dict()
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model_state(torch.nn.Conv2d(1, 2, 3), state, "x.pt")
    with pytest.raises(CheckpointError, match="missing"):
        load_model_state(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3)), state, "x.pt")


def _member_data_offset(path: Path, suffix: str) -> tuple[str, int, int]:
    """(name, offset, size) of the stored bytes of the first member whose name ends with `suffix`."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.filename, info.header_offset + 30 + name_len + extra_len, info.file_size


def test_damaged_tensor_bytes_are_detected_in_one_line(tmp_path: Path) -> None:
    """torch.load does not check the CRC-32s of the archive's members: 64 random bytes inside a tensor
    loaded silently. load_checkpoint reads them all first."""
    model = torch.nn.Linear(100, 100)
    path = save_checkpoint(_state(model), tmp_path / "best.pt")
    assert load_checkpoint(path)["epoch"] == 3
    name, offset, size = _member_data_offset(path, "/data/0")
    assert size > 200
    data = bytearray(path.read_bytes())
    data[offset + 100 : offset + 164] = torch.randint(0, 256, (64,), generator=torch.Generator().manual_seed(0)).to(
        torch.uint8).numpy().tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert f"is damaged (CRC mismatch in member {name}); copy it again from the run that wrote it" in text
    assert "\n" not in text
    with pytest.raises(CheckpointError, match="is damaged"):
        load_checkpoint(path, mmap=True)  # a mapped load (resume's first look) checks them too


def test_a_full_disk_names_the_file_being_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as err:
        save_checkpoint(_state(torch.nn.Conv2d(1, 1, 1)), tmp_path / "last.pt")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_publish_copy_links_or_copies_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from seg.checkpoint import publish_copy

    last = save_checkpoint(_state(torch.nn.Conv2d(1, 1, 1)), tmp_path / "last.pt")
    best = publish_copy(last, tmp_path / "best.pt")
    assert os.path.samefile(last, best)
    save_checkpoint(_state(torch.nn.Conv2d(1, 1, 1)), last)  # a new last.pt: best.pt keeps the old bytes
    assert not os.path.samefile(last, best) and load_checkpoint(best)["epoch"] == 3

    def no_links(*args):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # FAT, some network file systems
    publish_copy(last, best)
    assert best.read_bytes() == last.read_bytes() and not os.path.samefile(last, best)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_remove_partial_writes_takes_only_save_checkpoints_own_names(tmp_path: Path) -> None:
    import os
    import tempfile

    from seg.checkpoint import remove_partial_writes

    fd, real = tempfile.mkstemp(prefix=".last.pt.", suffix=".tmp", dir=tmp_path)  # the very names it makes
    os.close(fd)
    others = ["best.pt", ".best.pt.tmp", ".best.pt.1234567.tmp", ".best.pt.12345678.tmp.bak", "x.last.pt.12345678.tmp"]
    for name in others:
        (tmp_path / name).write_text("keep")
    assert remove_partial_writes(tmp_path) == [Path(real).name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)
    assert remove_partial_writes(tmp_path / "missing") == []
