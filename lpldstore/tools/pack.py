"""One-file artifacts: ``pack`` a store into a zip with its SHA-256 beside it, ``unpack`` it back.

The zip is laid out for reading entry by entry, locally or over HTTP Range requests:

- every member ``ZIP_STORED``: chunks are compressed already, and a stored member is read by one
  ranged read, where a deflated one would have to be inflated from its start;
- the store root is the zip root, the root ``zarr.json`` (attributes and consolidated metadata:
  opening the store is one read) first, then the other metadata, then the chunks in path order,
  so the pool's small arrays sit together and each entry's logits are one member;
- ``OUT.zip.sha256`` holds ``<hex digest>  <zip name>`` (the ``sha256sum`` format), checked by
  ``lpldstore verify`` and by ``unpack``.

Both commands write under a temporary name and rename at the end: an interrupted pack or unpack
leaves no zip (or directory) at the target, only a hidden ``.*.partial-*`` file to delete.

Only the store's own files are packed: the metadata documents of its declared nodes and the
chunks of its declared arrays, each a regular file inside the store (a symbolic link or special
file there is refused; writers' leases and stray files are left out). ``unpack`` checks every
member (stored, of its declared size, the sizes adding up to the archive) before it writes a
byte, and never writes more than a member's declared size.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import uuid
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from lpldstore.errors import ArtifactError, FormatError, StoreExistsError
from lpldstore.storage._guard import check_zip_infos
from lpldstore.storage.reader import LabelStore, open_store

__all__ = ["checksum_path", "check_zip_checksum", "pack_store", "sha256_file", "unpack_store"]

_BLOCK = 1 << 20


def checksum_path(zip_path: str | os.PathLike[str]) -> Path:
    """Where the SHA-256 of a packed store lives: ``<zip>.sha256``."""
    path = Path(zip_path)
    return path.with_name(path.name + ".sha256")


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _members(store: LabelStore, root: Path) -> list[str]:
    """The store's own files (keys relative to ``root``), root metadata first, then metadata, then chunks.

    Enumerated from the declaration, not from the directory: a stray or linked file is never packed.
    """
    groups = {f"{p.rpartition('/')[0]}/zarr.json" for p in store.attrs.arrays}
    keys = ["zarr.json", *sorted(groups | {f"{p}/zarr.json" for p in store.attrs.arrays})]
    bounded = store.zarr_store
    chunks = []
    for path in store.attrs.arrays:
        folder = root / path / "c"
        for dirpath, dirs, files in os.walk(folder, followlinks=False):
            for name in [*files, *(d for d in dirs if os.path.islink(os.path.join(dirpath, d)))]:
                key = (Path(dirpath) / name).relative_to(root).as_posix()
                if bounded.allowed(key):  # type: ignore[attr-defined]
                    chunks.append(key)
    for key in [*keys, *chunks]:
        info = os.lstat(root / key)
        if not stat.S_ISREG(info.st_mode):
            raise ArtifactError(
                f"{root}: '{key}' is {'a symbolic link' if stat.S_ISLNK(info.st_mode) else 'not a regular file'}; a "
                "store holds only its own regular files. Nothing was packed; replace it with the real file."
            )
        if info.st_size > bounded.limit(key):  # type: ignore[attr-defined]
            raise ArtifactError(
                f"{root}: '{key}' holds {info.st_size:,} bytes, more than its declared chunk shape allows "
                f"({bounded.limit(key):,}); the store is damaged. Nothing was packed."  # type: ignore[attr-defined]
            )
    return [*keys, *sorted(chunks)]


def pack_store(store: str | os.PathLike[str], out: str | os.PathLike[str], *, progress: bool = False) -> str:
    """Pack a complete store directory into ``out`` (a ``.zip``) and write ``out.sha256``; returns the digest.

    ``progress`` shows a bar of the files packed on stderr.
    """
    root, target = Path(store), Path(out)
    if target.suffix != ".zip":
        raise ArtifactError(f"Expected an output name ending in .zip. Got {target.name!r} instead.")
    # A checksum without its zip is what a pack killed between its two renames leaves; it
    # describes nothing, so it is replaced rather than blocking the re-run.
    if target.exists():
        raise StoreExistsError(f"{target} already exists. Choose another output name or remove it.")
    if not root.is_dir():
        raise ArtifactError(
            f"Expected a store directory to pack at {root}. Got {'a file' if root.exists() else 'nothing'}."
        )
    with open_store(root) as opened:  # refuses anything that is not a store
        if not opened.is_complete:
            left = int((~opened.committed()).sum())
            raise ArtifactError(
                f"{root} has {left} uncommitted entries; a zip is read-only, so it could never be finished. "
                "Finish the store (StoreWriter.open(...).todo()) before packing it."
            )
        members = _members(opened, root)
    tag = uuid.uuid4().hex[:8]
    partial = target.with_name(f".{target.name}.partial-{tag}")
    partial_sum = target.with_name(f".{target.name}.sha256.partial-{tag}")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key in tqdm(members, desc="pack", unit="file", disable=not progress):
                zf.write(root / key, key)
        digest = sha256_file(partial)
        partial_sum.write_text(f"{digest}  {target.name}\n")
        os.replace(partial_sum, checksum_path(target))
        # The zip appears last: a zip at `out` always has its checksum beside it.
        os.replace(partial, target)
    except BaseException:
        for path in (partial, partial_sum):
            path.unlink(missing_ok=True)
        raise
    return digest


def check_zip_checksum(zip_path: str | os.PathLike[str]) -> str | None:
    """None if ``zip_path`` matches the digest in its ``.sha256`` file, else what is wrong."""
    sums = checksum_path(zip_path)
    if not sums.is_file():
        return f"no checksum file {sums.name} beside the zip (pack writes one)"
    fields = sums.read_text().split()
    if not fields or len(fields[0]) != 64:
        return f"{sums.name} does not hold a SHA-256 digest"
    got = sha256_file(zip_path)
    if got != fields[0].lower():
        return f"SHA-256 of the zip is {got}, but {sums.name} says {fields[0]}: the file is damaged or was changed"
    return None


def _copy_exactly(src: Any, dst: Any, size: int, what: str) -> None:
    """Copy ``size`` bytes, refusing a member that holds more or fewer than its declared size."""
    left = size
    while left:
        block = src.read(min(_BLOCK, left))
        if not block:
            raise ArtifactError(f"{what} is shorter than its declared {size:,} bytes. Nothing was unpacked.")
        dst.write(block)
        left -= len(block)
    if src.read(1):
        raise ArtifactError(f"{what} holds more than its declared {size:,} bytes. Nothing was unpacked.")


def _safe_name(name: str) -> bool:
    path = PurePosixPath(name)
    return (
        bool(name)
        and not path.is_absolute()
        and ".." not in path.parts
        and "\\" not in name
        and ":" not in name
    )


def unpack_store(
    zip_path: str | os.PathLike[str], out: str | os.PathLike[str], *, progress: bool = False
) -> int:
    """Unpack a packed store into the new directory ``out``; returns the number of files.

    Refuses members with absolute paths, ``..``, backslashes or drive letters, and links; checks
    the ``.sha256`` beside the zip when there is one.
    """
    source, target = Path(zip_path), Path(out)
    if target.exists():
        raise StoreExistsError(f"{target} already exists. Choose another directory or remove it.")
    if not source.is_file():
        raise ArtifactError(f"Expected a packed store (.zip) at {source}. Got nothing there.")
    if checksum_path(source).is_file() and (problem := check_zip_checksum(source)):
        raise ArtifactError(f"{source}: {problem}. Nothing was unpacked.")

    try:
        zf = zipfile.ZipFile(source)
    except zipfile.BadZipFile as exc:
        raise ArtifactError(f"{source}: expected a zip file ({exc}).") from exc
    with zf:
        infos = zf.infolist()
        unsafe = [
            i.filename
            for i in infos
            if not _safe_name(i.filename) or (i.external_attr >> 16) & 0o170000 == 0o120000
        ]
        if unsafe:
            raise ArtifactError(
                f"{source}: refusing to unpack members that would land outside the target or are links: "
                f"{unsafe[:5]}. Nothing was unpacked."
            )
        # Sizes before a byte is written: stored members only, adding up to the archive's size.
        try:
            check_zip_infos(infos, str(source), source.stat().st_size)
        except FormatError as exc:
            raise ArtifactError(f"{exc} Nothing was unpacked.") from None
        # The zip as a store: every member declared by the store's own metadata and within its
        # chunk bounds (a stray or oversized member is refused before anything is written).
        open_store(source).close()
        partial = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
        try:
            for info in tqdm(infos, desc="unpack", unit="file", disable=not progress):
                if info.is_dir():
                    continue
                dest = partial / info.filename
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as dst:
                    _copy_exactly(src, dst, info.file_size, f"{source}: member {info.filename!r}")
            with open_store(partial):  # a zip of something that is not a store is refused
                pass
            os.rename(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return sum(1 for i in infos if not i.is_dir())
