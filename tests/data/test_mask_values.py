"""Binary readers keep their reading rules, but masks holding values the release does not (a PH2 mask
with 0/1/2/255, a folder mask with several non-zero values, a SIIM PNG mask with grey levels) are
named in one warning per dataset, at every start, with the values, the count and what to do."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image
from test_folder import label, write_pairs
from test_ph2 import write_ph2
from test_siim import box, write_png_split

from seg.data.folder import FolderData
from seg.data.ph2 import IMAGES_DIR, PH2Data, case_files
from seg.data.siim import SIIMData


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "seg.data" and r.levelno >= logging.WARNING]


def test_ph2_mask_with_other_values_warns_once_with_them(tmp_path, caplog) -> None:
    root = write_ph2(tmp_path / "PH2Dataset", n_cases=4)
    mask_path = case_files(root / IMAGES_DIR, "IMD003")[1]
    raw = np.asarray(Image.open(mask_path).convert("L")).copy()  # the release's 1-bit mask, as 0/255
    raw[:3, :3], raw[-3:, -3:] = 1, 2  # e.g. colour classes saved into the lesion mask
    Image.fromarray(raw, mode="L").save(mask_path)
    make = lambda: PH2Data(root=str(root), image_size=16, cache_dir=str(tmp_path / "cache"))  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="seg.data"):
        data = make()
        data.split_ids()
    [message] = warnings(caplog)
    assert message.startswith("ph2: 1 of 4 mask(s) hold values other than 0 and 255")
    assert "values [0, 1, 2, 255] found (in IMD003)" in message and "every non-zero value is read as lesion" in message
    native = data.load_case("IMD003")[1]
    np.testing.assert_array_equal(native, (raw > 0).astype(np.uint8))  # the reading rule is unchanged

    caplog.clear()  # a run that reuses the cache warns the same
    with caplog.at_level(logging.WARNING, logger="seg.data"):
        make().split_ids()
    assert warnings(caplog) == [message]


def test_release_masks_do_not_warn(tmp_path, caplog) -> None:
    root = write_ph2(tmp_path / "PH2Dataset", n_cases=3)
    with caplog.at_level(logging.WARNING, logger="seg.data"):
        PH2Data(root=str(root), image_size=16).split_ids()
    assert warnings(caplog) == []


def test_folder_binary_mask_with_several_values_points_at_value_map(tmp_path, caplog) -> None:
    root = tmp_path / "d"
    write_pairs(root, ["a", "b", "c"], values=(0, 255))
    write_pairs(root, ["d", "e"], values=(0, 1, 2, 255))
    write_pairs(root, ["f"], values=(0, 1))  # 0 and one other value: the binary rule's own case
    with caplog.at_level(logging.WARNING, logger="seg.data"):
        arrays = FolderData(root=str(root), image_size=[10, 14], split={"train": 1.0}).arrays
    [message] = warnings(caplog)
    assert message.startswith("folder: 2 of 6 mask(s) hold values other than 0 and one other value")
    assert "values [0, 1, 2, 255] found (in d, e)" in message and "dataset.value_map={0:0,255:1}" in message
    np.testing.assert_array_equal(arrays.masks[arrays.ids.index("d")], label((0, 1, 2, 255)) > 0)

    caplog.clear()  # a value map says what the values mean: nothing to warn about
    with caplog.at_level(logging.WARNING, logger="seg.data"):
        mapped = {0: 0, 1: 1, 2: 1, 255: 1}
        FolderData(root=str(root), image_size=[10, 14], split={"train": 1.0}, value_map=mapped).arrays
    assert warnings(caplog) == []


def test_siim_png_mask_with_grey_levels(tmp_path, caplog) -> None:
    write_png_split(tmp_path, "train", ["a", "b", "c"], "images", "masks")
    grey = box(0, 20, 0, 40, size=40) * 100 + box(0, 10, 0, 40, size=40) * 155  # 0, 100 and 255
    Image.fromarray(grey.astype(np.uint8)).save(tmp_path / "train" / "masks" / "b.png")
    with caplog.at_level(logging.WARNING, logger="seg.data"):
        arrays = SIIMData(root=str(tmp_path), image_size=40, split={"train": 1.0}).arrays
    [message] = warnings(caplog)
    assert message.startswith("siim: 1 of 3 mask(s) hold values other than 0/255 or 0/1")
    assert "values [0, 100, 255] found (in train/b)" in message and "above 127" in message
    np.testing.assert_array_equal(arrays.masks[arrays.ids.index("train/b")], grey > 127)

