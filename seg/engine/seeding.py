"""Seeds and random states: the same seed gives the same run, and a resumed run continues the same
random streams (Python, NumPy, torch CPU and CUDA)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def worker_init_fn(worker_id: int) -> None:
    """Give each data-loader worker distinct NumPy/Python streams derived from torch's per-worker seed
    (which the loader derives from its generator, so they repeat with the seed)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed * 1_000_003 + epoch)
    return g


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one item in one epoch (e.g. where a crop lands). It depends on nothing
    else, so a worker's count, its order, or a resume in the middle of an epoch draw the same item."""
    return np.random.default_rng([seed % 2**64, epoch, index])


class EpochShuffle(Sampler[tuple[int, int]]):
    """A shuffling order that depends only on (seed, epoch), like DistributedSampler's set_epoch: a
    resumed run sees the same order as an uninterrupted one, and one DataLoader (with persistent
    workers) serves every epoch. It yields `(epoch, index)` keys for `EpochItems`: workers keep their
    own copy of the dataset, so the epoch has to travel with each index.

    `set_epoch(e, start=k)` skips the first k indices of epoch e's order (an epoch resumed after k
    samples, counted over all processes).

    Data-parallel (`world` > 1): every process draws the same order and takes every world-th index
    from its rank on, as DistributedSampler does, so each sample is seen once an epoch across the
    processes and step j of the processes together is the one-process batch j of `world` times the
    size. The tail that would leave processes with unequal counts is dropped (each epoch's order
    differs, so no sample is left out for good)."""

    def __init__(self, n: int, seed: int, *, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside [0, {world})")
        self.n, self.seed, self.epoch, self.start = n, seed, 1, 0
        self.rank, self.world = rank, world

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, min(max(0, start), self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch)).tolist()[self.start :]
        if self.world > 1:
            order = order[: len(order) - len(order) % self.world][self.rank :: self.world]
        return ((self.epoch, i) for i in order)

    def __len__(self) -> int:
        return (self.n - self.start) // self.world


class Shard(Sampler[int]):
    """Validation indices of one process: every world-th from its rank on, in order; the counts may
    differ by one, and the metric sums over the processes cover each item exactly once."""

    def __init__(self, n: int, *, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochItems(Dataset):
    """Serves `(epoch, index)` keys. Datasets with random items (LUNA's training crops) define
    `draw(index, rng)` and get `item_rng(seed, epoch, index)`; the others are simply indexed."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed
        self._draw = getattr(dataset, "draw", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if self._draw is None:
            return self.dataset[index]
        return self._draw(index, item_rng(self.seed, epoch, index))


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_python_state(state["python"]))
    _set_numpy_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(state: Any) -> tuple:
    """random.setstate needs tuples; a checkpoint round trip may hand back lists."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _numpy_state() -> dict[str, Any]:
    """NumPy's state with its key array as a tensor, so checkpoints load with weights_only=True."""
    state = np.random.get_state(legacy=False)
    inner = state["state"]
    return {**state, "state": {"key": torch.from_numpy(inner["key"].astype(np.int64)), "pos": int(inner["pos"])}}


def _set_numpy_state(state: dict[str, Any]) -> None:
    inner = state["state"]
    key = np.asarray(inner["key"].numpy() if torch.is_tensor(inner["key"]) else inner["key"], dtype=np.uint32)
    np.random.set_state({**state, "state": {"key": key, "pos": int(inner["pos"])}})
