"""The one declaration of stored arrays (``lpldstore.format.arrays.ARRAYS``) reaches every consumer.

For every declared array, on a store that holds all of them: the writer writes its chunks, the
guard refuses a pickle codec on it before zarr parses anything, ``verify`` reports a lost chunk of
it under its name, and the reader refuses to return data read through the lost chunk. Each check
is a function returning the arrays it missed, and two tests show that those functions do find an
array left out of one consumer.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lpldstore import (
    ARRAYS,
    FormatError,
    LabelStore,
    Layout,
    LpldStoreError,
    PruningPlan,
    open_store,
    verify_store,
)
from lpldstore.loader.pool import _read_epoch
from lpldstore.testing import fill, make_store

# A short last batch (padding), blocks of 2 entries, cutout kept: every declared array is present.
PLAN = PruningPlan(num_images=18, batch_size=4, epochs=3, ratio=1.5, strategy="prefix", last_batch="pad")


def _make(path: Path, *, sharded: bool = False) -> Path:
    layout = Layout(block_entries=2, logits_shard_entries=2 if sharded else None)
    with make_store(path, plan=PLAN, layout=layout, extras=("cutout",)) as writer:
        fill(writer)
    return path


@pytest.fixture(scope="module", params=[False, True], ids=["chunked", "sharded"])
def full_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make(tmp_path_factory.mktemp("decl") / "full.zarr", sharded=request.param)


def _paths() -> list[str]:
    return [d.path for d in ARRAYS]


def test_the_full_store_holds_every_declared_array(full_store: Path) -> None:
    with open_store(full_store) as store:
        assert sorted(store.attrs.arrays) == sorted(_paths())


def _first_chunk(store: Path, path: str) -> Path:
    chunks = sorted(p for p in (store / path / "c").rglob("*") if p.is_file())
    assert chunks, f"{path} has no chunk file"
    return chunks[0]


def _damaged_copy(store: Path, work: Path, path: str) -> Path:
    copy = work / path.replace("/", "_")
    shutil.copytree(store, copy)
    _first_chunk(copy, path).unlink()
    return copy


def writer_misses(store: Path) -> list[str]:
    """Arrays the writer left without any chunk."""
    return [p for p in _paths() if not any(f.is_file() for f in (store / p / "c").rglob("*"))]


def guard_misses(store: Path, work: Path) -> list[str]:
    """Arrays on which a pickle codec (consolidated metadata removed) is not refused by name."""
    missed = []
    for path in _paths():
        copy = work / f"guard_{path.replace('/', '_')}"
        shutil.copytree(store, copy)
        root = json.loads((copy / "zarr.json").read_text())
        root.pop("consolidated_metadata", None)
        (copy / "zarr.json").write_text(json.dumps(root))
        meta_path = copy / path / "zarr.json"
        meta = json.loads(meta_path.read_text())
        meta["codecs"] = [{"name": "numcodecs.pickle", "configuration": {}}]
        meta_path.write_text(json.dumps(meta))
        try:
            open_store(copy).close()
        except FormatError as exc:
            if f"'{path}'" in str(exc) and "numcodecs.pickle" in str(exc):
                continue
        except Exception:  # noqa: BLE001, S110 - zarr got to the codec: the guard missed it
            pass
        missed.append(path)
    return missed


def verify_misses(store: Path, work: Path) -> list[str]:
    """Arrays whose lost chunk ``verify`` does not report under the array's name."""
    missed = []
    for path in _paths():
        report = verify_store(_damaged_copy(store, work, path))
        if not any(p.array == path for p in report.problems):
            missed.append(path)
    return missed


def _read_through(path: str) -> Callable[[LabelStore], object]:
    """The reader call that reads ``path``'s first chunk (pool/key is checked by verify only)."""
    readers: dict[str, Callable[[LabelStore], object]] = {
        "images/pixels": LabelStore.images,
        "images/labels": LabelStore.labels,
        "pool/fidelity": LabelStore.fidelity,
    }
    return readers.get(path, lambda s: s.entry_at(0))


def reader_misses(store: Path, work: Path) -> list[str]:
    """Arrays whose lost chunk the reader does not refuse (pool/key: the reader derives keys from the plan)."""
    missed = []
    for path in _paths():
        if path == "pool/key":
            continue
        with open_store(_damaged_copy(store, work, path)) as damaged:
            try:
                _read_through(path)(damaged)
            except LpldStoreError:
                continue
        missed.append(path)
    return missed


def test_the_writer_writes_every_array(full_store: Path) -> None:
    assert writer_misses(full_store) == []


def test_the_guard_vets_every_array(full_store: Path, tmp_path: Path) -> None:
    assert guard_misses(full_store, tmp_path) == []


def test_verify_names_a_lost_chunk_of_every_array(full_store: Path, tmp_path: Path) -> None:
    assert verify_misses(full_store, tmp_path) == []


def test_the_reader_refuses_a_lost_chunk_of_every_array(full_store: Path, tmp_path: Path) -> None:
    assert reader_misses(full_store, tmp_path) == []


def test_the_loaders_steps_carry_every_record_array(full_store: Path) -> None:
    with open_store(full_store) as store:
        steps = _read_epoch(store, np.arange(store.num_entries))
        # The record, and (format version 3) the other digested arrays and the digests themselves.
        record = [a.name for a in store.attrs.arrays.values() if a.decl.role in ("indices", "param")]
        for i in range(len(steps)):
            assert sorted(steps.step(i).row) == sorted([*record, "fidelity", "digest"])
        entry = store.entry_from(steps.step(0).row, 0, store.logits_at(0))
        assert entry.params == store.entry_at(0).params
        assert sorted(entry.params.extra) == ["cutout_box", "cutout_fill"]


def test_the_checks_find_an_array_left_out_of_the_guard(
    full_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bug of the first version: the guard's own list lacked pool/fidelity.
    from lpldstore.storage import _guard

    monkeypatch.setattr(_guard, "ALL_PATHS", tuple(p for p in _guard.ALL_PATHS if p != "pool/fidelity"))
    assert guard_misses(full_store, tmp_path) == ["pool/fidelity"]


def test_the_checks_find_an_array_left_out_of_verify(
    full_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lpldstore.tools import verify

    real = verify.missing_block_chunks
    monkeypatch.setattr(
        verify,
        "missing_block_chunks",
        lambda array, number: False if array.path == "pool/flip" else real(array, number),
    )
    assert verify_misses(full_store, tmp_path) == ["pool/flip"]
