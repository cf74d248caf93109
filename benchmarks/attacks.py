"""The attack suite: malicious stores, peer directories and servers against every entry point.

    python benchmarks/attacks.py                      # every case, JSON to benchmarks/results/attacks.json
    python benchmarks/attacks.py --only moved         # the cases of one class (substring of class or name)

Each case builds one malicious artifact from an honest one (a finished format-3 store, its zip, an
SRe2L label directory, or an HTTP server in front of the store) and runs each of its *victims*
(read every entry, verify, a loader epoch, reopen with the writer, prune, pack, unpack, import) in
a forked child process under a memory limit (``RLIMIT_AS``: the address space at the fork plus
``--memory-mib``) and a timeout. Each run is classified:

- ``refused``: a library error (``LpldStoreError``) with a message, or ``verify`` reporting
  problems; the message must not quote the attacked bytes;
- ``correct``: the victim returned exactly what it returns on the honest artifact (the attack
  changed nothing that is read);
- ``silently wrong``: it returned something else without a word (must be 0);
- ``code execution``: the case's marker file appeared (must be 0);
- ``hang``: the child was killed at the timeout (must be 0);
- ``crashed``: any other exception, a traceback or a death by signal or memory (must be 0).

Peak RSS is each child's ``ru_maxrss`` (the forked child starts with the parent's pages, reported
as ``baseline_rss_mib``). Results: ``benchmarks/results/attacks.json``. ``tests/test_attacks.py``
runs the same catalogue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pickle
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpldstore import (
    Layout,
    LpldStoreError,
    PoolLoader,
    PruningPlan,
    StoreWriter,
    open_store,
    pack_store,
    prune,
    unpack_store,
    verify_store,
)
from lpldstore.interop import ImportOptions, import_labels
from lpldstore.interop._common import replay_sampler
from lpldstore.storage import _http
from lpldstore.testing import fill, make_store

RESULTS = Path(__file__).parent / "results" / "attacks.json"
PLAN = PruningPlan(
    num_images=12, batch_size=4, epochs=3, ratio=1.5, strategy="random", seed=3, last_batch="pad"
)
LAYOUT = Layout(block_entries=2)
SECRET = b"root:x:0:0:lpld-secret-line\n"  # stands in for /etc/passwd, so no real file is needed
OUTCOMES = ("refused", "correct", "silently wrong", "code execution", "hang", "crashed")


# -- honest materials ---------------------------------------------------------------------------


@dataclasses.dataclass
class Kit:
    """Everything a case builds from, made once in the parent process."""

    root: Path
    store: Path  # the honest format-3 store (chunked logits)
    sharded: Path  # the same entries, logits sharded by block
    other: Path  # another store of the same plan (other store id, other data)
    v2: Path  # the honest store written as format version 2 (no digests)
    zipped: Path  # the honest store packed
    images: Path  # an ImageFolder for imports
    peer: Path  # an honest SRe2L label directory of those images
    secret: Path  # a file outside every store that must never leak
    base_url: str = ""  # the hostile server, once started
    honest: dict[str, Any] = dataclasses.field(default_factory=dict)


def _store(path: Path, *, seed: int = 0, sharded: bool = False, version: int | None = None) -> Path:
    layout = Layout(block_entries=2, logits_shard_entries=2 if sharded else None)
    with make_store(path, plan=PLAN, layout=layout, seed=seed) as writer:
        fill(writer, seed=seed)
    if version == 2:
        _downgrade(path)
    return path


def _downgrade(path: Path) -> None:
    """Strip a format-3 store to what version 2 wrote: no integrity record, no pool/digest."""
    shutil.rmtree(path / "pool" / "digest")
    root = json.loads((path / "zarr.json").read_text())
    root["attributes"].pop("integrity")
    root["attributes"]["format_version"] = 2
    root["consolidated_metadata"]["metadata"].pop("pool/digest")
    (path / "zarr.json").write_text(json.dumps(root))


def _image_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("n01", "n02", "n03"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)).save(root / c / f"img{i}.png")
    return root


def _sre2l_record(rng: np.random.Generator, n: int) -> list[Any]:
    boxes = []
    for _ in range(n):
        h, w = int(rng.integers(1, 17)), int(rng.integers(1, 13))
        boxes.append((int(rng.integers(0, 17 - h)), int(rng.integers(0, 13 - w)), h, w))
    coords = torch.tensor([(i / 16, j / 12, h / 16, w / 12) for i, j, h, w in boxes], dtype=torch.float32)
    return [
        coords,
        torch.tensor([bool(f) for f in rng.random(n) < 0.5]),
        torch.randperm(n),
        0.5,
        [np.int64(1), np.int64(1), np.int64(5), np.int64(5)],
        torch.from_numpy(rng.standard_normal((n, 6)).astype(np.float16)),
    ]


def _peer(root: Path) -> Path:
    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    for e, batches in enumerate(replay_sampler(12, 4, 2)):
        (root / f"epoch_{e}").mkdir(parents=True)
        for b, ids in enumerate(batches):
            torch.save(_sre2l_record(rng, len(ids)), root / f"epoch_{e}" / f"batch_{b}.tar")
    return root


def make_kit(root: Path) -> Kit:
    honest = root / "honest"
    honest.mkdir(parents=True)
    kit = Kit(
        root=root,
        store=_store(honest / "s.zarr"),
        sharded=_store(honest / "sharded.zarr", sharded=True),
        other=_store(honest / "other.zarr", seed=1),
        v2=_store(honest / "v2.zarr", version=2),
        zipped=honest / "s.zip",
        images=_image_folder(honest / "images"),
        peer=_peer(honest / "peer"),
        secret=honest / "secret.txt",
    )
    pack_store(kit.store, kit.zipped)
    kit.secret.write_bytes(SECRET)
    return kit


# -- victims ------------------------------------------------------------------------------------


class Reported(Exception):
    """A victim that reports problems instead of raising (verify): counts as refused."""


def _hash(h: Any, *arrays: Any) -> None:
    for a in arrays:
        arr = np.ascontiguousarray(np.asarray(a))
        h.update(str((arr.dtype.str, arr.shape)).encode() + arr.tobytes())


def read_all(source: Any, **options: Any) -> str:
    """Everything a reader returns: images, labels and every committed entry."""
    h = hashlib.sha256()
    with open_store(source, **options) as store:
        _hash(h, store.images(), store.labels())
        committed = store.committed()
        _hash(h, committed)
        for pos in np.flatnonzero(committed).tolist():
            entry = store.entry_at(pos)
            arrays = entry.params.to_arrays()
            _hash(h, entry.indices, entry.logits, *(arrays[k] for k in sorted(arrays)))
    return h.hexdigest()


def victim_read(target: Any, kit: Kit) -> str:
    return read_all(target)


def victim_read_bound(target: Any, kit: Kit) -> str:
    return read_all(target, require_bound=True)


def victim_read_url(target: Any, kit: Kit) -> str:
    return read_all(target)


def _verify(target: Any, **options: Any) -> str:
    report = verify_store(target, **options)
    if not report.ok:
        raise Reported(f"{len(report.problems)} problem(s); first: {report.problems[0]}")
    return read_all(target)  # verify passed: what readers get must be the honest data


def victim_verify(target: Any, kit: Kit) -> str:
    return _verify(target)


def victim_verify_bound(target: Any, kit: Kit) -> str:
    return _verify(target, require_bound=True)


def victim_loader(target: Any, kit: Kit) -> str:
    h = hashlib.sha256()
    loader = PoolLoader(target, policy="sequential", seed=0)
    try:
        loader.set_epoch(0)
        for batch in loader:
            _hash(h, batch.images.numpy(), batch.logits.numpy(), batch.keys.numpy())
    finally:
        loader.close()
    return h.hexdigest()


def victim_writer(target: Any, kit: Kit) -> str:
    with StoreWriter.open(target) as writer:
        return f"opened; {len(writer.todo())} to do"


def victim_prune(target: Any, kit: Kit) -> str:
    out = Path(tempfile.mkdtemp(dir=kit.root)) / "pruned.zarr"
    prune(target, out, ratio=3)
    return read_all(out)


def victim_pack(target: Any, kit: Kit) -> str:
    out = Path(tempfile.mkdtemp(dir=kit.root)) / "p.zip"
    pack_store(target, out)
    with zipfile.ZipFile(out) as zf:
        members = sorted(zf.namelist())
        if any(SECRET in zf.read(m) for m in members):
            return "the zip holds the secret"
    return json.dumps(members) + read_all(out)


def victim_unpack(target: Any, kit: Kit) -> str:
    out = Path(tempfile.mkdtemp(dir=kit.root)) / "u.zarr"
    unpack_store(target, out)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    return json.dumps(files) + read_all(out)


def victim_import(target: Any, kit: Kit) -> str:
    out = Path(tempfile.mkdtemp(dir=kit.root)) / "imported.zarr"
    import_labels("sre2l", target, kit.images, out, ImportOptions(output_size=(8, 8)), progress=False)
    h = hashlib.sha256()
    with open_store(out) as store:
        for pos in range(store.num_entries):
            entry = store.entry_at(pos)
            _hash(h, entry.indices, entry.logits, entry.crops, entry.flips)
    return h.hexdigest()


VICTIMS: dict[str, Callable[[Any, Kit], str]] = {
    "read": victim_read,
    "read(require_bound)": victim_read_bound,
    "verify": victim_verify,
    "verify(require_bound)": victim_verify_bound,
    "loader": victim_loader,
    "writer": victim_writer,
    "prune": victim_prune,
    "pack": victim_pack,
    "unpack": victim_unpack,
    "import": victim_import,
}
STORE_VICTIMS = ("read", "verify", "loader")


def honest_results(kit: Kit) -> dict[str, str]:
    """What each victim returns on the honest artifact (the reference for 'correct')."""
    out = {
        name: VICTIMS[name](kit.store, kit)
        for name in ("read", "verify", "loader", "writer", "prune", "pack")
    }
    out["read(require_bound)"] = out["verify(require_bound)"] = out["read"]
    out["unpack"] = victim_unpack(kit.zipped, kit)
    out["import"] = victim_import(kit.peer, kit)
    return out


# -- cases --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    klass: str
    build: Callable[[Path, Kit], Any]  # (work dir, kit) -> the attacked artifact
    victims: tuple[str, ...] = STORE_VICTIMS
    setup: str | None = None  # "pickle codec": register a pickle codec in the child (the worst case)
    timeout_s: float = 60.0
    holder: tuple[int, int] | None = None  # a live writer of this part holds its leases during the case
    # Victims whose outcome is a documented limit of the format, reported apart from the counts.
    limits: tuple[str, ...] = ()


def _copy(kit: Kit, work: Path, source: Path | None = None) -> Path:
    return Path(shutil.copytree(source or kit.store, work / "s.zarr"))


def _root_json(path: Path) -> dict[str, Any]:
    return json.loads((path / "zarr.json").read_text())


def _write_root(path: Path, root: dict[str, Any]) -> None:
    (path / "zarr.json").write_text(json.dumps(root))


def _chunk(path: Path, array: str, index: int) -> Path:
    files = sorted(
        (p for p in (path / array / "c").rglob("*") if p.is_file()),
        key=lambda p: [int(x) for x in p.relative_to(path / array / "c").parts],
    )
    return files[index]


def _swap(a: Path, b: Path) -> None:
    tmp = a.with_name(a.name + ".swap")
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)


def swap_chunks(array: str, i: int = 0, j: int = 1, source: str = "store") -> Callable[[Path, Kit], Path]:
    def build(work: Path, kit: Kit) -> Path:
        path = _copy(kit, work, getattr(kit, source))
        _swap(_chunk(path, array, i), _chunk(path, array, j))
        return path

    return build


def transplant(arrays: tuple[str, ...], index: int = 0) -> Callable[[Path, Kit], Path]:
    """Chunks of another store of the same plan copied over this one's."""

    def build(work: Path, kit: Kit) -> Path:
        path = _copy(kit, work)
        for array in arrays:
            shutil.copyfile(_chunk(kit.other, array, index), _chunk(path, array, index))
        return path

    return build


def transplant_pool(work: Path, kit: Kit) -> Path:
    path = _copy(kit, work)
    shutil.rmtree(path / "pool")
    shutil.copytree(kit.other / "pool", path / "pool")
    return path


def link_logits_dir(work: Path, kit: Kit) -> Path:
    path = _copy(kit, work)
    shutil.rmtree(path / "pool" / "logits")
    os.symlink(kit.other / "pool" / "logits", path / "pool" / "logits")
    return path


def transplant_images(work: Path, kit: Kit) -> Path:
    path = _copy(kit, work)
    other = work / "o.zarr"
    _store(other, seed=5)  # another image set of the same shape
    shutil.copyfile(_chunk(other, "images/pixels", 0), _chunk(path, "images/pixels", 0))
    return path


def edit_record(section: str, field: str, value: Any, *, reseal: bool = False) -> Callable[[Path, Kit], Path]:
    """Edit one field of a root record; ``reseal``: also recompute that record's digest (an informed attacker)."""

    def build(work: Path, kit: Kit) -> Path:
        from lpldstore.format.integrity import record_digest

        path = _copy(kit, work)
        root = _root_json(path)
        root["attributes"][section][field] = value
        if reseal:
            records = root["attributes"]["integrity"]["records"]
            records[section] = record_digest(section, root["attributes"][section])
        _write_root(path, root)
        return path

    return build


def downgrade_and_swap(work: Path, kit: Kit) -> Path:
    path = _copy(kit, work)
    _downgrade(path)
    _swap(_chunk(path, "pool/logits", 0), _chunk(path, "pool/logits", 1))
    return path


def pickle_codec(array: str, *, consolidated: bool = True) -> Callable[[Path, Kit], Path]:
    def build(work: Path, kit: Kit) -> Path:
        path = _copy(kit, work)
        marker = work / "pwned"
        meta_path = path / array / "zarr.json"
        meta = json.loads(meta_path.read_text())
        meta["codecs"] = [{"name": "numcodecs.pickle", "configuration": {"id": "pickle"}}]
        meta_path.write_text(json.dumps(meta))
        root = _root_json(path)
        if consolidated:
            root["consolidated_metadata"]["metadata"][array] = meta
        else:
            root.pop("consolidated_metadata")
        _write_root(path, root)
        payload = pickle.dumps(_Evil(marker))
        for chunk in (path / array / "c").rglob("*"):
            if chunk.is_file():
                chunk.write_bytes(payload)
        return path

    return build


def undeclared_array(work: Path, kit: Kit) -> Path:
    path = _copy(kit, work)
    root = _root_json(path)
    meta = dict(root["consolidated_metadata"]["metadata"]["pool/crop"])
    meta["codecs"] = [{"name": "numcodecs.pickle", "configuration": {"id": "pickle"}}]
    root["consolidated_metadata"]["metadata"]["pool/extra"] = meta
    _write_root(path, root)
    return path


def zlib_codec(work: Path, kit: Kit) -> Path:
    path = _copy(kit, work)
    root = _root_json(path)
    meta = root["consolidated_metadata"]["metadata"]["pool/crop"]
    meta["codecs"] = [
        meta["codecs"][0],
        {"name": "numcodecs.zlib", "configuration": {"level": 1}},
        meta["codecs"][-1],
    ]
    _write_root(path, root)
    return path


def link_chunk_to(target: str) -> Callable[[Path, Kit], Path]:
    def build(work: Path, kit: Kit) -> Path:
        path = _copy(kit, work)
        chunk = _chunk(path, "pool/logits", 0)
        chunk.unlink()
        if target == "secret":
            os.symlink(kit.secret, chunk)
        elif target == "fifo":
            fifo = work / "fifo"
            os.mkfifo(fifo)
            os.symlink(fifo, chunk)
        else:
            os.symlink(target, chunk)
        return path

    return build


def fifo_chunk(work: Path, kit: Kit) -> Path:
    path = _copy(kit, work)
    chunk = _chunk(path, "pool/crop", 0)
    chunk.unlink()
    os.mkfifo(chunk)
    return path


def outside_node(work: Path, kit: Kit) -> Path:
    path = _copy(kit, work)
    (work / "outside" / "c").mkdir(parents=True)
    shutil.copyfile(_chunk(path, "pool/committed", 0), work / "outside" / "c" / "0")
    root = _root_json(path)
    root["consolidated_metadata"]["metadata"]["../outside"] = root["consolidated_metadata"]["metadata"][
        "pool/committed"
    ]
    _write_root(path, root)
    return path


def stray_files(work: Path, kit: Kit) -> Path:
    path = _copy(kit, work)
    (path / "notes.txt").write_bytes(b"not part of the store")
    os.symlink(kit.secret, path / "pool" / "secret.txt")
    return path


def linked_pool(work: Path, kit: Kit) -> Path:
    path = _copy(kit, work)
    shutil.rmtree(path / "pool")
    os.symlink(kit.other / "pool", path / "pool")
    return path


def _zip_with(kit: Kit, work: Path, extra: dict[str, bytes], *, deflate: tuple[str, ...] = ()) -> Path:
    out = work / "s.zip"
    with zipfile.ZipFile(kit.zipped) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            kind = zipfile.ZIP_DEFLATED if info.filename in deflate else zipfile.ZIP_STORED
            dst.writestr(info.filename, src.read(info), compress_type=kind)
        for name, data in extra.items():
            dst.writestr(name, data)
    return out


def zip_stray_member(work: Path, kit: Kit) -> Path:
    return _zip_with(kit, work, {"README.txt": b"hello", "pool/logits/c/99/0/0": b"x"})


def zip_duplicate_member(work: Path, kit: Kit) -> Path:
    with zipfile.ZipFile(kit.zipped) as zf:
        data = zf.read("pool/logits/c/1/0/0")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _zip_with(kit, work, {"pool/logits/c/0/0/0": data})


def zip_symlink_member(work: Path, kit: Kit) -> Path:
    out = _zip_with(kit, work, {})
    with zipfile.ZipFile(out, "a") as zf:
        info = zipfile.ZipInfo("pool/secret-link")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, str(kit.secret))
    return out


def zip_bomb(work: Path, kit: Kit) -> Path:
    # A member that inflates from ~130 KB to 128 MiB (the went from 1.6 MB to 1.5 GiB; the
    # size does not matter: a compressed member is refused from the member table).
    out = _zip_with(kit, work, {})
    with (
        zipfile.ZipFile(out, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf,
        zf.open("pool/logits/c/6/0/0", "w", force_zip64=True) as member,
    ):
        block = bytes(1 << 20)
        for _ in range(128):
            member.write(block)
    return out


def zip_deflated_store(work: Path, kit: Kit) -> Path:
    with zipfile.ZipFile(kit.zipped) as zf:
        names = tuple(zf.namelist())
    return _zip_with(kit, work, {}, deflate=names)


def _zstd_rle_frame(decoded: int, declared: int | None) -> bytes:
    """A zstd frame of RLE blocks decoding to ``decoded`` zero bytes (4 bytes per 128 KiB).

    ``declared``: the frame content size written in its header, or None for a streaming frame
    that does not say how large it decodes.
    """
    if declared is None:
        head = bytes([0x00, 7 << 3])  # no content size, not single-segment; window 128 KiB
    else:
        head = bytes([(3 << 6) | (1 << 5)]) + declared.to_bytes(8, "little")  # single segment, 8-byte size
    blocks = bytearray()
    left = decoded
    while left:
        size = min(left, 1 << 17)
        left -= size
        blocks += ((size << 3) | (1 << 1) | (0 if left else 1)).to_bytes(3, "little") + b"\x00"
    return (0xFD2FB528).to_bytes(4, "little") + head + bytes(blocks)


def zstd_bomb(*, declared: int | None, decoded: int, array: str = "pool/crop") -> Callable[[Path, Kit], Path]:
    """A checksummed small-array chunk whose zstd frame decodes to (or declares) far more than its shape."""

    def build(work: Path, kit: Kit) -> Path:
        from google_crc32c import value as crc32c

        path = _copy(kit, work)
        body = _zstd_rle_frame(decoded, declared)
        _chunk(path, array, 0).write_bytes(body + crc32c(body).to_bytes(4, "little"))
        return path

    return build


def blosc_bomb(work: Path, kit: Kit) -> Path:
    from google_crc32c import value as crc32c

    path = _copy(kit, work)
    chunk = _chunk(path, "pool/logits", 0)
    data = bytearray(chunk.read_bytes()[:-4])
    data[4:8] = (2_000_000_000).to_bytes(4, "little")  # nbytes
    chunk.write_bytes(bytes(data) + crc32c(bytes(data)).to_bytes(4, "little"))
    return path


def oversized_chunk(work: Path, kit: Kit) -> Path:
    path = _copy(kit, work)
    chunk = _chunk(path, "pool/logits", 0)
    with open(chunk, "r+b") as f:
        f.truncate(3_400_000_000)  # sparse: costs no disk, 3.4 GB to whoever reads it
    return path


def forged_entries(version: int) -> Callable[[Path, Kit], Path]:
    """A tiny store whose plan declares 40 M entries (epochs edited)."""

    def build(work: Path, kit: Kit) -> Path:
        path = _copy(kit, work, kit.v2 if version == 2 else kit.store)
        root = _root_json(path)
        root["attributes"]["plan"].update({"epochs": 13_333_334 * 3, "ratio": 1.0, "strategy": "prefix"})
        _write_root(path, root)
        return path

    return build


def fill_value(array: str, value: Any, *, source: str = "store") -> Callable[[Path, Kit], Path]:
    """The array's fill value edited to ``value`` (valid data) and one of its chunks deleted."""

    def build(work: Path, kit: Kit) -> Path:
        path = _copy(kit, work, getattr(kit, source))
        root = _root_json(path)
        root["consolidated_metadata"]["metadata"][array]["fill_value"] = value
        _write_root(path, root)
        meta = json.loads((path / array / "zarr.json").read_text())
        meta["fill_value"] = value
        (path / array / "zarr.json").write_text(json.dumps(meta))
        _chunk(path, array, 0).unlink()
        return path

    return build


def url(mode: str) -> Callable[[Path, Kit], str]:
    def build(work: Path, kit: Kit) -> str:
        if mode == "refused":
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            return f"http://127.0.0.1:{port}/s.zarr"
        return f"{kit.base_url}/{mode}/s.zarr"

    return build


# Peer directories ------------------------------------------------------------------------------


def _peer_copy(kit: Kit, work: Path) -> Path:
    return Path(shutil.copytree(kit.peer, work / "peer"))


def peer_file(make: Callable[[Path, Path], None]) -> Callable[[Path, Kit], Path]:
    def build(work: Path, kit: Kit) -> Path:
        peer = _peer_copy(kit, work)
        target = peer / "epoch_0" / "batch_1.tar"
        target.unlink()
        make(target, work)
        return peer

    return build


def _shared_lists(target: Path, work: Path) -> None:
    nested: Any = [0.0, 0.0]
    for _ in range(40):  # 2**40 leaves when traversed, a few KB when pickled
        nested = [nested, nested]
    record = _sre2l_record(np.random.default_rng(0), 4)
    record[5] = nested
    torch.save(record, target)


def _shared_bbox(target: Path, work: Path) -> None:
    nested: Any = [1, 1]
    for _ in range(40):
        nested = [nested, nested]
    record = _sre2l_record(np.random.default_rng(0), 4)
    record[4] = [nested, 1, 5, 5]
    torch.save(record, target)


def _deflated_archive(target: Path, work: Path) -> None:
    # The logits' storage is 64 MiB (never touched, so the zero page costs no memory here) and
    # deflates to ~64 KB; the was 1.49 GiB from 390 KB. Refused from the member table.
    record = _sre2l_record(np.random.default_rng(0), 4)
    record[5] = torch.empty(1 << 24, dtype=torch.float32)[:24].view(4, 6)
    plain = work / "plain.tar"
    torch.save(record, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            with src.open(info) as fin, dst.open(info.filename, "w", force_zip64=True) as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
    plain.unlink()


def _zero_strides(target: Path, work: Path) -> None:
    record = _sre2l_record(np.random.default_rng(0), 4)
    record[5] = torch.zeros(1, dtype=torch.float16).expand(1 << 20, 1 << 20)
    torch.save(record, target)


def _legacy_format(target: Path, work: Path) -> None:
    torch.save(_sre2l_record(np.random.default_rng(0), 4), target, _use_new_zipfile_serialization=False)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def _evil_pickle(target: Path, work: Path) -> None:
    torch.save([_Evil(work / "pwned")], target)


def _link_to_zero(target: Path, work: Path) -> None:
    os.symlink("/dev/zero", target)


def _fifo(target: Path, work: Path) -> None:
    os.mkfifo(target)


CASES: tuple[Case, ...] = (
    # Moved chunks: right checksums, wrong place.
    Case("logits chunks of two entries swapped", "moved chunks", swap_chunks("pool/logits")),
    Case("logits shards of two blocks swapped", "moved chunks", swap_chunks("pool/logits", source="sharded")),
    Case("crop chunks of two blocks swapped", "moved chunks", swap_chunks("pool/crop")),
    Case("flip chunks of two blocks swapped", "moved chunks", swap_chunks("pool/flip")),
    Case("mix_lam chunks of two blocks swapped", "moved chunks", swap_chunks("pool/mix_lam")),
    Case("digest chunks of two blocks swapped", "moved chunks", swap_chunks("pool/digest")),
    Case("every array of block 0 swapped with block 1", "moved chunks", lambda w, k: _swap_blocks(w, k)),
    Case("logits chunk from another store", "moved chunks", transplant(("pool/logits",))),
    Case(
        "block 0 from another store: every chunk of its two entries",
        "moved chunks",
        lambda w, k: _block_from_other(w, k),
    ),
    Case("whole pool from another store", "moved chunks", transplant_pool),
    Case(
        "logits directory a link to another store's",
        "moved chunks",
        link_logits_dir,
        (*STORE_VICTIMS, "pack"),
    ),
    Case("image chunk from another image set", "moved chunks", transplant_images),
    # Edited root records.
    *(
        Case(f"{section}.{field} edited", "edited records", edit_record(section, field, value))
        for section, field, value in (
            ("dataset", "mean", [0.5, 0.5, 0.5]),
            ("dataset", "std", [0.5, 0.5, 0.5]),
            ("dataset", "name", "imagenet"),
            ("dataset", "class_names", ["a", "b", "c", "d", "e"]),
            ("dataset", "images_sha256", "0" * 64),
            ("relabel", "interpolation", "nearest"),
            ("relabel", "antialias", False),
            ("relabel", "output_size", [6, 6]),
            ("relabel", "teacher", "resnet50"),
            ("relabel", "crop_scale", [0.5, 1.0]),
            ("relabel", "flip_prob", 0.0),
            ("relabel", "mix_alpha", 0.2),
            ("relabel", "seed", 7),
            ("relabel", "kernel", "torchvision.transforms.functional.resized_crop[PIL]"),
            ("codec", "temperature", 4.0),
            ("plan", "seed", 4),
            ("provenance", "created_utc", "2020-01-01T00:00:00+00:00"),
        )
    ),
    Case(
        "dataset.mean edited, its record digest recomputed",
        "edited records",
        edit_record("dataset", "mean", [0.5, 0.5, 0.5], reseal=True),
    ),
    Case(
        "provenance edited, its record digest recomputed",
        "edited records",
        edit_record("provenance", "created_utc", "2020-01-01T00:00:00+00:00", reseal=True),
    ),
    # Two writers: a live writer holds the part while the victim opens a writer.
    Case(
        "second writer on the same part",
        "two writers",
        lambda w, k: _copy_unfinished(w),
        ("writer",),
        holder=(0, 1),
    ),
    Case(
        "second writer on an overlapping part",
        "two writers",
        lambda w, k: _copy_unfinished(w),
        ("writer",),
        holder=(0, 2),
    ),
    # Guard bypasses: a pickle codec registered with zarr (the worst case), payload in every chunk.
    *(
        Case(
            f"pickle codec on {array}{'' if consolidated else ' (no consolidated metadata)'}",
            "guard bypass",
            pickle_codec(array, consolidated=consolidated),
            (*STORE_VICTIMS, "writer", "prune", "pack"),
            setup="pickle codec",
        )
        for array in ("pool/logits", "pool/committed", "pool/fidelity", "pool/digest", "images/pixels")
        for consolidated in (True, False)
    ),
    Case(
        "undeclared array with a pickle codec",
        "guard bypass",
        undeclared_array,
        (*STORE_VICTIMS, "writer"),
        setup="pickle codec",
    ),
    Case(
        "zlib codec (zarr has it, the format does not)",
        "guard bypass",
        zlib_codec,
        (*STORE_VICTIMS, "writer"),
    ),
    # Filesystem trust.
    Case(
        "logits chunk a link to a secret file",
        "filesystem",
        link_chunk_to("secret"),
        (*STORE_VICTIMS, "pack"),
    ),
    Case(
        "logits chunk a link to a FIFO",
        "filesystem",
        link_chunk_to("fifo"),
        (*STORE_VICTIMS, "pack"),
        timeout_s=30,
    ),
    Case("crop chunk is a FIFO", "filesystem", fifo_chunk, (*STORE_VICTIMS, "writer", "pack"), timeout_s=30),
    Case("consolidated node '../outside'", "filesystem", outside_node, (*STORE_VICTIMS, "writer")),
    Case("stray file and a link to a secret in the store", "filesystem", stray_files, ("verify", "pack")),
    Case("pool directory a link to another store's", "filesystem", linked_pool, (*STORE_VICTIMS, "pack")),
    Case("zip with stray members", "filesystem", zip_stray_member, ("read", "verify", "unpack")),
    Case("zip with a duplicate member", "filesystem", zip_duplicate_member, ("read", "verify", "unpack")),
    Case("zip with a symlink member", "filesystem", zip_symlink_member, ("read", "verify", "unpack")),
    # Resource amplification.
    Case(
        "zstd frame declaring 1.5 GB in a crop chunk",
        "resources",
        zstd_bomb(declared=1_500_000_000, decoded=1 << 16),
    ),
    Case(
        "zstd frame without a size, 1.5 GB of zeros",
        "resources",
        zstd_bomb(declared=None, decoded=1_500_000_000),
    ),
    Case("blosc header declaring 2 GB in a logits chunk", "resources", blosc_bomb),
    Case(
        "logits chunk a link to /dev/zero", "resources", link_chunk_to("/dev/zero"), (*STORE_VICTIMS, "pack")
    ),
    Case("sparse 3.4 GB logits chunk", "resources", oversized_chunk, (*STORE_VICTIMS, "pack")),
    Case("zip member inflating to 128 MiB", "resources", zip_bomb, ("read", "verify", "unpack")),
    Case("zip with every member deflated", "resources", zip_deflated_store, ("read", "verify", "unpack")),
    Case("40 M entries declared (format 3)", "resources", forged_entries(3), (*STORE_VICTIMS, "writer")),
    Case(
        "40 M entries declared (format 2, no digests)",
        "resources",
        forged_entries(2),
        (*STORE_VICTIMS, "writer"),
    ),
    Case("HTTP: a chunk that never comes", "resources", url("stall"), ("read",), timeout_s=120),
    Case("HTTP: a chunk of 3.4 GB (no length)", "resources", url("huge"), ("read",)),
    Case("HTTP: a chunk announcing 3.4 GB", "resources", url("announce"), ("read",)),
    Case("HTTP: connection dropped mid-chunk", "resources", url("drop"), ("read",)),
    Case("HTTP: root metadata of 3.4 GB", "resources", url("hugemeta"), ("read",)),
    Case("HTTP: nothing listening", "resources", url("refused"), ("read",)),
    # Import denial of service.
    Case("peer logits as nested shared lists", "import", peer_file(_shared_lists), ("import",)),
    Case("peer CutMix box as nested shared lists", "import", peer_file(_shared_bbox), ("import",)),
    Case(
        "deflated torch archive (64 MiB storage in 64 KB)",
        "import",
        peer_file(_deflated_archive),
        ("import",),
    ),
    Case("tensor with zero strides (2**40 elements)", "import", peer_file(_zero_strides), ("import",)),
    Case("legacy torch.save format", "import", peer_file(_legacy_format), ("import",)),
    Case("pickle that runs a command", "import", peer_file(_evil_pickle), ("import",)),
    Case("batch file a link to /dev/zero", "import", peer_file(_link_to_zero), ("import",)),
    Case("batch file a FIFO", "import", peer_file(_fifo), ("import",), timeout_s=30),
    # Fill values.
    Case("logits fill value 0, a logits chunk deleted", "fill values", fill_value("pool/logits", 0.0)),
    Case(
        "logits fill value 0, a logits chunk deleted (format 2)",
        "fill values",
        fill_value("pool/logits", 0.0, source="v2"),
    ),
    Case("crop fill value 0, a crop chunk deleted", "fill values", fill_value("pool/crop", 0)),
    Case("flip chunk deleted (fill value false is data)", "fill values", fill_value("pool/flip", False)),
    Case(
        "mix_lam fill value 0.5, a chunk deleted (format 2)",
        "fill values",
        fill_value("pool/mix_lam", 0.5, source="v2"),
    ),
    # Unbound stores: a format-3 store stripped to look like format 2.
    Case(
        "digests stripped (looks like format 2), logits swapped",
        "unbound",
        downgrade_and_swap,
        ("read(require_bound)", "verify(require_bound)"),
        limits=("read", "verify"),
    ),
)


def _swap_blocks(work: Path, kit: Kit) -> Path:
    path = _copy(kit, work)
    for array in _SMALL:
        _swap(_chunk(path, array, 0), _chunk(path, array, 1))
    for i, j in ((0, 2), (1, 3)):
        _swap(_chunk(path, "pool/logits", i), _chunk(path, "pool/logits", j))
    return path


_SMALL = (
    "pool/indices",
    "pool/crop",
    "pool/flip",
    "pool/mix_index",
    "pool/mix_lam",
    "pool/mix_box",
    "pool/fidelity",
    "pool/digest",
    "pool/committed",
)


def _block_from_other(work: Path, kit: Kit) -> Path:
    path = _copy(kit, work)
    for array in _SMALL:
        shutil.copyfile(_chunk(kit.other, array, 0), _chunk(path, array, 0))
    for i in (0, 1):
        shutil.copyfile(_chunk(kit.other, "pool/logits", i), _chunk(path, "pool/logits", i))
    return path


def _copy_unfinished(work: Path) -> Path:
    path = work / "s.zarr"
    make_store(path, plan=PLAN, layout=LAYOUT).close()
    return path


# -- the hostile server -------------------------------------------------------------------------


class HostileServer:
    """Serves the honest store at /good/, and misbehaves on one chunk (or the root) under other prefixes."""

    TARGET = "pool/logits/c/0/0/0"

    def __init__(self, store: Path) -> None:
        from aiohttp import web

        self.store = store
        self._loop = asyncio.new_event_loop()

        async def handle(request: web.Request) -> web.StreamResponse:
            mode, _, rest = request.match_info["tail"].partition("/")
            key = rest.removeprefix("s.zarr/")
            bad = key == ("zarr.json" if mode == "hugemeta" else self.TARGET)
            if mode == "good" or not bad:
                file = self.store / key
                return web.FileResponse(file) if file.is_file() else web.Response(status=404)
            response = web.StreamResponse(
                headers={"Content-Length": str(3_400_000_000)} if mode == "announce" else None
            )
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                if mode == "stall":
                    await asyncio.sleep(3600)
                await response.prepare(request)
                if mode == "drop":
                    await response.write(b"\x02\x01")
                    assert request.transport is not None
                    request.transport.close()
                    return response
                for _ in range(3400):  # 3.4 GB if nobody stops reading (announce: never all sent)
                    await response.write(bytes(1 << 20))
            return response

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # the client hangs up on purpose
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        async def cancel_handlers() -> None:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(TimeoutError, Exception):
            asyncio.run_coroutine_threadsafe(cancel_handlers(), self._loop).result(5)
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


# -- running one case in a bounded child ----------------------------------------------------------


def _register_pickle_codec() -> None:
    import numcodecs.pickles
    import zarr.registry
    from zarr.codecs.numcodecs._codecs import _NumcodecsArrayBytesCodec

    class PickleCodec(_NumcodecsArrayBytesCodec, codec_name="pickle"):
        pass

    numcodecs.pickles.ALLOW_UNSAFE_PICKLE_DECODE = True
    zarr.registry.register_codec("numcodecs.pickle", PickleCodec)


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _child(
    case: Case, victim: str, target: Any, kit: Kit, memory: int, write_fd: int, http_timeout: float | None
) -> None:
    result: dict[str, Any]
    try:
        limit = _vm_bytes() + memory
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if case.setup == "pickle codec":
            _register_pickle_codec()
        if http_timeout is not None:
            _http.READ_TIMEOUT_S = http_timeout
        out = VICTIMS[victim](target, kit)
        result = {"status": "returned", "value": out}
    except (LpldStoreError, Reported) as exc:
        result = {"status": "refused", "error": type(exc).__name__, "message": str(exc)[:2000]}
    except BaseException as exc:  # noqa: BLE001 - everything else is a crash, reported as such
        result = {
            "status": "crashed",
            "error": type(exc).__name__,
            "message": str(exc)[:500],
            "traceback": traceback.format_exc()[-2000:],
        }
    with os.fdopen(write_fd, "w") as f:
        json.dump(result, f)
    os._exit(0)


def run_one(
    case: Case, victim: str, target: Any, kit: Kit, *, memory: int, http_timeout: float | None
) -> dict[str, Any]:
    read_fd, write_fd = os.pipe()
    marker = Path(kit.root) / "work" / "pwned"
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_fd)
        _child(case, victim, target, kit, memory, write_fd, http_timeout)
    os.close(write_fd)
    deadline = start + case.timeout_s
    status, usage = 0, None
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            break
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    with os.fdopen(read_fd) as f:
        raw = f.read()
    timed_out = time.perf_counter() > deadline and not raw
    result: dict[str, Any] = json.loads(raw) if raw else {"status": "hang" if timed_out else "crashed"}
    if not raw and not timed_out:
        result["message"] = f"child died (status {status})"
    outcome = {
        "returned": "correct" if result.get("value") == kit.honest.get(victim) else "silently wrong",
        "refused": "refused",
        "crashed": "crashed",
        "hang": "hang",
    }[result["status"]]
    message = result.get("message", "")
    if outcome == "refused" and (SECRET.decode().strip() in message or not message.strip()):
        outcome = "crashed"  # a refusal must say something, and never quote what it read
        result["leak_or_empty"] = True
    if marker.exists():
        outcome = "code execution"
    return {
        "case": case.name,
        "class": case.klass,
        "victim": victim,
        "outcome": outcome,
        "error": result.get("error"),
        "message": message[:300],
        "seconds": round(elapsed, 3),
        "peak_rss_mib": round((usage.ru_maxrss if usage else 0) / 1024, 1),
        **({"traceback": result["traceback"]} if "traceback" in result else {}),
    }


@contextlib.contextmanager
def _holder(path: Path, part: tuple[int, int]) -> Iterator[None]:
    """A live writer process on ``part`` of the store at ``path`` that holds its leases."""
    cmd = [
        sys.executable,
        "-m",
        "lpldstore.testing",
        "fill",
        str(path),
        "--rank",
        str(part[0]),
        "--world",
        str(part[1]),
        "--delay",
        "60",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any((path / ".leases").glob("block-*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield
    finally:
        proc.kill()
        proc.wait()


def run_case(case: Case, kit: Kit, *, memory: int, http_timeout: float | None = None) -> list[dict[str, Any]]:
    work = kit.root / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    target = case.build(work, kit)
    runs = []
    with _holder(target, case.holder) if case.holder else contextlib.nullcontext():
        for victim in case.victims:
            runs.append(run_one(case, victim, target, kit, memory=memory, http_timeout=http_timeout))
        for victim in case.limits:
            runs.append(
                run_one(case, victim, target, kit, memory=memory, http_timeout=http_timeout) | {"limit": True}
            )
    return runs


def summarize(all_runs: list[dict[str, Any]]) -> dict[str, Any]:
    runs = [r for r in all_runs if not r.get("limit")]
    counts = {o: sum(r["outcome"] == o for r in runs) for o in OUTCOMES}
    by_class: dict[str, dict[str, int]] = {}
    for r in runs:
        by_class.setdefault(r["class"], dict.fromkeys(OUTCOMES, 0))[r["outcome"]] += 1
    return {
        "cases": len({r["case"] for r in runs}),
        "runs": len(runs),
        **counts,
        "peak_rss_mib": max((r["peak_rss_mib"] for r in runs), default=0.0),
        "slowest_run_s": max((r["seconds"] for r in runs), default=0.0),
        "by_class": by_class,
        "known_limits": [
            {k: r[k] for k in ("case", "victim", "outcome")} for r in all_runs if r.get("limit")
        ],
    }


@contextlib.contextmanager
def prepared(root: Path) -> Iterator[Kit]:
    """The honest kit and the hostile server, for the benchmark and the tests."""
    kit = make_kit(root)
    server = HostileServer(kit.store)
    kit.base_url = server.base_url
    try:
        kit.honest = honest_results(kit)
        yield kit
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None, help="run the cases whose class or name contains this")
    parser.add_argument("--memory-mib", type=int, default=1536, help="address space a child may add")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cases = [c for c in CASES if args.only is None or args.only in c.klass or args.only in c.name]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, prepared(Path(tmp)) as kit:
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        runs = []
        for case in cases:
            for run in run_case(case, kit, memory=args.memory_mib << 20):
                runs.append(run)
                flag = "" if run["outcome"] in ("refused", "correct") else "   <-- " + run["outcome"].upper()
                if run.get("limit"):
                    flag = "   (the documented limit: not counted)"
                print(
                    f"{case.klass:15s} {case.name[:55]:55s} {run['victim']:22s} {run['outcome']:8s} "
                    f"{run['seconds']:6.2f}s {run['peak_rss_mib']:7.0f} MiB{flag}"
                )
    summary = summarize(runs) | {
        "baseline_rss_mib": round(baseline, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "by_class"}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": "python benchmarks/attacks.py" + (f" --only {args.only}" if args.only else ""),
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                "memory_limit_mib": args.memory_mib,
                "summary": summary,
                "runs": runs,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
