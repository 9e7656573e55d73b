"""ISBI 2012 reader on multi-page TIFF stacks written in the release's file names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from hydra.utils import instantiate
from omegaconf import OmegaConf

from seg.data.isbi import ISBI2012Data
from seg.errors import ConfigError, DatasetError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def cell_labels(n: int = 6, size: int = 32) -> np.ndarray:
    """Cells (255) on a grid of 1-pixel membranes (0), so neighbouring cells touch across a thin gap."""
    labels = np.full((n, size, size), 255, np.uint8)
    labels[:, ::8, :] = 0
    labels[:, :, ::8] = 0
    for i in range(n):  # make slices differ
        labels[i, 2 + i % 5, 2 + i % 5] = 0
    return labels


def write_stacks(root: Path, volume_name: str = "train-volume.tif", n: int = 6, size: int = 32) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    volume = np.random.default_rng(1).integers(0, 256, (n, size, size), dtype=np.uint8)
    labels = cell_labels(n, size)
    tifffile.imwrite(root / volume_name, volume)
    tifffile.imwrite(root / "train-labels.tif", labels)
    return {"volume": volume, "labels": labels}


@pytest.mark.parametrize("volume_name", ["train-volume.tif", "train-input.tif"])
def test_reads_both_input_names_and_splits_by_slice(tmp_path: Path, volume_name: str) -> None:
    stacks = write_stacks(tmp_path, volume_name)
    data = ISBI2012Data(root=str(tmp_path), image_size=32, val_slices=2)
    split = data.split_ids()
    assert split == {"train": [f"slice-{i}" for i in range(4)], "val": ["slice-4", "slice-5"], "test": []}
    assert (len(data.dataset("train")), len(data.dataset("val"))) == (4, 2)
    item = data.dataset("val")[1]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype.is_floating_point is False
    np.testing.assert_array_equal(item["image"][0].numpy(), stacks["volume"][5])
    np.testing.assert_array_equal(item["mask"].numpy(), stacks["labels"][5] // 255)
    assert "weight" not in item
    assert (data.in_channels, data.n_classes, data.class_names) == (1, 1, ["cell"])


def test_test_split_is_refused(tmp_path: Path) -> None:
    write_stacks(tmp_path)
    data = ISBI2012Data(root=str(tmp_path), image_size=32, val_slices=2)
    with pytest.raises(ConfigError, match="no labelled test stack; use split=val"):
        data.dataset("test")


def test_default_split_is_22_8(tmp_path: Path) -> None:
    write_stacks(tmp_path, n=30, size=16)
    split = ISBI2012Data(root=str(tmp_path), image_size=16).split_ids()
    assert (len(split["train"]), len(split["val"])) == (22, 8)
    assert split["val"][0] == "slice-22" and split["train"][-1] == "slice-21"


def test_weight_maps_are_cached_at_the_stored_size(tmp_path: Path) -> None:
    stacks = write_stacks(tmp_path)
    data = ISBI2012Data(root=str(tmp_path), image_size=32, val_slices=2, weight_map=True, w0=10.0, sigma=5.0)
    item = data.dataset("train")[0]
    weight = item["weight"].numpy()
    assert weight.shape == (32, 32) and weight.dtype == np.float32
    assert data.arrays.path is not None and (data.arrays.path / "weights.npy").exists()
    membrane_between_cells = np.zeros((32, 32), bool)  # grid lines inside the image (not its edges)
    membrane_between_cells[8::8, :] = membrane_between_cells[:, 8::8] = True
    assert weight[membrane_between_cells].min() > 1.0 + 5.0  # class weight + most of w0
    assert weight[stacks["labels"][0] == 255].max() < 1.0  # cells are the majority class
    small = ISBI2012Data(root=str(tmp_path), image_size=16, val_slices=2, weight_map=True)
    assert small.dataset("val")[0]["weight"].shape == (16, 16)
    plain = ISBI2012Data(root=str(tmp_path), image_size=32, val_slices=2, weight_map=False)
    assert plain.arrays.weights is None and plain.arrays.path != data.arrays.path


def test_wider_pixel_types_are_scaled(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "train-volume.tif", np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8) * 100)
    tifffile.imwrite(tmp_path / "train-labels.tif", np.ones((2, 8, 8), np.uint8))
    arrays = ISBI2012Data(root=str(tmp_path), image_size=8, val_slices=1).arrays
    assert arrays.images.dtype == np.uint8 and arrays.images.min() == 0 and arrays.images.max() == 255
    assert arrays.masks.max() == 1


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="train-volume.tif or train-input.tif and train-labels.tif"):
        ISBI2012Data(root=str(tmp_path), image_size=32).arrays
    write_stacks(tmp_path)
    tifffile.imwrite(tmp_path / "train-labels.tif", cell_labels(5))
    with pytest.raises(DatasetError, match=r"\(6, 32, 32\).*\(5, 32, 32\)"):
        ISBI2012Data(root=str(tmp_path), image_size=32, val_slices=2).arrays
    tifffile.imwrite(tmp_path / "train-labels.tif", cell_labels(6, 16))
    with pytest.raises(DatasetError, match="slice for slice"):
        ISBI2012Data(root=str(tmp_path), image_size=32, val_slices=2).arrays
    grey = cell_labels()
    grey[0, 4, 4] = 128
    tifffile.imwrite(tmp_path / "train-labels.tif", grey)
    with pytest.raises(DatasetError, match=r"values \[0, 128, 255\]"):
        ISBI2012Data(root=str(tmp_path), image_size=32, val_slices=2).arrays
    (tmp_path / "train-labels.tif").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="cannot read TIFF stack"):
        ISBI2012Data(root=str(tmp_path), image_size=32, val_slices=2).arrays


def test_config_errors(tmp_path: Path) -> None:
    write_stacks(tmp_path)
    with pytest.raises(ConfigError, match="leaves no training slice"):
        ISBI2012Data(root=str(tmp_path), image_size=32, val_slices=6).arrays
    with pytest.raises(ConfigError, match="val_slices"):
        ISBI2012Data(root=str(tmp_path), val_slices=0)
    with pytest.raises(ConfigError, match="sigma"):
        ISBI2012Data(root=str(tmp_path), sigma=0.0)
    with pytest.raises(ConfigError, match="n_classes"):
        ISBI2012Data(root=str(tmp_path), n_classes=2, class_names=["membrane", "cell"])


def test_yaml_builds_the_reader(tmp_path: Path) -> None:
    write_stacks(tmp_path, n=10, size=16)
    node = OmegaConf.load(CONFIGS / "dataset" / "isbi2012.yaml")
    node.root = str(tmp_path)
    data = instantiate(node)
    assert isinstance(data, ISBI2012Data)
    assert (data.image_size, data.val_slices, data.weight_map, data.w0, data.sigma) == ((512, 512), 8, False, 10.0, 5.0)
    assert len(data.split_ids()["train"]) == 2
