"""Checkpoint ensembles: seg-eval's ensemble metrics equal those of the members' averaged probabilities
computed by hand, each member's row equals its own seg-eval, members that cannot be averaged are
refused in one line, a folder selects its runs' best.pt, and seg-predict writes the averaged masks."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from seg.checkpoint import load_checkpoint, save_checkpoint
from seg.cli.common import config_dir
from seg.config import EvalConfig, PredictConfig
from seg.engine import builders
from seg.errors import ConfigError
from seg.inference.ensemble import select
from seg.inference.evaluate import run_eval
from seg.inference.predict import run_predict
from seg.metrics import SegMetrics
from seg.models import UNet
from seg.train.fit import fit
from tests.cli.forked import run_forked
from tests.tiny import compose_cfg

KEYS = ("dice", "iou", "precision", "recall")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep-like folder with two runs of the tiny U-Net, seeds 1 and 2 (contiguous layout, fp32, so
    the hand computation below runs the very same kernels)."""
    root = tmp_path_factory.mktemp("sweep")
    for seed in (1, 2):
        run = root / f"{seed - 1}_seed={seed}"
        fit(compose_cfg(["trainer.epochs=1", "trainer.precision=32", "trainer.channels_last=false", f"seed={seed}"],
                        run), run)
        recentre(run / "checkpoints" / "best.pt")
    return root


def recentre(path: Path) -> None:
    """A one-epoch model predicts nearly one class everywhere. Its output bias is moved so that its
    median test logit is 0: each member then marks about half of the pixels, its own half, and the
    averaged probabilities decide pixels where the members disagree."""
    ckpt = load_checkpoint(path)
    images, _ = held_out(path)
    model = model_of(path)
    with torch.no_grad():
        ckpt["model"]["last.bias"] -= model(images).median()
    save_checkpoint(ckpt, path)


def held_out(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images (float, [0,1]) and masks of the data a checkpoint was trained on."""
    data = builders.build_data(OmegaConf.create(load_checkpoint(path)["config"]["dataset"]))
    test = data.dataset("test")
    items = [test[i] for i in range(len(test))]
    return torch.stack([it["image"] for it in items]).float() / 255, torch.stack([it["mask"] for it in items]).long()


def members(sweep: Path) -> list[Path]:
    return [sweep / "0_seed=1" / "checkpoints" / "best.pt", sweep / "1_seed=2" / "checkpoints" / "best.pt"]


def eval_cfg(**values):
    return OmegaConf.merge(OmegaConf.structured(EvalConfig), {"device": "cpu", **values})


def model_of(path: Path) -> UNet:
    ckpt = load_checkpoint(path)
    model = UNet(**{k: v for k, v in ckpt["config"]["model"].items() if k != "_target_"})
    model.load_state_dict(ckpt["model"])
    return model.eval()


@torch.no_grad()
def averaged(paths: list[Path], images: torch.Tensor) -> torch.Tensor:
    """The members' mean foreground probability for float images [B,C,H,W] in [0,1]."""
    return torch.stack([torch.sigmoid(model_of(p)(images)) for p in paths]).mean(0)


def test_ensemble_metrics_equal_the_averaged_probabilities_by_hand(sweep: Path, tmp_path: Path) -> None:
    paths = members(sweep)
    report = run_eval(eval_cfg(ckpt=[str(p) for p in paths], out_dir=str(tmp_path / "ens"), n_overlays=2))
    images, masks = held_out(paths[0])
    probs = averaged(paths, images)[:, 0]
    by_hand = SegMetrics(n_classes=1, class_names=["lesion"])
    by_hand.update_prediction((probs > 0.5).long(), masks)
    expected = by_hand.compute()
    for key in KEYS:
        assert report[key] == pytest.approx(expected[key], abs=1e-6), key
    assert 0 < expected["dice"] < 1 and report["n_images"] == len(images) > 0
    assert [m["checkpoint"] for m in report["members"]] == [str(p.resolve()) for p in paths]
    singles = [(torch.sigmoid(model_of(p)(images))[:, 0] > 0.5) for p in paths]
    ensemble = probs > 0.5
    assert all((ensemble != single).any() for single in singles)  # the mean decides: neither member alone
    out = tmp_path / "ens"
    rows = list(csv.DictReader((out / "ensemble.csv").open()))
    assert [r["member"] for r in rows] == ["1", "2", "ensemble"]
    assert [r["name"] for r in rows[:2]] == ["0_seed=1", "1_seed=2"]
    assert float(rows[2]["dice"]) == pytest.approx(expected["dice"], abs=1e-6)
    saved = json.loads((out / "ensemble.json").read_text())
    assert saved["split"] == "test" and saved["rows"][2]["iou"] == pytest.approx(expected["iou"], abs=1e-6)
    per_image = list(csv.DictReader((out / "per_image.csv").open()))
    assert [float(r["max_prob"]) for r in per_image] == pytest.approx(probs.amax(dim=(1, 2)).tolist(), abs=1e-5)
    assert len(list((out / "overlays").glob("*.png"))) == 2 and (out / "reliability.png").is_file()

    # Each member's row is what seg-eval gives for that checkpoint alone.
    for k, path in enumerate(paths):
        alone = run_eval(eval_cfg(ckpt=str(path), out_dir=str(tmp_path / f"alone{k}"), overlays="none"))
        row = saved["rows"][k]
        assert row["checkpoint_sha256"] == alone["checkpoint_sha256"]
        for key in (*KEYS, "loss", "dice_per_image"):
            assert row[key] == pytest.approx(alone[key], abs=1e-9), (k, key)
        assert report["members"][k]["dice"] == pytest.approx(alone["dice"], abs=1e-9)


def crafted(source: Path, target: Path, section: str = "model", **values) -> Path:
    """A copy of `source` whose stored config says other `values` in `section` (weights unchanged)."""
    ckpt = load_checkpoint(source)
    ckpt["config"].setdefault(section, {}).update(values)
    save_checkpoint(ckpt, target)
    return target


@pytest.mark.parametrize(("section", "change", "shown"), [
    ("model", {"n_classes": 3}, "n_classes: 3 vs 1"),
    ("model", {"in_channels": 1}, "in_channels: 1 vs 3"),
    ("dataset", {"image_size": 64}, r"image_size: \[64, 64\] vs \[32, 32\]"),
    ("inference", {"mode": "slide", "window": 16}, "inference: sliding windows 16x16, overlap 0.5 vs resize mode"),
])  # fmt: skip
def test_members_that_cannot_be_averaged_are_refused(sweep: Path, tmp_path: Path, section, change, shown) -> None:
    first = members(sweep)[0]
    other = crafted(first, tmp_path / "other.pt", section, **change)
    expected = rf"ensemble member 2 \({other}\) differs from member 1 \({first}\) in {shown}; "
    with pytest.raises(ConfigError, match=expected) as caught:
        run_eval(eval_cfg(ckpt=[str(first), str(other)], out_dir=str(tmp_path / "out")))
    assert "\n" not in str(caught.value) and not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=expected):
        run_predict(OmegaConf.merge(OmegaConf.structured(PredictConfig), {
            "device": "cpu", "ckpt": [str(first), str(other)], "input": str(tmp_path)}))


def test_the_command_line_takes_a_list_and_refuses_in_one_line(sweep: Path, tmp_path: Path) -> None:
    """The real command line: Hydra's list syntax, and the one-line refusal with exit 2. (About 4 s alone:
    the forked runner's one import of torch and Hydra, shared with the CLI tests in a full run.)"""
    first = members(sweep)[0]
    other = crafted(first, tmp_path / "three.pt", n_classes=3)
    # The run folder's name holds `=`, which Hydra reads only quoted: ckpt=['...','...'].
    proc = run_forked("seg-eval", [f"ckpt=['{first}','{other}']", f"out_dir={tmp_path / 'out'}", "device=cpu"],
                      cwd=tmp_path, env=dict(os.environ))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "seg-eval: error: ensemble member 2" in lines[0] and "in n_classes: 3 vs 1" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()


def test_ckpt_lists_and_members_compose() -> None:
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name="eval", overrides=["ckpt=[a.pt,b/c.pt]"])
        assert list(cfg.ckpt) == ["a.pt", "b/c.pt"] and cfg.members is None
        cfg = compose(config_name="predict", overrides=["ckpt=sweep", "members='*model=unet,seed=1*'", "input=x"])
        assert cfg.ckpt == "sweep" and cfg.members == "*model=unet,seed=1*"


def test_a_folder_selects_its_runs_best_checkpoints(tmp_path: Path) -> None:
    for name in ("2_model=unet,seed=2", "0_model=unet,seed=1", "1_model=segnet,seed=1", "nested/3_model=unet"):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        (tmp_path / name / "checkpoints" / "best.pt").write_bytes(b"")
        (tmp_path / name / "checkpoints" / "last.pt").write_bytes(b"")
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "best.pt").write_bytes(b"")  # not in a run's checkpoints/: not a member
    runs = [p.parent.parent.relative_to(tmp_path).as_posix() for p in select(tmp_path, None)]
    assert runs == ["0_model=unet,seed=1", "1_model=segnet,seed=1", "2_model=unet,seed=2", "nested/3_model=unet"]
    unet = [p.parent.parent.name for p in select(tmp_path, "*model=unet*")]
    assert unet == ["0_model=unet,seed=1", "2_model=unet,seed=2", "3_model=unet"]
    seed_1 = [p.parent.parent.name for p in select(tmp_path, "*seed=1")]
    assert seed_1 == ["0_model=unet,seed=1", "1_model=segnet,seed=1"]
    with pytest.raises(ConfigError, match=r"members='\*resnet\*': none of the 4 run folder\(s\)"):
        select(tmp_path, "*resnet*")
    with pytest.raises(ConfigError, match=r"no checkpoints/best.pt below it"):
        select(tmp_path / "loose", None)
    with pytest.raises(ConfigError, match="members='x' filters the runs below ckpt=FOLDER, but ckpt is a list"):
        run_eval(eval_cfg(ckpt=["a.pt", "b.pt"], members="x"))
    with pytest.raises(ConfigError, match="lists a.pt twice"):
        run_eval(eval_cfg(ckpt=["a.pt", "b.pt", "a.pt"]))
    last = tmp_path / "0_model=unet,seed=1" / "checkpoints" / "last.pt"
    last.unlink()
    os.link(last.with_name("best.pt"), last)  # as seg-train links them when the last epoch is the best
    with pytest.raises(ConfigError, match="names one file twice"):
        run_predict(OmegaConf.merge(OmegaConf.structured(PredictConfig), {
            "ckpt": [str(last.with_name("best.pt")), str(last)], "input": str(tmp_path)}))
    with pytest.raises(ConfigError, match="tune=true tunes one checkpoint"):
        run_eval(eval_cfg(ckpt=["a.pt", "b.pt"], tune=True, split="val"))


def test_a_sweep_folder_and_a_member_with_another_test_split(sweep: Path, tmp_path: Path, caplog) -> None:
    """ckpt=FOLDER takes every run's best.pt; a member whose split.json holds other test cases is
    named in a warning; a member with tuned post-processing is scored with it (as alone), the ensemble
    without; members=GLOB picking one run evaluates it alone, where seg-eval puts it."""
    folder = tmp_path / "sweep"
    shutil.copytree(sweep, folder, symlinks=True)
    tuned = folder / "0_seed=1" / "checkpoints" / "best.pt"
    run_eval(eval_cfg(ckpt=str(tuned), split="val", tune=True, overlays="none", out_dir=str(tmp_path / "tune")))
    single = run_eval(eval_cfg(ckpt=str(tuned), overlays="none", out_dir=str(tmp_path / "single")))
    assert single["postprocess"] is not None
    split_file = folder / "1_seed=2" / "split.json"
    split = json.loads(split_file.read_text())
    split["train"], split["test"] = split["train"][1:] + split["test"][:1], split["test"][1:] + split["train"][:1]
    split_file.write_text(json.dumps(split, indent=1))
    with caplog.at_level(logging.WARNING, logger="seg"):
        report = run_eval(eval_cfg(ckpt=str(folder), overlays="none"))
    assert [m["name"] for m in report["members"]] == ["0_seed=1", "1_seed=2"]
    (written,) = (folder / "ensemble-eval").glob("test-*/ensemble.csv")  # the runs' common folder, per set
    assert len(written.parent.name) == len("test-") + 8
    warned = [r.getMessage() for r in caplog.records if "ensemble member 2" in r.getMessage()]
    assert len(warned) == 1 and "its test split" in warned[0] and "1 of them among its train/val cases" in warned[0]
    assert "the ensemble's masks are not post-processed (best.postprocess.json was tuned for" in caplog.text
    assert report["members"][0]["postprocess"] == single["postprocess"] and report["postprocess"] is None
    assert report["members"][0]["dice"] == pytest.approx(single["dice"], abs=1e-9)
    alone = run_eval(eval_cfg(ckpt=str(folder), members="*seed=2", overlays="none"))
    assert alone["checkpoint"] == str((folder / "1_seed=2" / "checkpoints" / "best.pt").resolve())
    assert (folder / "1_seed=2" / "eval" / "best-test" / "metrics.json").is_file()


def test_predict_writes_the_thresholded_mean_of_the_members(sweep: Path, tmp_path: Path) -> None:
    paths = members(sweep)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "in" / f"case{i}.png")
    cfg = OmegaConf.merge(OmegaConf.structured(PredictConfig),
                          {"device": "cpu", "ckpt": [str(p) for p in paths], "input": str(tmp_path / "in")})
    result = run_predict(cfg)
    (out,) = (sweep / "ensemble-predictions").glob("in-*")  # the members' common folder, per set of members
    assert result["n_images"] == 3 and result["out_dir"] == str(out)
    probs = averaged(paths, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    for i in range(3):
        mask = np.asarray(Image.open(out / "masks" / f"case{i}.png"))
        np.testing.assert_array_equal(mask // 255, (probs[i, 0] > 0.5).numpy().astype(np.uint8))
    listed = json.loads((out / "ensemble.json").read_text())["members"]
    assert [m["checkpoint"] for m in listed] == [str(p.resolve()) for p in paths]
    with pytest.raises(ConfigError, match=r"ensemble member 2 \(m.onnx\) is an .onnx file"):
        run_predict(OmegaConf.merge(cfg, {"ckpt": [str(paths[0]), "m.onnx"]}))


def test_copies_links_and_homeless_sets_of_members(sweep: Path, tmp_path: Path) -> None:
    """A copied run counts once or is refused; linked runs are found; no default folder at / or ~."""
    import shutil

    folder = tmp_path / "runs"
    shutil.copytree(sweep, folder / "real", symlinks=True)
    (folder / "linked").symlink_to(sweep, target_is_directory=True)  # the same runs again, through a link
    with pytest.raises(ConfigError, match="byte-identical copy of member 1"):
        run_eval(eval_cfg(ckpt=str(folder), overlays="none"))
    only_links = tmp_path / "links"
    only_links.mkdir()
    (only_links / "sweep").symlink_to(sweep, target_is_directory=True)
    from seg.inference.ensemble import ensemble_paths

    assert len(ensemble_paths(str(only_links), None)) == 2  # found through the link
    from seg.inference.core import ensemble_output_dir

    with pytest.raises(ConfigError, match="out_dir=PATH"):
        ensemble_output_dir([Path("/tmp/a/checkpoints/best.pt"), Path("/var/b/checkpoints/best.pt")], "eval", "test")

