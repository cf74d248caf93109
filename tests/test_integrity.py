"""Format version 3: entries bound to their key and store, records digested, stores upgraded.

What a CRC cannot see: chunks moved between entries, swapped, or copied from another store; root
records edited. Each is named (the entry, or the record) by the reader, the loader and verify.
Derived stores get their own digests (and refuse a tampered parent), the same entries cut into
other files keep their digests, and version-1/2 stores still read, saying they carry no binding,
and upgrade to version 3.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lpldstore import (
    CodecConfig,
    FormatError,
    Layout,
    PoolLoader,
    PruningPlan,
    StoreDamagedError,
    ValidationError,
    open_store,
    prune,
    recode,
    upgrade,
    verify_store,
)
from lpldstore.cli import main
from lpldstore.format.integrity import canonical_json, record_digest
from lpldstore.testing import different_entries, fill, make_store

PLAN = PruningPlan(
    num_images=20, batch_size=4, epochs=3, ratio=1.25, strategy="prefix", seed=1, last_batch="pad"
)
FIXTURES = Path(__file__).parent / "fixtures"


def _make(path: Path, *, seed: int = 0, sharded: bool = False) -> Path:
    layout = Layout(block_entries=2, logits_shard_entries=2 if sharded else None)
    with make_store(path, plan=PLAN, layout=layout, seed=seed) as writer:
        fill(writer, seed=seed)
    return path


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make(tmp_path_factory.mktemp("honest") / "s.zarr")


@pytest.fixture
def store(honest: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(honest, tmp_path / "s.zarr"))


def _named(path: Path) -> set[tuple[str, int | None, int | None]]:
    return {(p.array, p.epoch, p.batch) for p in verify_store(path).problems}


def _key(path: Path, pos: int) -> tuple[int, int]:
    with open_store(path) as s:
        e, b = s.keys[pos].tolist()
    return int(e), int(b)


def test_swapped_logits_are_named_by_reader_loader_and_verify(store: Path) -> None:
    a, b = store / "pool/logits/c/0/0/0", store / "pool/logits/c/3/0/0"
    data = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data)
    (e0, b0), (e3, b3) = _key(store, 0), _key(store, 3)
    with open_store(store) as s:
        with pytest.raises(
            StoreDamagedError, match=rf"entry \(epoch={e0}, batch={b0}\): pool/logits: .*digest"
        ):
            s.entry_at(0)
        s.entry_at(1)  # the others are untouched
    with pytest.raises(StoreDamagedError, match=rf"entry \(epoch={e0}, batch={b0}\)"):
        list(PoolLoader(store, policy="sequential", seed=0))
    assert _named(store) == {("pool/logits", e0, b0), ("pool/logits", e3, b3)}


def test_a_block_of_small_arrays_from_another_store_is_named(store: Path, tmp_path: Path) -> None:
    other = _make(tmp_path / "other.zarr", seed=1)  # same plan, other data, other store id
    for array in ("crop", "flip", "digest"):
        block_1 = next(p for p in (other / "pool" / array / "c" / "1").rglob("*") if p.is_file())
        shutil.copyfile(block_1, store / block_1.relative_to(other))
    # Block 1 holds positions 2 and 3: both are named, nothing else is.
    named = _named(store)
    assert {(e, b) for _, e, b in named} == {_key(store, 2), _key(store, 3)}
    with open_store(store) as s:
        with pytest.raises(StoreDamagedError, match=r"entry \(epoch=\d+, batch=\d+\): pool/\w+: .*digest"):
            s.entry_at(2)
        s.entry_at(4)


def test_the_same_entries_cut_into_other_files_keep_their_digests(honest: Path, tmp_path: Path) -> None:
    # A sharded store of the same entries, given the chunked store's id and digests: it verifies.
    sharded = _make(tmp_path / "sharded.zarr", sharded=True)
    source = json.loads((honest / "zarr.json").read_text())["attributes"]["integrity"]
    root = json.loads((sharded / "zarr.json").read_text())
    root["attributes"]["integrity"]["store_id"] = source["store_id"]
    for name in ("dataset", "plan", "relabel", "codec"):
        assert root["attributes"]["integrity"]["records"][name] == source["records"][name]
    (sharded / "zarr.json").write_text(json.dumps(root))
    shutil.rmtree(sharded / "pool" / "digest" / "c")
    shutil.copytree(honest / "pool" / "digest" / "c", sharded / "pool" / "digest" / "c")
    assert verify_store(sharded).ok
    assert different_entries(sharded, honest) == []


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("dataset", "mean", [0.5, 0.5, 0.5]),
        ("relabel", "interpolation", "nearest"),
        ("layout", "block_entries", 2),
    ],
)
def test_an_edited_record_is_named(store: Path, section: str, field: str, value: object) -> None:
    root = json.loads((store / "zarr.json").read_text())
    root["attributes"][section][field] = value if root["attributes"][section][field] != value else 4
    (store / "zarr.json").write_text(json.dumps(root))
    with pytest.raises(FormatError, match=rf"root record\(s\) \['{section}'\] do not match their digests"):
        open_store(store)
    assert ("root/" + section, None, None) in _named(store)


def test_record_digests_cover_the_canonical_json() -> None:
    # Key order and spacing do not matter; a value does.
    a = {"mean": [0.5, 0.25, 1.0], "name": "x"}
    b = json.loads('{ "name" : "x", "mean" : [0.5, 0.25, 1.0] }')
    assert canonical_json(a) == canonical_json(b)
    assert record_digest("dataset", a) == record_digest("dataset", b)
    assert record_digest("dataset", a) != record_digest("dataset", a | {"name": "y"})
    assert record_digest("dataset", a) != record_digest("relabel", a)


def test_derived_stores_get_their_own_digests(honest: Path, tmp_path: Path) -> None:
    pruned = prune(honest, tmp_path / "pruned.zarr", ratio=2.5)
    recoded = recode(honest, tmp_path / "q4.zarr", codec=CodecConfig(name="quantized", params={"bits": 4}))
    ids = {
        json.loads((p / "zarr.json").read_text())["attributes"]["integrity"]["store_id"]
        for p in (honest, pruned, recoded)
    }
    assert len(ids) == 3
    reports = [verify_store(p) for p in (pruned, recoded)]
    assert all(r.ok and r.bound for r in reports)
    # The same entries, bound to another identity: the parent's digests do not fit the child.
    with open_store(honest) as parent, open_store(pruned) as child:
        assert not np.array_equal(
            parent.metadata([0]).records["digest"], child.metadata([0]).records["digest"]
        )
        e, b = child.keys[0].tolist()
    shutil.copyfile(honest / "pool/digest/c/0/0/0", pruned / "pool/digest/c/0/0/0")
    assert ("pool/logits", e, b) in _named(pruned)


def test_prune_refuses_a_tampered_parent_and_writes_nothing(store: Path, tmp_path: Path) -> None:
    a, b = store / "pool/logits/c/0/0/0", store / "pool/logits/c/1/0/0"
    data = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data)
    with pytest.raises(StoreDamagedError, match="Nothing was derived"):
        prune(store, tmp_path / "out.zarr", ratio=1.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


@pytest.mark.parametrize("fixture", ["v1_tiny", "v2_tiny"])
def test_old_stores_read_and_say_they_carry_no_binding(
    fixture: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = shutil.copytree(FIXTURES / f"{fixture}.zarr", tmp_path / f"{fixture}.zarr")
    with open_store(path) as s:
        assert not s.bound
        assert s.binding.startswith("none: format version")
    report = verify_store(path)
    assert report.ok
    assert not report.bound
    assert report.fingerprint is None
    with pytest.raises(FormatError, match="carries no digests, and a bound store was required"):
        open_store(path, require_bound=True)
    assert not verify_store(path, require_bound=True).ok
    with pytest.raises(FormatError, match="carries no digests, and a bound store was required"):
        PoolLoader(path, policy="sequential", require_bound=True)
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    assert "integrity   format version " + fixture[1] + ": none: " in capsys.readouterr().out


def test_info_and_the_loader_state_the_binding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = shutil.copytree(FIXTURES / "v3_tiny.zarr", tmp_path / "v3_tiny.zarr")
    assert main(["info", str(path)]) == 0
    assert "integrity   format version 3: entries bound to their keys" in capsys.readouterr().out
    assert main(["info", "--json", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["integrity"]["bound"] is True
    loader = PoolLoader(path, policy="sequential", require_bound=True)
    batches = list(loader)
    loader.close()
    assert len(batches) == len(loader) > 0


@pytest.mark.parametrize("fixture", ["v1_tiny", "v2_tiny"])
def test_upgrade_rewrites_an_old_store_as_version_3(
    fixture: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = shutil.copytree(FIXTURES / f"{fixture}.zarr", tmp_path / f"{fixture}.zarr")
    out = tmp_path / "v3.zarr"
    assert main(["upgrade", str(path), str(out)]) == 0
    assert "format version 3" in capsys.readouterr().out
    report = verify_store(out)
    assert report.ok
    assert report.bound
    assert report.fingerprint
    assert different_entries(path, out) == []
    with open_store(out) as s:
        assert s.provenance.parents[0]["operation"] == "upgrade"
        assert s.provenance.parents[0]["format_version"] == int(fixture[1])
    with pytest.raises(ValidationError, match="already format version 3"):
        upgrade(out, tmp_path / "again.zarr")


def test_upgrade_refuses_a_damaged_source(tmp_path: Path) -> None:
    path = shutil.copytree(FIXTURES / "v2_tiny.zarr", tmp_path / "v2.zarr")
    (path / "pool/logits/c/1/0/0").unlink()
    with pytest.raises(ValidationError, match=r"does not pass verify .*Nothing was written"):
        upgrade(path, tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


def test_verify_prints_the_binding_and_the_fingerprint(
    honest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(honest)]) == 0
    out = capsys.readouterr().out
    assert "binding: entries bound to their keys and this store" in out
    fingerprint = verify_store(honest).fingerprint
    assert fingerprint is not None
    assert f"fingerprint: {fingerprint}" in out
    assert main(["verify", "--json", str(honest)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["bound"] is True
    assert data["fingerprint"] == fingerprint


def test_fill_values_are_pinned_by_the_declaration(store: Path) -> None:
    # The case: logits fill value 0 and a logits chunk deleted read as zeros. Now the
    # metadata itself is refused, before any chunk is read.
    root = json.loads((store / "zarr.json").read_text())
    root["consolidated_metadata"]["metadata"]["pool/logits"]["fill_value"] = 0.0
    (store / "zarr.json").write_text(json.dumps(root))
    (store / "pool/logits/c/0/0/0").unlink()
    with pytest.raises(
        FormatError, match=r"array 'pool/logits' does not have the metadata .*fill_value=0\.0"
    ):
        open_store(store)
    assert not verify_store(store).ok


def test_digests_do_not_depend_on_nan_bits(honest: Path) -> None:
    # Fidelity NaN ("not measured") hashes alike whatever its bit pattern.
    from lpldstore.format.entries import digest_row

    with open_store(honest) as s:
        meta = s.metadata([0])
        row = meta.row(0)
        e, b = s.keys[0].tolist()
        raw = np.asarray(s.array("pool/logits")[0])
        nan_row = dict(row) | {"fidelity": np.full(5, np.nan)}
        other_nan = dict(row) | {
            "fidelity": np.frombuffer(np.array([0x7FF8000000000001] * 5, dtype="<u8").tobytes(), "<f8")
        }
        assert np.array_equal(
            digest_row(s.attrs, e, b, nan_row, raw), digest_row(s.attrs, e, b, other_nan, raw)
        )


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_logits_digests_tell_inf_from_nan_and_ignore_nan_payloads(dtype: type) -> None:
    from lpldstore.format.integrity import logits_digest

    def digest(values: np.ndarray) -> bytes:
        return logits_digest(b"store", 1, 2, values)

    finite: np.ndarray = np.arange(12, dtype=dtype).reshape(3, 4)
    uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[np.dtype(dtype).itemsize]
    quiet, other = finite.copy(), finite.copy()
    quiet[1, 2] = np.nan
    other.view(uint)[1, 2] = np.array(np.nan, dtype=dtype).view(uint) | 1  # another NaN payload
    assert np.isnan(other[1, 2])
    infinite = finite.copy()
    infinite[1, 2] = np.inf
    assert digest(quiet) == digest(other)
    assert len({digest(finite), digest(quiet), digest(infinite), digest(-infinite)}) == 4
