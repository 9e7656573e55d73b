"""seg-export: ONNX and TorchScript models that take uint8 NHWC images of any batch and size (multiples of 32)
and match the PyTorch model (parity JSON), a tuned threshold and empty-image rule inside the graph, refusals
(a tuned file of another checkpoint, a crafted checkpoint, a failed parity check), and seg-predict's ONNX
runner giving the masks of seg's own Predictor. The ONNX export is the slow part (seconds): done once."""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from omegaconf import OmegaConf

import seg.inference.export as export
from seg.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint, sha256
from seg.config import ExportConfig, PredictConfig
from seg.engine.amp import Amp
from seg.errors import CheckpointError, ConfigError, SegError
from seg.inference.core import load_model, predict_probs, stored_config
from seg.inference.onnx_runner import load_onnx_predictor
from seg.inference.postprocess import Settings, apply, save_postprocess
from seg.inference.predict import load_predictor
from seg.models import UNet
from seg.train.fit import fit
from tests.tiny import compose_cfg

FP32 = Amp("32", "cpu", None, None)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


def export_cfg(ckpt: Path, **values: Any):
    return OmegaConf.merge(OmegaConf.structured(ExportConfig), {"ckpt": str(ckpt), **values})


def images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def torch_probs(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    return predict_probs(model, torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255, FP32).numpy()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def best(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic U-Net (RGB, binary, trained at 32x32) after one epoch."""
    run = tmp_path_factory.mktemp("run")
    fit(compose_cfg(["trainer.epochs=1", "trainer.precision=32"], run), run)
    return run / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def model(best: Path) -> torch.nn.Module:
    ckpt = load_checkpoint(best)
    return load_model(ckpt, best, stored_config(ckpt, None, best, nodes=("model",)), device="cpu", precision="32").model


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    return np.concatenate([images((2, 32, 32, 3), seed=2), np.zeros((1, 32, 32, 3), np.uint8)])


@pytest.fixture(scope="module")
def exported(best: Path, model: torch.nn.Module, inputs: np.ndarray,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """ONNX once, with a tuned file beside (a copy of) the checkpoint whose threshold and empty-image rule cut
    through `inputs`' probabilities; TorchScript without one."""
    folder = tmp_path_factory.mktemp("export")
    probs = torch_probs(model, inputs)
    threshold = float(np.quantile(probs, 0.4))
    counts = (probs[:, 0] > threshold).sum(axis=(1, 2))
    # Tuned at 16x16: the graph scales the pixel count by the input's area, as seg's Settings.scaled does.
    tuned = Settings(threshold=threshold, min_size=5, empty_threshold=threshold,
                     empty_min_pixels=int(counts.max()) // 4, pixels_at=(16, 16))
    ckpt = folder / "tuned" / "best.pt"
    ckpt.parent.mkdir()
    shutil.copy(best, ckpt)
    save_postprocess(ckpt, sha256(ckpt), tuned, {})
    records = Records()
    logging.getLogger("seg").addHandler(records)
    try:
        onnx_report = export.run_export(export_cfg(ckpt, out=str(folder / "model.onnx")))
    finally:
        logging.getLogger("seg").removeHandler(records)
    ts_report = export.run_export(export_cfg(best, out=str(folder / "model.torchscript.pt"), format="torchscript"))
    return {"onnx": folder / "model.onnx", "torchscript": folder / "model.torchscript.pt", "tuned": tuned,
            "ckpt": ckpt, "reports": {"onnx": onnx_report, "torchscript": ts_report}, "log": records.lines}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_parity_json_says_what_the_file_takes_and_how_close_it_is(fmt: str, exported: dict[str, Any]) -> None:
    out = exported[fmt]
    report = json.loads(out.with_name(out.name + ".parity.json").read_text())
    assert report == exported["reports"][fmt]
    ckpt = exported["ckpt"] if fmt == "onnx" else Path(report["checkpoint"])
    assert report["checkpoint"] == str(ckpt.resolve()) and report["checkpoint_sha256"] == sha256(ckpt)
    assert report["format"] == fmt and report["opset"] == (18 if fmt == "onnx" else None)
    assert report["input"] == {"name": "image", "dtype": "uint8", "shape": ["batch", "height", "width", 3]}
    assert [(o["name"], o["dtype"]) for o in report["outputs"]] == [("probabilities", "float32"), ("mask", "uint8")]
    assert report["outputs"][0]["shape"] == ["batch", 1, "height", "width"] and report["image_size"] == [32, 32]
    tuned = exported["tuned"]
    assert report["threshold"] == (tuned.threshold if fmt == "onnx" else 0.5)
    assert report["not_in_graph"] == (["min_size"] if fmt == "onnx" else [])
    parity = report["parity"]
    assert parity["source"] == "val" and parity["images"] == 2  # the tiny set's val split
    assert parity["mask_agreement"] >= 0.9999 and parity["max_prob_diff"] < 1e-5
    assert [b[0] for b in parity["batches"]] == [2, 1]  # two batch sizes checked
    assert not [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_what_the_graph_leaves_out_is_said_in_the_log(exported: dict[str, Any]) -> None:
    assert any("min_size" in line and "not in the exported graph" in line for line in exported["log"])


def test_onnx_takes_any_batch_and_size_and_holds_the_tuned_rules(exported: dict[str, Any], model: torch.nn.Module,
                                                                 inputs: np.ndarray) -> None:
    proto = onnx.load(str(exported["onnx"]))
    shape = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert proto.graph.input[0].name == "image" and shape == ["batch", "height", "width", 3]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["seg.image_size"]) == [32, 32] and meta["seg.channels"] == "3"
    assert meta["seg.n_classes"] == "1" and meta["seg.stride"] == "32"
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    tuned = exported["tuned"]
    in_graph = replace(tuned, min_size=0)  # components are the one thing left out
    for x in (inputs, images((1, 32, 64, 3)), images((2, 96, 32, 3), seed=1)):
        probs, mask = session.run(None, {"image": x})
        assert probs.dtype == np.float32 and probs.shape == (x.shape[0], 1, *x.shape[1:3])
        assert mask.dtype == np.uint8 and mask.shape == x.shape[:3]
        np.testing.assert_allclose(probs, torch_probs(model, x), atol=1e-5)
        np.testing.assert_array_equal(mask, [apply(p, in_graph.scaled(x.shape[1:3])) for p in probs])
    probs, mask = session.run(None, {"image": inputs})
    plain = (probs[:, 0] > 0.5).astype(np.uint8)
    counts = (probs[:, 0] > tuned.threshold).sum(axis=(1, 2))
    emptied = counts < tuned.empty_min_pixels * 4  # tuned at 16x16, counted here at 32x32
    assert (mask != plain).any() and emptied.any() and not emptied.all()
    assert not mask[emptied].any() and mask[~emptied].any()
    assert load_onnx_predictor(exported["onnx"]).tuned == tuned  # for seg-predict, which can apply the rest


def test_torchscript_takes_any_batch_and_size(exported: dict[str, Any], model: torch.nn.Module) -> None:
    extra = {"seg.json": ""}
    module = torch.jit.load(str(exported["torchscript"]), _extra_files=extra)
    assert json.loads(json.loads(extra["seg.json"])["seg.image_size"]) == [32, 32]
    for shape in [(1, 64, 32, 3), (3, 32, 96, 3)]:
        x = images(shape, seed=1)
        with torch.no_grad():
            probs, mask = module(torch.from_numpy(x))
        np.testing.assert_allclose(probs.numpy(), torch_probs(model, x), atol=1e-5)
        assert mask.dtype == torch.uint8 and tuple(mask.shape) == shape[:3]
        np.testing.assert_array_equal(mask.numpy(), (probs[:, 0] > 0.5).numpy())


def masks_of(predictor: Any, x: list[np.ndarray], threshold: float, tta: bool) -> list[np.ndarray]:
    """Predictor took `tta` per call before the inference settings moved into it (cfg.tta at load time)."""
    if "tta" in inspect.signature(predictor.__call__).parameters:
        return predictor(x, threshold, tta)
    return predictor(x, threshold)


def test_the_onnx_runner_gives_the_masks_of_segs_predictor(best: Path, exported: dict[str, Any]) -> None:
    x = [images(s, seed=i) for i, s in enumerate([(32, 32, 3), (45, 70, 3), (20, 33, 3)])]
    tuned_ckpt = exported["ckpt"]  # the checkpoint the ONNX file was exported from, with its tuned file
    for tta in (False, True):
        for postprocess in (False, True):
            cfg = OmegaConf.merge(OmegaConf.structured(PredictConfig),
                                  {"device": "cpu", "tta": tta, "postprocess": postprocess})
            predictor = load_predictor(cfg, load_checkpoint(tuned_ckpt), tuned_ckpt)
            runner = load_onnx_predictor(exported["onnx"], tta=tta, postprocess=postprocess)
            assert (runner.channels, runner.n_classes, runner.size) == (3, 1, (32, 32))
            for threshold in (0.5, 0.3):  # with post-processing on, the tuned threshold wins in both
                for ours, theirs in zip(runner(x, threshold), masks_of(predictor, x, threshold, tta)):
                    assert ours.dtype == np.uint8 and ours.shape == theirs.shape
                    np.testing.assert_array_equal(ours, theirs)
    assert runner.settings_row() == {"tta": "true", "sliding": "false", "input_size": "32x32",
                                     "postprocess": exported["tuned"].name}


def test_the_runner_refuses_files_it_cannot_use(exported: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        load_onnx_predictor(tmp_path / "junk.onnx")
    proto = onnx.load(str(exported["onnx"]))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "plain.onnx"))
    with pytest.raises(CheckpointError, match="not written by seg-export"):
        load_onnx_predictor(tmp_path / "plain.onnx")


def test_a_tuned_file_of_another_checkpoint_is_not_applied(best: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """seg.inference.postprocess's rule: a record of another checkpoint (a later best.pt) is left out, said."""
    ckpt = tmp_path / "best.pt"
    shutil.copy(best, ckpt)
    save_postprocess(ckpt, "0" * 64, Settings(threshold=0.3), {})
    with caplog.at_level(logging.WARNING, logger="seg"):
        report = export.run_export(export_cfg(ckpt, out=str(tmp_path / "m.pt"), format="torchscript"))
    assert "tuned for another checkpoint" in caplog.text
    assert report["threshold"] == 0.5 and report["tuned_file"] is None and report["postprocess"] is None


def test_a_crafted_checkpoint_is_refused_before_anything_runs(best: Path, tmp_path: Path) -> None:
    ckpt = torch.load(best, weights_only=True)
    ckpt["config"]["model"]["_target_"] = "builtins.open"
    save_checkpoint(ckpt, tmp_path / "crafted.pt")
    with pytest.raises(CheckpointError, match="model._target_"):
        export.run_export(export_cfg(tmp_path / "crafted.pt", out=str(tmp_path / "m.onnx")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.pt"]


def test_grey_multiclass_without_its_data_and_a_failed_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """C=1 in, K=3 out, the mask the argmax; random parity images where the data is not here; a check that
    fails leaves nothing behind."""
    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=3, depth=2, wf=2)
    model_cfg = {"_target_": "seg.models.UNet", "in_channels": 1, "n_classes": 3, "depth": 2, "wf": 2,
                 "padding": True, "batch_norm": False, "up_mode": "upconv"}
    config = {"dataset": {"_target_": "seg.data.folder.FolderData", "image_size": [40, 48]}, "model": model_cfg,
              "loss": {"_target_": "seg.losses.DiceBCELoss"}, "trainer": {"precision": "32"}}
    save_checkpoint(make_checkpoint(model=net.state_dict(), config=config, epoch=1), tmp_path / "grey.pt")
    with caplog.at_level(logging.WARNING, logger="seg"):
        report = export.run_export(export_cfg(tmp_path / "grey.pt", format="torchscript", parity_images=3))
    assert "no validation images on this machine" in caplog.text
    assert report["parity"]["source"] == "random" and report["parity"]["mask_agreement"] == 1.0
    assert report["parity"]["batches"] == [[3, 64, 64, 1], [1, 64, 64, 1]]  # 40x48 padded to multiples of 32
    assert report["outputs"][0]["shape"] == ["batch", 3, "height", "width"] and report["threshold"] is None
    module = torch.jit.load(str(tmp_path / "export-grey.torchscript.pt"))
    with torch.no_grad():
        probs, mask = module(torch.from_numpy(images((2, 32, 64, 1))))
    assert probs.shape == (2, 3, 32, 64) and torch.equal(mask, probs.argmax(1).to(torch.uint8))
    monkeypatch.setattr(export, "MIN_AGREEMENT", 1.01)  # no model passes: the failure path
    with pytest.raises(SegError, match=r"differs from the checkpoint.s .*again\.pt was not written"):
        export.run_export(export_cfg(tmp_path / "grey.pt", out=str(tmp_path / "again.pt"), format="torchscript"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # the record says which files seg-export wrote
        ".seg-written.json", "export-grey.torchscript.pt", "export-grey.torchscript.pt.parity.json", "grey.pt"]
    (tmp_path / "mine.pt").write_text("my own model")  # a file of the user's under the out name stays
    with pytest.raises(ConfigError, match="mine.pt, which seg-export did not write"):
        export.run_export(export_cfg(tmp_path / "grey.pt", out=str(tmp_path / "mine.pt"), format="torchscript"))
    assert (tmp_path / "mine.pt").read_text() == "my own model"


def test_seg_export_on_the_command_line(best: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "seg.cli.export", f"ckpt={best}"]
    done = subprocess.run([*command, "format=torchscript", f"out={tmp_path / 'm.pt'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m.pt").is_file() and (tmp_path / "m.pt.parity.json").is_file()
    assert "mask pixels agree" in done.stdout + done.stderr
    bad = subprocess.run([*command, "format=tflite"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr + bad.stdout
    assert len(bad.stderr.strip().splitlines()) == 1 and "tflite" in bad.stderr


def test_seg_predict_runs_an_onnx_file(exported: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    from seg.inference.predict import run_predict

    (tmp_path / "in").mkdir()
    pictures = [images((40, 50, 3), seed=1), images((32, 64, 3), seed=2)]
    for i, picture in enumerate(pictures):
        Image.fromarray(picture).save(tmp_path / "in" / f"p{i}.png")
    cfg = OmegaConf.merge(OmegaConf.structured(PredictConfig), {"ckpt": str(exported["onnx"]), "device": "cpu",
                                                                "input": str(tmp_path / "in"),
                                                                "out_dir": str(tmp_path / "out")})
    assert run_predict(cfg)["n_images"] == 2
    expected = load_onnx_predictor(exported["onnx"])(pictures, 0.5)
    for i, mask in enumerate(expected):
        written = np.asarray(Image.open(tmp_path / "out" / "masks" / f"p{i}.png"))
        assert written.shape == pictures[i].shape[:2]
        np.testing.assert_array_equal(written // 255, mask)
    with pytest.raises(ConfigError, match="inference.mode=slide runs seg's PyTorch model"):
        run_predict(OmegaConf.merge(cfg, {"inference": {"mode": "slide"}, "out_dir": str(tmp_path / "o2")}))
