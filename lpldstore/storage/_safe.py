"""Reading only a store's own bytes, and never more of them than its declaration allows.

Two layers sit between zarr and the files of a store:

- :class:`LocalFiles`, a ``LocalStore`` that opens every file with ``openat`` one path component
  at a time and ``O_NOFOLLOW``: a symbolic link anywhere under the store root, a FIFO, a device
  or a socket is refused before a byte is read (a FIFO is opened non-blocking, so it cannot
  hang), and a file larger than the caller's limit is refused from its ``fstat`` size.
- :class:`BoundedStore`, wrapped around any store (directory, zip or URL). Before the store's
  attributes are known it serves only the metadata documents; after :meth:`BoundedStore.declare`
  it serves only the keys of the declared arrays (``zarr.json`` files and chunk keys inside each
  array's chunk grid). Every read is limited to the largest encoding of that key, and before a
  chunk reaches zarr its compression header is checked against the chunk shape the declaration
  gives (zstd's frame content size, blosc's ``nbytes``), so no decoder allocates more than one
  declared chunk. Metadata documents that the guard has vetted are pinned: zarr parses exactly
  the bytes that were checked, even if a server answers a second request differently.

Errors raised here never quote the bytes read: a file linked to ``/etc/passwd`` must not leak
into a message.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import errno
import math
import os
import re
import stat
import struct
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import LocalStore, WrapperStore

from lpldstore.errors import FormatError, LpldStoreError, StoreDamagedError

__all__ = [
    "META_BYTES",
    "ROOT_META_BYTES",
    "BoundedStore",
    "ChunkRule",
    "LocalFiles",
    "describe_error",
    "read_limit",
]

#: The root ``zarr.json`` (attributes and consolidated metadata; ImageNet-21K class names are
#: about 0.5 MB) and every other metadata document are read up to these sizes.
ROOT_META_BYTES = 64 << 20
META_BYTES = 1 << 20

# The largest response a remote read may return for the key being read (set per read, so a
# hostile server cannot send gigabytes for a 2 KB chunk). Read by lpldstore.storage._http.
read_limit: contextvars.ContextVar[int] = contextvars.ContextVar("lpldstore_read_limit", default=META_BYTES)

_ZSTD_MAGIC = 0xFD2FB528
_CHUNK_KEY = re.compile(r"(.+)/c((?:/\d+)+)")


def describe_error(exc: BaseException) -> str:
    """What went wrong reading bytes, without quoting any of them.

    Third-party decoders put stored bytes in their messages (zarr's checksum error prints the
    stored CRC); only the kind of failure is kept.
    """
    if isinstance(exc, LpldStoreError):
        return str(exc)
    text = str(exc).lower()
    if "checksum" in text:
        return "CRC-32C checksum mismatch"
    if isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower():
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__}: {os.strerror(exc.errno)}"
    return type(exc).__name__


# -- local files ---------------------------------------------------------------------------------


def _key_parts(key: str) -> list[str]:
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise FormatError(f"Refusing to read {key!r}: a store key names a path inside the store only.")
    return parts


class LocalFiles(LocalStore):
    """A directory store that reads only regular files inside its root and follows no link.

    ``get_limited`` is what :class:`BoundedStore` calls: it refuses a file above ``limit`` bytes
    from its size before reading it. Writes refuse to go through a linked directory.
    """

    def _open_file(self, key: str) -> int | None:
        """A read-only descriptor of the regular file at ``key``, or None if there is none."""
        parts = _key_parts(key)
        where = f"{self.root}: '{key}'"
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return None
        try:
            for part in parts[:-1]:
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    return None
                except OSError as exc:
                    # A link opened with O_DIRECTORY | O_NOFOLLOW fails with ENOTDIR or ELOOP.
                    if exc.errno == errno.ELOOP or (
                        exc.errno == errno.ENOTDIR and stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode)
                    ):
                        raise StoreDamagedError(
                            f"{where}: '{part}' on the way is a symbolic link; a store holds only its own "
                            "regular files and directories, so nothing behind it is read."
                        ) from None
                    if exc.errno == errno.ENOTDIR:
                        return None
                    raise
                os.close(fd)
                fd = nxt
            try:
                # Non-blocking: opening a FIFO must not wait for a writer.
                file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise StoreDamagedError(
                        f"{where} is a symbolic link; a store holds only its own regular files, so it is not read."
                    ) from None
                raise
        finally:
            os.close(fd)
        mode = os.fstat(file_fd).st_mode
        if stat.S_ISDIR(mode):
            os.close(file_fd)
            return None
        if not stat.S_ISREG(mode):
            os.close(file_fd)
            raise StoreDamagedError(
                f"{where} is not a regular file (a FIFO, device or socket); a store holds only regular files, "
                "so it is not read."
            )
        return file_fd

    def read_limited(self, key: str, limit: int, byte_range: ByteRequest | None) -> bytes | None:
        fd = self._open_file(key)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if byte_range is None:
                start, end = 0, size
            elif isinstance(byte_range, RangeByteRequest):
                start, end = byte_range.start, min(byte_range.end, size)
            elif isinstance(byte_range, OffsetByteRequest):
                start, end = byte_range.offset, size
            elif isinstance(byte_range, SuffixByteRequest):
                start, end = max(0, size - byte_range.suffix), size
            else:  # pragma: no cover - zarr's byte requests are the three above
                raise TypeError(f"Unexpected byte range {byte_range!r}.")
            if byte_range is None and size > limit:
                raise StoreDamagedError(
                    f"{self.root}: '{key}' holds {size:,} bytes; its declared chunk shape allows at most "
                    f"{limit:,}. It is not read."
                )
            f.seek(start)
            data = f.read(max(0, min(end - start, limit + 1)))
        if len(data) > limit:
            raise StoreDamagedError(
                f"{self.root}: a read of '{key}' would return more than {limit:,} bytes; it is not read."
            )
        return data

    async def get(
        self, key: str, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        import asyncio

        prototype = prototype or default_buffer_prototype()
        data = await asyncio.to_thread(self.read_limited, key, read_limit.get(), byte_range)
        return None if data is None else prototype.buffer.from_bytes(data)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def exists(self, key: str) -> bool:
        fd = self._open_file(key)
        if fd is None:
            return False
        os.close(fd)
        return True

    async def getsize(self, key: str) -> int:
        fd = self._open_file(key)
        if fd is None:
            raise FileNotFoundError(key)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def _check_dirs(self, key: str) -> None:
        path = self.root
        for part in _key_parts(key)[:-1]:
            path = path / part
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                return
            if not stat.S_ISDIR(info.st_mode):
                raise StoreDamagedError(
                    f"{self.root}: '{path.relative_to(self.root)}' is not a directory of the store (a link or a "
                    "file); refusing to write through it."
                )

    async def set(self, key: str, value: Buffer) -> None:
        self._check_dirs(key)
        await super().set(key, value)

    # The same reads and writes in the calling thread (lpldstore.storage._chunkio): one chunk
    # without a hand-off to zarr's I/O thread.

    def get_sync(
        self, key: str, *, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        data = self.read_limited(key, read_limit.get(), byte_range)
        return None if data is None else (prototype or default_buffer_prototype()).buffer.from_bytes(data)

    def set_sync(self, key: str, value: Buffer) -> None:
        self._check_dirs(key)
        super().set_sync(key, value)


# -- bounds per key --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChunkRule:
    """What the chunks of one declared array may be.

    ``grid``: number of chunk files along each axis; ``decoded``: bytes of one decoded chunk (an
    inner chunk when sharded); ``compressor``: ``zstd`` or ``blosc`` (then ``crc32c``);
    ``inner``: inner chunks per shard file, or None when not sharded.
    """

    grid: tuple[int, ...]
    decoded: int
    compressor: str
    inner: int | None = None

    @property
    def encoded_limit(self) -> int:
        """The largest encoding of one chunk file: compressors never grow data by more than this."""
        one = self.decoded + (self.decoded >> 7) + 4096
        if self.inner is None:
            return one
        return self.inner * one + self.inner * 16 + 4

    @property
    def index_bytes(self) -> int:
        return 0 if self.inner is None else self.inner * 16 + 4


def _zstd_frame_checked(data: memoryview, expected: int, what: str) -> None:
    """Refuse anything but one zstd frame that declares exactly ``expected`` decoded bytes."""
    if len(data) < 6 or struct.unpack_from("<I", data, 0)[0] != _ZSTD_MAGIC:
        raise StoreDamagedError(f"{what}: not a zstd frame.")
    fhd = data[4]
    fcs_flag, single, has_checksum, dict_flag = fhd >> 6, (fhd >> 5) & 1, (fhd >> 2) & 1, fhd & 3
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    size_bytes = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if size_bytes == 0:
        raise StoreDamagedError(f"{what}: the zstd frame does not declare its decoded size.")
    if pos + size_bytes > len(data):
        raise StoreDamagedError(f"{what}: truncated zstd frame header.")
    content = int.from_bytes(data[pos : pos + size_bytes], "little") + (256 if size_bytes == 2 else 0)
    if content != expected:
        raise StoreDamagedError(
            f"{what}: the zstd frame declares {content:,} decoded bytes; the declared chunk shape holds {expected:,}."
        )
    pos += size_bytes
    # Walk the block headers to the end of the frame: one frame, nothing after it.
    while True:
        if pos + 3 > len(data):
            raise StoreDamagedError(f"{what}: truncated zstd frame.")
        header = int.from_bytes(data[pos : pos + 3], "little")
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3:
            raise StoreDamagedError(f"{what}: invalid zstd block.")
        pos += 3 + (1 if kind == 1 else size)
        if last:
            break
    pos += 4 if has_checksum else 0
    if pos != len(data):
        raise StoreDamagedError(f"{what}: {len(data) - pos:+,} bytes around the zstd frame.")


def _blosc_checked(data: memoryview, expected: int, what: str) -> None:
    """Refuse a blosc buffer whose header does not declare exactly ``expected`` decoded bytes."""
    if len(data) < 16:
        raise StoreDamagedError(f"{what}: truncated blosc header.")
    nbytes, blocksize, cbytes = struct.unpack_from("<III", data, 4)
    if nbytes != expected or cbytes != len(data) or not 0 < blocksize <= max(expected, 1):
        raise StoreDamagedError(
            f"{what}: the blosc header declares {nbytes:,} decoded bytes in {cbytes:,} (block {blocksize:,}); "
            f"the declared chunk shape holds {expected:,} in {len(data):,}."
        )


def _check_encoded(rule: ChunkRule, data: bytes, what: str) -> None:
    """Check one chunk's (or inner chunk's) encoding: compressed frame, then 4 bytes of CRC-32C."""
    view = memoryview(data)
    if len(view) < 4:
        raise StoreDamagedError(f"{what}: truncated chunk.")
    body = view[:-4]
    if rule.compressor == "zstd":
        _zstd_frame_checked(body, rule.decoded, what)
    else:
        _blosc_checked(body, rule.decoded, what)


def _check_shard(rule: ChunkRule, data: bytes, what: str) -> None:
    assert rule.inner is not None
    if len(data) < rule.index_bytes:
        raise StoreDamagedError(f"{what}: truncated shard.")
    index = memoryview(data)[len(data) - rule.index_bytes : len(data) - 4]
    body = len(data) - rule.index_bytes
    for i in range(rule.inner):
        offset, nbytes = struct.unpack_from("<QQ", index, 16 * i)
        if offset == nbytes == (1 << 64) - 1:
            continue  # an empty inner chunk
        if offset + nbytes > body:
            raise StoreDamagedError(f"{what}: the shard index points outside the shard.")
        _check_encoded(rule, data[offset : offset + nbytes], f"{what} (inner chunk {i})")


class BoundedStore(WrapperStore[Store]):
    """Serves only declared keys, each within its size bound, with vetted metadata pinned.

    ``member_sizes``: for a zip, each member's size from the central directory (checked before
    a member is read). ``remote``: errors of the transport (aiohttp, fsspec) become
    :class:`StoreDamagedError`.
    """

    def __init__(
        self,
        store: Store,
        where: str = "",
        *,
        member_sizes: Mapping[str, int] | None = None,
        remote: bool = False,
    ) -> None:
        super().__init__(store)
        self.where = where
        self.member_sizes = member_sizes
        self.remote = remote
        self._pinned: dict[str, bytes] = {}
        self._meta_keys: set[str] = {"zarr.json"}
        self._rules: dict[str, ChunkRule] | None = None

    def _with_store(self, store: Store) -> BoundedStore:
        out = BoundedStore(store, self.where, member_sizes=self.member_sizes, remote=self.remote)
        out._pinned, out._meta_keys, out._rules = dict(self._pinned), set(self._meta_keys), self._rules
        return out

    def __repr__(self) -> str:
        return f"BoundedStore({self._store!r})"

    # -- what may be read --------------------------------------------------------------------

    def allow_metadata(self, paths: Iterable[str]) -> None:
        """Allow the ``zarr.json`` of these node paths (before the arrays are declared)."""
        self._meta_keys |= {f"{p}/zarr.json" for p in paths}

    def pin(self, key: str, document: bytes) -> None:
        """Serve ``document`` for ``key`` from now on: the vetted bytes, not a second read."""
        self._pinned[key] = document

    def declare(self, rules: Mapping[str, ChunkRule]) -> None:
        """Allow the chunk keys of these arrays (by path), within their grids and bounds."""
        self._rules = dict(rules)
        self.allow_metadata(rules)

    def rule_of(self, key: str) -> tuple[str, ChunkRule] | None:
        """The array path and rule of a chunk key, or None if ``key`` is no declared chunk."""
        match = _CHUNK_KEY.fullmatch(key)
        if match is None or self._rules is None:
            return None
        path, coords = match.group(1), match.group(2)
        rule = self._rules.get(path)
        if rule is None:
            return None
        index = tuple(int(c) for c in coords.strip("/").split("/"))
        if len(index) != len(rule.grid) or any(i >= n for i, n in zip(index, rule.grid, strict=True)):
            return None
        return path, rule

    def limit(self, key: str) -> int:
        """The most bytes ``key`` may hold; FormatError if the store may not serve it at all."""
        if key in self._meta_keys:
            return ROOT_META_BYTES if key == "zarr.json" else META_BYTES
        found = self.rule_of(key)
        if found is None:
            raise FormatError(
                f"{self.where}: refusing to read '{key}': it is not a file of this store's declared arrays."
            )
        return found[1].encoded_limit

    # -- reading -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transport_errors(self, key: str, done: str, hint: str = "") -> Iterator[None]:
        """A remote store's transport failure as one :class:`StoreDamagedError`; others pass as they are."""
        try:
            yield
        except LpldStoreError:
            raise
        except Exception as exc:
            if not self.remote:
                raise
            raise StoreDamagedError(
                f"{self.where}: '{key}' could not be {done} ({describe_error(exc)}).{hint}"
            ) from exc

    async def get(
        self, key: str, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        prototype = prototype or default_buffer_prototype()
        if key in self._pinned and byte_range is None:
            return prototype.buffer.from_bytes(self._pinned[key])
        limit = self.limit(key)
        if self.member_sizes is not None and self.member_sizes.get(key, 0) > limit:
            raise StoreDamagedError(
                f"{self.where}: zip member '{key}' holds {self.member_sizes[key]:,} bytes; its declared chunk "
                f"shape allows at most {limit:,}. It is not read."
            )
        token = read_limit.set(limit)
        try:
            with self._transport_errors(
                key, "fetched", " Check the connection and the URL, or try again later."
            ):
                buf = await self._store.get(key, prototype, byte_range)
        finally:
            read_limit.reset(token)
        if buf is None:
            return None
        if len(buf) > limit:
            raise StoreDamagedError(
                f"{self.where}: '{key}' returned {len(buf):,} bytes; its declared chunk shape allows at most "
                f"{limit:,}."
            )
        found = self.rule_of(key)
        if found is not None:
            self._check_chunk(key, found[1], buf.to_bytes(), byte_range)
        return buf

    @property
    def sync_chunks(self) -> bool:
        """Whether :meth:`get_sync` and :meth:`set_sync` work: a local directory, and a zarr with
        synchronous store methods (3.1.6 on)."""
        return isinstance(self._store, LocalFiles) and callable(getattr(LocalStore, "set_sync", None))

    def get_sync(
        self, key: str, *, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """:meth:`get` in the calling thread, with the same bounds and checks (local directories only)."""
        if not self.sync_chunks:
            raise NotImplementedError(f"{self.where}: synchronous reads need a local store directory.")
        prototype = prototype or default_buffer_prototype()
        if key in self._pinned and byte_range is None:
            return prototype.buffer.from_bytes(self._pinned[key])
        limit = self.limit(key)
        assert isinstance(self._store, LocalFiles)
        data = self._store.read_limited(key, limit, byte_range)
        if data is None:
            return None
        found = self.rule_of(key)
        if found is not None:
            self._check_chunk(key, found[1], data, byte_range)
        return prototype.buffer.from_bytes(data)

    def set_sync(self, key: str, value: Buffer) -> None:
        """:meth:`set` in the calling thread (local directories only)."""
        if not self.sync_chunks:
            raise NotImplementedError(f"{self.where}: synchronous writes need a local store directory.")
        if key not in self._meta_keys:
            self.limit(key)  # writers write only declared chunks
        assert isinstance(self._store, LocalFiles)
        self._store.set_sync(key, value)
        self._pinned.pop(key, None)

    def _check_chunk(self, key: str, rule: ChunkRule, data: bytes, byte_range: ByteRequest | None) -> None:
        what = f"{self.where}: chunk '{key}'"
        if rule.inner is None:
            _check_encoded(rule, data, what)
        elif byte_range is None:
            _check_shard(rule, data, what)
        elif isinstance(byte_range, SuffixByteRequest) and byte_range.suffix == rule.index_bytes:
            pass  # the shard index: checksummed by zarr, bounds checked when its chunks are read
        elif isinstance(byte_range, RangeByteRequest):
            _check_encoded(rule, data, f"{what} bytes {byte_range.start}..{byte_range.end}")
        else:
            raise StoreDamagedError(f"{what}: unexpected partial read {byte_range!r}.")

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)

    def allowed(self, key: str) -> bool:
        """Whether ``key`` is one of the store's own files (metadata or a declared chunk)."""
        try:
            self.limit(key)
        except FormatError:
            return False
        return True

    async def list(self) -> AsyncGenerator[str, None]:
        async for key in self._store.list():
            if self.allowed(key):
                yield key

    async def list_prefix(self, prefix: str) -> AsyncGenerator[str, None]:
        async for key in self._store.list_prefix(prefix):
            if self.allowed(key):
                yield key

    async def getsize(self, key: str) -> int:
        self.limit(key)
        if self.member_sizes is not None and key in self.member_sizes:
            return self.member_sizes[key]
        return await self._store.getsize(key)

    async def exists(self, key: str) -> bool:
        if key in self._pinned:
            return True
        self.limit(key)
        with self._transport_errors(key, "checked"):
            return await self._store.exists(key)

    async def set(self, key: str, value: Buffer) -> None:
        if key not in self._meta_keys:
            self.limit(key)  # writers write only declared chunks
        await self._store.set(key, value)
        self._pinned.pop(key, None)


def chunk_rules(arrays: Mapping[str, Any], compressor_of: Mapping[str, str]) -> dict[str, ChunkRule]:
    """The :class:`ChunkRule` of each resolved array (``lpldstore.format.arrays.Resolved``) by path."""
    import numpy as np

    rules: dict[str, ChunkRule] = {}
    for path, array in arrays.items():
        outer = array.shards or array.chunks
        grid = tuple(-(-s // c) for s, c in zip(array.shape, outer, strict=True))
        decoded = math.prod(array.chunks) * np.dtype(array.dtype).itemsize
        inner = None if array.shards is None else math.prod(array.shards) // math.prod(array.chunks)
        rules[path] = ChunkRule(grid=grid, decoded=decoded, compressor=compressor_of[path], inner=inner)
    return rules


def store_path_of(store: Store) -> Path | None:
    """The directory of a local store (None for zips and URLs)."""
    inner = store._store if isinstance(store, WrapperStore) else store
    return Path(inner.root) if isinstance(inner, LocalStore) else None
