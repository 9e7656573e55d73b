"""A stored config is complete or refused: a missing key is named (never the constructor's default), a
model without `_target_` or one that builds no module is one line, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from seg.checkpoint import load_checkpoint, save_checkpoint
from seg.config import EvalConfig
from seg.errors import CheckpointError, ConfigError
from seg.inference.evaluate import run_eval
from seg.stored import keys_set_for, missing_keys
from seg.train.fit import fit
from tests.tiny import compose_cfg


@pytest.fixture(scope="module")
def best(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    fit(compose_cfg(["trainer.epochs=1", "trainer.precision=32"], run), run)
    return run / "checkpoints" / "best.pt"


def altered(best: Path, tmp_path: Path, change) -> Path:
    ckpt = load_checkpoint(best)
    change(ckpt["config"])
    return save_checkpoint(ckpt, tmp_path / "altered.pt")


def evaluate(path: Path, out: Path, **values) -> dict:
    cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig), {"ckpt": str(path), "device": "cpu", "split": "val",
                                                             "out_dir": str(out), **values})
    return run_eval(cfg)


def test_every_key_the_configs_set_is_known() -> None:
    assert "image_size" in keys_set_for("dataset", "seg.data.synthetic.SyntheticData")
    assert {"depth", "wf", "in_channels"} <= keys_set_for("model", "seg.models.UNet")
    assert keys_set_for("model", "not.a.Target") == frozenset()
    assert missing_keys({"dataset": {"_target_": "seg.data.synthetic.SyntheticData"}})[0].startswith("dataset.")


def test_a_stored_dataset_without_image_size_is_refused_by_name(best: Path, tmp_path: Path) -> None:
    path = altered(best, tmp_path, lambda c: c["dataset"].pop("image_size"))
    with pytest.raises(CheckpointError, match=r"lacks dataset\.image_size"):
        evaluate(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    report = evaluate(path, tmp_path / "out", dataset={"image_size": 32})  # the user may supply it
    assert report["n_images"] > 0


def test_a_model_without_target_or_that_builds_no_module(best: Path, tmp_path: Path) -> None:
    path = altered(best, tmp_path, lambda c: c["model"].pop("_target_"))
    with pytest.raises(ConfigError, match="the model config has no _target_"):
        evaluate(path, tmp_path / "out")

    poly = {"_target_": "seg.engine.schedulers.poly", "_partial_": True}
    path = altered(best, tmp_path, lambda c: c.update(loss=poly))
    with pytest.raises(ConfigError, match=r"loss\._target_=seg.engine.schedulers.poly built a \w+, not a torch"):
        evaluate(path, tmp_path / "out")


def test_seg_eval_says_when_the_split_differs_from_the_trainings(best: Path, tmp_path: Path, caplog) -> None:
    evaluate(best, tmp_path / "same")
    assert "split differs" not in caplog.text
    evaluate(best, tmp_path / "other", dataset={"split_seed": 7})
    (line,) = [r.getMessage() for r in caplog.records if "split differs" in r.getMessage()]
    assert "seg-eval: the train/val/test split differs from the one it was trained on" in line


@pytest.mark.parametrize(("change", "expected"), [
    (lambda c: c.update(trainer="abc"), "key trainer holds a str, expected a mapping"),
    (lambda c: c.update(model=[1]), "key model holds a list"),
    (lambda c: c["model"].update(_recursive_="no"), "_recursive_=no must be true or false"),
])  # fmt: skip
def test_a_stored_config_of_the_wrong_shape(best: Path, tmp_path: Path, change, expected) -> None:
    with pytest.raises(CheckpointError, match=expected):
        evaluate(altered(best, tmp_path, change), tmp_path / "out")


def test_a_deeply_nested_stored_config(best: Path, tmp_path: Path) -> None:
    def nest(config: dict) -> None:
        node = config["model"]
        for _ in range(200):
            node["x"] = {}
            node = node["x"]

    with pytest.raises(CheckpointError, match="nests deeper than 32 levels"):
        evaluate(altered(best, tmp_path, nest), tmp_path / "out")
