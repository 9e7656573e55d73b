"""seg.train.parallel on its own: what a data-parallel run changes, checked without launching a run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from seg.distributed import Dist
from seg.errors import ConfigError
from seg.train import parallel


def _world(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    monkeypatch.setattr(parallel.distributed, "current", lambda: Dist(rank=rank, world=world, local_rank=rank))


def test_a_split_smaller_than_the_processes_is_refused(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    _world(monkeypatch, 0, 4)
    with pytest.raises(ConfigError, match="3 item\\(s\\) for 4 processes"):
        parallel.check_shards(3, OmegaConf.create({"batch_size": 2}))
    with caplog.at_level("WARNING", logger="seg"):
        parallel.check_shards(6, OmegaConf.create({"batch_size": 2}))  # trains, on 1 item per process
    assert "smaller than one step of 4 processes" in caplog.text


def test_an_explicit_gpu_index_is_refused_on_every_rank() -> None:
    for rank in (0, 1):
        with pytest.raises(ConfigError, match="LOCAL_RANK"):
            parallel.rank_device(torch.device("cuda", 1), Dist(rank=rank, world=2, local_rank=rank))
    assert parallel.rank_device(torch.device("cpu"), Dist(rank=1, world=2, local_rank=1)) == torch.device("cpu")


def test_the_resume_hint_repeats_the_process_count(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parallel.resume_command(Path("r/last.pt")) == "seg-train resume=r/last.pt"
    _world(monkeypatch, 0, 2)
    assert parallel.resume_command(Path("r/last.pt")).startswith("torchrun --nproc_per_node=2 -m seg.cli.train resume=")


class _Trial:
    """A trial whose pruner stops it at epoch 2."""

    def __init__(self) -> None:
        self.reported: list[tuple[int, float]] = []

    def report(self, epoch: int, value: float) -> bool:
        self.reported.append((epoch, value))
        return epoch >= 2


def _worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)})
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        trial = _Trial() if rank == 0 else None
        shared = parallel.SharedTrial(trial)
        verdicts = [shared.report(epoch, 0.5) for epoch in (1, 2)]
        bn = torch.nn.BatchNorm2d(2)
        bn.running_mean.fill_(float(rank + 1))  # each rank's own last step
        parallel.sync_buffers(bn)
        torch.save({"verdicts": verdicts, "reported": trial.reported if trial else None,
                    "mean": bn.running_mean.clone()}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_rank_0_alone_reports_and_every_rank_learns_the_verdict_and_its_statistics(tmp_path: Path) -> None:
    mp.start_processes(_worker, args=(str(tmp_path / "store"), str(tmp_path / "seen")), nprocs=2, start_method="fork")
    zero, one = (torch.load(tmp_path / f"seen.{r}", weights_only=False) for r in (0, 1))
    assert zero["verdicts"] == one["verdicts"] == [False, True]
    assert zero["reported"] == [(1, 0.5), (2, 0.5)] and one["reported"] is None  # one writer to the study
    assert torch.equal(one["mean"], torch.ones(2)) and torch.equal(zero["mean"], torch.ones(2))  # rank 0's


def test_a_printed_resume_command_runs_as_printed_for_any_folder_name() -> None:
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    for folder in ("runs/a", "S/3_loss=bce,model=segnet", "it's here", "back\\slash"):
        (word,) = shlex.split(parallel.resume_command(Path(folder) / "last.pt").removeprefix("seg-train "))
        (override,) = OverridesParser.create().parse_overrides([word])
        assert override.key_or_group == "resume" and override.value() == f"{folder}/last.pt"
