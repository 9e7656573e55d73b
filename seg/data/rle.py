"""Run-length encoded masks as used by the SIIM-ACR pneumothorax release.

SIIM stores each region as pairs `offset length`, where `offset` counts pixels from the end of the
previous run (from pixel 0 for the first run): a *relative* form. Pixels are numbered column-major
(down the first column, then the next), i.e. the flat array reshaped to (width, height) and
transposed. `-1` means an empty mask. The usual Kaggle form (`rle_*_absolute`) uses 1-based absolute
starts over the same pixel order instead.

Both official label files use the relative form: the stage-2 `stage_2_train.csv` repeats the rows of
`train-rle.csv` unchanged and adds the stage-1 test images. Evidence (no organiser statement of a
switch to absolute starts was found): the 5th-place solution (earhian/SIIM-ACR-Pneumothorax-
Segmentation-5th, dataSet/reader.py, compare.py) decodes stage_2_train.csv with the relative decoder
and scores it against its own relative stage-1 submission; public kernels convert stage_2_train.csv to
train-rle.csv by renaming the column only; a public preprocessing script notes train-rle.csv is a
byte-for-byte subset of stage_2_train.csv. A copy re-encoded with absolute starts fails loudly here
rather than decoding to garbage: as relative its runs overflow the image, and relative offsets read as
absolute starts go backwards (`rle_decode_absolute` rejects that).

Malformed strings raise `DatasetError`; readers catch it and add the CSV row and image id.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from seg.errors import DatasetError

EMPTY = "-1"

# Header spellings seen in the wild: the official `ImageId, EncodedPixels`, and `fname,mask` in
# converted copies of the release.
ID_COLUMNS = ("imageid", "image_id", "fname")
RLE_COLUMNS = ("encodedpixels", "encoded_pixels", "mask")


def _parse(rle: str) -> np.ndarray | None:
    """Integer pairs as an (n, 2) array, or None for the empty mask."""
    text = rle.strip()
    if text == EMPTY:
        return None
    if not text:
        raise DatasetError("empty run-length string: expected '-1' for an empty mask or 'offset length' pairs")
    try:
        values = np.array([int(token) for token in text.split()], dtype=np.int64)
    except ValueError:
        raise DatasetError(f"run-length string {_preview(text)!r} has non-integer values") from None
    if values.size % 2:
        raise DatasetError(f"run-length string has an odd number of values ({values.size}); expected pairs")
    if (values < 0).any():
        raise DatasetError(f"run-length string has negative values ({int(values.min())}); expected >= 0")
    return values.reshape(-1, 2)


def _preview(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _paint(starts: np.ndarray, lengths: np.ndarray, height: int, width: int) -> np.ndarray:
    """Set runs [start, start+length) of the column-major flat image; work grows with the foreground,
    not the image (a 1024x1024 release mask is mostly empty)."""
    total = height * width
    ends = starts + lengths
    if ends.size and int(ends.max()) > total:
        raise DatasetError(
            f"run-length string runs past the end of the {height}x{width} mask (pixel {int(ends.max())} > "
            f"{total}); the mask was encoded for a larger image"
        )
    keep = lengths > 0
    starts, lengths = starts[keep], lengths[keep]
    mask = np.zeros((height, width), dtype=np.uint8)
    if starts.size:
        # pixel k of run i is starts[i] + k: repeat each start, add a counter that restarts per run
        first = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        pixels = first + np.arange(int(lengths.sum()))
        mask.reshape(-1)[(pixels % height) * width + pixels // height] = 1  # column-major -> row-major
    return mask


def rle_decode(rle: str, height: int = 1024, width: int = 1024) -> np.ndarray:
    """SIIM relative RLE -> HxW uint8 mask in {0, 1}."""
    pairs = _parse(rle)
    if pairs is None:
        return np.zeros((height, width), dtype=np.uint8)
    offsets, lengths = pairs[:, 0], pairs[:, 1]
    # start_i = sum(offsets[:i+1]) + sum(lengths[:i])
    starts = np.cumsum(offsets) + np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return _paint(starts, lengths, height, width)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts (0-based) and lengths of foreground runs in column-major order."""
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    height, width = mask.shape
    flat = np.flatnonzero(mask)  # row-major pixel numbers (cheap: no transposed copy of the image)
    on = np.sort((flat % width) * height + flat // width)  # column-major pixel numbers
    if on.size == 0:
        return on, on
    breaks = np.flatnonzero(np.diff(on) > 1) + 1  # a gap between set pixels starts a new run
    first = np.concatenate(([0], breaks))
    last = np.concatenate((breaks, [on.size])) - 1
    return on[first], on[last] - on[first] + 1


def rle_encode(mask: np.ndarray) -> str:
    """HxW mask (non-zero = foreground) -> SIIM relative RLE; "-1" when empty."""
    starts, lengths = _runs(mask)
    if starts.size == 0:
        return EMPTY
    previous_ends = np.concatenate(([0], (starts + lengths)[:-1]))
    pairs = np.stack([starts - previous_ends, lengths], axis=1)
    return " ".join(map(str, pairs.ravel().tolist()))


def rle_decode_absolute(rle: str, height: int, width: int) -> np.ndarray:
    """Kaggle absolute RLE (1-based starts, column-major) -> HxW uint8 mask in {0, 1}."""
    pairs = _parse(rle)
    if pairs is None:
        return np.zeros((height, width), dtype=np.uint8)
    if (pairs[:, 0] < 1).any():
        raise DatasetError("absolute run-length starts are 1-based; found a start of 0")
    starts, lengths = pairs[:, 0] - 1, pairs[:, 1]
    behind = np.flatnonzero(starts[1:] < (starts + lengths)[:-1])
    if behind.size:
        i = int(behind[0]) + 1
        raise DatasetError(
            f"absolute run-length start {int(pairs[i, 0])} (pair {i + 1}) is not after the previous run, which "
            f"ends at pixel {int(starts[i - 1] + lengths[i - 1])}; absolute starts only increase, so this string "
            f"is probably SIIM's relative form"
        )
    return _paint(starts, lengths, height, width)


def rle_encode_absolute(mask: np.ndarray) -> str:
    """HxW mask -> Kaggle absolute RLE (1-based starts, column-major); "-1" when empty."""
    starts, lengths = _runs(mask)
    if starts.size == 0:
        return EMPTY
    return " ".join(map(str, np.stack([starts + 1, lengths], axis=1).ravel().tolist()))


DECODERS: dict[str, Callable[[str, int, int], np.ndarray]] = {
    "relative": rle_decode,
    "absolute": rle_decode_absolute,
}
ENCODERS: dict[str, Callable[[np.ndarray], str]] = {"relative": rle_encode, "absolute": rle_encode_absolute}
RLE_FORMS = tuple(DECODERS)


def rle_decode_union(rles: Iterable[str], height: int = 1024, width: int = 1024, form: str = "relative") -> np.ndarray:
    """Several rows for one image are several regions: their union. `form` is one of RLE_FORMS."""
    decode = DECODERS[form]
    mask = np.zeros((height, width), dtype=np.uint8)
    for rle in rles:
        np.maximum(mask, decode(rle, height, width), out=mask)
    return mask


def read_rle_csv(path: str | Path) -> dict[str, list[tuple[int, str]]]:
    """Rows grouped by image id, in file order, each with its 1-based line number (for error messages).

    Accepts the official header `ImageId, EncodedPixels` (space after the comma), the same without the
    space, and `fname,mask`; a UTF-8 byte-order mark is ignored.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle, skipinitialspace=True))
    except FileNotFoundError:
        raise DatasetError(f"run-length CSV not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read run-length CSV {path}: {exc}") from None
    if not rows:
        raise DatasetError(f"{path} is empty: expected a header 'ImageId, EncodedPixels' and one row per region")
    header = [h.strip().lower() for h in rows[0]]
    if len(header) != 2 or header[0] not in ID_COLUMNS or header[1] not in RLE_COLUMNS:
        raise DatasetError(
            f"{path}: header {rows[0]} is not a run-length table; expected 'ImageId, EncodedPixels' "
            f"(or 'fname,mask')"
        )
    grouped: dict[str, list[tuple[int, str]]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise DatasetError(
                f"{path}: line {line} has {len(row)} field(s) {row[:3]}; expected 'ImageId, EncodedPixels'"
            )
        grouped.setdefault(row[0].strip(), []).append((line, row[1]))
    return grouped
