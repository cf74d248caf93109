"""A store written by format version 3 (entry and record digests) must read back exactly, forever.

The fixture was written by tests/fixtures/make_v3_fixture.py; never regenerate it for a format
change: add a fixture for the new version instead. Its fingerprint (the SHA-256 of its identity and
every entry's digests) was recorded when it was written: the digests themselves must not change.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lpldstore import StoreDamagedError, open_store, verify_store

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    # Read from a copy: a test must never be able to alter the golden files.
    return Path(shutil.copytree(FIXTURES / "v3_tiny.zarr", tmp_path / "v3_tiny.zarr"))


def test_version_3_fixture_reads_exactly(store_path: Path) -> None:
    expected = np.load(FIXTURES / "v3_tiny_expected.npz")
    with open_store(store_path) as store:
        assert store.attrs.format_version == 3
        assert store.bound
        assert store.relabel.extras == ("cutout",)
        assert np.array_equal(store.keys, expected["keys"])
        for pos in range(store.num_entries):
            entry = store.entry_at(pos)
            assert np.array_equal(entry.logits, expected[f"{pos}/logits"]), pos
            assert np.array_equal(entry.indices, expected[f"{pos}/indices"]), pos
            for name, values in entry.params.to_arrays().items():
                assert np.array_equal(values, expected[f"{pos}/{name}"]), (pos, name)
    report = verify_store(store_path)
    assert report.ok, report.problems
    assert report.bound
    assert report.fingerprint == str(expected["fingerprint"])


def test_version_3_fixture_names_a_moved_chunk(store_path: Path) -> None:
    # The binding of the golden store still works: logits of positions 0 and 1 swapped.
    a, b = store_path / "pool/logits/c/0/0/0", store_path / "pool/logits/c/1/0/0"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    with open_store(store_path) as store:
        e, bt = store.keys[0].tolist()
        with pytest.raises(
            StoreDamagedError, match=rf"entry \(epoch={e}, batch={bt}\): pool/logits: .*digest"
        ):
            store.entry_at(0)
    named = {(p.array, p.epoch, p.batch) for p in verify_store(store_path).problems}
    assert named == {("pool/logits", e, bt), ("pool/logits", *store.keys[1].tolist())}


def test_version_3_fixture_names_an_edited_record(store_path: Path) -> None:
    root = json.loads((store_path / "zarr.json").read_text())
    root["attributes"]["dataset"]["std"] = [0.5, 0.5, 0.5]
    (store_path / "zarr.json").write_text(json.dumps(root))
    problems = verify_store(store_path).problems
    assert [p.array for p in problems] == ["store", "root/dataset"]
