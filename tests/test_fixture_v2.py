"""A store written by format version 2 (a 4-bit quantized codec) must read back exactly, forever.

The fixture was written by tests/fixtures/make_v2_fixture.py; never regenerate it for a format
change: add a fixture for the new version instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from lpldstore import CodecConfig, open_store, verify_store

FIXTURES = Path(__file__).parent / "fixtures"


def test_version_2_fixture_reads_exactly(tmp_path: Path) -> None:
    store_path = shutil.copytree(FIXTURES / "v2_tiny.zarr", tmp_path / "v2_tiny.zarr")
    expected = np.load(FIXTURES / "v2_tiny_expected.npz")
    with open_store(store_path) as store:
        assert store.attrs.format_version == 2
        # Written before the rate was recorded: its writer measured every entry.
        assert store.codec == CodecConfig(name="quantized", params={"bits": 4}, fidelity_rate=1.0)
        assert np.array_equal(store.keys, expected["keys"])
        for pos in range(store.num_entries):
            assert np.array_equal(store.entry_at(pos).logits, expected[f"{pos}/logits"]), pos
        fidelity = store.fidelity()
        assert fidelity is not None
        assert fidelity.rows == sum(len(store.entry_at(p)) for p in range(store.num_entries))
    assert verify_store(store_path).ok


def test_version_1_fixture_has_no_fidelity(tmp_path: Path) -> None:
    store_path = shutil.copytree(FIXTURES / "v1_tiny.zarr", tmp_path / "v1_tiny.zarr")
    with open_store(store_path) as store:
        assert store.attrs.format_version == 1
        assert store.codec == CodecConfig()
        assert store.fidelity() is None
