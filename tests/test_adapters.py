"""The pool as a torch IterableDataset, PoolBatch fields for mixed hard-label losses, the 'stored' policy."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lpldstore import (
    AugmentParams,
    ConfigError,
    Layout,
    PoolBatch,
    PoolDataset,
    PoolLoader,
    PruningPlan,
    apply_params,
    open_store,
)
from lpldstore.loader import LoaderConfig
from lpldstore.loader.schedule import epoch_schedule
from lpldstore.testing import fill, make_store

# 6 batches per epoch (the last holds 2 images); 16 of 24 entries kept: epochs 0 and 1 whole,
# epoch 2 partly.
PLAN = PruningPlan(
    num_images=22, batch_size=4, epochs=4, ratio=1.5, strategy="prefix", seed=1, last_batch="pad"
)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("adapters") / "s.zarr"
    with make_store(path, plan=PLAN, layout=Layout(block_entries=4)) as writer:
        fill(writer)
    return path


def _batches(source: Path, epoch: int, **options: Any) -> list[PoolBatch]:
    loader = PoolLoader(source, **options)
    loader.set_epoch(epoch)
    try:
        return list(loader)
    finally:
        loader.close()


def _equal(a: Any, b: Any) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("output", ["pair", "triple", "batch"])
def test_items_are_the_pool_loaders_batches(store_path: Path, output: str) -> None:
    expected = _batches(store_path, 2, policy="ilp", seed=5, batch_size=3, labels=True)
    dataset = PoolDataset(store_path, policy="ilp", seed=5, batch_size=3, output=output)  # type: ignore[arg-type]
    dataset.set_epoch(2)
    items = list(DataLoader(dataset, batch_size=None))
    assert len(items) == len(dataset) == len(expected)
    for item, batch in zip(items, expected, strict=True):
        if output == "pair":
            images, logits = item
            assert _equal((images, logits), (batch.images, batch.logits))
        elif output == "triple":
            images, logits, labels = item
            assert _equal((images, logits, labels), (batch.images, batch.logits, batch.labels))
        else:
            assert isinstance(item, PoolBatch)
            assert item.labels is None  # "batch" keeps the config's labels=False
            assert _equal(
                (item.images, item.logits, item.mix_lam), (batch.images, batch.logits, batch.mix_lam)
            )


def test_dataloader_workers_give_the_single_process_sequence_every_epoch(store_path: Path) -> None:
    dataset = PoolDataset(store_path, policy="ilp", seed=3, output="batch", labels=True)
    loader = DataLoader(
        dataset, batch_size=None, num_workers=2, persistent_workers=True, multiprocessing_context="fork"
    )
    for epoch in (0, 1, 3):
        dataset.set_epoch(epoch)  # reaches the persistent workers through shared memory
        got = list(loader)
        expected = _batches(store_path, epoch, policy="ilp", seed=3, labels=True)
        assert len(got) == len(expected) == len(loader)
        for a, b in zip(got, expected, strict=True):
            assert _equal(
                (a.images, a.logits, a.keys, a.labels, a.partner_labels),
                (b.images, b.logits, b.keys, b.labels, b.partner_labels),
            )


def test_cutting_batches_inside_dataloader_workers_is_refused(store_path: Path) -> None:
    dataset = PoolDataset(store_path, policy="ilp", seed=3, batch_size=3)
    loader = DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context="fork")
    with pytest.raises(ConfigError, match="Give num_workers to PoolDataset and use DataLoader"):
        list(loader)


def test_ranks_share_the_epoch(store_path: Path) -> None:
    full = [b.keys for b in _batches(store_path, 1, policy="epoch", seed=2)]
    shares = []
    for rank in range(2):
        dataset = PoolDataset(store_path, policy="epoch", seed=2, rank=rank, world_size=2, output="batch")
        dataset.set_epoch(1)
        shares.append([b.keys for b in dataset])
    assert _equal(shares[0], full[0::2])
    assert _equal(shares[1], full[1::2])


def test_mix_weight_and_partner_labels_describe_the_pasted_box(store_path: Path) -> None:
    with open_store(store_path) as store:
        labels = store.labels()
        images = torch.from_numpy(store.images())
        relabel, mean, std = store.relabel, store.dataset.mean, store.dataset.std
        entries = {(e.epoch, e.batch): e for e in (store.entry_at(p) for p in range(store.num_entries))}
    out_h, out_w = relabel.output_size
    for batch in _batches(store_path, 0, policy="epoch", seed=4, labels=True):
        key = tuple(int(v) for v in batch.keys[0])
        entry = entries[key]  # type: ignore[index]
        top, left, bottom, right = entry.mix_box
        area = (bottom - top) * (right - left)
        assert torch.equal(batch.mix_lam, torch.full((len(entry),), 1 - area / (out_h * out_w)))
        own = labels[entry.indices]
        assert batch.labels is not None
        assert batch.partner_labels is not None
        assert batch.labels.tolist() == own.tolist()
        assert batch.partner_labels.tolist() == own[entry.mix_index].tolist()
        # The pasted box of sample i is the un-mixed replay of its partner: the label pairing is right.
        plain = apply_params(
            images[torch.from_numpy(entry.indices)],
            AugmentParams.without_mix(crops=entry.crops, flips=entry.flips),
            relabel,
            mean,
            std,
        )
        box = (slice(None), slice(top, bottom), slice(left, right))
        for i, partner in enumerate(entry.mix_index.tolist()):
            assert torch.equal(batch.images[i][box], plain[partner][box])
        # A CutMix hard-label loss on the mixed batch can now be written (G-VBSM / LPLD "Ours+").
        out = torch.zeros(len(batch), 5, requires_grad=True)
        lam = batch.mix_lam
        loss = (
            lam * F.cross_entropy(out, batch.labels, reduction="none")
            + (1 - lam) * F.cross_entropy(out, batch.partner_labels, reduction="none")
        ).mean()
        loss.backward()
        assert torch.isfinite(loss)


def test_a_store_without_mixing_has_weight_one(tmp_path: Path) -> None:
    plan = PruningPlan(num_images=8, batch_size=4, epochs=1)
    with make_store(tmp_path / "s.zarr", plan=plan, mix="none") as writer:
        fill(writer)
    for batch in _batches(tmp_path / "s.zarr", 0, policy="sequential", labels=True):
        assert torch.equal(batch.mix_lam, torch.ones(len(batch)))
        assert batch.partner_labels is not None
        assert batch.labels is not None
        assert torch.equal(batch.partner_labels, batch.labels)


def test_to_moves_every_tensor_and_keeps_absent_fields(store_path: Path) -> None:
    batch = _batches(store_path, 0, policy="sequential")[0]
    moved = batch.to("cpu", non_blocking=True)
    assert isinstance(moved, PoolBatch)
    assert moved.labels is None
    assert moved.partner_labels is None
    assert _equal((moved.images, moved.logits, moved.keys), (batch.images, batch.logits, batch.keys))
    assert moved.to(torch.device("cpu")).images.device.type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_cuda_and_pinned_memory(store_path: Path) -> None:
    dataset = PoolDataset(store_path, policy="sequential", output="batch", labels=True)
    for batch in DataLoader(dataset, batch_size=None, pin_memory=True):
        assert batch.images.is_pinned()
        assert batch.partner_labels is not None
        on_gpu = batch.to("cuda", non_blocking=True)
        assert on_gpu.images.is_cuda
        assert on_gpu.partner_labels is not None
        assert on_gpu.partner_labels.is_cuda
        assert torch.equal(on_gpu.logits.cpu(), batch.logits)


def test_stored_policy_replays_each_stored_epoch_once(store_path: Path) -> None:
    with open_store(store_path) as store:
        kept = store.plan.kept_keys
    for epoch in (0, 1, 2):
        positions = epoch_schedule(PLAN, "stored", 0, epoch)
        assert kept[positions].tolist() == [[epoch, b] for b in range(6)][: len(positions)]
        assert (kept[positions, 0] == epoch).all()
    assert len(epoch_schedule(PLAN, "stored", 0, 2)) == 4  # the partly kept epoch: 16 - 2 * 6
    with pytest.raises(
        ConfigError, match=r"Got epoch 3, of which the store keeps no entry \(it holds 3 epochs"
    ):
        epoch_schedule(PLAN, "stored", 0, 3)
    loader = PoolLoader(store_path, policy="stored")
    loader.set_epoch(3)
    with pytest.raises(ConfigError, match="Train fewer epochs"):
        len(loader)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output": "tuple"}, r"Expected output among \('pair', 'triple', 'batch'\)"),
        ({"config": LoaderConfig(), "seed": 1}, "Expected a LoaderConfig or keyword options, not both"),
        ({"policy": "random"}, "Expected a pool policy among"),
    ],
)
def test_bad_dataset_options_are_refused(store_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PoolDataset(store_path, **kwargs)


def test_triple_turns_labels_on_and_resume_state_round_trips(store_path: Path) -> None:
    config = LoaderConfig(policy="ilp", seed=1)
    dataset = PoolDataset(store_path, config, output="triple")
    assert dataset.config == dataclasses.replace(config, labels=True)
    dataset.set_epoch(1)
    it = iter(dataset)
    next(it)
    state = dataset.state_dict()
    rest = list(it)
    again = PoolDataset(store_path, config, output="triple")
    again.load_state_dict(state)
    assert again.epoch == 1
    for a, b in zip(list(again), rest, strict=True):
        assert _equal(a, b)
    assert np.isfinite(float(rest[0][1].sum()))
