"""Turning a user's store location (directory, zip file or URL) into a zarr store."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import zarr
from zarr.abc.store import Store
from zarr.storage import FsspecStore, ZipStore

from lpldstore.errors import FormatError, LpldStoreError, NotAStoreError, StoreDamagedError
from lpldstore.storage._backends import check_url_backend
from lpldstore.storage._guard import READ_ERRORS, check_zip_infos, check_zip_members
from lpldstore.storage._safe import BoundedStore, LocalFiles, describe_error

StoreLike = str | os.PathLike[str]


def is_url(source: StoreLike) -> bool:
    return isinstance(source, str) and "://" in source


def open_zarr_store(
    source: StoreLike, *, read_only: bool = True, storage_options: Mapping[str, Any] | None = None
) -> BoundedStore:
    """A zarr store over ``source`` (a store directory, a ``.zip`` of one, or an fsspec URL).

    Always a :class:`~lpldstore.storage._safe.BoundedStore`: until the guard declares the
    store's arrays it serves only the root metadata.
    """
    where = str(source)
    if is_url(source):
        check_url_backend(str(source))  # a missing s3fs / huggingface_hub named, not a bare ImportError
        if not read_only:
            raise NotAStoreError(f"{source} is a URL; stores are written only in a local directory.")
        return BoundedStore(_remote_store(str(source), dict(storage_options or {})), where, remote=True)
    path = Path(source)
    if path.is_dir():
        return BoundedStore(LocalFiles(path, read_only=read_only), str(path))
    if path.is_file() and path.suffix == ".zip":
        if not read_only:
            raise NotAStoreError(f"{path} is a zip file; zipped stores are read-only. Unpack it to write.")
        # Damaged zips, members outside the store and compressed members are refused first.
        sizes = check_zip_members(path)
        return BoundedStore(ZipStore(path, mode="r"), str(path), member_sizes=sizes)
    if path.exists():
        raise NotAStoreError(
            f"Expected a store directory or a .zip of one at {path}. Got a {'file' if path.is_file() else 'special file'}."
        )
    raise NotAStoreError(f"No store at {path}: the path does not exist.")


@contextlib.contextmanager
def _quiet_consolidated() -> Iterator[None]:
    # zarr warns on every use of v3 consolidated metadata that it is not yet in the spec; we rely
    # on it knowingly (one request to open a remote store) and users cannot act on the warning.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        yield


def consolidate(store: Store) -> None:
    """Write consolidated metadata into the root ``zarr.json``."""
    with _quiet_consolidated():
        zarr.consolidate_metadata(store, zarr_format=3)


def open_root(store: Store, where: str, *, mode: str = "r") -> zarr.Group:
    """The root group of a store, with consolidated metadata when there is some."""
    try:
        with _quiet_consolidated():
            return zarr.open_group(store, mode=mode, zarr_format=3)  # type: ignore[arg-type]
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
        raise NotAStoreError(
            f"{where} holds no Zarr v3 group, so it is not an lpldstore store ({exc})."
        ) from exc
    except READ_ERRORS as exc:  # metadata that zarr itself cannot parse
        raise FormatError(
            f"{where}: zarr could not parse the store's metadata ({type(exc).__name__}: {exc})."
        ) from exc


# In-memory cache of a remote store's chunks, per process: a training run reads the same small
# arrays every epoch and the pool again and again.
REMOTE_CACHE_BYTES = 256 << 20


def _remote_store(url: str, storage_options: dict[str, Any]) -> Store:
    """A read-only remote store: a ``.zip`` of a store, or a store directory, through fsspec.

    A zip is read member by member with HTTP Range requests (``zip::URL``; fsspec's HTTP file
    keeps a read-ahead block in memory); a directory is one GET per chunk. Either way zarr's LRU
    ``CacheStore`` keeps what was read in memory, per process, up to ``REMOTE_CACHE_BYTES``.
    """
    from zarr.experimental.cache_store import CacheStore
    from zarr.storage import MemoryStore

    protocol = url.partition("://")[0]
    if protocol in ("http", "https"):
        from lpldstore.storage._http import http_options

        storage_options = http_options(storage_options)
    try:
        if url.split("?", 1)[0].endswith(".zip") and "::" not in url:
            with warnings.catch_warnings():
                # zarr warns that the zip file system is synchronous; it wraps it, which is fine for reads.
                warnings.filterwarnings("ignore", message=".*was not created with `asynchronous=True`")
                remote = FsspecStore.from_url(
                    f"zip::{url}", read_only=True, storage_options={protocol: storage_options}
                )
            fs = getattr(remote.fs, "sync_fs", remote.fs)
            zf = getattr(fs, "zip", None)
            if zf is not None:  # compressed, duplicate or escaping members: refused before any is read
                check_zip_infos(zf.infolist(), url, None)
        else:
            remote = FsspecStore.from_url(url, read_only=True, storage_options=storage_options)
    except LpldStoreError:
        raise
    except FileNotFoundError as exc:
        raise NotAStoreError(f"No store at {url}: {describe_error(exc)}.") from exc
    except Exception as exc:  # the transport's own errors (aiohttp, fsspec): one library error
        raise StoreDamagedError(
            f"{url} could not be opened ({describe_error(exc)}). Check the URL and the connection."
        ) from exc
    return CacheStore(remote, cache_store=MemoryStore(), max_size=REMOTE_CACHE_BYTES)
