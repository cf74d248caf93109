from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from lpldstore import (
    Entry,
    EntryError,
    FormatError,
    Layout,
    NotAStoreError,
    PruningPlan,
    StoreDamagedError,
    UnsupportedVersionError,
    open_store,
)
from lpldstore.testing import fill, make_store

PLAN = PruningPlan(
    num_images=24, batch_size=4, epochs=3, ratio=1.5, strategy="random", seed=1, last_batch="pad"
)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "s.zarr"
    with make_store(path, plan=PLAN, layout=Layout(block_entries=4)) as writer:
        fill(writer)
    return path


def _zip(store: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(store.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(store).as_posix())
    return out


def _entries(path: str | Path) -> list[tuple[np.ndarray, np.ndarray]]:
    with open_store(path) as s:
        return [(s.entry_at(i).indices, s.entry_at(i).logits) for i in range(s.num_entries)]


def test_zip_and_url_read_the_same_entries(store_path: Path, tmp_path: Path) -> None:
    local = _entries(store_path)
    for source in (_zip(store_path, tmp_path / "s.zip"), store_path.resolve().as_uri()):
        other = _entries(source)
        assert len(other) == len(local)
        for (ia, la), (ib, lb) in zip(local, other, strict=True):
            assert np.array_equal(ia, ib)
            assert np.array_equal(la, lb)


def test_metadata_is_one_vectorised_read_matching_entries(store_path: Path) -> None:
    with open_store(store_path) as store:
        positions = [3, 0, 5]
        meta = store.metadata(positions)
        assert meta.keys.tolist() == store.keys[positions].tolist()
        for row, pos in enumerate(positions):
            entry = store.entry_at(pos)
            n = len(entry)
            assert np.array_equal(meta.mix_index[row, :n], entry.mix_index)
            assert np.array_equal(meta.mix_box[row], entry.mix_box)
        with pytest.raises(EntryError, match=r"Positions must be in \[0, "):
            store.metadata([store.num_entries])


def test_uncommitted_entries_are_not_readable(tmp_path: Path) -> None:
    with make_store(tmp_path / "s", plan=PLAN) as writer:
        fill(writer, limit=2)
    with open_store(tmp_path / "s") as store:
        assert store.committed().sum() == 2
        assert not store.is_complete
        with pytest.raises(EntryError, match="is not committed"):
            store.entry_at(int(np.flatnonzero(~store.committed())[0]))


def test_missing_paths_and_foreign_groups_are_named(tmp_path: Path) -> None:
    with pytest.raises(NotAStoreError, match="the path does not exist"):
        open_store(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAStoreError, match="holds no Zarr v3 group"):
        open_store(tmp_path / "empty")
    zarr.open_group(tmp_path / "foreign", mode="w", zarr_format=3, attributes={"hello": 1})
    with pytest.raises(NotAStoreError, match="is a Zarr group but not an lpldstore store"):
        open_store(tmp_path / "foreign")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotAStoreError, match=r"Expected a store directory or a \.zip"):
        open_store(tmp_path / "file.txt")


def _edit_attrs(path: Path, edit: dict[str, object]) -> None:
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"].update(edit)
    meta["consolidated_metadata"] = None  # the attributes live in the root document itself
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (
            {"format_version": 4},
            UnsupportedVersionError,
            r"format version 4, newer than this lpldstore reads \(up to 3\)",
        ),
        ({"format_version": 0}, FormatError, "format_version must be a positive integer"),
        ({"extra": 1}, FormatError, r"unknown root attribute\(s\) \['extra'\]"),
        ({"plan": {"num_images": 24}}, FormatError, r"root attribute 'plan' is invalid: Missing key\(s\)"),
    ],
)
def test_bad_metadata_is_refused(
    store_path: Path, edit: dict[str, object], error: type[Exception], match: str
) -> None:
    _edit_attrs(store_path, edit)
    with pytest.raises(error, match=match):
        open_store(store_path)


def test_array_of_the_wrong_shape_is_refused(store_path: Path) -> None:
    shutil.rmtree(store_path / "pool" / "flip")
    meta = json.loads((store_path / "zarr.json").read_text())
    meta["consolidated_metadata"] = None
    (store_path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(FormatError, match="array 'pool/flip' is missing"):
        open_store(store_path)


def test_damaged_and_missing_chunks_are_errors_naming_the_entry(store_path: Path) -> None:
    with open_store(store_path) as store:
        e, b = store.keys[2].tolist()
    chunk = store_path / "pool" / "logits" / "c" / "2" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with (
        open_store(store_path) as store,
        pytest.raises(StoreDamagedError, match=rf"entry \(epoch={e}, batch={b}\)"),
    ):
        store.entry_at(2)
    chunk.unlink()
    with (
        open_store(store_path) as store,
        pytest.raises(StoreDamagedError, match="missing or hold non-finite"),
    ):
        store.entry_at(2)


def _same_entry(a: Entry, b: Entry) -> bool:
    pa, pb = a.params, b.params
    return (
        (a.epoch, a.batch, a.position, pa.mix_lam, pa.mix_box)
        == (b.epoch, b.batch, b.position, pb.mix_lam, pb.mix_box)
        and np.array_equal(a.indices, b.indices)
        and np.array_equal(a.logits, b.logits)
        and all(
            np.array_equal(x, y)
            for x, y in zip(
                (pa.crops, pa.flips, pa.mix_index), (pb.crops, pb.flips, pb.mix_index), strict=True
            )
        )
    )


def test_random_reads_on_one_handle_equal_fresh_reads(store_path: Path) -> None:
    # entry_at keeps blocks of final records per handle: every read must still equal a cold one.
    with open_store(store_path) as store:
        order = np.random.default_rng(0).permutation(np.repeat(np.arange(store.num_entries), 3))
        for position in order.tolist():
            with open_store(store_path) as fresh:
                assert _same_entry(store.entry_at(position), fresh.entry_at(position))
        first = store.entry_at(0)
        first.indices[:] = -1
        assert not first.params.crops.flags.writeable
        assert (store.entry_at(0).indices >= 0).all()


def test_a_block_still_being_written_is_read_afresh(tmp_path: Path) -> None:
    plan = PruningPlan(num_images=16, batch_size=4, epochs=2, ratio=1)
    path = tmp_path / "s.zarr"
    writer = make_store(path, plan=plan, layout=Layout(block_entries=4))
    fill(writer, limit=2)
    writer.flush()
    with open_store(path) as store:
        assert store.entry_at(0).position == 0
        with pytest.raises(EntryError, match="is not committed"):
            store.entry_at(2)
        fill(writer)
        writer.close()
        # Same handle, same block: the entries committed since are read, not a stale view.
        assert [store.entry_at(p).position for p in range(store.num_entries)] == list(
            range(store.num_entries)
        )
