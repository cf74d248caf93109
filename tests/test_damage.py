"""Damaged stores: every damaged chunk is found by `verify` and by the reader, named by entry or array.

The loader stops with an error naming the entry, or with ``skip_damaged=True`` leaves damaged
entries out and says how many. ``scripts/fault_injection.py`` runs the same cases at random.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lpldstore import (
    DamageWarning,
    Layout,
    LpldStoreError,
    PoolLoader,
    PruningPlan,
    StoreDamagedError,
    open_store,
    verify_store,
)
from lpldstore.testing import damage_file, fill, make_store

PLAN = PruningPlan(num_images=16, batch_size=4, epochs=3, ratio=1.5, strategy="random", seed=4)
BLOCK = 4


def _store(tmp_path: Path, sharded: bool = False) -> Path:
    path = tmp_path / "s.zarr"
    layout = Layout(block_entries=BLOCK, logits_shard_entries=BLOCK if sharded else None)
    with make_store(path, plan=PLAN, layout=layout) as writer:
        fill(writer)
    return path


def _key(pos: int) -> tuple[int, int]:
    e, b = PLAN.kept_keys[pos].tolist()
    return int(e), int(b)


def _named(path: Path) -> set[tuple[str, int | None, int | None]]:
    return {(p.array, p.epoch, p.batch) for p in verify_store(path).problems}


def _loader_skips(path: Path, damaged: set[tuple[int, int]]) -> None:
    with pytest.raises(StoreDamagedError, match=r"\(epoch=\d+, batch=\d+\)"):
        list(PoolLoader(path, policy="sequential", seed=0))
    loader = PoolLoader(path, policy="sequential", seed=0, skip_damaged=True)
    with pytest.warns(DamageWarning, match=rf"skipped {len(damaged)} damaged entr"):
        batches = list(loader)
    assert set(loader.skipped) == damaged
    assert len(batches) == PLAN.num_kept - len(damaged)
    assert not {tuple(k) for b in batches for k in b.keys.tolist()} & damaged


@pytest.mark.parametrize("kind", ["flip", "truncate", "delete"])
def test_a_damaged_logits_chunk_names_its_entry(tmp_path: Path, kind: str) -> None:
    path = _store(tmp_path)
    pos = 5
    damage_file(path / "pool/logits/c" / str(pos) / "0/0", kind, np.random.default_rng(pos))
    e, b = _key(pos)
    assert _named(path) == {("pool/logits", e, b)}
    with (
        open_store(path) as store,
        pytest.raises(StoreDamagedError, match=rf"entry \(epoch={e}, batch={b}\)"),
    ):
        store.entry_at(pos)
    _loader_skips(path, {(e, b)})


def test_the_loader_skips_damaged_entries_with_workers_too(tmp_path: Path) -> None:
    # The skip marker travels back from a worker process like any batch.
    path = _store(tmp_path)
    damage_file(path / "pool/logits/c/5/0/0", "flip", np.random.default_rng(5))
    loader = PoolLoader(path, policy="sequential", seed=0, skip_damaged=True, num_workers=1)
    for epoch in range(2):  # the persistent worker serves the second epoch as well
        loader.set_epoch(epoch)
        with pytest.warns(DamageWarning, match="skipped 1 damaged entry"):
            batches = list(loader)
        assert loader.skipped == [_key(5)]
        assert len(batches) == PLAN.num_kept - 1


@pytest.mark.parametrize("where", ["data", "index"])
def test_a_damaged_shard_names_the_entries_it_holds(tmp_path: Path, where: str) -> None:
    path = _store(tmp_path, sharded=True)
    shard = path / "pool/logits/c/1/0/0"  # block 1: positions 4..7
    data = bytearray(shard.read_bytes())
    # The shard index (offset, length per inner chunk, then its crc32c) is at the end of the file.
    at = len(data) - 6 if where == "index" else 10
    data[at] ^= 0xFF
    shard.write_bytes(bytes(data))
    named = _named(path)
    assert named
    assert {array for array, _, _ in named} == {"pool/logits"}
    block = {_key(p) for p in range(BLOCK, 2 * BLOCK)}
    assert {(e, b) for _, e, b in named} <= block
    if where == "index":
        assert {(e, b) for _, e, b in named} == block  # the whole shard is unreadable
    for _, e, b in named:
        with open_store(path) as store, pytest.raises(StoreDamagedError, match=rf"epoch={e}, batch={b}"):
            store.entry(e, b)  # type: ignore[arg-type]


@pytest.mark.parametrize("array", ["indices", "crop", "flip", "mix_index", "mix_lam", "mix_box"])
@pytest.mark.parametrize("kind", ["flip", "delete"])  # truncation fails the checksum like a flip
def test_a_damaged_small_array_chunk_names_its_block(tmp_path: Path, array: str, kind: str) -> None:
    path = _store(tmp_path)
    chunk = path / "pool" / array / "c" / "1"
    while chunk.is_dir():
        chunk = chunk / "0"
    damage_file(chunk, kind, np.random.default_rng(7))
    block = {_key(p) for p in range(BLOCK, 2 * BLOCK)}
    named = _named(path)
    assert {(e, b) for _, e, b in named} == block
    assert {a for a, _, _ in named} == {f"pool/{array}"}
    for e, b in block:
        with open_store(path) as store, pytest.raises(StoreDamagedError, match=rf"epoch={e}, batch={b}"):
            store.entry(e, b)
    _loader_skips(path, block)


def test_damaged_commit_flags_and_keys_are_reported(tmp_path: Path) -> None:
    path = _store(tmp_path)
    damage_file(path / "pool/committed/c/0", "flip", np.random.default_rng(1))
    damage_file(path / "pool/key/c/1/0", "truncate", np.random.default_rng(1))
    named = _named(path)
    assert {(a, e, b) for a, e, b in named if a == "pool/committed"} == {
        ("pool/committed", *_key(p)) for p in range(BLOCK)
    }
    assert {(a, e, b) for a, e, b in named if a == "pool/key"} == {
        ("pool/key", *_key(p)) for p in range(BLOCK, 2 * BLOCK)
    }
    with (
        open_store(path) as store,
        pytest.raises(StoreDamagedError, match="the commit flags could not be read"),
    ):
        store.committed()


@pytest.mark.parametrize("kind", ["flip", "truncate", "delete"])
def test_damaged_images_are_reported_and_stop_the_loader(tmp_path: Path, kind: str) -> None:
    path = _store(tmp_path)
    damage_file(path / "images/pixels/c/0/0/0/0", kind, np.random.default_rng(3))
    named = _named(path)
    assert named & {("images/pixels", None, None), ("images", None, None)}
    with (
        open_store(path) as store,
        pytest.raises(StoreDamagedError, match=r"the images (could not be read|are missing)"),
    ):
        store.images()
    with pytest.raises(StoreDamagedError, match="images"):
        list(PoolLoader(path, policy="sequential", seed=0, skip_damaged=True))


def test_edited_array_metadata_is_reported_by_verify(tmp_path: Path) -> None:
    # Readers use the consolidated copy in the root zarr.json; an edited per-array zarr.json
    # (which a tool reading arrays one by one would use) is reported by verify.
    path = _store(tmp_path)
    meta_path = path / "pool/crop/zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["fill_value"] = 0
    meta_path.write_text(json.dumps(meta))
    (path / "pool/flip/zarr.json").unlink()
    assert _named(path) == {("pool/crop", None, None), ("pool/flip", None, None)}
    problems = {p.array: p.message for p in verify_store(path).problems}
    assert "differs from the consolidated metadata" in problems["pool/crop"]
    assert "zarr.json is missing" in problems["pool/flip"]


def test_every_node_metadata_file_deleted_is_reported_by_verify(tmp_path: Path) -> None:
    # Each group's and array's own zarr.json, pool/fidelity (format version 2) included.
    template = _store(tmp_path / "t")
    nodes = sorted(str(p.parent.relative_to(template)) for p in template.rglob("*/zarr.json"))
    assert "pool/fidelity" in nodes
    for i, node in enumerate(nodes):
        path = tmp_path / f"n{i}"
        shutil.copytree(template, path)
        (path / node / "zarr.json").unlink()
        problems = {p.array: p.message for p in verify_store(path).problems}
        assert problems == {node: "its zarr.json is missing"}, node


def test_edited_images_hash_is_reported_by_verify(tmp_path: Path) -> None:
    path = _store(tmp_path)
    root = json.loads((path / "zarr.json").read_text())
    root["attributes"]["dataset"]["images_sha256"] = "0" * 64
    (path / "zarr.json").write_text(json.dumps(root))
    # Format version 3 digests the dataset record: the edit is named before any image is read.
    assert _named(path) == {("root/dataset", None, None), ("store", None, None)}


def test_every_chunk_file_damaged_is_detected(tmp_path: Path) -> None:
    # Each chunk file of a small store, each damage kind: verify reports it, naming the array.
    template = _store(tmp_path / "t")
    chunks = sorted(
        p.relative_to(template) for p in template.rglob("*") if p.is_file() and p.name != "zarr.json"
    )
    rng = np.random.default_rng(0)
    missed: list[tuple[str, str, object]] = []
    for i, rel in enumerate(chunks):
        kind = ("flip", "truncate", "delete")[i % 3]
        path = tmp_path / f"c{i}"
        shutil.copytree(template, path)
        damage_file(path / rel, kind, rng)
        array = "/".join(rel.parts[:2])
        named = _named(path)
        if not any(a == array or (array == "images/pixels" and a == "images") for a, _, _ in named):
            missed.append((str(rel), kind, named))
        try:
            with open_store(path) as store:
                store.images()
                store.labels()
                for pos in range(store.num_entries):
                    store.entry_at(pos)
                store.fidelity()
            if array != "pool/key":  # the key array is only re-checked by verify: readers use the plan
                missed.append((str(rel), kind, "reader"))
        except LpldStoreError:
            pass
    assert missed == []
