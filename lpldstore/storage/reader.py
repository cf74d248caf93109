"""Reading a store: its metadata, its images, and its label entries by key or position.

Nothing here imports torch. An entry comes back as its image indices, its augmentation record
(:class:`~lpldstore.format.params.AugmentParams`, the same object that relabel drew and that
``lpldstore.augment.apply_params`` replays) and its decoded logits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import zarr
from zarr.abc.store import Store

from lpldstore.errors import EntryError, FormatError, StoreDamagedError
from lpldstore.format.arrays import row_fields
from lpldstore.format.codecs import all_finite
from lpldstore.format.entries import entry_digest_problem, logits_digest_problem, params_of, record_problems
from lpldstore.format.fidelity import Fidelity, summarize
from lpldstore.format.params import AugmentParams
from lpldstore.format.plan import PruningPlan
from lpldstore.format.records import CodecConfig, DatasetInfo, Layout, Provenance, RelabelConfig
from lpldstore.format.schema import images_digest
from lpldstore.storage import _guard
from lpldstore.storage._checked import open_checked
from lpldstore.storage._chunkio import ChunkIO
from lpldstore.storage._open import StoreLike, is_url, open_zarr_store
from lpldstore.storage._safe import BoundedStore, describe_error

__all__ = ["Entry", "EntryMetadata", "LabelStore", "open_store"]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Entry:
    """One stored batch: its composition, its augmentation parameters and its logits.

    ``indices`` and ``logits`` hold the ``n`` real images of the batch (padding removed);
    ``params`` is the batch's augmentation record. ``crops``, ``flips``, ``mix_index``,
    ``mix_lam`` and ``mix_box`` are views of ``params`` (int64 arrays, as before format 3).
    """

    epoch: int
    batch: int
    position: int
    indices: npt.NDArray[np.int64]
    params: AugmentParams
    logits: npt.NDArray[np.floating[Any]]

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def crops(self) -> npt.NDArray[np.int64]:
        """(n, 4) (top, left, height, width) in source pixels."""
        return self.params.crops.astype(np.int64)

    @property
    def flips(self) -> npt.NDArray[np.bool_]:
        return self.params.flips

    @property
    def mix_index(self) -> npt.NDArray[np.int64]:
        """Each slot's CutMix partner slot."""
        return self.params.mix_index

    @property
    def mix_lam(self) -> float:
        return self.params.mix_lam

    @property
    def mix_box(self) -> npt.NDArray[np.int64]:
        """(top, left, bottom, right) in output pixels."""
        return np.asarray(self.params.mix_box, dtype=np.int64)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class EntryMetadata:
    """The small arrays of many entries, padded to the batch size (index -1 marks padding).

    ``records`` maps each array read per entry (``lpldstore.format.arrays.row_fields``: ``indices``
    and the augmentation arrays, and from format version 3 ``fidelity`` and ``digest``) to its
    rows, one per position; ``indices``, ``crops``, ``flips``, ``mix_index``, ``mix_lam`` and
    ``mix_box`` are views of it.
    """

    positions: npt.NDArray[np.int64]
    keys: npt.NDArray[np.int64]
    committed: npt.NDArray[np.bool_]
    records: Mapping[str, npt.NDArray[Any]]

    def row(self, i: int) -> dict[str, npt.NDArray[Any]]:
        """Row ``i``'s padded record arrays, by name."""
        return {name: values[i] for name, values in self.records.items()}

    @property
    def indices(self) -> npt.NDArray[np.int64]:
        return self.records["indices"].astype(np.int64)

    @property
    def crops(self) -> npt.NDArray[np.int64]:
        return self.records["crop"].astype(np.int64)

    @property
    def flips(self) -> npt.NDArray[np.bool_]:
        return self.records["flip"].astype(bool)

    @property
    def mix_index(self) -> npt.NDArray[np.int64]:
        return self.records["mix_index"].astype(np.int64)

    @property
    def mix_lam(self) -> npt.NDArray[np.float32]:
        return self.records["mix_lam"].astype(np.float32)

    @property
    def mix_box(self) -> npt.NDArray[np.int64]:
        return self.records["mix_box"].astype(np.int64)


def _damaged(where: str, what: str, exc: Exception) -> StoreDamagedError:
    return StoreDamagedError(
        f"{where}: {what} could not be read ({describe_error(exc)}). The stored bytes are damaged or missing; "
        "run `lpldstore verify` for a full report."
    )


# Digest blocks kept per reader (each block_entries x 64 bytes): a loader worker reads each once.
_DIGEST_BLOCKS = 4096
# Blocks of final records kept per reader for entry_at (ImageNet-1K at batch 128: ~1 MB a block).
_RECORD_BLOCKS = 64


def _record_ios(
    chunk_io: Mapping[str, ChunkIO | None], row_fields: Sequence[str]
) -> dict[str, ChunkIO] | None:
    """The whole-chunk readers of the commit flags and every record array, when all share a block."""
    ios = {name: chunk_io[f"pool/{name}"] for name in ("committed", *row_fields)}
    found = {name: io for name, io in ios.items() if io is not None}
    if len(found) != len(ios) or len({io.rows for io in found.values()}) != 1:
        return None
    return found


class LabelStore:
    """A read-only view of a store. Use :func:`open_store` to get one; close it when done.

    Everything is checked on open (``lpldstore.storage._checked``); from format version 3 on
    (:attr:`bound`) every entry read is checked against its digest, which binds it to its key and
    to this store, and :meth:`images` checks the images against ``dataset.images_sha256``.
    """

    def __init__(self, store: Store, where: str) -> None:
        bounded = store if isinstance(store, BoundedStore) else BoundedStore(store, where)
        self._store = bounded
        self.where = where
        opened = open_checked(bounded, where)
        self.attrs = opened.attrs
        self._arrays = opened.arrays
        self._codec = self.attrs.logits_codec
        self._row_fields = row_fields(self.attrs)
        self._digest_blocks: dict[int, npt.NDArray[np.uint8]] = {}
        # Whole chunks read in this thread where the store allows it (storage/_chunkio.py).
        self._chunk_io = {path: ChunkIO.of(array) for path, array in self._arrays.items()}
        # Per block: its final record chunks, and the positions whose rows passed entry_from's checks.
        self._record_blocks: dict[int, tuple[dict[str, npt.NDArray[Any]], set[int]]] = {}
        self._record_ios = _record_ios(self._chunk_io, self._row_fields)

    @property
    def bound(self) -> bool:
        """Whether entries and root records carry digests (format version 3 on)."""
        return self.attrs.bound

    @property
    def binding(self) -> str:
        """One line saying what binds this store's entries to their keys and to the store."""
        if self.bound:
            return "entries bound to their keys and this store by SHA-256 digests; root records digested"
        return (
            f"none: format version {self.attrs.format_version} carries no digests, so a moved or swapped chunk "
            "cannot be told from the right one (`lpldstore upgrade` rewrites the store as version 3)"
        )

    # -- metadata ------------------------------------------------------------------------------

    @property
    def dataset(self) -> DatasetInfo:
        return self.attrs.dataset

    @property
    def plan(self) -> PruningPlan:
        return self.attrs.plan

    @property
    def relabel(self) -> RelabelConfig:
        return self.attrs.relabel

    @property
    def codec(self) -> CodecConfig:
        return self.attrs.codec

    @property
    def layout(self) -> Layout:
        return self.attrs.layout

    @property
    def provenance(self) -> Provenance:
        return self.attrs.provenance

    @property
    def num_entries(self) -> int:
        return self.plan.num_kept

    @property
    def keys(self) -> npt.NDArray[np.int64]:
        """(num_entries, 2) (epoch, batch) of every kept entry, in store order."""
        return self.plan.kept_keys

    @property
    def zarr_store(self) -> Store:
        return self._store

    def array(self, path: str) -> zarr.Array:
        """The underlying zarr array at ``path`` (``pool/logits``, ``images/pixels`` ...)."""
        return self._arrays[path]

    def position(self, epoch: int, batch: int) -> int:
        return self.plan.position(epoch, batch)

    def committed(self) -> npt.NDArray[np.bool_]:
        """Which entries are committed (re-read on every call: writers may be at work)."""
        try:
            return np.asarray(self._arrays["pool/committed"][:], dtype=bool)
        except _guard.READ_ERRORS as exc:
            raise _damaged(self.where, "the commit flags", exc) from exc

    @property
    def is_complete(self) -> bool:
        return bool(self.committed().all())

    # -- images --------------------------------------------------------------------------------

    def images(self) -> npt.NDArray[np.uint8]:
        """All images, uint8 (N, H, W, 3), checked against ``dataset.images_sha256``."""
        _guard.check_all_chunks_present(self.where, self._arrays["images/pixels"], "the images")
        try:
            pixels = np.asarray(self._arrays["images/pixels"][:])
        except _guard.READ_ERRORS as exc:
            raise _damaged(self.where, "the images", exc) from exc
        expected = self.dataset.images_sha256
        # The images are read whole (once per loader): hashing them costs about 1 s per GB and
        # catches image chunks moved or swapped within the store, which checksums cannot.
        if expected is not None and images_digest(pixels, self.labels()) != expected:
            raise StoreDamagedError(
                f"{self.where}: the images and labels do not hash to dataset.images_sha256: image chunks were "
                "moved, swapped or changed. Run `lpldstore verify` for a full report."
            )
        return pixels

    def labels(self) -> npt.NDArray[np.int64]:
        """The hard class label of every image."""
        _guard.check_all_chunks_present(self.where, self._arrays["images/labels"], "the image labels")
        try:
            return np.asarray(self._arrays["images/labels"][:], dtype=np.int64)
        except _guard.READ_ERRORS as exc:
            raise _damaged(self.where, "the image labels", exc) from exc

    # -- entries -------------------------------------------------------------------------------

    def entry(self, epoch: int, batch: int) -> Entry:
        """The committed entry (epoch, batch); :class:`EntryError` if pruned or not committed."""
        return self.entry_at(self.position(epoch, batch))

    def entry_at(self, position: int) -> Entry:
        """The committed entry at a position of the store (0 <= position < num_entries)."""
        epoch, batch = self.plan.key_at(position)
        final = self._final_row(position)
        if final is None:
            meta = self.metadata([position])
            if not meta.committed[0]:
                raise EntryError(
                    f"{self.where}: entry (epoch={epoch}, batch={batch}) is not committed: the writer has not "
                    "finished it."
                )
            return self.entry_from(meta.row(0), position, self.logits_at(position))
        row, checked = final
        if position not in checked:  # a cached row cannot change: its checks hold once passed
            self._check_row(row, position)
            checked.add(position)
        return self._entry(row, position, self.logits_at(position))

    def _final_row(self, position: int) -> tuple[dict[str, npt.NDArray[Any]], set[int]] | None:
        """The record row at ``position`` from a cached block of final records, with the block's set
        of positions already checked; None to read it afresh.

        A block whose entries are all committed never changes again (data is written before its
        flag and a committed entry is never rewritten), so random reads pay for its ten or so
        small chunks once per handle. A block still being written, a lost or damaged chunk, or a
        store without whole-chunk reads takes :meth:`metadata`'s path, which reports them. A cached
        row's record checks and entry digest run on its first read; the logits and their digest are
        read and checked on every read.
        """
        ios = self._record_ios
        if ios is None:
            return None
        rows = ios["committed"].rows
        number = position // rows
        cached = self._record_blocks.get(number)
        if cached is None:
            block: dict[str, npt.NDArray[Any]] = {}
            for name, io in ios.items():
                try:
                    chunk = io.read_or_none(number)
                except _guard.READ_ERRORS:
                    return None
                if chunk is None:
                    return None
                block[name] = chunk
            if not np.asarray(block["committed"], dtype=bool).all():
                return None
            if len(self._record_blocks) >= _RECORD_BLOCKS:
                self._record_blocks.pop(next(iter(self._record_blocks)))
            cached = self._record_blocks[number] = (block, set())
        block, checked = cached
        at = position - number * rows
        # Copies: an Entry's arrays are the caller's to change.
        return {name: values[at].copy() for name, values in block.items() if name != "committed"}, checked

    def entry_from(
        self, row: Mapping[str, npt.NDArray[Any]], position: int, logits: npt.NDArray[np.floating[Any]]
    ) -> Entry:
        """The entry at ``position`` from its padded record row (``EntryMetadata.row``) and logits.

        Raises :class:`StoreDamagedError` if the record shows a missing or damaged chunk; the pool
        loader assembles its steps with it, so a damaged entry fails as it does in :meth:`entry_at`.
        """
        self._check_row(row, position)
        return self._entry(row, position, logits)

    def _check_row(self, row: Mapping[str, npt.NDArray[Any]], position: int) -> None:
        epoch, batch = self.plan.key_at(position)
        problems = record_problems(self.attrs, epoch, batch, row, check_composition=False)
        if not problems and self.bound:
            stored = row["digest"] if "digest" in row else self._digest_of(position)
            problem = entry_digest_problem(self.attrs, epoch, batch, row, stored)
            if problem:
                problems = [("pool/digest", problem)]
        if problems:
            path, message = problems[0]
            raise StoreDamagedError(
                f"{self.where}: entry (epoch={epoch}, batch={batch}): {path}: {message}. "
                "Run `lpldstore verify` for a full report."
            )

    def _entry(
        self, row: Mapping[str, npt.NDArray[Any]], position: int, logits: npt.NDArray[np.floating[Any]]
    ) -> Entry:
        epoch, batch = self.plan.key_at(position)
        n = self.plan.batch_length(batch)
        return Entry(
            epoch=epoch,
            batch=batch,
            position=position,
            indices=np.asarray(row["indices"][:n], dtype=np.int64),
            params=params_of(row, n, self.attrs),
            logits=logits[:n],
        )

    def logits_at(self, position: int) -> npt.NDArray[np.floating[Any]]:
        """The decoded logits of one entry, (batch_size, num_classes), padding included.

        float16 for the ``float16`` codec (exactly as stored), float32 for the lossy codecs.
        """
        epoch, batch = self.plan.key_at(position)
        n = self.plan.batch_length(batch)
        try:
            io = self._chunk_io["pool/logits"]
            raw = np.asarray(
                io.read(position)[0] if io is not None else self._arrays["pool/logits"][position]
            )
        except _guard.READ_ERRORS as exc:
            raise _damaged(self.where, f"the logits of entry (epoch={epoch}, batch={batch})", exc) from exc
        try:
            logits = self._codec.decode(raw)
        except _guard.READ_ERRORS as exc:
            raise _damaged(self.where, f"the logits of entry (epoch={epoch}, batch={batch})", exc) from exc
        # A missing chunk reads as the NaN fill value: real logits are always finite.
        if not all_finite(logits[:n]):
            raise StoreDamagedError(
                f"{self.where}: the logits of entry (epoch={epoch}, batch={batch}) are missing or hold "
                "non-finite values. Run `lpldstore verify` for a full report."
            )
        if self.bound:
            self._check_logits_digest(position, epoch, batch, raw)
        return logits

    def _digest_of(self, position: int) -> npt.NDArray[np.uint8]:
        """The stored digest row (2, 32) of ``position``, from a per-block cache."""
        block = self.layout.block_entries
        number = position // block
        rows = self._digest_blocks.get(number)
        if rows is None:
            start = number * block
            io = self._chunk_io["pool/digest"]
            try:
                chunk = (
                    io.read(number) if io is not None else self._arrays["pool/digest"][start : start + block]
                )
                rows = np.asarray(chunk, dtype=np.uint8)
            except _guard.READ_ERRORS as exc:
                epoch, batch = self.plan.key_at(position)
                raise _damaged(
                    self.where, f"the digest of entry (epoch={epoch}, batch={batch})", exc
                ) from exc
            if len(self._digest_blocks) >= _DIGEST_BLOCKS:
                self._digest_blocks.pop(next(iter(self._digest_blocks)))
            self._digest_blocks[number] = rows
        return rows[position - number * block]

    def _check_logits_digest(self, position: int, epoch: int, batch: int, raw: npt.NDArray[Any]) -> None:
        problem = logits_digest_problem(self.attrs, epoch, batch, raw, self._digest_of(position))
        if problem:
            # The cached block may predate this entry's commit: read it again once.
            self._digest_blocks.pop(position // self.layout.block_entries, None)
            problem = logits_digest_problem(self.attrs, epoch, batch, raw, self._digest_of(position))
        if problem:
            raise StoreDamagedError(
                f"{self.where}: entry (epoch={epoch}, batch={batch}): pool/logits: {problem}. "
                "Run `lpldstore verify` for a full report."
            )

    def metadata(
        self, positions: Sequence[int] | npt.NDArray[np.integer[Any]] | None = None
    ) -> EntryMetadata:
        """The small arrays of the entries at ``positions`` (all when None), one read per array."""
        if positions is None:
            pos = np.arange(self.num_entries, dtype=np.int64)
        else:
            pos = np.asarray(positions, dtype=np.int64).reshape(-1)
            if pos.size and (pos.min() < 0 or pos.max() >= self.num_entries):
                raise EntryError(
                    f"Positions must be in [0, {self.num_entries}). Got {pos.min()}..{pos.max()}."
                )
        read: dict[str, npt.NDArray[Any]] = {}
        missing: set[str] = set()
        # Flags first: data is written before its flag, so data read after a set flag is complete.
        for name in ("committed", *self._row_fields):
            try:
                read[name] = self._rows(f"pool/{name}", pos, missing)
            except _guard.READ_ERRORS as exc:
                raise _damaged(
                    self.where, f"pool/{name} of {_guard.describe(self.plan.kept_keys[pos])}", exc
                ) from exc
        committed = read.pop("committed").astype(bool)
        keys = self.plan.kept_keys[pos]
        for name in self._row_fields:
            declared = self.attrs.arrays[f"pool/{name}"].decl
            # A missing chunk would read as valid data: look for the file (unless the read saw it).
            if declared.fill_is_data and (self._chunk_io[declared.path] is None or declared.path in missing):
                _guard.check_chunks_present(self.where, self._arrays[declared.path], pos, committed, keys)
        return EntryMetadata(positions=pos, keys=keys, committed=committed, records=read)

    def _rows(self, path: str, pos: npt.NDArray[np.int64], missing: set[str]) -> npt.NDArray[Any]:
        """Rows ``pos`` of a block-chunked array; adds ``path`` to ``missing`` if a chunk had no file."""
        array, io = self._arrays[path], self._chunk_io[path]
        if io is None:  # one orthogonal read: zarr fetches the needed chunks concurrently
            return np.asarray(array.get_orthogonal_selection((pos,)))
        rows = io.rows
        if len(pos) == 1:  # one entry (entry_at): one block, no grouping
            number = int(pos[0]) // rows
            chunk = io.read_or_none(number)
            if chunk is None:
                missing.add(path)
                chunk = io.read(number)
            return chunk[int(pos[0]) - number * rows][None].copy()
        blocks = pos // rows
        out = np.empty((len(pos), *array.shape[1:]), dtype=array.dtype)
        for number in np.unique(blocks).tolist():
            chunk = io.read_or_none(number)
            if chunk is None:
                missing.add(path)
                chunk = io.read(number)  # the fill value, as zarr reads a missing chunk
            here = blocks == number
            out[here] = chunk[pos[here] - number * rows]
        return out

    def fidelity(self) -> Fidelity | None:
        """Fidelity of the codec measured by the writer on the committed entries (None: not measured).

        Version-1 stores and stores derived without re-measuring hold no measurement.
        """
        if "pool/fidelity" not in self._arrays:
            return None
        array, committed = self._arrays["pool/fidelity"], self.committed()
        try:
            sums = np.asarray(array[:], dtype=np.float64)
        except _guard.READ_ERRORS as exc:
            raise _damaged(self.where, "pool/fidelity", exc) from exc
        # A lost chunk reads as NaN, which otherwise means "not measured": tell the two apart.
        block = self.layout.block_entries
        for number in np.unique(np.flatnonzero(committed) // block).tolist():
            if _guard.missing_block_chunks(array, number):
                raise StoreDamagedError(
                    f"{self.where}: the chunk of pool/fidelity for entries {number * block}.. is missing; "
                    "run `lpldstore verify`."
                )
        if self.bound:  # the sums are bound like every other per-entry array: check each entry's digest
            meta = self.metadata()
            for i in np.flatnonzero(meta.committed).tolist():
                epoch, batch = (int(v) for v in meta.keys[i])
                problem = entry_digest_problem(
                    self.attrs, epoch, batch, meta.row(i), meta.records["digest"][i]
                )
                if problem:
                    raise StoreDamagedError(
                        f"{self.where}: entry (epoch={epoch}, batch={batch}): pool/digest: {problem}. "
                        "Run `lpldstore verify` for a full report."
                    )
                if not np.array_equal(meta.records["fidelity"][i], sums[i], equal_nan=True):
                    raise StoreDamagedError(
                        f"{self.where}: pool/fidelity changed while it was read; read it again."
                    )
        return summarize(sums[committed], self.codec.temperature)

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        p = self.plan
        return (
            f"LabelStore({self.where!r}, {self.dataset.num_images} images, {self.dataset.num_classes} classes, "
            f"{p.num_kept}/{p.total_entries} entries, {p.strategy} x{p.ratio:g})"
        )


def open_store(
    source: StoreLike, *, storage_options: Mapping[str, Any] | None = None, require_bound: bool = False
) -> LabelStore:
    """Open a store for reading: a store directory, a ``.zip`` of one, or an fsspec URL.

    Raises :class:`NotAStoreError` for anything that is not an lpldstore store and
    :class:`UnsupportedVersionError` for a store of a newer format version. Stores of format
    versions 1 and 2 carry no digests (:attr:`LabelStore.binding` says so); with
    ``require_bound=True`` they are refused, so that a version-3 store stripped of its digests
    cannot pass for an older one.
    """
    where = str(source) if is_url(source) else str(Path(source))
    store = open_zarr_store(source, read_only=True, storage_options=storage_options)
    try:
        opened = LabelStore(store, where)
    except BaseException:
        store.close()
        raise
    if require_bound and not opened.bound:
        opened.close()
        raise FormatError(
            f"{where} is format version {opened.attrs.format_version}, which carries no digests, and a bound store "
            "was required. Upgrade it from a trusted copy (`lpldstore upgrade`) or drop the requirement."
        )
    return opened
