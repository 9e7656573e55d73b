"""The bad-input matrix: each damaged or crafted input, through the command a user runs, ends in one
line on stderr, exit code 2, no traceback, and every file that was there before keeps its bytes."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from seg.checkpoint import save_checkpoint
from seg.train.fit import fit
from tests.cli.test_cli import TINY, assert_user_error, run
from tests.tiny import compose_cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained")
    fit(compose_cfg(["trainer.epochs=1", "trainer.precision=32"], run_dir), run_dir)
    return run_dir


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def altered(trained: Path, folder: Path, change: Callable[[dict], None]) -> Path:
    ckpt = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)
    change(ckpt)
    return save_checkpoint(ckpt, folder / "run" / "checkpoints" / "best.pt")


def crafted(ckpt: dict) -> None:
    ckpt["config"]["loss"] = {"_target_": "builtins.open", "_args_": ["marker", "w"]}


def resolver(ckpt: dict) -> None:
    ckpt["config"]["dataset"]["root"] = "${oc.env:HOME}"


def no_image_size(ckpt: dict) -> None:
    ckpt["config"]["dataset"].pop("image_size")


def no_target(ckpt: dict) -> None:
    ckpt["config"]["model"].pop("_target_")


def damage_bytes(path: Path) -> None:
    """64 bytes inside a tensor's data: the file still unzips, only the member's CRC tells."""
    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda m: m.file_size)
        start = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra) + 128
    data = bytearray(path.read_bytes())
    data[start : start + 64] = bytes(range(64))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("change", "command", "expected"), [
    (crafted, "seg-eval", "builtins.open is not a callable seg builds"),
    (crafted, "seg-predict", "builtins.open is not a callable seg builds"),
    (crafted, "seg-train", "builtins.open is not a callable seg builds"),
    (resolver, "seg-eval", "is an interpolation or resolver"),
    (resolver, "seg-train", "is an interpolation or resolver"),
    (no_image_size, "seg-eval", "lacks dataset.image_size"),
    (no_image_size, "seg-predict", "lacks dataset.image_size"),
    (no_target, "seg-eval", "the model config has no _target_"),
])  # fmt: skip
def test_a_crafted_or_incomplete_checkpoint(trained: Path, tmp_path: Path, change, command, expected) -> None:
    path = altered(trained, tmp_path, change)
    (tmp_path / "in").mkdir()
    shutil.copy(trained / "split.json", tmp_path / "run" / "split.json")
    before = digests(tmp_path)
    args = {"seg-eval": [f"ckpt={path}", "split=val"], "seg-predict": [f"ckpt={path}", f"input={tmp_path / 'in'}"],
            "seg-train": [f"resume={path}"]}[command]
    proc = run(command, *args, cwd=tmp_path)
    assert_user_error(proc, expected)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "marker").exists()
    after = digests(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    # seg-eval and seg-predict write nothing; seg-train's refused resume leaves, in the run folder it did
    # not create, only Hydra's record and log of this invocation (README "Errors").
    allowed = {"run/train.log", "run/.hydra/config.yaml", "run/.hydra/hydra.yaml", "run/.hydra/overrides.yaml"}
    assert set(after) - set(before) <= (allowed if command == "seg-train" else set())


@pytest.mark.parametrize("damage", ["bytes", "truncated", "text"])
def test_a_damaged_checkpoint(trained: Path, tmp_path: Path, damage: str) -> None:
    path = tmp_path / "best.pt"
    shutil.copy(trained / "checkpoints" / "best.pt", path)
    if damage == "bytes":
        damage_bytes(path)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_text("not a checkpoint")
    before = digests(tmp_path)
    proc = run("seg-eval", f"ckpt={path}", "split=val", cwd=tmp_path)
    assert_user_error(proc, {"bytes": "is damaged (CRC mismatch", "truncated": "truncated or damaged",
                             "text": "not a zip archive"}[damage])
    assert len(proc.stderr.strip().splitlines()) == 1 and digests(tmp_path) == before


def test_an_output_folder_holding_the_users_file(trained: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.json").write_text('{"mine": true}')
    before = digests(tmp_path)
    proc = run("seg-eval", f"ckpt={trained / 'checkpoints' / 'best.pt'}", "split=val", f"out_dir={tmp_path / 'out'}",
               cwd=tmp_path)
    assert_user_error(proc, "which seg-eval did not write")
    assert digests(tmp_path) == before


def test_a_diverging_run_stops_in_one_line(tmp_path: Path) -> None:
    diverged = run("seg-train", *TINY, "optimizer.lr=1e30", "trainer.epochs=2", "hydra.run.dir=d", cwd=tmp_path)
    assert_user_error(diverged, "epoch 1", "optimizer.lr")
    assert len(diverged.stderr.strip().splitlines()) == 1
    assert (tmp_path / "d" / "train.log").is_file()  # the run had started: its folder and log stay
    assert not (tmp_path / "d" / "checkpoints" / "best.pt").exists()


def test_an_image_with_nan_pixels_is_named(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        image = rng.random((16, 16, 3)).astype(np.float32)
        if i == 3:
            image[2, 2] = np.nan
        tifffile.imwrite(root / "images" / f"c{i}.tif", image, photometric="rgb")
        tifffile.imwrite(root / "masks" / f"c{i}.tif", (rng.random((16, 16)) > 0.5).astype(np.uint8) * 255)
    before = digests(root)
    proc = run("seg-train", "dataset=folder", f"dataset.root={root}", "dataset.image_size=16", "hydra.run.dir=r",
               cwd=tmp_path)
    assert_user_error(proc, "c3.tif", "NaN")
    assert digests(root) == before and not (tmp_path / "r").exists()
