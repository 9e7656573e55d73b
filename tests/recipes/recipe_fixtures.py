"""One tiny dataset per recipe in its official on-disk layout, and the scaled-down recipe settings.

The trees come from the reader tests' own writers (tests/data, put on sys.path by conftest.py), so a
recipe is trained on exactly the format its reader was checked against. Only SIIM needs a compact
writer here: its reader test builds the tree inside a pytest fixture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from luna_fixtures import write_release
from test_folder import write_pairs
from test_isbi import write_stacks
from test_pets import write_pets
from test_ph2 import write_ph2
from test_siim import UID, box, write_dicom

from seg.data.rle import rle_encode

SIIM_SIZE = 32
FOLDER_NAMES = [f"case_{i:02d}" for i in range(10)]
# Every 2-D recipe is shrunk the same way: 32x32 inputs, a 2-level net with 4..8 filters, one epoch.
SMALL = ["trainer.epochs=1", "trainer.batch_size=2", "trainer.preview_images=2", "trainer.progress_every=1"]
SMALL_UNET = ["model.depth=2", "model.wf=2"]


def write_siim(root: Path, n: int = 10) -> Path:
    """Kaggle layout: dicom-images-train/<study>/<series>/<sop>.dcm and train-rle.csv with the official
    header, a leading space before each value, -1 for empty, and two rows for a two-region image."""
    rng = np.random.default_rng(3)
    ids = [UID.format(2000 + i, 880000 + i) for i in range(n)]
    regions = {ids[0]: [box(2, 10, 4, 14, SIIM_SIZE), box(20, 26, 20, 30, SIIM_SIZE)],
               ids[3]: [box(0, 32, 28, 32, SIIM_SIZE)], ids[6]: [box(12, 20, 12, 20, SIIM_SIZE)]}
    lines = ["ImageId, EncodedPixels"]
    for case in ids:
        write_dicom(root, case, rng.integers(0, 256, (SIIM_SIZE, SIIM_SIZE), dtype=np.uint8))
        lines += [f"{case}, {rle_encode(m)}" for m in regions.get(case, [])] or [f"{case}, -1"]
    (root / "train-rle.csv").write_text("\n".join(lines) + "\n")
    return root


def write_pets_with_weights(root: Path) -> Path:
    """The Pets tree, plus a stand-in for torchvision's mobilenet_v2-b0353104.pth beside it (its layout:
    features.* and the classifier), since these machines cannot download the ImageNet weights."""
    import torch

    from seg.models.mobilenetv2 import MobileNetV2Encoder

    write_pets(root)
    torch.manual_seed(0)
    state = {**MobileNetV2Encoder().state_dict(), "classifier.1.weight": torch.zeros(1000, 1280),
             "classifier.1.bias": torch.zeros(1000)}
    torch.save(state, root / "mobilenet_v2.pth")
    return root


def write_luna(root: Path) -> Path:
    write_release(root)  # 6 series of 24x48x48 voxels, 5 annotated
    return root


def write_isbi(root: Path) -> Path:
    write_stacks(root, n=6, size=32)  # train-volume.tif and train-labels.tif, 6 slices of 32x32
    return root


def write_folder(root: Path, values: tuple[int, ...]) -> Path:
    write_pairs(root, FOLDER_NAMES, values=values)
    return root


@dataclass(frozen=True)
class Recipe:
    """What a recipe run must produce on its fixture."""

    write: Callable[[Path], Path]
    overrides: list[str]
    counts: dict[str, int]  # split.json sizes (LUNA: series)
    item_shape: tuple[int, ...]  # a training image [C, H, W]
    model: str
    loss: str
    monitor: str
    keys: tuple[str, ...] = ()  # further validation metrics the result must hold
    eval_splits: tuple[str, ...] = ("val", "test")


RECIPES = {
    "ph2_segnet": Recipe(
        write=write_ph2, overrides=["experiment=ph2_segnet", "dataset.image_size=32", "model.base_channels=4", *SMALL],
        counts={"train": 7, "val": 1, "test": 2}, item_shape=(3, 32, 32),
        model="seg.models.SegNet", loss="seg.losses.BCELoss", monitor="val/dice",
    ),
    "luna_unet": Recipe(
        write=write_luna,
        overrides=["experiment=luna_unet", "dataset.crop_size=32", "dataset.window=48", "dataset.epoch_samples=8",
                   *SMALL_UNET, *SMALL, "trainer.batch_size=4", "trainer.preview_images=6"],
        counts={"train": 5, "val": 1, "test": 0}, item_shape=(7, 32, 32),
        model="seg.models.UNetWrapper", loss="seg.losses.DiceRecallLoss", monitor="val/recall", eval_splits=("val",),
    ),
    "pets_unet": Recipe(
        write=write_pets, overrides=["experiment=pets_unet", "dataset.image_size=32", *SMALL_UNET, *SMALL],
        counts={"train": 9, "val": 1, "test": 3}, item_shape=(3, 32, 32),
        model="seg.models.UNet", loss="seg.losses.DiceCELoss", monitor="val/iou",
        keys=("val/iou_pet", "val/iou_background", "val/iou_border"),
    ),
    "pets_mobilenet": Recipe(
        write=write_pets_with_weights,
        overrides=["experiment=pets_mobilenet", "dataset.image_size=32",
                   "model.pretrained=${dataset.root}/mobilenet_v2.pth", "model.decoder_channels=[16,8,8,4]", *SMALL],
        counts={"train": 9, "val": 1, "test": 3}, item_shape=(3, 32, 32),
        model="seg.models.MobileNetUNet", loss="seg.losses.CELoss", monitor="val/iou",
        keys=("val/iou_pet", "val/iou_background", "val/iou_border"),
    ),
    "siim_unet": Recipe(
        write=write_siim, overrides=["experiment=siim_unet", f"dataset.image_size={SIIM_SIZE}", *SMALL_UNET, *SMALL],
        counts={"train": 8, "val": 1, "test": 1}, item_shape=(1, SIIM_SIZE, SIIM_SIZE),
        model="seg.models.UNet", loss="seg.losses.BCELoss", monitor="val/dice_kaggle",
    ),
    "isbi_unet": Recipe(
        write=write_isbi, overrides=["experiment=isbi_unet", "dataset.image_size=32", "dataset.val_slices=2",
                                       *SMALL_UNET, *SMALL],
        counts={"train": 4, "val": 2, "test": 0}, item_shape=(1, 32, 32),
        model="seg.models.UNet", loss="seg.losses.WeightedBCELoss", monitor="val/dice", eval_splits=("val",),
    ),
    "folder_binary": Recipe(
        write=lambda root: write_folder(root, (0, 255)),
        overrides=["dataset=folder", "dataset.image_size=32", *SMALL_UNET, *SMALL],
        counts={"train": 7, "val": 1, "test": 2}, item_shape=(3, 32, 32),
        model="seg.models.UNet", loss="seg.losses.DiceBCELoss", monitor="val/dice",
    ),
    "folder_multiclass": Recipe(
        write=lambda root: write_folder(root, (0, 100, 200)),
        overrides=["dataset=folder", "dataset.image_size=32", "dataset.n_classes=3",
                   "dataset.class_names=[sky,road,car]", "dataset.value_map={0:0,100:1,200:2}", "loss=dice_ce",
                   *SMALL_UNET, *SMALL],
        counts={"train": 7, "val": 1, "test": 2}, item_shape=(3, 32, 32),
        model="seg.models.UNet", loss="seg.losses.DiceCELoss", monitor="val/dice",
        keys=("val/iou_sky", "val/iou_road", "val/iou_car"),
    ),
}
