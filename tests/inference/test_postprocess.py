"""Post-processing settings: what `apply` does to probabilities, and the file beside the checkpoint
(its SHA-256 ties it to one checkpoint; written atomically; another's file is refused)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seg.errors import CheckpointError, ConfigError
from seg.inference.postprocess import (
    FORMAT,
    Settings,
    apply,
    check_writable,
    load_postprocess,
    postprocess_path,
    save_postprocess,
    to_mask,
)

SHA = "a" * 64


def probs() -> np.ndarray:
    """A big blob (p 0.9), a small one (4 px, p 0.6), a faint one (p 0.4) on 0.1."""
    p = np.full((20, 20), 0.1)
    p[2:10, 2:10] = 0.9
    p[14:16, 14:16] = 0.6
    p[14:17, 2:5] = 0.4
    return p


def test_apply_in_its_order() -> None:
    p = probs()
    assert apply(p, None).sum() == 64 + 4  # plain threshold 0.5
    assert apply(p, Settings(threshold=0.3)).sum() == 64 + 4 + 9
    assert apply(p, Settings(threshold=0.3, min_size=5)).sum() == 64 + 9  # the 4-pixel blob goes
    assert apply(p, Settings(threshold=0.3, keep_largest=True)).sum() == 64
    # the image-level rule: empty unless 65 pixels exceed 0.8 (64 do)
    assert apply(p, Settings(empty_threshold=0.8, empty_min_pixels=65)).sum() == 0
    assert apply(p, Settings(empty_threshold=0.8, empty_min_pixels=64)).sum() == 68
    # diagonal neighbours join (8-connectivity): two pixels touching at a corner are one 2-pixel blob
    q = np.zeros((5, 5))
    q[1, 1] = q[2, 2] = 0.9
    assert apply(q, Settings(min_size=2)).sum() == 2


def test_apply_takes_tensors_and_class_maps() -> None:
    p = torch.from_numpy(probs()).float()[None]
    assert apply(p, Settings(threshold=0.3)).dtype == np.uint8 and apply(p, None).shape == (20, 20)
    multi = torch.softmax(torch.randn(3, 6, 6), dim=0)
    assert np.array_equal(apply(multi, None), multi.argmax(0).numpy())
    with pytest.raises(ConfigError, match="binary models"):
        apply(multi, Settings())


def test_describe_and_scaling() -> None:
    settings = Settings(0.35, 20, True, 0.8, 300, (256, 256))
    assert settings.describe() == "threshold=0.35 min_size=20 keep_largest empty_unless=300px>0.8"
    assert Settings().describe() == "threshold=0.5"
    scaled = settings.scaled((512, 512))  # 4x the pixels: 4x the counts
    assert (scaled.min_size, scaled.empty_min_pixels, scaled.threshold) == (80, 1200, 0.35)
    assert Settings(min_size=7).scaled((10, 10)).min_size == 7  # no reference size: counts as they are


def test_to_mask_resizes_then_applies_scaled_counts() -> None:
    p = torch.zeros(1, 10, 10)
    p[0, 1:3, 1:3] = 0.9  # 4 px at 10x10; 16 px at 20x20
    p[0, 6:9, 6:9] = 0.9  # 9 px; 36 px
    settings = Settings(min_size=5, pixels_at=(10, 10))
    mask = to_mask(p, (20, 20), 0.5, settings)
    assert mask.shape == (20, 20) and mask[14, 14] == 1 and mask[3, 3] == 0  # 16 < 20: removed
    assert to_mask(p, (20, 20), 0.5, None)[3, 3] == 1


def test_the_file_belongs_to_its_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "best.pt"
    assert postprocess_path(ckpt) == tmp_path / "best.postprocess.json"
    assert load_postprocess(ckpt, SHA) is None  # no file: nothing applies
    settings = Settings(0.4, 12, False, None, 0, (32, 32))
    written = save_postprocess(ckpt, SHA, settings, {"score_before": 0.5, "score_after": 0.6})
    record = json.loads(written.read_text())
    assert record["format"] == FORMAT and record["checkpoint_sha256"] == SHA and record["checkpoint"] == "best.pt"
    assert record["settings"]["pixels_at"] == [32, 32] and record["score_after"] == 0.6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.postprocess.json"]  # no temporary file left
    assert load_postprocess(ckpt, SHA) == settings
    assert load_postprocess(ckpt, "b" * 64) is None  # tuned for another checkpoint: not applied (a warning)
    save_postprocess(ckpt, "b" * 64, settings, {})  # seg's own record of an earlier best.pt: replaced
    assert load_postprocess(ckpt, "b" * 64) == settings and load_postprocess(ckpt, SHA) is None
    save_postprocess(ckpt, SHA, Settings(0.45), {})  # its own file: replaced
    assert load_postprocess(ckpt, SHA) == Settings(0.45)


def test_a_file_seg_did_not_write_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "best.pt"
    postprocess_path(ckpt).write_text('{"threshold": 0.2}')
    with pytest.raises(CheckpointError, match="not a seg post-processing file"):
        load_postprocess(ckpt, SHA)
    with pytest.raises(ConfigError, match="is not a seg post-processing record"):
        check_writable(ckpt, SHA)
    assert postprocess_path(ckpt).read_text() == '{"threshold": 0.2}'
    record = {"format": FORMAT, "checkpoint_sha256": SHA, "settings": {"threshold": 2.0}}
    postprocess_path(ckpt).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="unusable settings"):
        load_postprocess(ckpt, SHA)


@pytest.mark.parametrize("bad", [{"pixels_at": [0, 0], "min_size": 5}, {"pixels_at": [7]},
                                 {"empty_threshold": "x"}, {"min_size": 1e308}, {"keep_largest": "yes"},
                                 {"threshold": True}])
def test_a_damaged_or_crafted_record_is_one_line(tmp_path: Path, bad: dict) -> None:
    ckpt = tmp_path / "best.pt"
    record = {"format": FORMAT, "checkpoint_sha256": SHA, "settings": {"threshold": 0.4, **bad}}
    postprocess_path(ckpt).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="holds unusable settings"):
        load_postprocess(ckpt, SHA)
