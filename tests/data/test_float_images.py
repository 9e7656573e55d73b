"""Float images where they enter: folder TIFFs (grey ones through PIL, RGB ones through tifffile, which
PIL cannot open), ISBI stacks and LUNA CT volumes. NaN or infinite pixels are a DatasetError naming
the file, never a silently scaled or cast image; finite float images read as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from test_folder import label

from seg.data.folder import FolderData
from seg.data.io import read_gray, read_label, read_rgb
from seg.data.isbi import ISBI2012Data
from seg.data.luna.volume import read_ct
from seg.errors import DatasetError


def float_rgb(nan: bool = False, shape: tuple[int, int] = (6, 7)) -> np.ndarray:
    values = np.linspace(-1.0, 3.0, num=shape[0] * shape[1] * 3, dtype=np.float32).reshape(*shape, 3)
    if nan:
        values[2, 3, 1] = np.nan
    return values


def test_rgb_float_tiff_is_read_with_tifffile_and_scaled(tmp_path: Path) -> None:
    values = float_rgb()
    tifffile.imwrite(tmp_path / "contig.tif", values, photometric="rgb")
    tifffile.imwrite(tmp_path / "planar.tiff", np.moveaxis(values, -1, 0), photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "named.jpg", values, photometric="rgb")  # decoded by content, as PIL files are
    expected = np.rint((values + 1.0) * (255.0 / 4.0)).astype(np.uint8)  # one scale over all channels
    for name in ("contig.tif", "planar.tiff", "named.jpg"):
        np.testing.assert_array_equal(read_rgb(tmp_path / name), expected)
    grey = read_gray(tmp_path / "contig.tif")
    assert grey.shape == (6, 7) and grey.dtype == np.uint8


@pytest.mark.parametrize("reader", [read_rgb, read_gray])
def test_nan_in_an_rgb_float_tiff_names_the_file_and_the_reason(tmp_path: Path, reader) -> None:
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, float_rgb(nan=True), photometric="rgb")
    with pytest.raises(DatasetError) as err:
        reader(path)
    message = str(err.value)
    assert message.startswith(f"{path} holds 1 NaN or infinite value(s)") and "cannot identify" not in message


@pytest.mark.parametrize("reader", [read_rgb, read_gray])
def test_nan_in_a_grey_float_tiff(tmp_path: Path, reader) -> None:
    values = np.ones((5, 4), np.float32)
    values[0, 0] = np.inf
    tifffile.imwrite(tmp_path / "grey.tif", values)
    with pytest.raises(DatasetError, match=r"grey.tif holds 1 NaN or infinite value"):
        reader(tmp_path / "grey.tif")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # PIL's, on the broken TIFF before tifffile's turn
def test_tiffs_that_are_no_single_image_or_no_mask(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((4, 4, 5), np.float32), planarconfig="contig")
    with pytest.raises(DatasetError, match=r"five.tif holds an array of shape \(4, 4, 5\).*expected one 2-D image"):
        read_rgb(tmp_path / "five.tif")
    tifffile.imwrite(tmp_path / "rgb_mask.tif", float_rgb(), photometric="rgb")
    with pytest.raises(DatasetError, match=r"mask .*rgb_mask.tif is a float32 TIFF with 3 channel"):
        read_label(tmp_path / "rgb_mask.tif")
    nan_mask = np.zeros((4, 4), np.float32)
    nan_mask[1, 1] = np.nan
    tifffile.imwrite(tmp_path / "nan_mask.tif", nan_mask)
    with pytest.raises(DatasetError, match=r"mask .*nan_mask.tif holds NaN"):
        read_label(tmp_path / "nan_mask.tif")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00" + b"\xff" * 20)  # a TIFF header and nothing behind it
    with pytest.raises(DatasetError, match=r"cannot read TIFF .*broken.tif"):
        read_rgb(tmp_path / "broken.tif")


@pytest.mark.parametrize("grayscale", [False, True])
def test_folder_dataset_with_a_nan_tiff_stops_naming_it(tmp_path: Path, grayscale: bool) -> None:
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a", "b", "c"):
        tifffile.imwrite(root / "images" / f"{name}.tif", float_rgb(nan=name == "b", shape=(10, 14)), photometric="rgb")
        tifffile.imwrite(root / "masks" / f"{name}.tif", label((0, 255)))
    data = FolderData(root=str(root), image_size=[10, 14], split={"train": 1.0}, grayscale=grayscale,
                      in_channels=1 if grayscale else 3)
    with pytest.raises(DatasetError, match=rf"^{root / 'images' / 'b.tif'} holds 1 NaN"):
        data.arrays
    (root / "images" / "b.tif").unlink()
    (root / "masks" / "b.tif").unlink()
    arrays = FolderData(root=str(root), image_size=[10, 14], split={"train": 1.0}, grayscale=grayscale,
                        in_channels=1 if grayscale else 3).arrays
    assert arrays.images.dtype == np.uint8 and arrays.images.shape == (2, 10, 14, 1 if grayscale else 3)


def test_isbi_float_stack_with_nan(tmp_path: Path) -> None:
    volume = np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)
    volume[3, 5, 5] = np.nan
    tifffile.imwrite(tmp_path / "train-volume.tif", volume, photometric="minisblack")  # pages, as the release
    tifffile.imwrite(tmp_path / "train-labels.tif", np.full((4, 16, 16), 255, np.uint8), photometric="minisblack")
    with pytest.raises(DatasetError, match=r"train-volume.tif holds 1 NaN or infinite value"):
        ISBI2012Data(root=str(tmp_path), image_size=16, val_slices=1).arrays


def test_luna_float_ct_with_nan(tmp_path: Path) -> None:
    hu = np.full((3, 8, 8), -500.0, np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(tmp_path / "fine.mhd"))
    volume, _ = read_ct(tmp_path / "fine.mhd", (-1000, 1000))
    assert volume.dtype == np.int16 and (volume == -500).all()
    hu[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(tmp_path / "nan.mhd"))
    with pytest.raises(DatasetError, match=r"CT series .*nan.mhd holds 1 NaN or infinite voxel"):
        read_ct(tmp_path / "nan.mhd", (-1000, 1000))
