"""SIIM run-length masks: known values, malformed strings, round trips on real rows and random masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from seg.data.rle import (
    DECODERS,
    ENCODERS,
    RLE_FORMS,
    read_rle_csv,
    rle_decode,
    rle_decode_absolute,
    rle_decode_union,
    rle_encode,
    rle_encode_absolute,
)
from seg.errors import DatasetError


def test_decode_is_relative_and_column_major() -> None:
    # 3 rows x 4 columns; column-major pixel numbers: column c holds 3c .. 3c+2.
    mask = rle_decode("1 2 4 1", height=3, width=4)
    expected = np.zeros((3, 4), np.uint8)
    expected[1:3, 0] = 1  # pixels 1, 2
    expected[1, 2] = 1  # end of first run is pixel 3; +4 -> pixel 7 = column 2, row 1
    np.testing.assert_array_equal(mask, expected)
    assert mask.dtype == np.uint8


def test_encode_known_mask_and_empty() -> None:
    mask = np.zeros((3, 4), np.uint8)
    mask[0, :] = 255  # top row: pixels 0, 3, 6, 9 in column-major order
    assert rle_encode(mask) == "0 1 2 1 2 1 2 1"
    assert rle_encode(np.zeros((5, 5), np.uint8)) == "-1"
    np.testing.assert_array_equal(rle_decode(" -1", 5, 6), np.zeros((5, 6), np.uint8))


def test_run_to_the_last_pixel_is_kept() -> None:
    mask = np.zeros((4, 4), np.uint8)
    mask[2:, 3] = 1  # last two pixels of the flat column-major image
    assert rle_encode(mask) == "14 2"
    np.testing.assert_array_equal(rle_decode("14 2", 4, 4), mask)


def test_union_of_rows() -> None:
    union = rle_decode_union(["0 2", "-1", "5 1"], height=3, width=3)
    assert union.sum() == 3
    assert union.T.ravel().tolist() == [1, 1, 0, 0, 0, 1, 0, 0, 0]


def test_absolute_form_is_one_based() -> None:
    mask = rle_decode_absolute("2 2 8 1", height=3, width=3)
    assert mask.T.ravel().tolist() == [0, 1, 1, 0, 0, 0, 0, 1, 0]
    assert rle_encode_absolute(mask) == "2 2 8 1"
    with pytest.raises(DatasetError, match="1-based"):
        rle_decode_absolute("0 2", 3, 3)


def test_known_mask_agrees_between_the_two_conventions() -> None:
    # 3 rows x 4 columns: pixels 1, 2 (column 0, rows 1-2) and 7 (column 2, row 1), column-major.
    expected = np.zeros((3, 4), np.uint8)
    expected[1:3, 0] = expected[1, 2] = 1
    assert (rle_encode(expected), rle_encode_absolute(expected)) == ("1 2 4 1", "2 2 8 1")
    np.testing.assert_array_equal(rle_decode("1 2 4 1", 3, 4), expected)
    np.testing.assert_array_equal(rle_decode_absolute("2 2 8 1", 3, 4), expected)
    assert RLE_FORMS == ("relative", "absolute")
    for form in RLE_FORMS:
        np.testing.assert_array_equal(DECODERS[form](ENCODERS[form](expected), 3, 4), expected)
    union = rle_decode_union(["2 2", "-1", "8 1"], height=3, width=4, form="absolute")
    np.testing.assert_array_equal(union, expected)


def test_absolute_starts_must_increase() -> None:
    # a valid relative string read as absolute: its second offset (1) lies before the first run's end
    assert rle_decode("5 2 1 1", 3, 4).sum() == 3
    with pytest.raises(DatasetError, match=r"start 1 \(pair 2\) is not after the previous run.*relative form"):
        rle_decode_absolute("5 2 1 1", 3, 4)
    np.testing.assert_array_equal(rle_decode_absolute("1 2 3 1", 3, 4).T.ravel()[:4], [1, 1, 1, 0])  # adjacent


def test_real_rows_in_both_conventions(shared_data: Path) -> None:
    """Every real positive row is unambiguous: read in the wrong convention it fails loudly."""
    rows = read_rle_csv(shared_data / "siim-sample" / "train-rle-subset1500.csv")
    positive = [rle for group in rows.values() for _, rle in group if rle.strip() != "-1"]
    assert len(positive) == 500
    for rle in positive[:100]:
        mask = rle_decode(rle)
        absolute = rle_encode_absolute(mask)
        np.testing.assert_array_equal(rle_decode_absolute(absolute, 1024, 1024), mask)
        with pytest.raises(DatasetError, match="relative form"):
            rle_decode_absolute(rle, 1024, 1024)
        with pytest.raises(DatasetError, match="past the end"):
            rle_decode(absolute)


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "odd number"),
        ("1 -2", "negative"),
        ("5 5", "past the end"),
        ("1 a", "non-integer"),
        ("   ", "empty"),
    ],
)
def test_malformed_strings_raise(rle: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        rle_decode(rle, height=3, width=3)


def test_csv_headers_and_grouping(tmp_path: Path) -> None:
    path = tmp_path / "train-rle.csv"
    path.write_text("ImageId, EncodedPixels\na, -1\nb, 0 2\nb, 5 1\n\n")
    rows = read_rle_csv(path)
    assert rows == {"a": [(2, "-1")], "b": [(3, "0 2"), (4, "5 1")]}
    (tmp_path / "other.csv").write_text("\ufefffname,mask\nc,-1\n")
    assert list(read_rle_csv(tmp_path / "other.csv")) == ["c"]
    (tmp_path / "bad.csv").write_text("id,pixels\nc,-1\n")
    with pytest.raises(DatasetError, match="ImageId, EncodedPixels"):
        read_rle_csv(tmp_path / "bad.csv")
    with pytest.raises(DatasetError, match="not found"):
        read_rle_csv(tmp_path / "missing.csv")


@pytest.mark.parametrize(("name", "positives"), [("train-rle-sample.csv", 5), ("train-rle-subset1500.csv", 500)])
def test_real_rows_round_trip(shared_data: Path, name: str, positives: int) -> None:
    rows = read_rle_csv(shared_data / "siim-sample" / name)
    values = [rle for group in rows.values() for _, rle in group]
    assert len(values) == {"train-rle-sample.csv": 10, "train-rle-subset1500.csv": 1500}[name]
    decoded_positive = 0
    for rle in values:
        mask = rle_decode(rle)
        assert mask.shape == (1024, 1024)
        assert rle_encode(mask) == rle.strip()
        if rle.strip() != "-1":
            decoded_positive += 1
            assert mask.any()
    assert decoded_positive == positives


@st.composite
def relative_rle(draw: st.DrawFn) -> tuple[str, int, int]:
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    total, position, values = height * width, 0, []
    while True:
        gap = draw(st.integers(0 if not values else 1, 6))
        length = draw(st.integers(1, 8))
        if position + gap + length > total or draw(st.booleans()) and values:
            break
        values += [gap, length]
        position += gap + length
    return (" ".join(map(str, values)) if values else "-1"), height, width


@settings(max_examples=150, deadline=None)
@given(relative_rle())
def test_encode_decode_string_property(case: tuple[str, int, int]) -> None:
    rle, height, width = case
    assert rle_encode(rle_decode(rle, height, width)) == rle


@st.composite
def absolute_rle(draw: st.DrawFn) -> tuple[str, int, int]:
    """1-based increasing starts with a gap of at least one pixel between runs (as an encoder writes)."""
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    total, position, values = height * width, 0, []  # position: 0-based end of the previous run
    while True:
        start = position + draw(st.integers(0 if not values else 1, 6))
        length = draw(st.integers(1, 8))
        if start + length > total or draw(st.booleans()) and values:
            break
        values += [start + 1, length]
        position = start + length
    return (" ".join(map(str, values)) if values else "-1"), height, width


@settings(max_examples=150, deadline=None)
@given(absolute_rle())
def test_absolute_encode_decode_string_property(case: tuple[str, int, int]) -> None:
    rle, height, width = case
    assert rle_encode_absolute(rle_decode_absolute(rle, height, width)) == rle


@settings(max_examples=150, deadline=None)
@given(relative_rle())
def test_conventions_convert_without_loss(case: tuple[str, int, int]) -> None:
    rle, height, width = case
    mask = rle_decode(rle, height, width)
    absolute = rle_encode_absolute(mask)
    np.testing.assert_array_equal(rle_decode_absolute(absolute, height, width), mask)
    assert rle_encode(rle_decode_absolute(absolute, height, width)) == rle


masks = st.tuples(st.integers(1, 10), st.integers(1, 10)).flatmap(
    lambda shape: arrays(np.uint8, shape, elements=st.integers(0, 1))
)


@settings(max_examples=150, deadline=None)
@given(masks)
def test_decode_encode_mask_property(mask: np.ndarray) -> None:
    height, width = mask.shape
    np.testing.assert_array_equal(rle_decode(rle_encode(mask), height, width), mask)
    np.testing.assert_array_equal(rle_decode_absolute(rle_encode_absolute(mask), height, width), mask)
