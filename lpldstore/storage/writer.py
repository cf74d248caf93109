"""The crash-safe, multi-process store writer.

Life of a store
---------------
1. :meth:`StoreWriter.create` validates the plan, images and settings, builds the whole store
   (every array at full shape, images, entry keys, consolidated metadata) in a temporary sibling
   directory and renames it into place, so a store either exists completely or not at all.
2. Writers fill entries with :meth:`StoreWriter.write`. Each entry is validated in full before any
   of it is written. Its logits go to their own chunk at once; its small arrays wait in the
   buffer of its block and are written whole, and only after them the block's commit flags. A
   reader never sees an entry whose flag is unset, so nothing half-written is ever read.
3. After a crash, :meth:`StoreWriter.open` gives a writer whose :meth:`todo` lists the entries
   still to do; committed entries are never recomputed.

Several processes fill one store at once by taking disjoint parts: ``part=(rank, world)`` owns the
blocks whose number is ``rank`` modulo ``world``. Every file a writer writes belongs to one of its
blocks, so writers never race (zarr's LocalStore writes each file atomically). A writer leases its
blocks when it opens the store (``lpldstore.storage._lease``): a second writer on the same or an
overlapping part is refused, naming the holder, and a lease left by a killed writer is taken
over. Each commit re-checks the lease and the flags it is about to set.

From format version 3 each entry's digests (``pool/digest``) are computed from exactly what is
written and written with its block, before the commit flags.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import shutil
import uuid
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import zarr
from zarr.storage import LocalStore

from lpldstore._version import __version__
from lpldstore.errors import EntryError, FormatError, StoreExistsError, StoreLockedError, ValidationError
from lpldstore.format.arrays import entry_fields
from lpldstore.format.augmentations import check_extras
from lpldstore.format.codecs import all_finite
from lpldstore.format.entries import digest_row
from lpldstore.format.fidelity import FIDELITY_FIELDS, fidelity_sampled, fidelity_sums
from lpldstore.format.integrity import Integrity
from lpldstore.format.params import AugmentParams, validate_params
from lpldstore.format.plan import PruningPlan
from lpldstore.format.records import CodecConfig, DatasetInfo, Layout, Provenance, RelabelConfig
from lpldstore.format.schema import StoreAttrs, images_digest
from lpldstore.storage._arrays import check_arrays, create_arrays
from lpldstore.storage._checked import open_checked
from lpldstore.storage._chunkio import ChunkIO
from lpldstore.storage._lease import Leases
from lpldstore.storage._open import consolidate, open_zarr_store

__all__ = ["StoreWriter", "update_provenance"]

Part = tuple[int, int]


def _check_part(part: Part) -> Part:
    ok = (
        isinstance(part, tuple)
        and len(part) == 2
        and all(isinstance(p, int) and not isinstance(p, bool) for p in part)
        and 0 <= part[0] < part[1]
    )
    if not ok:
        raise ValidationError(f"part must be (rank, world) with 0 <= rank < world. Got {part!r} instead.")
    return part


def _as_array(name: str, value: Any, shape: tuple[int, ...], kind: str, where: str) -> npt.NDArray[Any]:
    """``value`` as a numpy array of ``shape`` whose dtype kind is one of ``kind`` ('b', 'iu', 'f')."""
    try:
        array = np.asarray(value)
    except (TypeError, RuntimeError) as exc:  # a CUDA tensor, say
        raise ValidationError(f"{where}: {name} must be array-like on the CPU ({exc}).") from exc
    if array.shape != shape:
        raise ValidationError(f"{where}: expected {name} of shape {shape}. Got {array.shape} instead.")
    kinds = {"b": "bool", "iu": "integer", "f": "floating-point"}
    if array.dtype.kind not in kind:
        raise ValidationError(f"{where}: expected {name} of {kinds[kind]} dtype. Got {array.dtype} instead.")
    return array


@dataclasses.dataclass
class _Block:
    """A writer's in-memory copy of one block's small arrays (and logits shard, if sharded)."""

    start: int
    arrays: dict[str, npt.NDArray[Any]]
    committed: npt.NDArray[np.bool_]
    logits: npt.NDArray[Any] | None
    staged: set[int] = dataclasses.field(default_factory=set)  # positions written, not committed


class StoreWriter:
    """Fills the entries of a store. Create with :meth:`create` or reopen with :meth:`open`.

    Use it as a context manager: leaving the ``with`` block commits every entry written so far,
    also when an exception leaves it.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, part: Part = (0, 1), commit_every: int | None = None
    ) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self.part = _check_part(part)
        if not self.path.is_dir():
            raise StoreExistsError(
                f"No store directory at {self.path}; create one with StoreWriter.create()."
            )
        # The same checks as every reader's (guard, declaration, record digests) before anything is read.
        self._store = open_zarr_store(self.path, read_only=False)
        try:
            opened = open_checked(self._store, self.where, mode="r+")
        except BaseException:
            self._store.close()
            raise
        self.attrs = opened.attrs
        # Chunk existence must mean "written" (an all-False flip chunk too): zarr does not persist
        # this setting, so every writer sets it on its own array handles.
        self._arrays = {
            path: array.with_config({"write_empty_chunks": True}) for path, array in opened.arrays.items()
        }
        self._block = self.attrs.layout.block_entries
        sharded = self.attrs.layout.logits_shard_entries is not None
        if commit_every is None:
            commit_every = self._block if sharded else 16
        if not isinstance(commit_every, int) or commit_every < 1:
            raise ValidationError(f"commit_every must be a positive integer. Got {commit_every!r} instead.")
        self.commit_every = commit_every
        self._sharded = sharded
        self._codec = self.attrs.logits_codec
        # Whole chunks (an entry's logits, a block's small arrays) are written in this thread
        # where the store allows it (storage/_chunkio.py): no hand-off to zarr's I/O thread.
        self._chunk_io = {path: ChunkIO.of(array, write=True) for path, array in self._arrays.items()}
        # The block-buffered arrays of an entry: its record, and (version 2 on) its measured fidelity.
        self._entry_arrays = entry_fields(self.attrs)
        self._blocks: dict[int, _Block] = {}
        self._closed = False
        n = self.attrs.plan.num_kept
        self._owned = (np.arange(n) // self._block) % self.part[1] == self.part[0]
        # One writer per block: lease this part's blocks before anything is written.
        self._leases = Leases(self.path, self.part, self.where)
        blocks = range(self.part[0], -(-n // self._block), self.part[1])
        try:
            self._leases.acquire(blocks)
        except BaseException:
            self._store.close()
            raise
        # A writer dropped without close() still gives its leases back.
        self._release = weakref.finalize(self, self._leases.release)
        self._remove_interrupted_writes()

    def _remove_interrupted_writes(self) -> None:
        """Delete what a killed writer left of chunk files it was writing in this part's blocks.

        A chunk is written to ``NAME.<random>.partial`` and renamed into place (zarr's atomic
        write), so a writer killed mid-file leaves that temporary file beside the chunk. Only
        chunks of entries not yet committed can have one (an entry's data is written before its
        commit flag, and the flags chunk itself before any of its entries count as committed), and
        the leases make this writer the only one on its blocks; so the temporary files of this
        part's uncommitted entries are removed, before anything is written again.
        """
        committed = np.asarray(self._arrays["pool/committed"][:], dtype=bool)
        todo = np.flatnonzero(self._owned & ~committed)
        if not todo.size:
            return
        root = Path(os.path.realpath(self.path))
        for path, array in self._arrays.items():
            if not path.startswith("pool/"):
                continue
            per_file = int((array.shards or array.chunks)[0])
            tail = (0,) * (array.ndim - 1)
            for index in np.unique(todo // per_file).tolist():
                key = array.metadata.encode_chunk_key((index, *tail))
                chunk = self.path / path / key
                try:
                    with os.scandir(chunk.parent) as entries:
                        leftovers = [
                            e.path
                            for e in entries
                            if e.name.startswith(f"{chunk.name}.")
                            and e.name.endswith(".partial")
                            and e.is_file(follow_symlinks=False)
                        ]
                except FileNotFoundError:
                    continue
                # Never through a linked folder: only files inside this store's own directory go.
                if leftovers and Path(os.path.realpath(chunk.parent)).is_relative_to(root):
                    for leftover in leftovers:
                        os.unlink(leftover)

    # -- creation ------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        plan: PruningPlan,
        images: npt.ArrayLike,
        labels: npt.ArrayLike,
        dataset: DatasetInfo,
        relabel: RelabelConfig,
        codec: CodecConfig | None = None,
        layout: Layout | None = None,
        config: Mapping[str, Any] | None = None,
        parents: tuple[Mapping[str, Any], ...] = (),
        part: Part = (0, 1),
        commit_every: int | None = None,
    ) -> StoreWriter:
        """Create a new store at ``path`` and return a writer for it.

        Everything is validated first; the store appears at ``path`` only once complete. Under
        torchrun, call this on one rank, then :meth:`open` on the others after a barrier.
        """
        target = Path(path)
        if target.exists():
            raise StoreExistsError(
                f"{target} already exists. Reopen it with StoreWriter.open() to continue filling it, "
                "or choose another path."
            )
        pixels = _as_array("images", images, tuple(np.shape(images)), "iu", "create")
        if pixels.ndim != 4 or pixels.shape[3] != 3 or pixels.dtype != np.uint8:
            raise ValidationError(
                f"create: expected images as uint8 of shape (N, H, W, 3). Got {pixels.dtype} {pixels.shape} instead."
            )
        if dataset.num_images != pixels.shape[0] or tuple(dataset.image_shape) != pixels.shape[1:]:
            raise ValidationError(
                f"create: dataset says {dataset.num_images} images of shape {dataset.image_shape}; "
                f"the images given are {pixels.shape[0]} of shape {pixels.shape[1:]}."
            )
        hard = _as_array("labels", labels, (pixels.shape[0],), "iu", "create")
        if hard.size and (hard.min() < 0 or hard.max() >= dataset.num_classes):
            raise ValidationError(
                f"create: expected labels in [0, {dataset.num_classes}). Got values in [{hard.min()}, {hard.max()}]."
            )
        if plan.num_images != dataset.num_images:
            raise ValidationError(
                f"create: the plan is for {plan.num_images} images; the dataset has {dataset.num_images}."
            )
        out_h, out_w = relabel.output_size
        if max(out_h, out_w) > 32767:  # pragma: no cover - RelabelConfig already refuses this
            raise ValidationError("create: output_size must fit int16 boxes.")
        digest = images_digest(pixels, hard)
        if dataset.images_sha256 not in (None, digest):
            raise ValidationError(
                f"create: dataset.images_sha256 is {dataset.images_sha256}, but the images given hash to {digest}. "
                "These are not the images the dataset record describes."
            )
        attrs = StoreAttrs(
            dataset=dataclasses.replace(dataset, images_sha256=digest),
            plan=plan,
            relabel=relabel,
            codec=codec or CodecConfig(),
            layout=layout or Layout(),
            provenance=Provenance(
                lpldstore_version=__version__,
                created_utc=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                config=dict(config or {}),
                parents=tuple(parents),
            ),
        )
        # A codec that does not fit the classes, or unknown extras: ConfigError, nothing written.
        attrs.logits_codec  # noqa: B018 - builds (and so checks) the codec
        check_extras(relabel.extras)
        try:
            attrs.check_limits("create: the plan")
        except FormatError as exc:
            raise ValidationError(str(exc).replace(" The metadata is forged or damaged.", "")) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.creating-{uuid.uuid4().hex[:8]}")
        try:
            root = zarr.open_group(LocalStore(staging), mode="w-", zarr_format=3, attributes=attrs.to_json())
            # The record digests cover the records as stored: read them back, then add the integrity record.
            integrity = Integrity.of(uuid.uuid4().hex, root.attrs.asdict())
            root.attrs.update({"integrity": integrity.to_dict()})
            attrs = dataclasses.replace(attrs, integrity=integrity)
            create_arrays(root, attrs)
            arrays = check_arrays(root, attrs, str(staging))
            arrays["images/pixels"][:] = pixels
            arrays["images/labels"][:] = hard.astype(np.int32)
            consolidate(LocalStore(staging))
            # The rename is atomic: a store at `target` is always a complete one.
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls(target, part=part, commit_every=commit_every)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, part: Part = (0, 1), commit_every: int | None = None
    ) -> StoreWriter:
        """Reopen an existing store to continue filling it (after a crash, or from another rank)."""
        return cls(path, part=part, commit_every=commit_every)

    # -- what to do ----------------------------------------------------------------------------

    @property
    def plan(self) -> PruningPlan:
        return self.attrs.plan

    def todo(self) -> list[tuple[int, int]]:
        """The (epoch, batch) entries of this writer's part that are not yet written, in order."""
        committed = np.asarray(self._arrays["pool/committed"][:], dtype=bool)
        for block in self._blocks.values():
            committed[block.start : block.start + len(block.committed)] |= block.committed
            committed[list(block.staged)] = True
        keys = self.plan.kept_keys
        return [(int(e), int(b)) for e, b in keys[self._owned & ~committed]]

    def owns(self, epoch: int, batch: int) -> bool:
        return bool(self._owned[self.plan.position(epoch, batch)])

    # -- writing -------------------------------------------------------------------------------

    def write(
        self,
        epoch: int,
        batch: int,
        *,
        logits: npt.ArrayLike,
        params: AugmentParams,
        indices: npt.ArrayLike | None = None,
    ) -> None:
        """Validate and write one entry; it is committed at the next flush.

        ``logits`` has one row per real image of the batch (``plan.batch_length(batch)``);
        ``params`` is the batch's augmentation record (``lpldstore.draw_params`` draws it), with
        the optional augmentations that ``relabel.extras`` names. ``indices`` defaults to the
        plan's composition (and must equal it for a seeded plan).
        """
        if self._closed:
            raise ValidationError(f"{self.where}: this writer is closed; reopen the store to write more.")
        row = self._validate(epoch, batch, logits, params, indices)
        pos = self.plan.position(epoch, batch)
        block = self._block_of(pos)
        padded_logits = row.pop("logits")
        if self._sharded:
            assert block.logits is not None
            block.logits[pos - block.start] = padded_logits
        else:
            self._set_chunk("pool/logits", pos, padded_logits[None])
        for name, value in row.items():
            block.arrays[name][pos - block.start] = value
        block.staged.add(pos)
        if sum(len(b.staged) for b in self._blocks.values()) >= self.commit_every or self._block_done(block):
            self.flush()

    def flush(self) -> None:
        """Write the buffered small arrays, then commit every entry written so far.

        Before the flags of a block are written, the writer checks that it still holds the block's
        lease and that the flags on disk are the ones it last saw: nothing it did not write is
        ever marked committed, and nothing another writer committed is overwritten.
        """
        for number, block in self._blocks.items():
            if not block.staged:
                continue
            span = slice(block.start, block.start + len(block.committed))
            self._leases.check(number)
            on_disk = self._get_chunk("pool/committed", number).astype(bool)
            if not np.array_equal(on_disk, block.committed):
                keys = self.plan.kept_keys[span][on_disk != block.committed]
                raise StoreLockedError(
                    f"{self.where}: the commit flags of block {number} changed under this writer (entries "
                    f"{[tuple(k) for k in keys[:4].tolist()]}): another process writes this block. Nothing was "
                    "committed; make sure every writer has its own part."
                )
            if block.logits is not None:
                self._arrays["pool/logits"][span] = block.logits
            for name, values in block.arrays.items():
                self._set_chunk(f"pool/{name}", number, values)
            # Commit flags last: an entry's data is on disk before its flag says so.
            committed = block.committed.copy()
            committed[[p - block.start for p in block.staged]] = True
            self._set_chunk("pool/committed", number, committed)
            block.committed = committed
            block.staged.clear()
        self._leases.renew()

    def close(self) -> None:
        if not self._closed:
            try:
                self.flush()
            finally:
                self._closed = True
                self._release()
                self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        # Entries written before an exception are complete and validated: commit them.
        self.close()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.todo())

    # -- internals -----------------------------------------------------------------------------

    def _get_chunk(self, path: str, number: int) -> npt.NDArray[Any]:
        """Chunk ``number`` of a block-chunked array at ``path`` (its rows inside the array), writable."""
        io = self._chunk_io[path]
        if io is not None:
            return np.array(io.read(number))
        rows = self._arrays[path].chunks[0]
        return np.asarray(self._arrays[path][number * rows : (number + 1) * rows])

    def _set_chunk(self, path: str, number: int, values: npt.NDArray[Any]) -> None:
        """Write chunk ``number`` of the array at ``path`` whole (its rows inside the array)."""
        io = self._chunk_io[path]
        if io is not None:
            io.write(number, values)
        else:
            rows = self._arrays[path].chunks[0]
            self._arrays[path][number * rows : number * rows + len(values)] = values

    def _block_of(self, pos: int) -> _Block:
        number = pos // self._block
        block = self._blocks.get(number)
        if block is None:
            start = number * self._block
            span = slice(start, min(start + self._block, self.plan.num_kept))
            block = _Block(
                start=start,
                arrays={name: self._get_chunk(f"pool/{name}", number) for name in self._entry_arrays},
                committed=self._get_chunk("pool/committed", number).astype(bool),
                logits=np.asarray(self._arrays["pool/logits"][span]) if self._sharded else None,
            )
            self._blocks[number] = block
        return block

    def _block_done(self, block: _Block) -> bool:
        span = slice(block.start, block.start + len(block.committed))
        todo = self._owned[span] & ~block.committed
        todo[[p - block.start for p in block.staged]] = False
        return not todo.any()

    def _validate(
        self,
        epoch: int,
        batch: int,
        logits: npt.ArrayLike,
        params: AugmentParams,
        indices: npt.ArrayLike | None,
    ) -> dict[str, Any]:
        plan, dataset, relabel = self.plan, self.attrs.dataset, self.attrs.relabel
        where = f"entry (epoch={epoch}, batch={batch})"
        pos = plan.position(epoch, batch)  # EntryError if outside the plan or pruned
        if not self._owned[pos]:
            owner = (pos // self._block) % self.part[1]
            raise EntryError(
                f"{where} belongs to part {owner} of {self.part[1]}, not to this writer's part {self.part[0]}."
            )
        block = self._block_of(pos)
        if block.committed[pos - block.start] or pos in block.staged:
            raise EntryError(f"{where} is already written; an entry is written once.")
        n, big_b = plan.batch_length(batch), plan.batch_size

        if indices is None:
            if plan.composition != "seeded":
                raise ValidationError(
                    f"{where}: the plan's composition is explicit, so indices are required."
                )
            idx = plan.batch_indices(epoch, batch)
        else:
            idx = _as_array("indices", indices, (n,), "iu", where)
            if n and (idx.min() < 0 or idx.max() >= dataset.num_images):
                raise ValidationError(
                    f"{where}: expected image indices in [0, {dataset.num_images}). "
                    f"Got values in [{idx.min()}, {idx.max()}]."
                )
            if plan.composition == "seeded" and not np.array_equal(idx, plan.batch_indices(epoch, batch)):
                raise ValidationError(
                    f"{where}: the indices differ from the plan's batch composition; use "
                    "plan.batch_indices(epoch, batch) or omit indices."
                )

        if not isinstance(params, AugmentParams):
            raise ValidationError(
                f"{where}: expected params as an AugmentParams (lpldstore.draw_params makes one). "
                f"Got {type(params).__name__} instead."
            )
        if params.n != n:
            raise ValidationError(
                f"{where}: expected params for {n} images. Got params for {params.n} instead."
            )
        wanted = sorted(a.name for a in self.attrs.arrays.values() if a.decl.role == "param")
        stored = params.to_arrays()
        if sorted(stored) != wanted:
            raise ValidationError(
                f"{where}: expected the augmentation arrays {wanted} (relabel.extras={list(relabel.extras)}). "
                f"Got {sorted(stored)} instead."
            )
        try:
            validate_params(params, tuple(dataset.image_shape[:2]), relabel.output_size)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise ValidationError(f"{where}: {exc}") from None

        raw = _as_array("logits", logits, (n, dataset.num_classes), "f", where)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, as an error
            half = raw.astype(np.float16)
        if not all_finite(half):
            culprit = "non-finite" if not np.isfinite(raw).all() else "beyond the float16 range (|x| > 65504)"
            raise ValidationError(
                f"{where}: logits hold values {culprit}; every logit must be finite in float16."
            )

        row: dict[str, Any] = {"indices": _pad(idx, big_b, -1, "int32")}
        for array in self.attrs.arrays.values():
            if array.decl.role == "param":
                value = stored[array.name]
                row[array.name] = (
                    _pad(value, big_b, array.decl.pad_value, array.dtype)
                    if array.decl.scope == "sample"
                    else value.astype(array.dtype)
                )
        # Lossy codecs encode what the teacher gave (up to float32), not its float16 rounding.
        source = half if self._codec.lossless else raw.astype(np.float32)
        row["logits"] = self._codec.encode(_pad(source, big_b, 0, str(source.dtype)))
        if "fidelity" in self._entry_arrays:
            row["fidelity"] = self._fidelity(epoch, batch, raw, row["logits"][:n])
        if "digest" in self._entry_arrays:
            # Of exactly the rows about to be written: binds them to this key and this store.
            row["digest"] = digest_row(self.attrs, epoch, batch, row, row["logits"])
        return row

    def _fidelity(
        self, epoch: int, batch: int, raw: npt.NDArray[Any], encoded: npt.NDArray[Any]
    ) -> npt.NDArray[np.float64]:
        """The entry's fidelity sums, or NaN ("not measured"): lossless, or not in the sample."""
        codec = self.attrs.codec
        index = epoch * self.plan.batches_per_epoch + batch
        if self._codec.lossless or not fidelity_sampled(index, float(codec.fidelity_rate)):
            return np.full(len(FIDELITY_FIELDS), np.nan)
        return fidelity_sums(raw, self._codec.decode(encoded), float(codec.temperature))


def update_provenance(path: str | os.PathLike[str], provenance: Mapping[str, Any]) -> None:
    """Replace the provenance record of a store that is not yet published (e.g. an import's staging copy).

    Format version 3 digests the records: the integrity record is updated with it, and the
    consolidated metadata rewritten. Provenance is not part of the store's identity, so the
    entries' digests stay valid. Meant for the tool that created the store, before it renames
    the store into place; a published store's records are never changed.
    """
    root = zarr.open_group(LocalStore(Path(path)), mode="r+", zarr_format=3)
    Provenance.from_dict(provenance)  # ConfigError if invalid, before anything is written
    root.attrs["provenance"] = dict(provenance)
    current = root.attrs.asdict()
    if "integrity" in current:
        old = Integrity.from_dict(current["integrity"])  # type: ignore[arg-type]
        root.attrs["integrity"] = Integrity.of(old.store_id, current).to_dict()
    consolidate(LocalStore(Path(path)))


def _pad(values: npt.NDArray[Any], rows: int, fill: Any, dtype: str) -> npt.NDArray[Any]:
    """``values`` (n, ...) as ``rows`` rows of ``dtype``, the rows after n set to ``fill``."""
    out = np.full((rows, *values.shape[1:]), fill, dtype=dtype)
    out[: len(values)] = values
    return out
