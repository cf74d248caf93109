"""Equal batch counts on every rank with a training batch size (a rank stepping once more hangs DDP)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from lpldstore import PoolLoader, PruningPlan
from lpldstore.errors import ConfigError
from lpldstore.loader.schedule import epoch_schedule, rank_batches, rank_share
from lpldstore.testing import fill, make_store

GRID = list(itertools.product((10, 11, 13), (2, 3, 4), (3, 4, 7)))  # (images, world size, batch size)


def _plan(num_images: int) -> PruningPlan:
    # Stored batches of 4 with the short last batch padded: 2, 3 or 1 real images in it.
    return PruningPlan(num_images=num_images, batch_size=4, epochs=3, ratio=1.0, last_batch="pad")


def _share_batches(lengths: np.ndarray, rank: int, world: int, bs: int, drop_last: bool) -> int:
    total = int(rank_share(lengths, rank, world).sum())
    return total // bs if drop_last else -(-total // bs)


def test_rank_batches_is_the_fewest_any_share_fills_over_a_grid() -> None:
    unequal = 0
    for (n, world, bs), drop_last in itertools.product(GRID, (False, True)):
        plan = _plan(n)
        lengths = np.array([plan.batch_length(int(b)) for b in plan.kept_keys[:, 1]], dtype=np.int64)
        own = [_share_batches(lengths, r, world, bs, drop_last) for r in range(world)]
        unequal += len(set(own)) > 1
        assert rank_batches(lengths, world, bs, drop_last=drop_last) == min(own)
    # The grid holds cases where the shares alone would give the ranks different step counts.
    assert unequal >= 12


def test_rank_batches_checks_its_arguments() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        rank_batches(np.ones(3, dtype=np.int64), 2, 0, drop_last=False)
    with pytest.raises(ConfigError, match="world_size"):
        rank_batches(np.ones(3, dtype=np.int64), 0, 2, drop_last=False)


@pytest.fixture(scope="module")
def padded_stores(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("padded")
    stores = {}
    for n in (10, 11, 13):
        path = root / f"n{n}.zarr"
        with make_store(path, plan=_plan(n)) as writer:
            fill(writer)
        stores[n] = path
    return stores


@pytest.mark.parametrize("policy", ["ilp", "sequential"])
def test_every_rank_yields_the_same_number_of_batches(padded_stores: dict[int, Path], policy: str) -> None:
    for n, world, bs in GRID:
        counts, samples = [], 0
        for rank in range(world):
            loader = PoolLoader(
                padded_stores[n], policy=policy, seed=3, batch_size=bs, rank=rank, world_size=world
            )
            loader.set_epoch(1)
            batches = list(loader)
            assert len(batches) == len(loader), (n, world, bs, rank)
            assert all(len(b) == bs for b in batches[:-1])
            counts.append(len(batches))
            samples += sum(len(b) for b in batches)
            loader.close()
        assert len(set(counts)) == 1, (n, world, bs, counts)
        # What the ranks leave out is at most one stored batch plus one training batch per rank.
        plan = _plan(n)
        schedule = epoch_schedule(plan, policy, 3, 1)  # type: ignore[arg-type]
        lengths = np.array([plan.batch_length(int(b)) for b in plan.kept_keys[schedule, 1]])
        held = sum(int(rank_share(lengths, r, world).sum()) for r in range(world))
        assert held - samples <= world * (4 + bs)


def test_a_rank_stopping_early_leaves_persistent_workers_ready_for_the_next_epoch(
    padded_stores: dict[int, Path],
) -> None:
    # (13 images, 2 ranks, batches of 3): rank 0's share is the fuller one in some epochs, so it
    # stops before its workers' stream ends; the next epoch must still be exactly the right one.
    store, world, bs = padded_stores[13], 2, 3
    plan = _plan(13)
    early = 0
    for epoch in range(4):
        full = epoch_schedule(plan, "ilp", 3, epoch)
        lengths = np.array([plan.batch_length(int(b)) for b in plan.kept_keys[full, 1]], dtype=np.int64)
        common = rank_batches(lengths, world, bs, drop_last=False)
        early += sum(_share_batches(lengths, r, world, bs, False) > common for r in range(world))
    assert early >= 2
    for rank in range(world):
        plain = PoolLoader(store, policy="ilp", seed=3, batch_size=bs, rank=rank, world_size=world)
        workers = PoolLoader(
            store, policy="ilp", seed=3, batch_size=bs, rank=rank, world_size=world, num_workers=1
        )
        for epoch in range(4):
            plain.set_epoch(epoch)
            workers.set_epoch(epoch)
            expected, got = list(plain), list(workers)
            assert len(got) == len(expected) == len(workers)
            for a, b in zip(expected, got, strict=True):
                assert torch.equal(a.images, b.images)
                assert torch.equal(a.keys, b.keys)
        plain.close()
        workers.close()
