"""A store written by format version 1 must read back exactly, forever.

The fixture was written by tests/fixtures/make_v1_fixture.py; never regenerate it for a format
change: add a fixture for the new version instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from lpldstore import open_store, verify_store

FIXTURES = Path(__file__).parent / "fixtures"


def test_version_1_fixture_reads_exactly(tmp_path: Path) -> None:
    # Read from a copy: a test must never be able to alter the golden files.
    store_path = shutil.copytree(FIXTURES / "v1_tiny.zarr", tmp_path / "v1_tiny.zarr")
    expected = np.load(FIXTURES / "v1_tiny_expected.npz")
    with open_store(store_path) as store:
        assert store.dataset.num_classes == 3
        assert store.plan.num_kept == len(expected["keys"])
        assert np.array_equal(store.keys, expected["keys"])
        assert np.array_equal(store.images(), expected["images"])
        assert np.array_equal(store.labels(), expected["labels"])
        for pos in range(store.num_entries):
            entry = store.entry_at(pos)
            for field in ("indices", "crops", "flips", "mix_index", "mix_box", "logits"):
                assert np.array_equal(getattr(entry, field), expected[f"{pos}/{field}"]), (pos, field)
            assert np.float32(entry.mix_lam) == expected[f"{pos}/mix_lam"]
    assert verify_store(store_path).ok
