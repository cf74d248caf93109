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

__all__ = ["check_arrays", "compressor_names", "compressors", "create_arrays", "expected_metadata"]


def _checksummed(*codecs: BytesBytesCodec) -> list[BytesBytesCodec]:
    # crc32c last: every stored chunk carries a checksum of its encoded bytes.
    return [*codecs, Crc32cCodec()]


def compressors(array: Resolved, attrs: StoreAttrs) -> list[BytesBytesCodec]:
    """The byte codecs of an array (chosen by measurement, docs/codecs.md), crc32c last."""
    if array.decl.compression != "logits":
        return _checksummed(ZstdCodec(level=3))
    if attrs.logits_codec.entropy_coded:
        # One byte per code: zstd's entropy stage brings the bytes down to the codes' entropy.
        return _checksummed(ZstdCodec(level=9))
    return _checksummed(BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"))


def compressor_names(attrs: StoreAttrs) -> dict[str, str]:
    """The compressor (``zstd`` or ``blosc``) in front of the checksum of each array, by path."""
    return {
        path: "blosc" if isinstance(compressors(array, attrs)[0], BloscCodec) else "zstd"
        for path, array in attrs.arrays.items()
    }


def _create_nodes(group: zarr.Group, attrs: StoreAttrs) -> dict[str, zarr.Array]:
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
            compressors=compressors(array, attrs),
            dimension_names=array.decl.dimension_names,
            config={"write_empty_chunks": True},
        )
    return nodes


def create_arrays(group: zarr.Group, attrs: StoreAttrs) -> None:
    """Create every array of an empty store at full shape (no data but the entry keys)."""
    for array, node in zip(attrs.arrays.values(), _create_nodes(group, attrs).values(), strict=True):
        if array.decl.role == "key":
            node[:] = attrs.plan.kept_keys.astype(np.int32)


def expected_metadata(attrs: StoreAttrs) -> dict[str, dict[str, Any]]:
    """The metadata document of every array (by path) exactly as lpldstore writes it for ``attrs``.

    Built by creating the arrays, without data, in memory with the same calls as
    :func:`create_arrays`; a store's own metadata must equal it, field for field (fill values,
    codecs and chunk grid included): nothing about decoding is left to the store to choose.
    """
    # Building costs ~20 ms; stores of one layout share the result, per process.
    key = repr(
        [(a.path, a.shape, a.chunks, a.shards, a.dtype, repr(a.fill_value)) for a in attrs.arrays.values()]
        + [compressor_names(attrs), attrs.logits_codec.entropy_coded]
    )
    docs = _EXPECTED.get(key)
    if docs is None:
        store = MemoryStore()
        group = zarr.create_group(store, zarr_format=3)
        _create_nodes(group, attrs)
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
