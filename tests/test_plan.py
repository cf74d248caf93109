from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lpldstore import ConfigError, EntryError, PruningPlan


def test_imagenet1k_ipc10_at_40x_keeps_585_entries() -> None:
    # LPLD's example: 10,000 images, batch 128, drop_last -> 78 batches/epoch, 300 epochs.
    plan = PruningPlan(num_images=10_000, batch_size=128, epochs=300, ratio=40)
    assert plan.batches_per_epoch == 78
    assert plan.total_entries == 23_400
    assert plan.num_kept == 585
    # The prefix is epochs 0-6 plus 39 batches of epoch 7, as the reference code generates.
    keys = plan.kept_keys
    assert keys[0].tolist() == [0, 0]
    assert keys[-1].tolist() == [7, 38]


@pytest.mark.parametrize(("ratio", "kept"), [(1, 23_400), (10, 2_340), (20, 1_170), (100, 234), (33.3, 702)])
def test_kept_count_is_floor_of_total_over_ratio(ratio: float, kept: int) -> None:
    assert PruningPlan(num_images=10_000, batch_size=128, epochs=300, ratio=ratio).num_kept == kept


def test_epoch_strategy_keeps_whole_epochs() -> None:
    plan = PruningPlan(num_images=100, batch_size=10, epochs=40, ratio=10, strategy="epoch")
    assert plan.num_kept == 4 * 10
    assert sorted(set(plan.kept_keys[:, 0].tolist())) == [0, 1, 2, 3]


def test_random_strategy_is_seeded_and_uniform_over_epochs() -> None:
    a = PruningPlan(num_images=1000, batch_size=10, epochs=100, ratio=10, strategy="random", seed=1)
    b = PruningPlan(num_images=1000, batch_size=10, epochs=100, ratio=10, strategy="random", seed=1)
    c = PruningPlan(num_images=1000, batch_size=10, epochs=100, ratio=10, strategy="random", seed=2)
    assert np.array_equal(a.kept_ids, b.kept_ids)
    assert not np.array_equal(a.kept_ids, c.kept_ids)
    assert len(np.unique(a.kept_keys[:, 0])) > 50  # spread over epochs, not a prefix


def test_short_last_batch_dropped_or_padded() -> None:
    drop = PruningPlan(num_images=10, batch_size=4, epochs=2)
    pad = PruningPlan(num_images=10, batch_size=4, epochs=2, last_batch="pad")
    assert drop.batches_per_epoch == 2
    assert pad.batches_per_epoch == 3
    assert [pad.batch_length(b) for b in range(3)] == [4, 4, 2]
    assert sorted(np.concatenate([pad.batch_indices(1, b) for b in range(3)]).tolist()) == list(range(10))


def test_composition_is_a_pure_function_of_seed_and_epoch() -> None:
    # The selection strategy and ratio must not change which images form a batch.
    a = PruningPlan(num_images=50, batch_size=8, epochs=5, ratio=1, seed=4)
    b = PruningPlan(num_images=50, batch_size=8, epochs=5, ratio=5, strategy="random", seed=4)
    assert np.array_equal(a.batch_indices(3, 2), b.batch_indices(3, 2))
    assert not np.array_equal(a.batch_indices(3, 2), a.batch_indices(2, 2))


def test_position_and_key_round_trip_and_pruned_entries() -> None:
    plan = PruningPlan(num_images=40, batch_size=4, epochs=10, ratio=4, strategy="random", seed=9)
    for pos, (e, b) in enumerate(plan.kept_keys.tolist()):
        assert plan.position(e, b) == pos
        assert plan.key_at(pos) == (e, b)
    pruned = min(set(range(plan.total_entries)) - set(plan.kept_ids.tolist()))
    with pytest.raises(EntryError, match="was pruned"):
        plan.position(*divmod(pruned, plan.batches_per_epoch))
    with pytest.raises(EntryError, match="outside the plan"):
        plan.position(10, 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": 0.5}, r"ratio must be a real number >= 1"),
        ({"ratio": float("nan")}, r"ratio must be a real number >= 1"),
        ({"ratio": 1000}, r"keeps no entry"),
        ({"strategy": "best"}, r"strategy must be one of"),
        ({"last_batch": "keep"}, r"last_batch must be one of"),
        ({"batch_size": 0}, r"batch_size must be an integer >= 1"),
        ({"batch_size": 11}, r"needs at least one full batch"),
        ({"batch_size": 40_000, "num_images": 50_000}, r"batch_size must be at most 32767"),
        ({"seed": -1}, r"seed must be an integer >= 0"),
    ],
)
def test_invalid_plans_are_refused(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"num_images": 10, "batch_size": 2, "epochs": 3}
    with pytest.raises(ConfigError, match=match):
        PruningPlan(**(base | kwargs))  # type: ignore[arg-type]


def test_plan_round_trips_through_json() -> None:
    plan = PruningPlan(
        num_images=10, batch_size=3, epochs=4, ratio=2.5, strategy="random", seed=3, last_batch="pad"
    )
    assert PruningPlan.from_dict(plan.to_dict()) == plan


@given(
    num_images=st.integers(1, 300),
    batch_size=st.integers(1, 64),
    epochs=st.integers(1, 30),
    ratio=st.floats(1, 50),
    strategy=st.sampled_from(["prefix", "random", "epoch"]),
    last_batch=st.sampled_from(["drop", "pad"]),
    seed=st.integers(0, 2**32),
)
def test_kept_entries_are_sorted_unique_and_in_range(
    num_images: int, batch_size: int, epochs: int, ratio: float, strategy: str, last_batch: str, seed: int
) -> None:
    try:
        plan = PruningPlan(
            num_images=num_images,
            batch_size=batch_size,
            epochs=epochs,
            ratio=ratio,
            strategy=strategy,  # type: ignore[arg-type]
            last_batch=last_batch,  # type: ignore[arg-type]
            seed=seed,
        )
    except ConfigError:
        return  # too few images for a full batch, or a ratio that keeps nothing
    ids = plan.kept_ids
    assert len(ids) == plan.num_kept >= 1
    assert np.all(np.diff(ids) > 0)
    assert ids[0] >= 0
    assert ids[-1] < plan.total_entries
    if strategy == "epoch":
        assert plan.num_kept % plan.batches_per_epoch == 0
