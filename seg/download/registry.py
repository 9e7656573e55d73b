"""Where each dataset comes from, and where its files must end up for the readers.

Checksums are only those published or pinned by an authority we can name (the Oxford-IIIT Pet MD5s are
the ones torchvision pins for these exact tarballs); every other source has none, so the first download
prints and records its SHA-256 instead of trusting a number nobody verified.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from seg.errors import ConfigError

DATASETS = ("pets", "ph2", "luna16", "isbi2012", "siim")
LUNA_SUBSETS = tuple(range(10))

_PETS = ("https://thor.robots.ox.ac.uk/datasets/pets/", "https://www.robots.ox.ac.uk/~vgg/data/pets/data/")
_PETS_MD5 = {
    "images.tar.gz": "5c4f3ee8e5d25df40f4fd59a7f44e54c",
    "annotations.tar.gz": "95a8c909bbe2e81eed6a22bccdf3f68f",
}
_PH2_URL = "https://www.dropbox.com/s/k88qukc20ljnbuo/PH2Dataset.rar?dl=1"
_LUNA_PART1 = "https://zenodo.org/record/3723295/files/"  # subset0-6 and the CSV files
_LUNA_PART2 = "https://zenodo.org/record/4121926/files/"  # subset7-9
_ISBI_URL = "https://downloads.imagej.net/ISBI-2012-challenge.zip"

LAYOUTS = {
    "pets": "{root}/images/*.jpg, {root}/annotations/{{trimaps/*.png,trainval.txt,test.txt,list.txt}}",
    "ph2": "{root}/PH2Dataset/PH2 Dataset images/IMDnnn/...",
    "luna16": "{root}/subsetN/*.mhd + *.raw, {root}/annotations.csv, {root}/candidates.csv",
    "isbi2012": "{root}/train-volume.tif and {root}/train-labels.tif",
    "siim": "{root}/dicom-images-train/<study>/<series>/<image>.dcm and {root}/train-rle.csv",
}


@dataclass(frozen=True)
class Source:
    """One file to fetch. `archive` sources are unpacked so their content lands in `<root>/<into>`
    (only the `pick` file names, flattened, when given); plain files are stored as `<root>/<filename>`.
    `local_copies` are other archive names a user may already have placed in the root (used as is)."""

    filename: str
    urls: tuple[str, ...]
    sha256: str | None = None
    md5: str | None = None
    archive: bool = False
    into: str = ""
    pick: tuple[str, ...] = ()
    local_copies: tuple[str, ...] = ()


def parse_subsets(text: str) -> tuple[int, ...]:
    """'0,1' -> (0, 1); 'all' or '' -> every subset. Sorted, without duplicates."""
    if text.strip().lower() in ("", "all"):
        return LUNA_SUBSETS
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        values = [-1]
    if not values or any(v not in LUNA_SUBSETS for v in values):
        raise ConfigError(
            f"--subsets expects comma-separated LUNA16 subset numbers 0-9 (e.g. 0,1) or 'all'; got {text!r}."
        )
    return tuple(values)


def sources(
    dataset: str, *, base_url: str | None = None, subsets: Sequence[int] | None = None
) -> list[Source]:
    """The files of `dataset`; with `base_url`, every file is fetched from `<base_url>/<filename>`
    instead (a mirror or a local server). Published checksums still apply to a mirror."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}.")
    if subsets is not None and dataset != "luna16":
        raise ConfigError(f"--subsets applies to luna16 only, not to {dataset}.")
    found = _official(dataset, LUNA_SUBSETS if subsets is None else tuple(subsets))
    if base_url:
        prefix = base_url.rstrip("/") + "/"
        found = [replace(s, urls=(prefix + s.filename,)) for s in found]
    return found


def siim_steps(root: Path) -> str:
    """SIIM-ACR needs a Kaggle login, so instead of downloading, tell the user exactly what to run."""
    r, q = str(root), shlex.quote(str(root))
    return f"""SIIM-ACR Pneumothorax cannot be downloaded without a Kaggle account, so seg-download does not
fetch it. To get it into {r}:
  1. Create a Kaggle account at https://www.kaggle.com and sign in.
  2. Open https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation, read the competition rules
     and accept them (they govern the use of this data).
  3. pip install kaggle
  4. Kaggle > Settings > API > "Create New Token" downloads kaggle.json; put it in place:
       mkdir -p ~/.kaggle && mv kaggle.json ~/.kaggle/kaggle.json && chmod 600 ~/.kaggle/kaggle.json
  5. Download and unpack the training data as re-hosted on Kaggle Datasets:
       kaggle datasets download -d jesperdramsch/siim-acr-pneumothorax-segmentation-data -p {q}
       unzip -q {shlex.quote(r + "/siim-acr-pneumothorax-segmentation-data.zip")} -d {q}
  6. Check the layout the reader expects:
       {LAYOUTS["siim"].format(root=r)}
     Some versions of that dataset unpack into a 'pneumothorax/' or 'siim/' sub-folder: move its
     content up into {r} (or use that sub-folder as the dataset root).
     train-rle.csv has the header 'ImageId, EncodedPixels'."""


def _official(dataset: str, subsets: tuple[int, ...]) -> list[Source]:
    if dataset == "pets":
        return [
            Source(name, tuple(base + name for base in _PETS), md5=_PETS_MD5[name], archive=True, into=into)
            for name, into in (("images.tar.gz", "images"), ("annotations.tar.gz", "annotations"))
        ]
    if dataset == "ph2":
        return [
            Source("PH2Dataset.rar", (_PH2_URL,), archive=True, into="PH2Dataset",
                   local_copies=("PH2Dataset.zip",))
        ]
    if dataset == "luna16":
        csvs = [Source(name, (_LUNA_PART1 + name,)) for name in ("annotations.csv", "candidates.csv")]
        zips = [
            Source(f"subset{n}.zip", ((_LUNA_PART1 if n <= 6 else _LUNA_PART2) + f"subset{n}.zip",),
                   archive=True, into=f"subset{n}")
            for n in subsets
        ]
        return csvs + zips
    if dataset == "isbi2012":
        return [Source("ISBI-2012-challenge.zip", (_ISBI_URL,), archive=True,
                       pick=("train-volume.tif", "train-labels.tif"))]
    return []  # siim: see siim_steps
