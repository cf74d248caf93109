"""``PruningPlan(sampler="sre2l")``: SRe2L's seeded RandomSampler batches, computed without torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, RandomSampler

from lpldstore import ConfigError, PruningPlan
from lpldstore.format.plan import torch_randperm_states
from lpldstore.interop._common import replay_sampler


@pytest.mark.parametrize(
    ("num_images", "batch_size", "epochs", "seed", "last_batch"),
    [
        (12, 5, 4, 42, "pad"),
        (100, 7, 6, 42, "drop"),
        (1, 1, 3, 42, "pad"),
        (2, 2, 3, 7, "pad"),
        (1000, 128, 5, 123456789012, "pad"),
        (257, 256, 3, 0, "drop"),
    ],
)
def test_batches_equal_torchs_random_sampler(
    num_images: int, batch_size: int, epochs: int, seed: int, last_batch: str
) -> None:
    plan = PruningPlan(
        num_images=num_images,
        batch_size=batch_size,
        epochs=epochs,
        seed=seed,
        last_batch=last_batch,  # type: ignore[arg-type]
        sampler="sre2l",
    )
    generator = torch.Generator()
    generator.manual_seed(seed)
    # One BatchSampler iterated once per epoch, as the relabel scripts iterate their DataLoader.
    sampler = BatchSampler(
        RandomSampler(range(num_images), generator=generator),
        batch_size=batch_size,
        drop_last=last_batch == "drop",
    )
    for epoch in range(epochs):
        batches = list(sampler)
        assert len(batches) == plan.batches_per_epoch
        for b, ids in enumerate(batches):
            assert plan.batch_indices(epoch, b).tolist() == ids


def test_the_importers_replay_and_the_plan_agree_in_any_epoch_order() -> None:
    plan = PruningPlan(num_images=30, batch_size=8, epochs=6, seed=42, last_batch="pad", sampler="sre2l")
    replay = list(replay_sampler(30, 8, 6))
    for epoch in (5, 0, 3, 3, 1, 4, 2):  # out of order: the memo of generator states must not matter
        assert [plan.batch_indices(epoch, b).tolist() for b in range(plan.batches_per_epoch)] == replay[epoch]


def test_generator_states_are_reached_in_chunks_and_remembered() -> None:
    memo: dict[int, object] = {}
    state = torch_randperm_states(5, 42, 3, memo)
    assert sorted(memo) == [0, 1, 2, 3]
    fresh = torch_randperm_states(5, 42, 3, {})
    assert np.array_equal(fresh["state"]["key"], state["state"]["key"])
    assert fresh["state"]["pos"] == state["state"]["pos"]


def test_the_sampler_round_trips_and_is_written_only_when_set() -> None:
    plan = PruningPlan(num_images=10, batch_size=4, epochs=2, seed=42, sampler="sre2l")
    assert plan.to_dict()["sampler"] == "sre2l"
    assert PruningPlan.from_dict(plan.to_dict()) == plan
    assert "sampler" not in PruningPlan(num_images=10, batch_size=4, epochs=2).to_dict()
    # The default sampler is unchanged: a plan without the key reads back as before.
    default = PruningPlan(num_images=10, batch_size=4, epochs=2, seed=42)
    assert not np.array_equal(default.epoch_permutation(0), plan.epoch_permutation(0))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"sampler": "torch"}, r"plan.sampler must be one of \('lpldstore', 'sre2l'\)"),
        ({"sampler": "sre2l", "composition": "explicit"}, "draws a seeded composition"),
    ],
)
def test_bad_samplers_are_refused(fields: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PruningPlan(num_images=10, batch_size=4, epochs=2, **fields)  # type: ignore[arg-type]
