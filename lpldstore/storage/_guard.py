"""Defences against untrusted and damaged stores, applied before zarr touches anything.

A store is an artifact downloaded from strangers. zarr resolves a codec name in an array's
metadata through a registry that installed packages extend by entry points, so the metadata of a
store decides which code decodes its chunks. This module reads the raw JSON metadata itself and
refuses, before any chunk is read, every array whose codecs, data type or chunk grid are not the
plain numeric ones that the format allows (:data:`ALLOWED_CODECS`, :data:`ALLOWED_DTYPES`). It
also refuses zip members that would name a path outside the store, and turns the exceptions that
third-party decoders raise on damaged bytes into :class:`~lpldstore.errors.StoreDamagedError`.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, TypeGuard

import numpy as np
import numpy.typing as npt
import zarr
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from lpldstore.errors import FormatError, LpldStoreError, NotAStoreError, StoreDamagedError
from lpldstore.format.arrays import ALL_PATHS
from lpldstore.storage._safe import describe_error

# Every codec that the format writes; anything else (numcodecs.pickle, vlen codecs, codecs
# that packages register by entry point) is refused by name before zarr resolves it.
ALLOWED_CODECS = frozenset({"bytes", "zstd", "blosc", "crc32c", "sharding_indexed"})
# Fixed-width numeric types only: no object, string or variable-length types.
ALLOWED_DTYPES = frozenset(
    {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
    | {"float16", "float32", "float64"}
)
# One decoded chunk may hold at most this many elements (a forged chunk shape must not make the
# reader allocate without bound). The largest real chunk, ImageNet-21K logits of a batch of 1024,
# is 22 M elements; 4 MiB image chunks are 4 M.
MAX_CHUNK_ELEMENTS = 1 << 28

# What third-party decoders (blosc, zstd, the sharding codec, zipfile) raise on damaged bytes.
READ_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    OSError,
    RuntimeError,
    TypeError,
    IndexError,
    KeyError,
    EOFError,
    struct.error,
    zlib.error,
    zipfile.BadZipFile,
    OverflowError,
    MemoryError,
)


def _read_json(store: Store, key: str, where: str) -> dict[str, Any] | None:
    """The JSON document at ``key``, or None if the key does not exist."""
    try:
        sync(store._ensure_open())  # a ZipStore opens its file lazily, on zarr's first request
        buf = sync(store.get(key, prototype=default_buffer_prototype()))
    except READ_ERRORS as exc:
        raise StoreDamagedError(f"{where}: '{key}' could not be read ({describe_error(exc)}).") from exc
    if buf is None:
        return None
    try:
        doc = json.loads(buf.to_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # The parser's message quotes no content, only where it stopped.
        reason = f"at byte {exc.pos}" if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise FormatError(
            f"{where}: '{key}' is not valid JSON ({reason}). The metadata is damaged; restore the store from "
            "its source."
        ) from None
    if not isinstance(doc, dict):
        raise FormatError(f"{where}: '{key}' must hold a JSON object. Got {type(doc).__name__} instead.")
    return doc


def _codec_names(codecs: Any, array: str, where: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if not isinstance(codecs, list) or not codecs:
        raise FormatError(f"{where}: array '{array}' must list its codecs. Got {codecs!r} instead.")
    for codec in codecs:
        if not isinstance(codec, dict) or not isinstance(codec.get("name"), str):
            raise FormatError(f"{where}: array '{array}' has a malformed codec entry {codec!r}.")
        config = codec.get("configuration", {})
        if not isinstance(config, dict):
            raise FormatError(
                f"{where}: array '{array}' codec {codec['name']!r} has a malformed configuration."
            )
        yield codec["name"], config


def _check_codecs(codecs: Any, array: str, where: str, *, nested: bool = False) -> None:
    names: list[str] = []
    for name, config in _codec_names(codecs, array, where):
        if name not in ALLOWED_CODECS:
            raise FormatError(
                f"{where}: array '{array}' declares codec {name!r}; the lpldstore format allows only "
                f"{sorted(ALLOWED_CODECS)}. The store was not written by lpldstore or was tampered with; "
                "it is refused before any of its data is decoded."
            )
        if name == "sharding_indexed":
            if nested:
                raise FormatError(f"{where}: array '{array}' nests one shard inside another.")
            _check_codecs(config.get("codecs"), array, where, nested=True)
            _check_codecs(config.get("index_codecs"), array, where, nested=True)
        names.append(name)
    # Every stored chunk carries a checksum: without one, damage would read as data.
    if names[-1] not in ("crc32c", "sharding_indexed"):
        raise FormatError(
            f"{where}: array '{array}' must end its codecs with crc32c (every chunk is checksummed). "
            f"Got {names} instead."
        )


def _positive_ints(value: Any) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    )


def check_array_metadata(meta: Any, array: str, where: str) -> None:
    """Refuse array metadata that is not a plain numeric, checksummed array of the format."""
    if not isinstance(meta, dict) or meta.get("node_type") != "array":
        raise FormatError(f"{where}: '{array}' should be an array; its metadata says otherwise.")
    if meta.get("zarr_format") != 3:
        raise FormatError(f"{where}: array '{array}' is not Zarr format 3.")
    dtype = meta.get("data_type")
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise FormatError(
            f"{where}: array '{array}' has data type {dtype!r}; only fixed-width numeric types "
            f"{sorted(ALLOWED_DTYPES)} are allowed."
        )
    shape = meta.get("shape")
    grid = meta.get("chunk_grid")
    chunk_shape = (
        grid.get("configuration", {}).get("chunk_shape")
        if isinstance(grid, dict)
        and grid.get("name") == "regular"
        and isinstance(grid.get("configuration"), dict)
        else None
    )
    if not _positive_ints(shape) or not _positive_ints(chunk_shape) or len(chunk_shape) != len(shape):
        raise FormatError(
            f"{where}: array '{array}' needs a shape and a regular chunk grid of the same rank. "
            f"Got shape {shape!r} and chunk grid {grid!r}."
        )
    chunk_elems = math.prod(chunk_shape)
    codecs = meta.get("codecs")
    inner = None
    if (
        isinstance(codecs, list)
        and codecs
        and isinstance(codecs[0], dict)
        and codecs[0].get("name") == "sharding_indexed"
    ):
        config = codecs[0].get("configuration")
        inner = config.get("chunk_shape") if isinstance(config, dict) else None
        if not _positive_ints(inner) or len(inner) != len(shape):
            raise FormatError(f"{where}: array '{array}' has a malformed shard chunk shape {inner!r}.")
        chunk_elems = math.prod(inner)
    if 0 in chunk_shape or (inner is not None and 0 in inner) or chunk_elems > MAX_CHUNK_ELEMENTS:
        raise FormatError(
            f"{where}: array '{array}' has chunks of {chunk_shape} (inner {inner}); expected non-empty "
            f"chunks of at most {MAX_CHUNK_ELEMENTS} elements."
        )
    _check_codecs(codecs, array, where)
    if meta.get("storage_transformers") not in (None, []):
        raise FormatError(
            f"{where}: array '{array}' declares storage transformers, which the format never uses."
        )
    key_encoding = meta.get("chunk_key_encoding")
    if not isinstance(key_encoding, dict) or key_encoding.get("name") not in ("default", "v2"):
        raise FormatError(f"{where}: array '{array}' has an unknown chunk key encoding {key_encoding!r}.")


_GROUP_DOC = {"attributes": {}, "zarr_format": 3, "node_type": "group"}
_EMPTY_CONSOLIDATED = {"kind": "inline", "must_understand": False, "metadata": {}}


def read_root(store: Store, where: str) -> dict[str, Any]:
    """The root ``zarr.json`` as checked JSON: a Zarr v3 group with an attributes object.

    Raises :class:`NotAStoreError` when there is none or it is not a Zarr v3 group.
    """
    root = _read_json(store, "zarr.json", where)
    if root is None:
        raise NotAStoreError(
            f"{where} holds no Zarr v3 group (no zarr.json), so it is not an lpldstore store."
        )
    if root.get("zarr_format") != 3 or root.get("node_type") != "group":
        raise NotAStoreError(
            f"{where}: the root zarr.json is not a Zarr v3 group (zarr_format={root.get('zarr_format')!r}, "
            f"node_type={root.get('node_type')!r}), so it is not an lpldstore store."
        )
    if not isinstance(root.get("attributes", {}), dict):
        raise FormatError(f"{where}: the root attributes must be a JSON object.")
    return root


def _differences(got: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(got) | set(expected))
    return [k for k in keys if k not in got or k not in expected or got[k] != expected[k]]


def check_group_doc(doc: Any, path: str, where: str) -> None:
    """Refuse a group node (``images``, ``pool``) other than an empty Zarr v3 group."""
    if not isinstance(doc, dict):
        raise FormatError(f"{where}: the metadata of group '{path}' is malformed.")
    consolidated = doc.get("consolidated_metadata")
    if consolidated is not None and consolidated != _EMPTY_CONSOLIDATED:
        raise FormatError(f"{where}: group '{path}' carries consolidated metadata of its own.")
    plain = {k: v for k, v in doc.items() if k != "consolidated_metadata"}
    if plain != _GROUP_DOC:
        raise FormatError(
            f"{where}: group '{path}' should be a plain Zarr v3 group; its fields {_differences(plain, _GROUP_DOC)} "
            "differ."
        )


def check_declared_array(doc: Any, path: str, expected: Mapping[str, Any], version: int, where: str) -> None:
    """The allow-list checks, then: ``doc`` must equal what lpldstore writes for this array, field for field.

    Fill values, codecs, chunk grid and data type are pinned by the declaration; a store's own
    metadata never chooses them.
    """
    check_array_metadata(doc, path, where)
    fields = _differences(doc, expected)
    if fields:
        shown = ", ".join(
            f"{k}={doc.get(k, '(absent)')!r:.80} (expected {expected.get(k, '(absent)')!r:.80})"
            for k in fields[:3]
        )
        raise FormatError(
            f"{where}: array '{path}' does not have the metadata that format version {version} declares for it: "
            f"{shown}. The store was altered or not written by lpldstore; it is refused before any of its data is "
            "read."
        )


def check_nodes(
    store: Store,
    root: Mapping[str, Any],
    expected: Mapping[str, Mapping[str, Any]],
    version: int,
    where: str,
) -> dict[str, bytes]:
    """Check every node's metadata against the declaration; returns the vetted documents to pin.

    ``expected`` maps each array this store must hold to its metadata document
    (:func:`lpldstore.storage._arrays.expected_metadata`). With consolidated metadata (every store
    lpldstore writes) the nodes it lists must be exactly the declared ones: a node it adds (an
    undeclared array, a path such as ``../outside``) is refused. Without it, each declared node's
    own ``zarr.json`` is read, vetted and pinned, so that zarr parses exactly what was checked.
    """
    groups = {p.rpartition("/")[0] for p in expected}
    consolidated = root.get("consolidated_metadata")
    if consolidated is not None:
        nodes = consolidated.get("metadata") if isinstance(consolidated, dict) else None
        if not isinstance(nodes, dict) or set(consolidated) != {"kind", "must_understand", "metadata"}:
            raise FormatError(f"{where}: the consolidated metadata in zarr.json is malformed.")
        undeclared = sorted(set(nodes) - set(expected) - groups)
        if undeclared:
            raise FormatError(
                f"{where}: the consolidated metadata lists node(s) {[u[:80] for u in undeclared[:5]]} that format "
                f"version {version} does not declare for this store. Only the store's own nodes are read."
            )
        for path in sorted(groups):
            if path not in nodes:
                raise FormatError(f"{where}: group '{path}' is missing from the consolidated metadata.")
            check_group_doc(nodes[path], path, where)
        for path, meta in nodes.items():
            if path in expected:
                check_declared_array(meta, path, expected[path], version, where)
        return {}
    pinned: dict[str, bytes] = {}
    # ALL_PATHS, in declaration order: the arrays of every version, as the guard has always vetted.
    for path in (*sorted(groups), *(p for p in ALL_PATHS if p in expected)):
        key = f"{path}/zarr.json"
        meta = _read_json(store, key, where)
        if meta is None:
            continue  # a missing node: check_arrays names it
        if path in groups:
            check_group_doc(meta, path, where)
        else:
            check_declared_array(meta, path, expected[path], version, where)
        pinned[key] = json.dumps(meta).encode()
    return pinned


def _without_consolidated(doc: Any) -> Any:
    # A group's consolidated copy carries an empty consolidated_metadata of its own.
    return {k: v for k, v in doc.items() if k != "consolidated_metadata"} if isinstance(doc, dict) else doc


def stale_array_metadata(store: Store, where: str, required: Iterable[str]) -> list[tuple[str, str]]:
    """(array, message) for every array whose own ``zarr.json`` disagrees with the consolidated copy.

    ``required`` names the arrays that this store must hold (from its attributes).

    Readers use the consolidated copy, so an edited or damaged per-array ``zarr.json`` is invisible
    to them but breaks any tool that reads arrays one by one; ``verify`` reports it.
    """
    root = _read_json(store, "zarr.json", where) or {}
    consolidated = root.get("consolidated_metadata")
    if not isinstance(consolidated, dict) or not isinstance(consolidated.get("metadata"), dict):
        return []
    found: list[tuple[str, str]] = []
    # Every node the consolidated copy names and every one the store requires, so that a node
    # dropped from both is reported too.
    for path in sorted({"images", "pool", *required, *consolidated["metadata"]}):
        expected = consolidated["metadata"].get(path)
        try:
            own = _read_json(store, f"{path}/zarr.json", where)
        except LpldStoreError as exc:
            found.append((path, str(exc)))
            continue
        if own is None:
            found.append((path, "its zarr.json is missing"))
        elif _without_consolidated(own) != _without_consolidated(expected):
            found.append((path, "its zarr.json differs from the consolidated metadata in the root zarr.json"))
    return found


def check_zip_infos(
    infos: Iterable[zipfile.ZipInfo], where: str, archive_bytes: int | None
) -> dict[str, int]:
    """Check the members of a zipped store; returns each file member's size by name.

    Refused as a whole: members naming absolute paths, parent directories or drive letters (a
    tool that extracts would write outside its target), duplicate names (zip readers disagree on
    which one wins), links, and members that are compressed or whose sizes do not add up (a
    packed store is ``ZIP_STORED``: a deflated member could inflate to any size).
    """
    sizes: dict[str, int] = {}
    total = 0
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise FormatError(
                f"{where}: zip member {name!r} names a path outside the store (absolute or with '..'). "
                "A packed store holds only relative paths; this archive is refused."
            )
        if info.is_dir():
            continue
        if name in sizes:
            raise FormatError(f"{where}: zip member {name!r} appears twice; this archive is refused.")
        if (info.external_attr >> 16) & 0o170000 not in (0, 0o100000):
            raise FormatError(
                f"{where}: zip member {name!r} is a link or special file; this archive is refused."
            )
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise FormatError(
                f"{where}: zip member {name!r} is compressed ({info.compress_size:,} bytes for {info.file_size:,}); "
                "a packed store stores its members as they are (chunks are compressed already). Refused, so that "
                "no member can inflate beyond its size in the archive."
            )
        sizes[name] = info.file_size
        total += info.file_size
    if archive_bytes is not None and total > archive_bytes:
        raise FormatError(
            f"{where}: the zip's members claim {total:,} bytes, more than the {archive_bytes:,} bytes of the archive."
        )
    return sizes


def check_zip_members(path: Path) -> dict[str, int]:
    """:func:`check_zip_infos` of the zip file at ``path``; a damaged zip is StoreDamagedError."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise StoreDamagedError(
            f"{path} is not a readable zip file ({describe_error(exc)}); it is truncated or damaged. Download or "
            "pack it again."
        ) from exc
    return check_zip_infos(infos, str(path), path.stat().st_size)


def _chunk_exists(array: zarr.Array, coords: tuple[int, ...]) -> bool:
    key = array.metadata.encode_chunk_key(coords)
    prefix = array.store_path.path
    return bool(sync(array.store_path.store.exists(f"{prefix}/{key}" if prefix else key)))


def check_chunks_present(
    where: str,
    array: zarr.Array,
    positions: npt.NDArray[np.int64],
    committed: npt.NDArray[np.bool_],
    keys: Any,
) -> None:
    """Refuse committed entries whose block chunk of ``array`` is missing.

    For the arrays whose fill value is valid data (``fill_is_data`` in the declaration: a flip
    flag, a cutout colour), a missing chunk would read as data. Writers always write the chunk
    (write_empty_chunks), so its absence under a committed entry is damage.
    """
    block = array.chunks[0]
    seen: set[int] = set()
    for row, pos in enumerate(np.asarray(positions).tolist()):
        number = pos // block
        if not committed[row] or number in seen:
            continue
        seen.add(number)
        if missing_block_chunks(array, number):
            epoch, batch = (int(v) for v in keys[row])
            raise StoreDamagedError(
                f"{where}: entry (epoch={epoch}, batch={batch}): {array.path} is missing its chunk (block {number}). "
                "The stored bytes are damaged or missing; run `lpldstore verify` for a full report."
            )


def missing_block_chunks(array: zarr.Array, number: int) -> bool:
    """Whether block ``number`` of a per-entry array has no chunk file."""
    return not _chunk_exists(array, (number,) + (0,) * (array.ndim - 1))


def describe(keys: npt.NDArray[np.int64]) -> str:
    """'entry (epoch=e, batch=b)' or 'entries (epoch=e, batch=b) ... (n entries)' for error messages."""
    rows = np.asarray(keys).reshape(-1, 2).tolist()
    if len(rows) == 1:
        return f"entry (epoch={rows[0][0]}, batch={rows[0][1]})"
    shown = ", ".join(f"(epoch={e}, batch={b})" for e, b in rows[:4])
    return f"entries {shown}{', ...' if len(rows) > 4 else ''} ({len(rows)} entries)"


def check_all_chunks_present(where: str, array: zarr.Array, what: str) -> None:
    """Refuse an array with a missing chunk (used for the images, whose fill value 0 is valid data)."""
    for number in range(array.cdata_shape[0]):
        if not _chunk_exists(array, (number,) + (0,) * (array.ndim - 1)):
            raise StoreDamagedError(
                f"{where}: {what} are missing chunk {number} of {array.cdata_shape[0]}. The stored bytes are "
                "damaged or missing; run `lpldstore verify` for a full report."
            )
