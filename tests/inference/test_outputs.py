"""Output folders shared with the user: seg-eval replaces and removes only what it wrote itself."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from seg.config import EvalConfig
from seg.errors import ConfigError
from seg.inference.evaluate import run_eval
from seg.inference.outputs import RECORD, OutputFolder
from seg.train.fit import fit
from tests.tiny import compose_cfg


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def best(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    fit(compose_cfg(["trainer.epochs=1", "trainer.precision=32"], run), run)
    return run / "checkpoints" / "best.pt"


def evaluate(best: Path, out: Path, **values) -> dict:
    cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig),
                          {"ckpt": str(best), "device": "cpu", "split": "val", "out_dir": str(out), **values})
    return run_eval(cfg)


def test_the_users_files_stay_and_seg_replaces_only_its_own(best: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    (out / "overlays").mkdir(parents=True)
    (out / "overlays" / "my_figure.png").write_bytes(b"the user's figure")
    (out / "notes.txt").write_text("mine")
    evaluate(best, out, n_overlays=2)
    first = sorted(p.name for p in (out / "overlays").glob("0*.png"))
    assert len(first) == 2 and (out / RECORD).is_file()
    evaluate(best, out, overlays="none")  # a second eval replaces its reports and removes its overlays
    assert not list((out / "overlays").glob("0*.png"))
    assert (out / "overlays" / "my_figure.png").read_bytes() == b"the user's figure"
    assert (out / "notes.txt").read_text() == "mine" and (out / "metrics.json").is_file()


def test_a_file_of_the_users_in_the_way_stops_before_anything_is_written(best: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    (out / "metrics.json").write_text('{"mine": 1}')
    before = digests(out)
    with pytest.raises(ConfigError, match=r"already holds metrics.json, which seg-eval did not write"):
        evaluate(best, out)
    assert digests(out) == before

    evaluate(best, tmp_path / "ours")
    (tmp_path / "ours" / "per_image.csv").write_text("edited by hand")  # changed since: the user's now
    before = digests(tmp_path / "ours")
    with pytest.raises(ConfigError, match="per_image.csv"):
        evaluate(best, tmp_path / "ours")
    assert digests(tmp_path / "ours") == before


def test_the_record_survives_damage(tmp_path: Path) -> None:
    (tmp_path / RECORD).write_text("{not json")
    (tmp_path / "metrics.json").write_text("{}")
    outputs = OutputFolder(tmp_path, "seg-eval")  # a damaged record: nothing counts as seg's
    assert not outputs.ours("metrics.json")
    with pytest.raises(ConfigError):
        outputs.claim(["metrics.json"])


def test_seg_predict_keeps_the_users_masks(best: Path, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from seg.config import PredictConfig
    from seg.inference.predict import run_predict

    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "in" / "a.png")
    cfg = OmegaConf.merge(OmegaConf.structured(PredictConfig), {"ckpt": str(best), "device": "cpu",
                                                                "input": str(tmp_path / "in"),
                                                                "out_dir": str(tmp_path / "out")})
    run_predict(cfg)
    run_predict(cfg)  # its own masks are replaced
    (tmp_path / "out" / "masks" / "a.png").write_bytes(b"drawn by hand")
    with pytest.raises(ConfigError, match="masks/a.png, which seg-predict did not write"):
        run_predict(cfg)
    assert (tmp_path / "out" / "masks" / "a.png").read_bytes() == b"drawn by hand"


def test_a_crafted_record_or_a_link_never_reaches_outside(best: Path, tmp_path: Path) -> None:
    import json
    import os

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "results"
    (out / "overlays").mkdir(parents=True)
    crafted = {"files": {"overlays/../../victim.txt": hashlib.sha256(b"keep me").hexdigest(),
                         str(victim): hashlib.sha256(b"keep me").hexdigest()}}
    (out / RECORD).write_text(json.dumps(crafted))
    evaluate(best, out, overlays="none")
    assert victim.read_text() == "keep me"  # paths outside the folder are never seg's

    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(victim, linked / "metrics.json")  # a link in the way is the user's, even to seg's own name
    with pytest.raises(ConfigError, match="metrics.json, which seg-eval did not write"):
        evaluate(best, linked)
    os.symlink(tmp_path / "elsewhere", linked / "overlays")  # a linked folder on the way, even dangling
    (linked / "metrics.json").unlink()
    with pytest.raises(ConfigError, match="overlays/"):
        evaluate(best, linked, n_overlays=1)
    assert victim.read_text() == "keep me" and not (tmp_path / "elsewhere").exists()
