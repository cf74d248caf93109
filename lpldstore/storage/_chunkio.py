"""Whole chunks of one array read and written in the calling thread, without zarr's event loop.

zarr-python 3.1 runs every read and write as a coroutine on its own I/O thread, and its
compressors in a thread pool: each call hands the work to another thread and waits for it. On an
idle machine that costs a fraction of a millisecond; on a loaded one the waiting thread gets the
GIL back only at the interpreter's switch interval, and a writer spent most of an entry waiting
(docs/codecs.md, "Writing and reading speed").

For an unsharded array whose chunks span every axis but the first (one entry's logits, one
block of a per-entry array), :class:`ChunkIO` encodes a chunk with the array's own codec objects
(the code zarr itself runs: the bytes on disk are identical, crc32c included, tested) and hands
it to the store's synchronous ``set_sync``; reads use ``get_sync`` and decode with the same
numcodecs decoders zarr calls. lpldstore opens every local store as a ``BoundedStore`` over
``LocalFiles`` (``lpldstore.storage._safe``), whose synchronous methods apply the same bounds,
link refusals and compression-header checks as its asynchronous ones, and atomic writes.
Everything else (sharded arrays, zip and remote stores, a zarr without synchronous store
methods) goes through zarr: :meth:`ChunkIO.of` returns None and callers keep zarr's path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import google_crc32c
import numpy as np
import numpy.typing as npt
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype

__all__ = ["ChunkIO"]


class ChunkIO:
    """Read and write whole chunks of one zarr array in the calling thread (see the module docstring).

    The array's chunks must span every axis but the first: chunk ``i`` holds rows
    ``i * rows .. (i + 1) * rows`` of the first axis (``rows`` = 1 for the logits, the block size
    for the per-entry arrays).
    """

    def __init__(self, array: zarr.Array, store: Any, prefix: str, pipeline: Any) -> None:
        self._array = array
        self._store = store
        self._prefix = prefix
        self._array_bytes = pipeline.array_bytes_codec
        self._bytes_bytes = tuple(pipeline.bytes_bytes_codecs)
        self._proto = default_buffer_prototype()
        coords = (0,) * array.ndim
        self._spec = array.metadata.get_chunk_spec(coords, array.config, self._proto)
        self._chunk_shape = tuple(array.chunks)
        self._rows = self._chunk_shape[0]
        self._fill = array.fill_value
        self._stored_dtype, self._lean = _lean_decoder(pipeline, np.dtype(array.dtype))
        self._shape = tuple(array.shape)
        self._encode_key = array.metadata.encode_chunk_key
        self._tail = (0,) * (array.ndim - 1)

    @property
    def rows(self) -> int:
        """Rows of the first axis per chunk."""
        return self._rows

    @classmethod
    def of(cls, array: zarr.Array, *, write: bool = False) -> ChunkIO | None:
        """A ChunkIO for ``array`` (to read, or also to ``write``), or None where zarr's path must be used."""
        store = array.store_path.store
        pipeline = getattr(array.async_array, "codec_pipeline", None)
        codecs = [getattr(pipeline, "array_bytes_codec", None), *getattr(pipeline, "bytes_bytes_codecs", ())]
        usable = (
            array.metadata.zarr_format == 3
            and array.shards is None
            and tuple(array.chunks[1:]) == tuple(array.shape[1:])
            and callable(getattr(store, "get_sync", None))
            and (not write or callable(getattr(store, "set_sync", None)))
            # lpldstore's BoundedStore: only over a local directory, with the same checks as zarr's path.
            and getattr(store, "sync_chunks", True)
            and pipeline is not None
            and not getattr(pipeline, "array_array_codecs", (None,))
            and all(
                callable(getattr(c, "_encode_sync", None)) and callable(getattr(c, "_decode_sync", None))
                for c in codecs
            )
        )
        if not usable:
            return None
        prefix = array.store_path.path
        return cls(array, store, f"{prefix}/" if prefix else "", pipeline)

    def _key(self, index: int) -> str:
        return self._prefix + self._encode_key((index, *self._tail))

    def _extent(self, index: int) -> int:
        """Rows of chunk ``index`` inside the array (the last chunk may stick out)."""
        return max(0, min(self._rows, self._shape[0] - index * self._rows))

    def write(self, index: int, value: npt.NDArray[Any]) -> None:
        """Write chunk ``index``: ``value`` holds its rows inside the array (those beyond get the fill value)."""
        rows = self._extent(index)
        value = np.asarray(value, dtype=self._array.dtype).reshape((rows, *self._chunk_shape[1:]))
        if rows == self._rows:
            data = np.ascontiguousarray(value)
        else:  # zarr stores an edge chunk at full size, the part outside the array as fill
            data = np.full(self._chunk_shape, self._fill, dtype=self._array.dtype)
            data[:rows] = value
        buf: Any = self._array_bytes._encode_sync(self._proto.nd_buffer.from_numpy_array(data), self._spec)
        for codec in self._bytes_bytes:
            buf = codec._encode_sync(buf, self._spec)
        self._store.set_sync(self._key(index), buf)

    def read(self, index: int) -> npt.NDArray[Any]:
        """Chunk ``index``'s rows inside the array, decoded; the fill value where it was never written.

        A damaged chunk raises what the codecs raise (crc32c: ValueError), as zarr's read does.
        """
        found = self.read_or_none(index)
        if found is None:
            return np.full((self._extent(index), *self._chunk_shape[1:]), self._fill, dtype=self._array.dtype)
        return found

    def read_or_none(self, index: int) -> npt.NDArray[Any] | None:
        """As :meth:`read`, but None where the chunk does not exist (no file: never written, or lost)."""
        rows = self._extent(index)
        buf: Any = self._store.get_sync(self._key(index), prototype=self._proto)
        if buf is None:
            return None
        if self._lean is not None:
            data = buf.to_bytes()
            for step in self._lean:
                data = step(data)
            return np.frombuffer(data, dtype=self._stored_dtype).reshape(self._chunk_shape)[:rows]
        for codec in reversed(self._bytes_bytes):
            buf = codec._decode_sync(buf, self._spec)
        decoded = np.asarray(self._array_bytes._decode_sync(buf, self._spec).as_numpy_array())
        return decoded.reshape(self._chunk_shape)[:rows]


def _crc32c_strip(data: bytes) -> bytes:
    # zarr's Crc32cCodec: the chunk's last 4 bytes are the little-endian CRC32C of the others.
    body, stored = data[:-4], data[-4:]
    computed = google_crc32c.value(body).to_bytes(4, "little")
    if computed != stored:
        raise ValueError(
            f"Stored and computed checksum do not match. Stored: {stored!r}. Computed: {computed!r}."
        )
    return body


def _lean_decoder(
    pipeline: Any, dtype: np.dtype[Any]
) -> tuple[np.dtype[Any], tuple[Callable[[bytes], bytes], ...] | None]:
    """The chunk decode as plain calls on bytes for the codecs the format writes, or None.

    zarr's codec objects wrap every step in its buffer classes (about 40 us per small chunk, more
    than the decompression); for bytes + zstd/blosc + crc32c the same numcodecs decoders are called
    directly here (tested against zarr's own reads, damage included). Anything else: None, and
    the codec objects decode.
    """
    endian = getattr(pipeline.array_bytes_codec, "endian", None)
    stored = (
        dtype
        if dtype.itemsize == 1 or endian is None
        else dtype.newbyteorder("<" if endian.value == "little" else ">")
    )
    steps: list[Callable[[bytes], bytes]] = []
    if not isinstance(pipeline.array_bytes_codec, BytesCodec):
        return stored, None
    for codec in reversed(tuple(pipeline.bytes_bytes_codecs)):
        if isinstance(codec, Crc32cCodec):
            steps.append(_crc32c_strip)
        elif isinstance(codec, ZstdCodec) and hasattr(codec, "_zstd_codec"):
            steps.append(codec._zstd_codec.decode)
        elif isinstance(codec, BloscCodec) and hasattr(codec, "_blosc_codec"):
            steps.append(codec._blosc_codec.decode)
        else:
            return stored, None
    return stored, tuple(steps)
