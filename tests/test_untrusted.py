"""Untrusted artifacts: opening, verifying and loading a store never unpickles or runs anything."""

from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numcodecs
import numcodecs.pickles
import pytest
import torch
import zarr
import zarr.registry
from zarr.codecs.numcodecs._codecs import _NumcodecsArrayBytesCodec

from lpldstore import (
    FormatError,
    Layout,
    PoolLoader,
    PruningPlan,
    StoreDamagedError,
    open_store,
    verify_store,
)
from lpldstore.cli import main as cli_main
from lpldstore.testing import fill, make_store

PLAN = PruningPlan(num_images=16, batch_size=4, epochs=2, ratio=1, strategy="prefix", seed=0)


class _Payload:
    """Unpickling this creates a directory: proof that code from the artifact ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.mkdir, (str(self.marker),))


class _PickleCodec(_NumcodecsArrayBytesCodec, codec_name="pickle"):
    """numcodecs' Pickle codec as a zarr v3 codec, as a package could register it by entry point."""


@pytest.fixture
def pickle_codec_registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The worst case: zarr 3.1 ships no pickle codec, but any installed package may register one
    # under this name, and numcodecs' own guard against unpickling may have been switched off.
    monkeypatch.setattr(numcodecs.pickles, "ALLOW_UNSAFE_PICKLE_DECODE", True)
    zarr.registry.register_codec("numcodecs.pickle", _PickleCodec)
    yield
    zarr.registry.__dict__["__codec_registries"].pop("numcodecs.pickle", None)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "s.zarr"
    with make_store(path, plan=PLAN, layout=Layout(block_entries=4)) as writer:
        fill(writer)
    return path


def _edit_array_meta(store: Path, array: str, edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``edit`` to an array's metadata, in its own zarr.json and in the consolidated copy."""
    own = store / array / "zarr.json"
    meta = json.loads(own.read_text())
    edit(meta)
    own.write_text(json.dumps(meta))
    root = json.loads((store / "zarr.json").read_text())
    edit(root["consolidated_metadata"]["metadata"][array])
    (store / "zarr.json").write_text(json.dumps(root))


def _make_malicious(store: Path, marker: Path) -> None:
    def to_pickle(meta: dict[str, Any]) -> None:
        meta["codecs"] = [{"name": "numcodecs.pickle", "configuration": {"id": "pickle"}}]

    _edit_array_meta(store, "pool/logits", to_pickle)
    for chunk in (store / "pool" / "logits" / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(pickle.dumps(_Payload(marker)))


def test_the_payload_really_runs_under_plain_zarr(
    store_path: Path, tmp_path: Path, pickle_codec_registered: None
) -> None:
    # The control: without lpldstore's checks this store runs its payload when a chunk is read.
    marker = tmp_path / "pwned"
    _make_malicious(store_path, marker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        array = zarr.open_array(store_path / "pool" / "logits", mode="r")
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the decoded object makes zarr do
            array[0]
    assert marker.exists()


def test_a_pickle_codec_is_refused_before_any_chunk_is_read(
    store_path: Path, tmp_path: Path, pickle_codec_registered: None, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    _make_malicious(store_path, marker)
    match = r"array 'pool/logits' declares codec 'numcodecs.pickle'; the lpldstore format allows only"
    with pytest.raises(FormatError, match=match):
        open_store(store_path)
    report = verify_store(store_path)
    assert not report.ok
    assert "numcodecs.pickle" in report.problems[0].message
    with pytest.raises(FormatError, match=match):
        PoolLoader(store_path, seed=0)
    assert cli_main(["verify", str(store_path)]) == 1
    assert "numcodecs.pickle" in capsys.readouterr().out
    # The same store without consolidated metadata: the per-array zarr.json is checked instead.
    root = json.loads((store_path / "zarr.json").read_text())
    root["consolidated_metadata"] = None
    (store_path / "zarr.json").write_text(json.dumps(root))
    with pytest.raises(FormatError, match=match):
        open_store(store_path)
    assert not marker.exists()


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(meta: dict[str, Any]) -> None:
        node = meta
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("array", "edit", "match"),
    [
        ("pool/flip", _set(("data_type",), "string"), r"data type 'string'; only fixed-width numeric"),
        (
            "pool/indices",
            _set(("codecs",), [{"name": "vlen-utf8"}, {"name": "crc32c"}]),
            r"declares codec 'vlen-utf8'",
        ),
        (
            "pool/crop",
            _set(("codecs",), [{"name": "bytes", "configuration": {"endian": "little"}}]),
            r"must end its codecs with crc32c",
        ),
        (
            "pool/mix_lam",
            _set(("chunk_grid", "configuration", "chunk_shape"), [1 << 40]),
            r"expected non-empty chunks of at most",
        ),
        ("pool/key", _set(("storage_transformers",), [{"name": "x"}]), "storage transformers"),
        ("images/pixels", _set(("chunk_key_encoding",), {"name": "evil"}), "unknown chunk key encoding"),
        (
            "pool/logits",
            _set(
                ("codecs",), [{"name": "numcodecs.zlib", "configuration": {"level": 1}}, {"name": "crc32c"}]
            ),
            r"declares codec 'numcodecs.zlib'",
        ),
    ],
    ids=[
        "string-dtype",
        "vlen-codec",
        "no-checksum",
        "huge-chunk",
        "transformer",
        "key-encoding",
        "numcodecs",
    ],
)
def test_metadata_outside_the_allow_list_is_refused(
    store_path: Path, array: str, edit: Callable[[dict[str, Any]], None], match: str
) -> None:
    _edit_array_meta(store_path, array, edit)
    with pytest.raises(FormatError, match=rf"array '{array}'.*" + match.split("array ")[-1]):
        open_store(store_path)
    assert not verify_store(store_path).ok


def test_reading_a_good_store_never_unpickles(store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("something tried to unpickle")

    for module, name in [
        (pickle, "loads"),
        (pickle, "load"),
        (pickle, "Unpickler"),
        (torch, "load"),
        (numcodecs.Pickle, "decode"),
    ]:
        monkeypatch.setattr(module, name, forbidden)
    with open_store(store_path) as store:
        for pos in range(store.num_entries):
            store.entry_at(pos)
    assert verify_store(store_path).ok
    loader = PoolLoader(store_path, policy="sequential", seed=0)
    assert sum(len(b) for b in loader) == PLAN.num_kept * PLAN.batch_size


def _zip(store: Path, out: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(store.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(store).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return out


@pytest.mark.parametrize("member", ["../evil.txt", "/etc/evil.txt", "pool/../../evil.txt", "C:/evil.txt"])
def test_zip_members_outside_the_store_are_refused(store_path: Path, tmp_path: Path, member: str) -> None:
    archive = _zip(store_path, tmp_path / "s.zip", {member: b"x"})
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    with pytest.raises(FormatError, match=rf"zip member '{member}' names a path outside the store"):
        open_store(archive)
    assert not verify_store(archive).ok
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before
    assert not (tmp_path / "evil.txt").exists()


def test_a_url_store_writes_nothing_outside_its_cache(store_path: Path, tmp_path: Path) -> None:
    def snapshot(root: Path) -> dict[str, float]:
        return {str(p): p.stat().st_mtime for p in root.rglob("*")}

    cache = tmp_path / "cache"
    cache.mkdir()
    before = snapshot(tmp_path)
    url = store_path.resolve().as_uri()
    for source, options in [
        (url, None),
        (f"simplecache::{url}", {"simplecache": {"cache_storage": str(cache)}}),
    ]:
        with open_store(source, storage_options=options) as store:
            entries = [store.entry_at(pos) for pos in range(store.num_entries)]
        assert len(entries) == PLAN.num_kept
        assert verify_store(source, storage_options=options).ok
    after = snapshot(tmp_path)
    written = {p for p in after if p not in before or after[p] != before[p]}
    assert written, "the simplecache run should have cached something"
    assert all(Path(p).is_relative_to(cache) for p in written), sorted(written)
    # The store itself is opened read-only over the URL: it is left exactly as it was.
    assert {p: m for p, m in after.items() if Path(p).is_relative_to(store_path)} == {
        p: m for p, m in before.items() if Path(p).is_relative_to(store_path)
    }


def test_truncated_or_altered_zip_is_damage(store_path: Path, tmp_path: Path) -> None:
    archive = _zip(store_path, tmp_path / "s.zip")
    data = archive.read_bytes()
    truncated = tmp_path / "t.zip"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreDamagedError, match="not a readable zip file"):
        open_store(truncated)
    report = verify_store(truncated)
    assert not report.ok
    assert "not a readable zip file" in report.problems[0].message
    # Altered: one byte of the logits of position 1 flipped inside the archive.
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("pool/logits/c/1/0/0")
    offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    altered = bytearray(data)
    altered[offset] ^= 0x5A
    (tmp_path / "a.zip").write_bytes(bytes(altered))
    with open_store(tmp_path / "a.zip") as store:
        e, b = store.keys[1].tolist()
        with pytest.raises(StoreDamagedError, match=rf"entry \(epoch={e}, batch={b}\)"):
            store.entry_at(1)
    # This zip was made without `lpldstore pack`, so verify also says that no checksum sits beside it.
    problems = verify_store(tmp_path / "a.zip").problems
    assert [(p.array, p.epoch, p.batch) for p in problems] == [("zip", None, None), ("pool/logits", e, b)]
    assert "no checksum file" in problems[0].message
