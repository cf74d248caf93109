"""A store's zarr arrays, created and checked from the one declaration (``lpldstore.format.arrays``).

Arrays are created at full shape once, when the store is created, and never resized.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import zarr
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.storage import MemoryStore

from lpldstore.errors import FormatError
from lpldstore.format.arrays import Resolved
from lpldstore.format.schema import StoreAttrs

__all__ = [
    "GENERATIONS",
    "check_arrays",
    "compressor_names",
    "compressors",
    "create_arrays",
    "expected_metadata",
]

#: The compressor generations a reader accepts, newest first: what lpldstore writes now, and what
#: stores written before issue 16 hold (zstd(3) small arrays, blosc(zstd, 5, shuffle) logits). A
#: store's arrays must all be of one generation (``lpldstore.storage._checked``); its metadata is
#: pinned to that generation's, field for field.
GENERATIONS = ("current", "before-issue-16")


# blosc's block for float16 logits: a whole 128 x 1000 entry (256 KB) in one block.
_LOGITS_BLOCK = 256 * 1024


def _checksummed(*codecs: BytesBytesCodec) -> list[BytesBytesCodec]:
    # crc32c last: every stored chunk carries a checksum of its encoded bytes.
    return [*codecs, Crc32cCodec()]


def compressors(array: Resolved, attrs: StoreAttrs, generation: str = "current") -> list[BytesBytesCodec]:
    """The byte codecs of an array (chosen by measurement, docs/codecs.md), crc32c last."""
    if generation == "before-issue-16":
        if array.decl.compression != "logits":
            return _checksummed(ZstdCodec(level=3))
        if attrs.logits_codec.entropy_coded:
            return _checksummed(ZstdCodec(level=9))
        return _checksummed(BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"))
    if array.decl.compression == "small":
        # Per-entry records (indices, crops, flags): blosc-lz4 over bit-shuffled values is both
        # smaller than zstd(3) (42 vs 52 KB per 64-entry block at batch 128) and 4x faster to
        # decode (84 vs 317 us for one entry's seven block chunks), which a random entry read pays
        # in full (benchmarks/reader.py, docs/codecs.md).
        return _checksummed(BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"))
    if array.decl.compression != "logits":
        return _checksummed(ZstdCodec(level=3))
    if attrs.logits_codec.entropy_coded:
        # One byte per code: zstd's entropy stage brings the bytes down to the codes' entropy.
        return _checksummed(ZstdCodec(level=9))
    # Byte-shuffled float16 over one 256 KiB block: zstd then sees the exponent bytes together
    # (1.18x on Gaussian logits) at level 1, which encodes 5x faster than blosc's default level 5
    # with its smaller blocks (1.17x); measured by benchmarks/writer.py, docs/codecs.md.
    return _checksummed(BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", blocksize=_LOGITS_BLOCK))


def compressor_names(attrs: StoreAttrs, generation: str = "current") -> dict[str, str]:
    """The compressor (``zstd`` or ``blosc``) in front of the checksum of each array, by path."""
    return {
        path: "blosc" if isinstance(compressors(array, attrs, generation)[0], BloscCodec) else "zstd"
        for path, array in attrs.arrays.items()
    }


def _create_nodes(group: zarr.Group, attrs: StoreAttrs, generation: str = "current") -> dict[str, zarr.Array]:
    nodes = {}
    for array in attrs.arrays.values():
        parent, _, name = array.path.rpartition("/")
        nodes[array.path] = group.require_group(parent).create_array(
            name,
            shape=array.shape,
            chunks=array.chunks,
            shards=array.shards,
            dtype=array.dtype,
            fill_value=array.fill_value,
            compressors=compressors(array, attrs, generation),
            dimension_names=array.decl.dimension_names,
            config={"write_empty_chunks": True},
        )
    return nodes


def create_arrays(group: zarr.Group, attrs: StoreAttrs) -> None:
    """Create every array of an empty store at full shape (no data but the entry keys)."""
    for array, node in zip(attrs.arrays.values(), _create_nodes(group, attrs).values(), strict=True):
        if array.decl.role == "key":
            node[:] = attrs.plan.kept_keys.astype(np.int32)


def expected_metadata(attrs: StoreAttrs, generation: str = "current") -> dict[str, dict[str, Any]]:
    """The metadata document of every array (by path) exactly as lpldstore writes it for ``attrs``
    (``generation``: one of :data:`GENERATIONS`).

    Built by creating the arrays, without data, in memory with the same calls as
    :func:`create_arrays`; a store's own metadata must equal it, field for field (fill values,
    codecs and chunk grid included): nothing about decoding is left to the store to choose.
    """
    # Building costs ~20 ms; stores of one layout share the result, per process.
    key = repr(
        [(a.path, a.shape, a.chunks, a.shards, a.dtype, repr(a.fill_value)) for a in attrs.arrays.values()]
        + [compressor_names(attrs, generation), attrs.logits_codec.entropy_coded, generation]
    )
    docs = _EXPECTED.get(key)
    if docs is None:
        store = MemoryStore()
        group = zarr.create_group(store, zarr_format=3)
        _create_nodes(group, attrs, generation)
        docs = {path: json.loads(store._store_dict[f"{path}/zarr.json"].to_bytes()) for path in attrs.arrays}
        if len(_EXPECTED) >= 32:
            _EXPECTED.pop(next(iter(_EXPECTED)))
        _EXPECTED[key] = docs
    return docs


_EXPECTED: dict[str, dict[str, dict[str, Any]]] = {}


def check_arrays(group: zarr.Group, attrs: StoreAttrs, where: str) -> dict[str, zarr.Array]:
    """The store's arrays by path, after checking that each exists with the right shape and dtype."""
    arrays: dict[str, zarr.Array] = {}
    for path, expected in attrs.arrays.items():
        try:
            node = group[path]
        except KeyError:
            raise FormatError(f"{where}: array '{path}' is missing.") from None
        if not isinstance(node, zarr.Array):
            raise FormatError(f"{where}: '{path}' should be an array, found a group.")
        if node.shape != expected.shape or str(node.dtype) != expected.dtype:
            raise FormatError(
                f"{where}: array '{path}' should have shape {expected.shape} and dtype {expected.dtype}; "
                f"found {node.shape} and {node.dtype}."
            )
        arrays[path] = node
    return arrays
