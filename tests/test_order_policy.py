"""The ``order`` pool policy: training epoch e replays stored epoch e (the official LPLD replay)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lpldstore import ConfigError, LoaderConfig, PoolLoader, PruningPlan, epoch_schedule
from lpldstore.testing import fill, make_store

FULL = PruningPlan(num_images=20, batch_size=4, epochs=6)  # 5 batches per epoch, every epoch kept
PRUNED = PruningPlan(num_images=20, batch_size=4, epochs=6, ratio=2.5)  # 12 entries: epochs 0-1, 2 of epoch 2


def test_order_replays_stored_epoch_e_in_batch_order() -> None:
    for epoch in range(FULL.epochs):
        keys = FULL.kept_keys[epoch_schedule(FULL, "order", 0, epoch)]
        assert keys.tolist() == [[epoch, b] for b in range(5)]


def test_order_cycles_through_the_complete_stored_epochs_of_a_pruned_store() -> None:
    replayed = [int(PRUNED.kept_keys[epoch_schedule(PRUNED, "order", 0, e)][0, 0]) for e in range(5)]
    assert replayed == [0, 1, 0, 1, 0]  # epoch 2 is incomplete: never replayed, as with "epoch"
    assert all(len(epoch_schedule(PRUNED, "order", 0, e)) == 5 for e in range(5))


def test_order_is_not_the_epoch_policy_and_ignores_the_seed() -> None:
    order = [epoch_schedule(FULL, "order", s, e).tolist() for s in (0, 1) for e in range(FULL.epochs)]
    assert order[: FULL.epochs] == order[FULL.epochs :]  # no randomness
    drawn = [int(FULL.kept_keys[epoch_schedule(FULL, "epoch", 0, e)][0, 0]) for e in range(FULL.epochs)]
    assert drawn != list(range(FULL.epochs))  # the epoch policy draws with replacement instead


def test_the_loader_replays_stored_epoch_e(tmp_path: Path) -> None:
    with make_store(tmp_path / "s.zarr", plan=FULL) as writer:
        fill(writer)
    loader = PoolLoader(tmp_path / "s.zarr", LoaderConfig(policy="order"))
    for epoch in (0, 3):
        loader.set_epoch(epoch)
        assert [int(k) for k in loader.positions()] == list(range(5 * epoch, 5 * epoch + 5))
        batches = list(loader)
        assert len(batches) == 5
    with pytest.raises(ConfigError, match=r"steps_per_epoch=None with policy 'order'"):
        LoaderConfig(policy="order", steps_per_epoch=3)
    loader.close()
    assert np.array_equal(loader.positions(4), np.arange(20, 25))
