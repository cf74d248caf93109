"""Property: any valid pool written and read back is identical to what was written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lpldstore import ConfigError, Layout, PruningPlan, open_store
from lpldstore.testing import fake_entry, fill, make_store


def _assert_store_matches(path: Path, seed: int) -> None:
    with open_store(path) as store:
        assert store.is_complete
        plan, dataset, relabel = store.plan, store.dataset, store.relabel
        meta = store.metadata()
        for pos, (e, b) in enumerate(store.keys.tolist()):
            want = fake_entry(plan, dataset, relabel, e, b, seed)
            got = store.entry(e, b)
            n = plan.batch_length(b)
            assert (got.epoch, got.batch, got.position) == (e, b, pos)
            want_indices = want["indices"] if plan.composition == "explicit" else plan.batch_indices(e, b)
            assert np.array_equal(got.indices, want_indices)
            assert got.params == want["params"]
            assert np.array_equal(got.logits, want["logits"].astype(np.float16))
            if relabel.mix == "none":
                assert np.array_equal(got.mix_index, np.arange(n))
                assert got.mix_lam == 1.0
            # The vectorised read agrees with the per-entry read, padding included.
            assert np.array_equal(meta.indices[pos, :n], got.indices)
            assert (meta.indices[pos, n:] == -1).all()
            assert np.array_equal(meta.crops[pos, :n], got.crops)


@given(
    num_images=st.integers(1, 40),
    batch_size=st.integers(1, 9),
    epochs=st.integers(1, 6),
    ratio=st.floats(1, 6),
    strategy=st.sampled_from(["prefix", "random", "epoch"]),
    last_batch=st.sampled_from(["drop", "pad"]),
    composition=st.sampled_from(["seeded", "explicit"]),
    num_classes=st.sampled_from([1, 3, 17]),
    image_hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    output_size=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    mix=st.sampled_from(["cutmix", "none"]),
    block=st.integers(1, 5),
    sharded=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_any_valid_pool_round_trips(
    tmp_path_factory: pytest.TempPathFactory,
    num_images: int,
    batch_size: int,
    epochs: int,
    ratio: float,
    strategy: str,
    last_batch: str,
    composition: str,
    num_classes: int,
    image_hw: tuple[int, int],
    output_size: tuple[int, int],
    mix: str,
    block: int,
    sharded: bool,
    seed: int,
) -> None:
    try:
        plan = PruningPlan(
            num_images=num_images,
            batch_size=batch_size,
            epochs=epochs,
            ratio=ratio,
            strategy=strategy,  # type: ignore[arg-type]
            last_batch=last_batch,  # type: ignore[arg-type]
            composition=composition,  # type: ignore[arg-type]
            seed=seed,
        )
    except ConfigError:
        return
    path = tmp_path_factory.mktemp("pool") / "s.zarr"
    layout = Layout(block_entries=block, logits_shard_entries=block if sharded else None)
    with make_store(
        path,
        plan=plan,
        num_classes=num_classes,
        image_hw=image_hw,
        output_size=output_size,
        mix=mix,
        seed=seed,
        layout=layout,
    ) as writer:
        fill(writer, seed=seed)
    _assert_store_matches(path, seed)


def test_images_and_labels_round_trip(tmp_path: Path) -> None:
    from lpldstore.testing import fake_images

    plan = PruningPlan(num_images=7, batch_size=2, epochs=2)
    with make_store(tmp_path / "s", plan=plan, num_classes=3, image_hw=(5, 4)) as writer:
        fill(writer)
    images, labels = fake_images(7, 5, 4, 3)
    with open_store(tmp_path / "s") as store:
        assert np.array_equal(store.images(), images)
        assert np.array_equal(store.labels(), labels)
