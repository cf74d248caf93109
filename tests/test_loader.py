from __future__ import annotations

import dataclasses
import json
import socket
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from lpldstore import (
    AugmentParams,
    ConfigError,
    EntryError,
    Layout,
    PruningPlan,
    StoreDamagedError,
    apply_params,
    open_store,
)
from lpldstore.loader import LoaderConfig, PoolBatch, PoolLoader
from lpldstore.loader.schedule import epoch_schedule, rank_share, stored_epochs
from lpldstore.testing import fill, make_store

# 6 batches per epoch (the last holds 2 images); 16 of 24 entries kept: epochs 0 and 1 whole,
# epoch 2 only partly.
PLAN = PruningPlan(
    num_images=22, batch_size=4, epochs=4, ratio=1.5, strategy="prefix", seed=1, last_batch="pad"
)


def _zip(store: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(store.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(store).as_posix())
    return out


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("loader") / "s.zarr"
    with make_store(path, plan=PLAN, layout=Layout(block_entries=4)) as writer:
        fill(writer)
    return path


@pytest.fixture(scope="module")
def zip_path(store_path: Path) -> Path:
    return _zip(store_path, store_path.with_suffix(".zip"))


def _collect(loader: PoolLoader) -> list[PoolBatch]:
    return list(loader)


def _cat(batches: list[PoolBatch]) -> dict[str, torch.Tensor]:
    out = {k: torch.cat([getattr(b, k) for b in batches]) for k in ("images", "logits", "keys")}
    if batches and batches[0].labels is not None:
        out["labels"] = torch.cat([b.labels for b in batches if b.labels is not None])
    return out


def _same(a: list[PoolBatch], b: list[PoolBatch]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.images, y.images) and torch.equal(x.logits, y.logits) and torch.equal(x.keys, y.keys)
        for x, y in zip(a, b, strict=True)
    )


# -- schedule -------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["ilp", "epoch", "sequential"])
def test_schedule_is_a_pure_function_of_seed_and_epoch(policy: Any) -> None:
    first = [epoch_schedule(PLAN, policy, 5, e) for e in range(6)]
    again = [epoch_schedule(PLAN, policy, 5, e) for e in range(6)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(s.dtype == np.int64 and not s.flags.writeable for s in first)
    assert all(((s >= 0) & (s < PLAN.num_kept)).all() for s in first)
    if policy == "sequential":
        assert all(np.array_equal(s, np.arange(PLAN.num_kept)) for s in first)
    else:
        # Different epochs (and seeds) give different schedules.
        assert len({s.tobytes() for s in first}) > 1
        assert not all(np.array_equal(a, epoch_schedule(PLAN, policy, 6, e)) for e, a in enumerate(first))


def test_ilp_draws_uniformly_with_replacement() -> None:
    assert len(epoch_schedule(PLAN, "ilp", 0, 0)) == PLAN.batches_per_epoch
    draws = epoch_schedule(PLAN, "ilp", 0, 0, steps_per_epoch=16_000)
    counts = np.bincount(draws, minlength=PLAN.num_kept)
    assert counts.min() > 800
    assert counts.max() < 1200
    assert len(np.unique(epoch_schedule(PLAN, "ilp", 0, 1, steps_per_epoch=32))) < 16  # repeats occur


def test_epoch_policy_yields_one_complete_stored_epoch_in_batch_order() -> None:
    assert stored_epochs(PLAN).tolist() == [0, 1]  # epoch 2 is only partly kept
    seen = set()
    for e in range(20):
        keys = PLAN.kept_keys[epoch_schedule(PLAN, "epoch", 0, e)]
        assert len(set(keys[:, 0].tolist())) == 1
        assert keys[:, 1].tolist() == list(range(PLAN.batches_per_epoch))
        seen.add(int(keys[0, 0]))
    assert seen == {0, 1}
    # No complete epoch at all: draw among the epochs holding entries.
    sparse = PruningPlan(num_images=8, batch_size=2, epochs=4, ratio=3, strategy="random", seed=0)
    assert set(stored_epochs(sparse).tolist()) == set(sparse.kept_keys[:, 0].tolist())


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_rank_shares_union_to_the_schedule(world: int) -> None:
    schedule = epoch_schedule(PLAN, "ilp", 0, 0, steps_per_epoch=7)
    shares = [rank_share(schedule, r, world) for r in range(world)]
    assert len({len(s) for s in shares}) == 1
    interleaved = np.stack(shares, axis=1).reshape(-1)
    assert np.array_equal(interleaved[: len(schedule)], schedule)
    assert np.array_equal(interleaved[len(schedule) :], schedule[: len(interleaved) - len(schedule)])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: epoch_schedule(PLAN, "shuffle", 0, 0), "Expected a pool policy"),  # type: ignore[arg-type]
        (lambda: epoch_schedule(PLAN, "epoch", 0, 0, steps_per_epoch=3), "Expected steps_per_epoch=None"),
        (lambda: epoch_schedule(PLAN, "ilp", -1, 0), "Expected seed"),
        (lambda: rank_share(np.arange(3), 2, 2), r"Expected a rank in \[0, 2\)"),
        (lambda: LoaderConfig(device="cpu", num_workers=1), "Expected num_workers=0 with device"),
        (lambda: LoaderConfig(batch_size=0), "Expected batch_size"),
        (lambda: LoaderConfig(rank=0), "Expected rank and world_size both"),
        (lambda: LoaderConfig(multiprocessing_context="thread"), "Expected multiprocessing_context"),  # type: ignore[arg-type]
    ],
)
def test_errors_say_what_was_expected(call: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call()


def test_state_and_options_errors(store_path: Path) -> None:
    with pytest.raises(ConfigError, match="not both"):
        PoolLoader(store_path, LoaderConfig(), seed=1)
    loader = PoolLoader(store_path)
    with pytest.raises(ConfigError, match="missing"):
        loader.load_state_dict({"seed": 0, "epoch": 0})
    with pytest.raises(ConfigError, match=r"Expected state\['step'\] <= 6"):
        loader.load_state_dict({"seed": 0, "epoch": 0, "step": 7})


# -- batches --------------------------------------------------------------------------------------


def _expected_images(store: Any, entry: Any, images: torch.Tensor) -> torch.Tensor:
    """What relabeling computed for ``entry``: its stored params applied to ``images`` (on their device)."""
    params = AugmentParams(
        crops=entry.crops.astype(np.int32),
        flips=entry.flips,
        mix_index=entry.mix_index,
        mix_lam=entry.mix_lam,
        mix_box=tuple(int(v) for v in entry.mix_box),  # type: ignore[arg-type]
    )
    index = torch.from_numpy(entry.indices).to(images.device)
    info = store.dataset
    return apply_params(images[index], params, store.relabel, info.mean, info.std)


def test_batches_are_the_replayed_stored_entries(store_path: Path) -> None:
    loader = PoolLoader(store_path, policy="ilp", seed=2, labels=True)
    loader.set_epoch(3)
    batches = _collect(loader)
    positions = epoch_schedule(PLAN, "ilp", 2, 3)
    assert len(batches) == len(loader) == len(positions)
    with open_store(store_path) as store:
        images, labels = torch.from_numpy(store.images()), store.labels()
        for batch, pos in zip(batches, positions, strict=True):
            entry = store.entry_at(int(pos))
            assert batch.images.dtype == torch.float32
            assert batch.logits.dtype == torch.float32
            assert torch.equal(batch.images, _expected_images(store, entry, images))
            # A short last batch comes without its padding rows.
            assert len(batch) == PLAN.batch_length(entry.batch) == batch.logits.shape[0]
            assert torch.equal(batch.logits, torch.from_numpy(entry.logits.astype(np.float32)))
            assert batch.keys.tolist() == [[entry.epoch, entry.batch]] * len(entry)
            assert batch.labels is not None
            assert batch.labels.tolist() == labels[entry.indices].tolist()


# One test per start method: spawn and forkserver workers take seconds to start. Zip stores
# break if a handle crosses a fork, so the workers read the zipped copy.
@pytest.mark.parametrize(
    ("workers", "method"),
    [(2, "fork"), (1, "spawn"), (1, "forkserver")],
    ids=["fork2", "spawn1", "forkserver1"],
)
def test_worker_count_and_start_method_do_not_change_batches(
    store_path: Path, zip_path: Path, workers: int, method: Any
) -> None:
    options: dict[str, Any] = {"policy": "sequential", "seed": 1, "batch_size": 5}
    reference = _collect(PoolLoader(store_path, **options))
    loader = PoolLoader(zip_path, num_workers=workers, multiprocessing_context=method, **options)
    # The main process reads the zip first too: its handle must not reach the workers.
    assert _same(_collect(PoolLoader(zip_path, **options)), reference)
    assert _same(_collect(loader), reference)


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "per-epoch"])
def test_workers_serve_epoch_after_epoch_and_an_abandoned_epoch(store_path: Path, persistent: bool) -> None:
    options: dict[str, Any] = {"policy": "ilp", "seed": 6, "steps_per_epoch": 5}
    reference = PoolLoader(store_path, **options)
    loader = PoolLoader(
        store_path, num_workers=2, multiprocessing_context="fork", persistent_workers=persistent, **options
    )
    try:
        for epoch in (0, 1):
            reference.set_epoch(epoch)
            loader.set_epoch(epoch)
            assert _same(_collect(loader), _collect(reference))
        # Leave epoch 2 after two batches; the next epoch still gets exactly its own batches.
        loader.set_epoch(2)
        iterator = iter(loader)
        next(iterator), next(iterator)
        del iterator
        reference.set_epoch(3)
        loader.set_epoch(3)
        assert _same(_collect(loader), _collect(reference))
    finally:
        loader.close()


@pytest.mark.parametrize("batch_size", [1, 3, 4, 10])
def test_micro_batches_cut_the_stored_batch_stream(store_path: Path, batch_size: int) -> None:
    whole = _cat(_collect(PoolLoader(store_path, policy="ilp", seed=4)))
    loader = PoolLoader(store_path, policy="ilp", seed=4, batch_size=batch_size)
    cut = _collect(loader)
    assert len(cut) == len(loader)
    assert [len(b) for b in cut[:-1]] == [batch_size] * (len(cut) - 1)
    joined = _cat(cut)
    assert all(torch.equal(joined[k], whole[k]) for k in whole)
    dropped = _collect(PoolLoader(store_path, policy="ilp", seed=4, batch_size=batch_size, drop_last=True))
    assert all(len(b) == batch_size for b in dropped)
    assert len(dropped) == len(whole["images"]) // batch_size


@pytest.mark.parametrize("batch_size", [None, 3, 10])
def test_resume_continues_with_exactly_the_remaining_batches(
    store_path: Path, batch_size: int | None
) -> None:
    config = LoaderConfig(policy="ilp", seed=7, steps_per_epoch=9, batch_size=batch_size)
    full = PoolLoader(store_path, config)
    full.set_epoch(2)
    expected = _collect(full)
    for stop in range(len(expected)):
        first = PoolLoader(store_path, config)
        first.set_epoch(2)
        it = iter(first)
        for _ in range(stop):
            next(it)
        state = json.loads(json.dumps(first.state_dict()))
        assert state == {"seed": 7, "epoch": 2, "step": stop}
        resumed = PoolLoader(store_path, config)
        resumed.load_state_dict(state)
        resumed.set_epoch(2)  # the usual epoch loop must keep the resumed step
        assert _same(_collect(resumed), expected[stop:])
    # A new epoch starts from its first step again.
    full.set_epoch(3)
    assert full.state_dict()["step"] == 0
    assert len(_collect(full)) == len(full)


def test_device_path_gives_the_worker_path_tensors(store_path: Path) -> None:
    options: dict[str, Any] = {"policy": "ilp", "seed": 3, "batch_size": 6, "labels": True}
    on_device = _collect(PoolLoader(store_path, device="cpu", **options))
    workers = _collect(PoolLoader(store_path, num_workers=1, multiprocessing_context="fork", **options))
    assert _same(on_device, workers)
    assert all(
        a.labels is not None and b.labels is not None and torch.equal(a.labels, b.labels)
        for a, b in zip(on_device, workers, strict=True)
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_replays_what_relabeling_computed_on_the_gpu(store_path: Path) -> None:
    options: dict[str, Any] = {"policy": "sequential", "labels": True, "batch_size": 3}
    on_gpu = _collect(PoolLoader(store_path, device="cuda", **options))
    on_cpu = _collect(PoolLoader(store_path, **options))
    assert len(on_gpu) == len(on_cpu)
    for g, c in zip(on_gpu, on_cpu, strict=True):
        assert g.labels is not None
        assert c.labels is not None
        for name in ("images", "logits", "keys", "labels"):
            assert getattr(g, name).device.type == "cuda", name
        assert torch.equal(g.keys.cpu(), c.keys)
        assert torch.equal(g.logits.cpu(), c.logits)
        assert torch.equal(g.labels.cpu(), c.labels)
        # Across devices the resampling differs (CPU: torch's fixed-point uint8 kernel; CUDA:
        # torchvision resizes in float and rounds), so pixels round the other way: 5-19% of the
        # values differ by one level (read from the code and probed on CPU with torchvision's
        # float path). What must not differ is the geometry (crop, flip, CutMix): no value more
        # than two uint8 levels apart (after normalization by the smallest std, 0.224), and on
        # average well under one level.
        level = 1 / 255 / 0.224
        diff = (g.images.cpu() - c.images).abs()
        assert diff.max().item() <= 2 * level + 1e-5
        assert diff.mean().item() < 0.5 * level
    # On the same device the replay is bit-identical to what relabeling computed there.
    stored = _collect(PoolLoader(store_path, device="cuda", policy="sequential"))
    with open_store(store_path) as store:
        images = torch.from_numpy(store.images()).cuda()
        for batch, pos in zip(stored, range(store.num_entries), strict=True):
            entry = store.entry_at(pos)
            assert torch.equal(batch.images, _expected_images(store, entry, images))


# -- distributed ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, world: int, port: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        loader = PoolLoader(store, policy="ilp", seed=11, steps_per_epoch=7)
        assert (loader.rank, loader.world_size) == (rank, world)
        result = {}
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            result[epoch] = [b.keys[0].tolist() for b in loader]
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_share_out_each_epoch(store_path: Path, tmp_path: Path) -> None:
    tmp.spawn(_rank_main, args=(2, _free_port(), str(store_path), str(tmp_path)), nprocs=2, join=True)
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in (0, 1):
        schedule = PLAN.kept_keys[epoch_schedule(PLAN, "ilp", 11, epoch, steps_per_epoch=7)].tolist()
        shares = [r[str(epoch)] for r in per_rank]
        assert len(shares[0]) == len(shares[1]) == 4  # 7 steps padded to 8
        interleaved = [key for pair in zip(*shares, strict=True) for key in pair]
        assert interleaved[:7] == schedule
        assert interleaved[7] == schedule[0]


def test_config_is_frozen() -> None:
    config = LoaderConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]


def test_an_unfinished_store_fails_before_the_first_step(tmp_path: Path) -> None:
    path = tmp_path / "partial.zarr"
    with make_store(path, plan=PLAN) as writer:
        fill(writer, limit=3)
    loader = PoolLoader(path, policy="sequential")
    with pytest.raises(EntryError, match=r"entry \(epoch=0, batch=3\) is not committed"):
        next(iter(loader))


def test_a_store_without_cutmix_replays_and_a_finished_epoch_repeats(tmp_path: Path) -> None:
    path = tmp_path / "nomix.zarr"
    with make_store(path, plan=PLAN, mix="none") as writer:
        fill(writer)
    loader = PoolLoader(path, policy="epoch", seed=0, batch_size=8)
    first = _collect(loader)
    assert loader.state_dict()["step"] == len(loader) == len(first)
    assert _same(_collect(loader), first)  # iterating again without set_epoch repeats the epoch


def test_a_missing_small_array_chunk_fails_with_the_readers_check(tmp_path: Path) -> None:
    path = tmp_path / "damaged.zarr"
    with make_store(path, plan=PLAN) as writer:
        fill(writer)
    # The chunk holding the first entries' CutMix partners; it then reads as the fill value -1.
    chunks = sorted(p for p in (path / "pool" / "mix_index" / "c").rglob("*") if p.is_file())
    chunks[0].unlink()
    loader = PoolLoader(path, policy="sequential")
    with pytest.raises(
        StoreDamagedError, match=r"entry \(epoch=0, batch=0\): pool/mix_index: chunk missing or damaged"
    ):
        next(iter(loader))
