"""What a kill, a full disk or a changed dataset can do to a run's checkpoints, and what the next start
repairs: the order of last.pt and best.pt, leftover temporary files, provenance."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pytest

import seg.checkpoint
from seg.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint, sha256
from seg.cli.common import user_message
from seg.engine.state import TrainState
from seg.provenance import code_version, provenance_differences, split_sha256
from seg.train.fit import fit
from seg.train.plan import RunPlan
from seg.train.repair import reconcile_best
from tests.tiny import compose_cfg


class Killed(BaseException):
    """Stands for a SIGKILL: nothing in seg catches it."""


def test_last_is_written_before_best_and_best_is_the_same_file(tmp_path: Path, monkeypatch) -> None:
    import seg.train.run as run_module

    order: list[str] = []
    real_save, real_publish = run_module.save_checkpoint, run_module.publish_copy
    monkeypatch.setattr(run_module, "save_checkpoint", lambda state, path: order.append(Path(path).name)
                        or real_save(state, path))
    monkeypatch.setattr(run_module, "publish_copy", lambda src, dst: order.append(Path(dst).name)
                        or real_publish(src, dst))
    fit(compose_cfg(["trainer.epochs=1"], tmp_path), tmp_path)
    assert order == ["last.pt", "best.pt"]
    last, best = tmp_path / "checkpoints" / "last.pt", tmp_path / "checkpoints" / "best.pt"
    assert last.read_bytes() == best.read_bytes()  # a hard link here; a copy where links are missing
    assert load_checkpoint(best)["best_epoch"] == 1


def test_a_kill_between_last_and_best_is_repaired_by_the_next_start(tmp_path: Path, monkeypatch, caplog) -> None:
    import seg.train.run as run_module

    def killed(*args):
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(run_module, "publish_copy", killed)
        with pytest.raises(Killed):
            fit(compose_cfg(["trainer.epochs=1"], tmp_path), tmp_path)
    ckpts = tmp_path / "checkpoints"
    assert load_checkpoint(ckpts / "last.pt")["best_epoch"] == 1 and not (ckpts / "best.pt").exists()
    with caplog.at_level(logging.WARNING, logger="seg"):
        fit(compose_cfg(["trainer.epochs=1", "resume=auto"], tmp_path), tmp_path)  # nothing to train: only the start
    assert "best.pt is missing or unreadable but last.pt records the best at epoch 1" in caplog.text
    assert (ckpts / "best.pt").read_bytes() == (ckpts / "last.pt").read_bytes()


def _ckpt(path: Path, epoch: int, best_epoch: int | None, best_score: float | None, progress=None) -> Path:
    return save_checkpoint(make_checkpoint(model={}, config={}, optimizer={}, rng={}, epoch=epoch,
                                           best_epoch=best_epoch, best_score=best_score, epoch_progress=progress), path)


def _reconcile(run_dir: Path, last: Path) -> TrainState:
    ckpt = load_checkpoint(last)
    state = TrainState(epoch=ckpt["epoch"], best_epoch=ckpt["best_epoch"], best_score=ckpt["best_score"])
    reconcile_best(RunPlan(run_dir, resume_from=last), state)
    return state


def test_a_best_record_whose_weights_are_gone_follows_best_pt_or_is_cleared(tmp_path: Path, caplog) -> None:
    ckpts = tmp_path / "checkpoints"
    last = _ckpt(ckpts / "last.pt", epoch=7, best_epoch=5, best_score=0.8)  # epoch 5's weights: nowhere
    best = _ckpt(ckpts / "best.pt", epoch=4, best_epoch=4, best_score=0.7)
    before = best.read_bytes()
    with caplog.at_level(logging.WARNING, logger="seg"):
        state = _reconcile(tmp_path, last)
    assert (state.best_epoch, state.best_score) == (4, 0.7) and best.read_bytes() == before
    assert "the best record now follows best.pt" in caplog.text
    best.unlink()
    state = _reconcile(tmp_path, last)
    assert state.best_epoch is None and state.best_score is None  # the next validation writes best.pt
    # Agreeing files are left as they are; a checkpoint saved mid-epoch is never copied (its weights moved on).
    _ckpt(ckpts / "best.pt", epoch=5, best_epoch=5, best_score=0.8)
    assert (_reconcile(tmp_path, last).best_epoch, _reconcile(tmp_path, last).best_score) == (5, 0.8)
    mid = _ckpt(ckpts / "last.pt", epoch=5, best_epoch=5, best_score=0.9, progress={"epoch": 6})
    assert _reconcile(tmp_path, mid).best_epoch == 5 and load_checkpoint(ckpts / "best.pt")["best_score"] == 0.8


def test_partial_writes_are_removed_at_the_next_start_and_nothing_else(tmp_path: Path) -> None:
    fit(compose_cfg(["trainer.epochs=1"], tmp_path), tmp_path)
    ckpts = tmp_path / "checkpoints"
    partial = [".last.pt.ab12cd_9.tmp", ".best.pt.zzzzzzzz.tmp"]
    kept = [".last.pt.keep.tmp", "notes.tmp", ".other.pt.abcdefgh.tmp", "last.pt.abcdefgh.tmp"]
    for name in partial + kept:
        (ckpts / name).write_bytes(b"PK\x03\x04 half")
    fit(compose_cfg(["trainer.epochs=1", "resume=auto"], tmp_path), tmp_path)
    assert sorted(p.name for p in ckpts.iterdir()) == sorted(["best.pt", "last.pt", *kept])


def test_a_new_run_removes_the_partial_write_of_a_first_save_that_was_killed(tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / ".last.pt.q1w2e3r4.tmp").write_bytes(b"half")  # no .pt yet: a new run may start here
    fit(compose_cfg(["trainer.epochs=1"], tmp_path), tmp_path)
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "last.pt"]


def test_a_full_disk_names_the_checkpoint_and_keeps_the_earlier_one(tmp_path: Path, monkeypatch) -> None:
    fit(compose_cfg(["trainer.epochs=1"], tmp_path), tmp_path)
    ckpts = tmp_path / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpts.iterdir()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(seg.checkpoint.torch, "save", full)
    with pytest.raises(OSError) as err:
        fit(compose_cfg(["trainer.epochs=2", "resume=auto"], tmp_path), tmp_path)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(ckpts / "last.pt")
    line = user_message(err.value)
    assert line.startswith("the disk is full (No space left on device) while writing ") and "last.pt" in line
    assert "files written before are kept" in line and "check that the path exists" not in line
    assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before  # no temporary file either


def test_every_checkpoint_carries_its_provenance(tmp_path: Path) -> None:
    fit(compose_cfg(["trainer.epochs=1"], tmp_path), tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    prov = ckpt["provenance"]
    assert prov["code"] == code_version() and prov["code"]["version"] == seg.__version__
    if prov["code"]["git_commit"] is not None:  # run from a git checkout (as the tests are, usually)
        assert len(prov["code"]["git_commit"]) == 40 and isinstance(prov["code"]["git_dirty"], bool)
    assert prov["split_sha256"] == sha256(tmp_path / "split.json")
    assert prov["split_sha256"] == split_sha256(json.loads((tmp_path / "split.json").read_text()))
    assert "data" in prov


def test_a_resume_on_changed_source_files_warns_in_one_line(tmp_path: Path, monkeypatch, caplog) -> None:
    from seg.data.synthetic import SyntheticData

    monkeypatch.setattr(SyntheticData, "source_fingerprint", lambda self: {"files": 20, "sha256": "a" * 64},
                        raising=False)
    fit(compose_cfg(["trainer.epochs=1"], tmp_path), tmp_path)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["provenance"]["data"]["files"] == 20
    monkeypatch.setattr(SyntheticData, "source_fingerprint", lambda self: {"files": 21, "sha256": "b" * 64},
                        raising=False)
    with caplog.at_level(logging.WARNING, logger="seg"):
        fit(compose_cfg(["trainer.epochs=2", "resume=auto"], tmp_path), tmp_path)
    (line,) = [r.getMessage() for r in caplog.records if "source files differ" in r.getMessage()]
    assert "20 files, sha256 aaaaaaaaaaaa then; 21 files, sha256 bbbbbbbbbbbb now" in line and "\n" not in line


def test_provenance_differences() -> None:
    split = {"train": ["a", "b"], "val": ["c"], "test": []}
    ckpt = {"provenance": {"data": {"files": 3, "sha256": "1" * 64}, "split_sha256": split_sha256(split)}}
    assert provenance_differences(ckpt, {"files": 3, "sha256": "1" * 64}, split) == []
    assert provenance_differences({"epoch": 1}, None, split) == []  # written before provenance existed
    assert provenance_differences(ckpt, None, None) == []  # generated data: nothing to compare
    moved = {"train": ["a"], "val": ["b", "c"], "test": []}
    found = provenance_differences(ckpt, {"files": 4, "sha256": "2" * 64}, moved)
    assert len(found) == 2 and "source files differ" in found[0] and "split differs" in found[1]

    class Data:
        def source_fingerprint(self):
            return {"files": 3, "sha256": "1" * 64}

    assert provenance_differences(ckpt, Data(), split) == []
