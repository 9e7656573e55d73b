"""PH2Data on a tiny tree in the release's exact layout (spaces in the folder name, 24-bit BMP images
of slightly different sizes, 1-bit BMP masks, roi folders and Readme to ignore), and on real cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from seg.data.ph2 import IMAGES_DIR, PH2Data
from seg.errors import ConfigError, DatasetError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SIZES = [(40, 30), (41, 29), (39, 31)]  # (width, height), varying like the release's ~765x574
N_CASES = 10


def case_mask(width: int, height: int) -> np.ndarray:
    """A lesion block covering the middle of the image (a quarter of it)."""
    mask = np.zeros((height, width), dtype=bool)
    mask[height // 4 : height // 4 + height // 2, width // 4 : width // 4 + width // 2] = True
    return mask


def write_case(images: Path, number: int, size: tuple[int, int]) -> None:
    case_id = f"IMD{number:03d}"
    width, height = size
    rng = np.random.default_rng(number)
    for sub in ("Dermoscopic_Image", "lesion", "roi"):
        (images / case_id / f"{case_id}_{sub}").mkdir(parents=True)
    pixels = rng.integers(150, 230, (height, width, 3), dtype=np.uint8)
    mask = case_mask(width, height)
    pixels[mask] //= 3  # dark lesion, as in dermoscopy
    Image.fromarray(pixels, mode="RGB").save(images / case_id / f"{case_id}_Dermoscopic_Image" / f"{case_id}.bmp")
    Image.fromarray(mask).convert("1").save(images / case_id / f"{case_id}_lesion" / f"{case_id}_lesion.bmp")
    # Colour-class regions: same format, must be ignored (here: a different region).
    Image.fromarray(~mask).convert("1").save(images / case_id / f"{case_id}_roi" / f"{case_id}_R1_Label4.bmp")


def write_ph2(root: Path, n_cases: int = N_CASES) -> Path:
    """`root` plays the unpacked PH2Dataset folder."""
    images = root / IMAGES_DIR
    images.mkdir(parents=True)
    (root / "Readme.txt").write_text("PH2 Dataset contents\n")
    for k in range(n_cases):
        write_case(images, 2 + k, SIZES[k % len(SIZES)])
    return root


@pytest.fixture
def ph2_root(tmp_path: Path) -> Path:
    return write_ph2(tmp_path / "PH2Dataset")


def make(root: Path, **kwargs: object) -> PH2Data:
    return PH2Data(root=str(root), image_size=kwargs.pop("image_size", 16), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("form", ["PH2Dataset", "images-folder", "download-root"])
def test_reads_every_root_form(ph2_root: Path, form: str) -> None:
    """The release folder, its case folder, or the folder seg-download unpacked it into."""
    root = {"PH2Dataset": ph2_root, "images-folder": ph2_root / IMAGES_DIR, "download-root": ph2_root.parent}[form]
    data = make(root)
    ids = data.list_cases()
    assert ids == [f"IMD{2 + k:03d}" for k in range(N_CASES)]
    split = data.split_ids()
    assert {k: len(v) for k, v in split.items()} == {"train": 7, "val": 1, "test": 2}
    assert sorted(sum(split.values(), [])) == ids

    item = data.dataset("train")[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 16, 16)
    assert item["mask"].dtype == torch.uint8 and item["mask"].shape == (16, 16)
    assert set(torch.unique(item["mask"]).tolist()) == {0, 1}
    assert item["index"] == 0 and "weight" not in item


def test_masks_follow_the_lesion_and_ignore_roi(ph2_root: Path) -> None:
    data = make(ph2_root, image_size=[12, 20])
    arrays = data.arrays
    assert arrays.images.shape == (N_CASES, 12, 20, 3) and arrays.masks.shape == (N_CASES, 12, 20)
    assert set(np.unique(arrays.masks).tolist()) == {0, 1}
    expected = np.zeros((12, 20), dtype=np.uint8)
    expected[3:9, 5:15] = 1  # the middle block at the new size
    for mask in arrays.masks:
        assert (mask == expected).mean() > 0.9
    # The lesion pixels are the dark ones: images and masks stay aligned through the resize.
    grey = arrays.images.astype(float).mean(-1)
    assert grey[arrays.masks == 1].mean() < 0.6 * grey[arrays.masks == 0].mean()


def test_native_load_case_is_binary(ph2_root: Path) -> None:
    image, mask = make(ph2_root).load_case("IMD003")
    assert image.shape == (29, 41, 3) and image.dtype == np.uint8
    assert mask.shape == (29, 41) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, case_mask(41, 29).astype(np.uint8))


def test_split_is_seeded(ph2_root: Path) -> None:
    first = make(ph2_root, split_seed=1).split_ids()
    assert make(ph2_root, split_seed=1).split_ids() == first
    assert make(ph2_root, split_seed=2).split_ids() != first
    custom = make(ph2_root, split={"train": 0.5, "val": 0.2, "test": 0.3}).split_ids()
    assert {k: len(v) for k, v in custom.items()} == {"train": 5, "val": 2, "test": 3}


def test_cache_is_reused(ph2_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = make(ph2_root).arrays
    images = np.array(first.images)

    def no_decoding(self: PH2Data, case_id: str) -> None:
        raise AssertionError(f"{case_id} decoded again")

    monkeypatch.setattr(PH2Data, "load_case", no_decoding)
    again = make(ph2_root).arrays
    assert again.path == first.path
    np.testing.assert_array_equal(again.images, images)
    # Both ways of naming the root share the entry.
    assert make(ph2_root / IMAGES_DIR).arrays.path == first.path
    with pytest.raises(AssertionError, match="decoded again"):
        make(ph2_root, image_size=20).arrays


def test_yaml_builds_the_reader(ph2_root: Path, tmp_path: Path) -> None:
    cfg = OmegaConf.load(CONFIGS / "dataset" / "ph2.yaml")
    assert OmegaConf.is_missing(cfg, "root")
    cfg.root = str(ph2_root)
    cfg.image_size = 16
    cfg.cache_dir = str(tmp_path / "cache")
    data = instantiate(cfg)
    assert isinstance(data, PH2Data)
    assert (data.in_channels, data.n_classes, data.class_names) == (3, 1, ["lesion"])
    assert len(data.dataset("test")) == 2
    assert (tmp_path / "cache").is_dir()


def test_experiment_yaml_is_the_notebook_recipe() -> None:
    cfg = OmegaConf.load(CONFIGS / "experiment" / "ph2_segnet.yaml")
    assert {"override /dataset": "ph2", "override /model": "segnet", "override /loss": "bce"}.items() <= {
        k: v for d in cfg.defaults for k, v in d.items()
    }.items()
    assert cfg.dataset.image_size == 256 and cfg.seed == 42
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (1e-3, 1e-6)
    assert (cfg.trainer.batch_size, cfg.trainer.epochs) == (32, 30)


def test_metadata_must_fit(ph2_root: Path) -> None:
    with pytest.raises(ConfigError, match="n_classes"):
        PH2Data(root=str(ph2_root), n_classes=2, class_names=["a", "b"])


# --- errors a user can cause ------------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="does not exist") as err:
        make(missing).arrays
    assert str(missing) in str(err.value) and "IMDnnn_Dermoscopic_Image" in str(err.value)
    with pytest.raises(DatasetError, match="dataset.root is not set"):
        PH2Data(root=None).list_cases()


def test_root_is_a_file(ph2_root: Path) -> None:
    with pytest.raises(DatasetError, match="is a file"):
        make(ph2_root / "Readme.txt").list_cases()


def test_wrong_folder_lists_what_it_holds(tmp_path: Path) -> None:
    root = tmp_path / "downloads"
    (root / "PH2Dataset.rar.part").mkdir(parents=True)
    (root / "notes.txt").write_text("x")
    with pytest.raises(DatasetError) as err:
        make(root).list_cases()
    message = str(err.value)
    assert f"no PH2 case folders (IMDnnn) found in {root}" in message
    assert IMAGES_DIR in message and "'PH2Dataset.rar.part/'" in message and "'notes.txt'" in message


def test_images_folder_without_cases(tmp_path: Path) -> None:
    (tmp_path / "PH2Dataset" / IMAGES_DIR).mkdir(parents=True)
    with pytest.raises(DatasetError, match="it is empty"):
        make(tmp_path / "PH2Dataset").list_cases()


@pytest.mark.parametrize("missing", ["Dermoscopic_Image", "lesion"])
def test_case_missing_a_file(ph2_root: Path, missing: str) -> None:
    name = "IMD004.bmp" if missing == "Dermoscopic_Image" else "IMD004_lesion.bmp"
    target = ph2_root / IMAGES_DIR / "IMD004" / f"IMD004_{missing}" / name
    target.unlink()
    with pytest.raises(DatasetError, match="PH2 case IMD004 is incomplete") as err:
        make(ph2_root).list_cases()
    assert str(target) in str(err.value)


def test_corrupt_bmp_names_the_file(ph2_root: Path) -> None:
    bad = ph2_root / IMAGES_DIR / "IMD005" / "IMD005_lesion" / "IMD005_lesion.bmp"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated download
    with pytest.raises(DatasetError, match="cannot read image") as err:
        make(ph2_root).arrays
    assert str(bad) in str(err.value)


def test_mask_size_mismatch_names_the_case(ph2_root: Path) -> None:
    mask = ph2_root / IMAGES_DIR / "IMD006" / "IMD006_lesion" / "IMD006_lesion.bmp"
    Image.fromarray(np.zeros((10, 10), dtype=bool)).convert("1").save(mask)
    with pytest.raises(DatasetError, match="PH2 case IMD006: lesion mask IMD006_lesion.bmp is 10x10"):
        make(ph2_root).arrays


# --- real release files -----------------------------------------------------------------------------


def test_real_sample_cases(shared_data: Path, tmp_path: Path) -> None:
    data = PH2Data(root=str(shared_data / "ph2-sample" / "PH2Dataset"), image_size=64, cache_dir=str(tmp_path))
    assert data.list_cases() == ["IMD002", "IMD003", "IMD004", "IMD006", "IMD008"]
    image, mask = data.load_case("IMD002")
    assert image.shape == (572, 765, 3) and mask.shape == (572, 765)
    native = mask.mean()
    assert 0.2 < native < 0.35
    arrays = data.arrays
    assert arrays.images.shape == (5, 64, 64, 3) and arrays.images.dtype == np.uint8
    assert arrays.masks.shape == (5, 64, 64) and set(np.unique(arrays.masks).tolist()) == {0, 1}
    fractions = arrays.masks.reshape(5, -1).mean(axis=1)
    assert np.all((fractions > 0.03) & (fractions < 0.98))
    assert abs(fractions[0] - native) < 0.02  # resizing keeps the lesion's extent
    assert sum(len(v) for v in data.split_ids().values()) == 5
