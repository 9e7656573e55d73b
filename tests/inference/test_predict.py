"""seg-predict's engine: masks line up with their inputs, equal the model's own prediction, TTA is
flip-equivariant, DICOM + Kaggle submission round trip, clear errors."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from omegaconf import OmegaConf
from PIL import Image

from seg.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from seg.config import PredictConfig
from seg.data.rle import rle_decode, rle_decode_absolute
from seg.engine.amp import Amp
from seg.errors import ConfigError, DatasetError
from seg.inference.core import inference_settings, predict_probs
from seg.inference.core import pad_to_stride as pad_to_multiple
from seg.inference.predict import find_inputs, load_predictor, run_predict
from seg.metrics import prediction
from seg.models import UNet
from seg.train.fit import fit
from tests.tiny import compose_cfg

FP32 = Amp("32", "cpu", None, None)


def predict_cfg(**values):
    return OmegaConf.merge(OmegaConf.structured(PredictConfig), {"device": "cpu", **values})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic U-Net (3 channels, binary, 32x32) trained for one epoch."""
    run = tmp_path_factory.mktemp("run")
    fit(compose_cfg(["trainer.epochs=1", "trainer.precision=32"], run), run)
    return run / "checkpoints" / "best.pt"


def save_model(path: Path, *, in_channels: int, n_classes: int, image_size: int | None = 32) -> UNet:
    """A checkpoint as seg-train stores it, for model shapes the synthetic set does not train."""
    torch.manual_seed(0)
    model = UNet(in_channels=in_channels, n_classes=n_classes, depth=2, wf=2)
    model_cfg = {"_target_": "seg.models.UNet", "in_channels": in_channels, "n_classes": n_classes, "depth": 2, "wf": 2,
                 "padding": True, "batch_norm": False, "up_mode": "upconv"}
    config = {"dataset": {"_target_": "seg.data.folder.FolderData", "image_size": image_size},
              "model": model_cfg, "loss": {"_target_": "seg.losses.DiceBCELoss"}, "trainer": {"precision": "32"}}
    save_checkpoint(make_checkpoint(model=model.state_dict(), config=config, epoch=1), path)
    return model.eval()


def test_masks_equal_the_models_prediction_at_training_size(trained: Path, tmp_path: Path) -> None:
    ckpt = torch.load(trained, weights_only=True)
    model = UNet(**{k: v for k, v in ckpt["config"]["model"].items() if k != "_target_"})
    model.load_state_dict(ckpt["model"])
    model.eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "in" / f"case{i}.png")
    result = run_predict(predict_cfg(ckpt=str(trained), input=str(tmp_path / "in"), out_dir=str(tmp_path / "out")))
    assert result["n_images"] == 3
    with torch.no_grad():
        expected = prediction(model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)).numpy()
    for i in range(3):
        mask = np.asarray(Image.open(tmp_path / "out" / "masks" / f"case{i}.png"))
        assert set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask // 255, expected[i])
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert [r["mask"] for r in rows] == [f"masks/case{i}.png" for i in range(3)]
    assert [r["class_pixels"] for r in rows] == [f"{e.size - e.sum()} {e.sum()}" for e in expected]


def test_any_size_in_and_the_default_out_dir(trained: Path, tmp_path: Path) -> None:
    """Images of other sizes (grey ones too) are resized to the training size and their masks back."""
    folder = tmp_path / "in"
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(np.full((50, 70, 3), 200, np.uint8)).save(folder / "wide.jpg")
    Image.fromarray(np.zeros((21, 9), np.uint8)).save(folder / "nested" / "small.bmp")
    (folder / "notes.txt").write_text("not an image")
    assert [p.name for p in find_inputs(folder, recursive=False)] == ["wide.jpg"]
    run_predict(predict_cfg(ckpt=str(trained), input=str(folder), tta=True))
    out = trained.parent.parent / "predictions" / "in"
    assert np.asarray(Image.open(out / "masks" / "wide.png")).shape == (50, 70)
    assert np.asarray(Image.open(out / "masks" / "nested" / "small.png")).shape == (21, 9)


def test_tta_is_flip_equivariant() -> None:
    torch.manual_seed(0)
    model = UNet(in_channels=3, n_classes=3, depth=2, wf=2).eval()
    image = torch.rand(2, 3, 40, 24)  # padded to 64x32 inside, cropped back
    probs = predict_probs(model, image, FP32, tta=True)
    assert probs.shape == (2, 3, 40, 24)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 40, 24))
    torch.testing.assert_close(predict_probs(model, image.flip(-1), FP32, tta=True), probs.flip(-1))
    torch.testing.assert_close(predict_probs(model, image.flip(-2), FP32, tta=True), probs.flip(-2))
    assert not torch.allclose(predict_probs(model, image, FP32), probs)  # TTA does change the result


def test_pad_to_multiple() -> None:
    x = torch.arange(2 * 5 * 7, dtype=torch.float32).view(1, 2, 5, 7)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (1, 2, 8, 8) and torch.equal(padded[..., :5, :7], x)
    assert pad_to_multiple(torch.zeros(1, 1, 2, 1), 32).shape == (1, 1, 32, 32)  # too small to reflect


def write_dicom(path: Path, pixels: np.ndarray) -> None:
    image = sitk.GetImageFromArray(pixels)
    image.SetMetaData("0008|0018", path.stem)  # SOP Instance UID
    image.SetMetaData("0028|0004", "MONOCHROME2")
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


@pytest.mark.parametrize("form, decode", [("relative", rle_decode), ("absolute", rle_decode_absolute)])
def test_dicom_folder_to_a_kaggle_submission(tmp_path: Path, form: str, decode) -> None:
    """SIIM's test layout (nested DICOMs) -> submission.csv whose rows decode to the PNG masks."""
    save_model(tmp_path / "model.pt", in_channels=1, n_classes=1, image_size=32)
    rng = np.random.default_rng(1)
    uids = ["1.2.276.0.7230010.3.1.4.1", "1.2.276.0.7230010.3.1.4.2"]
    for uid in uids:
        write_dicom(tmp_path / "dicom-images-test" / uid / "s" / f"{uid}.dcm", rng.integers(0, 256, (48, 48), np.uint8))
    run_predict(predict_cfg(ckpt=str(tmp_path / "model.pt"), input=str(tmp_path / "dicom-images-test"),
                            out_dir=str(tmp_path / "out"), submission=form, threshold=0.45))
    rows = list(csv.reader((tmp_path / "out" / "submission.csv").open()))
    assert rows[0] == ["ImageId", "EncodedPixels"] and sorted(r[0] for r in rows[1:]) == uids
    for uid, rle in rows[1:]:
        mask = np.asarray(Image.open(tmp_path / "out" / "masks" / uid / "s" / f"{uid}.png")) // 255
        assert mask.shape == (48, 48)
        np.testing.assert_array_equal(decode(rle, 48, 48), mask)
        assert (rle == "-1") == (mask.sum() == 0)


def test_multi_class_masks_hold_class_ids(tmp_path: Path) -> None:
    save_model(tmp_path / "model.pt", in_channels=3, n_classes=3, image_size=None)
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 20, 3), np.uint8)).save(tmp_path / "x.png")
    run_predict(predict_cfg(ckpt=str(tmp_path / "model.pt"), input=str(tmp_path / "x.png")))
    mask = np.asarray(Image.open(tmp_path / "predictions-x" / "masks" / "x.png"))
    assert mask.shape == (30, 20) and mask.max() <= 2
    (row,) = csv.DictReader((tmp_path / "predictions-x" / "predictions.csv").open())
    assert [int(n) for n in row["class_pixels"].split()] == np.bincount(mask.ravel(), minlength=3).tolist()
    with pytest.raises(ConfigError, match="3 classes"):
        run_predict(predict_cfg(ckpt=str(tmp_path / "model.pt"), input=str(tmp_path / "x.png"), submission="relative"))


def test_user_errors(tmp_path: Path) -> None:
    save_model(tmp_path / "ctx.pt", in_channels=7, n_classes=1)
    save_model(tmp_path / "ok.pt", in_channels=3, n_classes=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="7-channel.*seg-eval"):
        run_predict(predict_cfg(ckpt=str(tmp_path / "ctx.pt"), input=str(tmp_path)))
    with pytest.raises(DatasetError, match="no images in or below"):
        run_predict(predict_cfg(ckpt=str(tmp_path / "ok.pt"), input=str(tmp_path / "empty")))
    with pytest.raises(DatasetError, match="does not exist"):
        run_predict(predict_cfg(ckpt=str(tmp_path / "ok.pt"), input=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="threshold"):
        run_predict(predict_cfg(ckpt=str(tmp_path / "ok.pt"), input=str(tmp_path), threshold=1.5))
    (tmp_path / "empty" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match="broken.png"):
        run_predict(predict_cfg(ckpt=str(tmp_path / "ok.pt"), input=str(tmp_path / "empty")))


def test_a_folder_with_twins_a_bad_file_and_a_stack(tmp_path: Path, caplog) -> None:
    """x.png and x.jpg keep one mask each; an unreadable file is skipped and named; a TIFF stack is
    predicted on its first page, with a warning."""
    save_model(tmp_path / "model.pt", in_channels=3, n_classes=1)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "x.png")
    Image.fromarray(np.zeros((30, 10, 3), np.uint8)).save(folder / "x.jpg")
    (folder / "bad.png").write_bytes(b"\x89PNG broken")
    pages = [Image.fromarray(np.full((12, 16), v, np.uint8)) for v in (0, 255)]
    pages[0].save(folder / "stack.tif", save_all=True, append_images=pages[1:])
    with caplog.at_level(logging.WARNING, logger="seg"):
        result = run_predict(predict_cfg(ckpt=str(tmp_path / "model.pt"), input=str(folder),
                                         out_dir=str(tmp_path / "out"), submission="relative"))
    assert result["n_images"] == 3 and result["skipped"] == 1
    masks = tmp_path / "out" / "masks"
    assert np.asarray(Image.open(masks / "x_png.png")).shape == (20, 20)
    assert np.asarray(Image.open(masks / "x_jpg.png")).shape == (30, 10)
    assert np.asarray(Image.open(masks / "stack.png")).shape == (12, 16)
    assert "skipped 1 unreadable file(s)" in caplog.text and "bad.png" in caplog.text
    assert "only the first page" in caplog.text and "stack.tif" in caplog.text
    assert "ImageId(s) from several files" in caplog.text
    assert len(list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))) == 3


def test_settings_and_out_dir_errors_come_before_any_writing(tmp_path: Path) -> None:
    save_model(tmp_path / "model.pt", in_channels=3, n_classes=1)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    common = {"ckpt": str(tmp_path / "model.pt"), "input": str(tmp_path / "a.png"), "out_dir": str(tmp_path / "o")}
    for bad in (-2, 0):
        with pytest.raises(ConfigError, match="batch_size must be >= 1"):
            run_predict(predict_cfg(**common, batch_size=bad))
    assert not (tmp_path / "o").exists()
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should go")
    with pytest.raises(ConfigError, match="cannot write to out_dir"):
        run_predict(predict_cfg(**{**common, "out_dir": str(blocker / "sub")}))


@pytest.mark.parametrize(("stored", "precision", "channels_last", "dtype"), [
    ({"precision": "32", "channels_last": False}, None, False, None),
    ({"precision": "32"}, None, True, None),  # auto: channels-last on CPUs, as training resolved it
    ({"precision": "32", "channels_last": True}, "bf16", True, torch.bfloat16),  # seg-predict's own precision wins
])  # fmt: skip
def test_inference_follows_the_trainings_layout_and_precision(stored, precision, channels_last, dtype) -> None:
    settings = inference_settings(stored, precision, torch.device("cpu"))
    assert settings.channels_last is channels_last and settings.amp.dtype == dtype
    assert settings.memory_format == (torch.channels_last if channels_last else torch.contiguous_format)


def test_the_predictor_runs_the_model_in_the_trainings_layout(trained: Path) -> None:
    predictor = load_predictor(predict_cfg(ckpt=str(trained), input="x"), load_checkpoint(trained), trained)
    conv = next(m for m in predictor.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # trained with channels_last=auto on CPU
