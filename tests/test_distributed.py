"""seg.distributed, sharded sampling and summed metrics on their own (gloo, 2 CPU processes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from seg import distributed
from seg.engine.seeding import EpochShuffle, Shard
from seg.errors import ConfigError
from seg.metrics import SegMetrics


def test_two_shards_of_an_epoch_interleave_into_the_one_process_order() -> None:
    one = [i for _, i in EpochShuffle(21, seed=3)]
    shards = [[i for _, i in EpochShuffle(21, seed=3, rank=r, world=2)] for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 10 == len(EpochShuffle(21, seed=3, rank=1, world=2))
    # step j of the two processes together is the one-process batch j of twice the size
    assert [x for pair in zip(*shards) for x in pair] == one[:20]


def test_a_resumed_epoch_skips_the_samples_all_processes_saw() -> None:
    full = EpochShuffle(20, seed=1)
    full.set_epoch(4)
    order = [i for _, i in full]
    part = EpochShuffle(20, seed=1, rank=1, world=2)
    part.set_epoch(4, start=6)  # 6 samples over both processes: 3 steps of 2 x 1
    assert [i for _, i in part] == order[6:][1::2] and len(part) == 7


def test_validation_shards_cover_every_item_once() -> None:
    shards = [list(Shard(7, rank=r, world=3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7)) and [len(s) for s in shards] == [3, 2, 2]


def test_one_process_needs_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    d = distributed.join("cpu")
    assert (d.rank, d.world, d.main, d.enabled) == (0, 1, True, False) and not dist.is_initialized()
    assert distributed.broadcast("x") == "x" and distributed.gather(3) == [3]
    assert distributed.max_int(15, torch.device("cpu")) == 15


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2", "RANK": "2"}, {"WORLD_SIZE": "two"}])
def test_bad_rank_variables_are_one_line(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="RANK|WORLD_SIZE"):
        distributed.env_dist()


def test_a_world_without_rendezvous_says_to_use_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="torchrun"):
        distributed.join("cpu")


def _worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)})
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        # Each rank scores its shard of 4 binary images; the summed metrics are those of all 4.
        g = torch.Generator().manual_seed(0)
        logits, masks = torch.randn(4, 1, 8, 8, generator=g), (torch.rand(4, 8, 8, generator=g) > 0.5).long()
        metrics = SegMetrics(n_classes=1)
        for i in list(Shard(4, rank=rank, world=2)):
            metrics.update(logits[i : i + 1], masks[i : i + 1], loss=torch.tensor(float(i)))
        metrics.sync(torch.device("cpu"))
        seen = {"metrics": metrics.compute(), "n_images": metrics.n_images,
                "broadcast": distributed.broadcast(f"from {rank}"), "gather": distributed.gather(rank * 10),
                "max": distributed.max_int(15 if rank == 1 else 0, torch.device("cpu"))}
        torch.save(seen, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_sum_their_metrics_into_the_one_process_values(tmp_path: Path) -> None:
    mp.start_processes(_worker, args=(str(tmp_path / "store"), str(tmp_path / "seen")), nprocs=2,
                       start_method="fork")
    g = torch.Generator().manual_seed(0)
    logits, masks = torch.randn(4, 1, 8, 8, generator=g), (torch.rand(4, 8, 8, generator=g) > 0.5).long()
    alone = SegMetrics(n_classes=1)
    for i in range(4):
        alone.update(logits[i : i + 1], masks[i : i + 1], loss=torch.tensor(float(i)))
    for rank in (0, 1):
        seen = torch.load(tmp_path / f"seen.{rank}", weights_only=False)
        assert seen["n_images"] == 4 and seen["metrics"] == pytest.approx(alone.compute(), abs=1e-12)
        assert seen["broadcast"] == "from 0" and seen["gather"] == [0, 10] and seen["max"] == 15


@pytest.mark.parametrize(("world", "worker"), [(None, False), ("1", False), ("", False), ("2", True), ("8", True)])
def test_a_worker_is_one_of_several_processes(monkeypatch: pytest.MonkeyPatch, world: str | None, worker: bool) -> None:
    if world is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world)
    assert distributed.is_worker() is worker


@pytest.mark.parametrize(("code", "status", "stderr"),
                         [(None, 0, ""), (0, 0, ""), (3, 3, ""), ("bad input", 1, "bad input")])
def test_exit_worker_keeps_the_status_and_flushes_the_log(tmp_path: Path, code, status: int, stderr: str) -> None:
    """os._exit skips the interpreter's teardown (and so its flushing): the log file and the buffered
    console must still hold everything written before."""
    import subprocess
    import sys

    script = (
        "import logging, sys\n"
        f"logging.basicConfig(filename={str(tmp_path / 'run.log')!r}, level=logging.INFO)\n"
        "logging.getLogger('seg').info('last line')\n"
        "sys.stdout.write('unflushed')\n"
        "from seg import distributed\n"
        f"distributed.exit_worker({code!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == status and proc.stdout == "unflushed"
    assert proc.stderr.strip() == stderr
    assert (tmp_path / "run.log").read_text().strip().endswith("last line")


@pytest.mark.parametrize(("world", "body", "status", "after"),
                         [("2", "pass", 0, False), ("2", "sys.exit(2)", 2, False), ("1", "pass", 0, True)])
def test_run_entry_ends_a_worker_with_the_entrys_status(world: str, body: str, status: int, after: bool) -> None:
    """A torchrun worker never returns from run_entry (its teardown is skipped); one process returns."""
    import subprocess
    import sys

    script = ("import sys\nfrom seg import distributed\n"
              f"def entry():\n    {body}\n"
              "distributed.run_entry(entry)\nprint('after')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "WORLD_SIZE": world})
    assert proc.returncode == status, proc.stderr
    assert ("after" in proc.stdout) is after
