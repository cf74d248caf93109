"""Format versions 1 and 2: every group, array and attribute of a store, in one place.

``docs/format.md`` is the prose version of this module; keep the two in step. Arrays are created
at full shape once, when the store is created, and never resized.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import zarr
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from lpldstore.config import CodecConfig, DatasetInfo, Provenance, RelabelConfig, _Record
from lpldstore.errors import ConfigError, FormatError, NotAStoreError, UnsupportedVersionError
from lpldstore.plan import PruningPlan

FORMAT_NAME = "lpldstore"
FORMAT_VERSION = 2
# Version 2 adds the logit codecs (pool/logits as encoded byte rows), codec.temperature and the
# per-entry fidelity array; a version-1 store is a float16 store without pool/fidelity.
FIDELITY_SINCE = 2

# The ownership and commit unit of the pool: small per-entry arrays are chunked by block, so
# writers owning disjoint blocks never touch the same file.
DEFAULT_BLOCK_ENTRIES = 64
# About 4 MiB of pixels per image chunk.
_IMAGE_CHUNK_BYTES = 4 << 20


@dataclasses.dataclass(frozen=True, kw_only=True)
class Layout(_Record):
    """How the pool is cut into files.

    ``block_entries`` entries form a block: the chunk of every small per-entry array, the commit
    unit and the unit a writer process owns. ``logits_shard_entries`` is ``None`` (one logits file
    per entry) or equal to ``block_entries`` (one shard file per block, written whole).
    """

    record_name: ClassVar[str] = "layout"

    block_entries: int = DEFAULT_BLOCK_ENTRIES
    logits_shard_entries: int | None = None

    def __post_init__(self) -> None:
        if (
            not isinstance(self.block_entries, int)
            or isinstance(self.block_entries, bool)
            or self.block_entries < 1
        ):
            raise ConfigError(
                f"layout.block_entries must be a positive integer. Got {self.block_entries!r} instead."
            )
        if self.logits_shard_entries not in (None, self.block_entries):
            raise ConfigError(
                "layout.logits_shard_entries must be None (one file per entry) or equal to block_entries "
                f"({self.block_entries}), so that one writer owns each shard. Got {self.logits_shard_entries!r} instead."
            )


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """One array of the pool: its dtype, the shape after the entry axis, and its fill value."""

    name: str
    dtype: str
    trailing: str  # symbolic trailing shape: "" (per entry), "B", "B4", "2", "4", "BC"
    fill_value: Any
    dimension_names: tuple[str, ...]


# Fill values are impossible values where possible, so that a chunk that is missing reads as
# damage rather than as data (write_empty_chunks is on, so a committed entry's chunks exist).
POOL_ARRAYS: tuple[ArraySpec, ...] = (
    ArraySpec("key", "int32", "2", -1, ("entry", "field")),
    ArraySpec("indices", "int32", "B", -2, ("entry", "slot")),
    ArraySpec("crop", "int16", "B4", -1, ("entry", "slot", "box")),
    ArraySpec("flip", "bool", "B", False, ("entry", "slot")),
    ArraySpec("mix_index", "int16", "B", -1, ("entry", "slot")),
    ArraySpec("mix_lam", "float32", "", float("nan"), ("entry",)),
    ArraySpec("mix_box", "int16", "4", -1, ("entry", "box")),
    ArraySpec("logits", "float16", "BC", float("nan"), ("entry", "slot", "class")),
    ArraySpec("committed", "bool", "", False, ("entry",)),
)
# The arrays that the writer fills per entry (key is written at creation, committed last).
ENTRY_ARRAYS = ("indices", "crop", "flip", "mix_index", "mix_lam", "mix_box")


def _trailing_shape(trailing: str, batch: int, classes: int) -> tuple[int, ...]:
    return {
        "": (),
        "2": (2,),
        "4": (4,),
        "B": (batch,),
        "B4": (batch, 4),
        "BC": (batch, classes),
    }[trailing]


def _checksummed(*compressors: BytesBytesCodec) -> list[BytesBytesCodec]:
    # crc32c last: every stored chunk carries a checksum of its encoded bytes.
    return [*compressors, Crc32cCodec()]


def logits_compressors(codec: CodecConfig, num_classes: int = 1) -> list[BytesBytesCodec]:
    """Byte compressors of the logits array for a codec (chosen by measurement, docs/codecs.md)."""
    if codec.codec(num_classes).entropy_coded:
        # One byte per code: zstd's entropy stage brings the bytes down to the codes' entropy.
        return _checksummed(ZstdCodec(level=9))
    return _checksummed(BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"))


def logits_spec(attrs: StoreAttrs) -> tuple[str, tuple[int, ...], Any]:
    """dtype, trailing shape (after the entry axis) and fill value of ``pool/logits``."""
    codec = attrs.codec.codec(attrs.dataset.num_classes)
    return codec.dtype, (attrs.plan.batch_size, codec.row_size), codec.fill_value


def fidelity_spec(attrs: StoreAttrs) -> tuple[int, ...] | None:
    """Trailing shape of ``pool/fidelity`` (None: a version-1 store has none)."""
    from lpldstore.fidelity import FIDELITY_FIELDS

    return (len(FIDELITY_FIELDS),) if attrs.format_version >= FIDELITY_SINCE else None


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoreAttrs:
    """The root attributes of a store, parsed."""

    dataset: DatasetInfo
    plan: PruningPlan
    relabel: RelabelConfig
    codec: CodecConfig
    layout: Layout
    provenance: Provenance
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "dataset": self.dataset.to_dict(),
            "plan": self.plan.to_dict(),
            "relabel": self.relabel.to_dict(),
            "codec": self.codec.to_dict(),
            "layout": self.layout.to_dict(),
            "provenance": self.provenance.to_dict(),
        }

    @classmethod
    def from_json(cls, attrs: Mapping[str, Any], where: str) -> StoreAttrs:
        name = attrs.get("format")
        if name != FORMAT_NAME:
            raise NotAStoreError(
                f"{where} is a Zarr group but not an lpldstore store: expected root attribute "
                f"format='{FORMAT_NAME}', got {name!r}. Open a store written by lpldstore."
            )
        version = attrs.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise FormatError(f"{where}: format_version must be a positive integer. Got {version!r} instead.")
        if version > FORMAT_VERSION:
            raise UnsupportedVersionError(
                f"{where} has lpldstore format version {version}, newer than this lpldstore reads "
                f"(up to {FORMAT_VERSION}). Upgrade lpldstore to read it."
            )
        known = {"format", "format_version", "dataset", "plan", "relabel", "codec", "layout", "provenance"}
        unknown = sorted(set(attrs) - known)
        if unknown:
            raise FormatError(f"{where}: unknown root attribute(s) {unknown} for format version {version}.")
        parsed: dict[str, Any] = {}
        records: dict[str, type[_Record]] = {
            "dataset": DatasetInfo,
            "plan": PruningPlan,
            "relabel": RelabelConfig,
            "codec": CodecConfig,
            "layout": Layout,
            "provenance": Provenance,
        }
        for key, record in records.items():
            if key not in attrs:
                raise FormatError(f"{where}: root attribute '{key}' is missing.")
            try:
                parsed[key] = record.from_dict(attrs[key])
            except ConfigError as exc:
                raise FormatError(f"{where}: root attribute '{key}' is invalid: {exc}") from exc
        out = cls(**parsed, format_version=version)
        if version < 2 and out.codec != CodecConfig():
            raise FormatError(
                f"{where}: format version 1 stores hold float16 logits; the codec says {out.codec}."
            )
        out.check_consistent(where)
        return out

    def check_consistent(self, where: str) -> None:
        if self.plan.num_images != self.dataset.num_images:
            raise FormatError(
                f"{where}: plan.num_images ({self.plan.num_images}) differs from dataset.num_images "
                f"({self.dataset.num_images})."
            )
        try:
            self.codec.codec(self.dataset.num_classes)
        except ConfigError as exc:
            raise FormatError(
                f"{where}: the codec does not fit {self.dataset.num_classes} classes: {exc}"
            ) from exc


def create_arrays(group: zarr.Group, attrs: StoreAttrs) -> None:
    """Create every array of an empty store at full shape (no data but the entry keys)."""
    plan, dataset, layout = attrs.plan, attrs.dataset, attrs.layout
    n, (h, w, c) = dataset.num_images, dataset.image_shape
    per_chunk = max(1, min(n, _IMAGE_CHUNK_BYTES // (h * w * c)))
    images = group.require_group("images")
    images.create_array(
        "pixels",
        shape=(n, h, w, c),
        chunks=(per_chunk, h, w, c),
        dtype="uint8",
        fill_value=0,
        compressors=_checksummed(ZstdCodec(level=3)),
        dimension_names=("image", "y", "x", "channel"),
        config={"write_empty_chunks": True},
    )
    images.create_array(
        "labels",
        shape=(n,),
        chunks=(n,),
        dtype="int32",
        fill_value=-1,
        compressors=_checksummed(ZstdCodec(level=3)),
        dimension_names=("image",),
        config={"write_empty_chunks": True},
    )

    pool = group.require_group("pool")
    entries, block = plan.num_kept, layout.block_entries
    for spec in POOL_ARRAYS:
        trailing = _trailing_shape(spec.trailing, plan.batch_size, dataset.num_classes)
        kwargs: dict[str, Any] = {}
        dtype, fill = spec.dtype, spec.fill_value
        if spec.name == "logits":
            dtype, trailing, fill = logits_spec(attrs)
            kwargs["chunks"] = (1, *trailing)
            if layout.logits_shard_entries is not None:
                kwargs["shards"] = (layout.logits_shard_entries, *trailing)
            kwargs["compressors"] = logits_compressors(attrs.codec, dataset.num_classes)
        else:
            kwargs["chunks"] = (block, *trailing)
            kwargs["compressors"] = _checksummed(ZstdCodec(level=3))
        array = pool.create_array(
            spec.name,
            shape=(entries, *trailing),
            dtype=dtype,
            fill_value=fill,
            dimension_names=spec.dimension_names,
            config={"write_empty_chunks": True},
            **kwargs,
        )
        if spec.name == "key":
            array[:] = plan.kept_keys.astype(np.int32)
    fidelity = fidelity_spec(attrs)
    if fidelity is not None:
        pool.create_array(
            "fidelity",
            shape=(entries, *fidelity),
            chunks=(block, *fidelity),
            dtype="float64",
            fill_value=float("nan"),
            dimension_names=("entry", "field"),
            compressors=_checksummed(ZstdCodec(level=3)),
            config={"write_empty_chunks": True},
        )


def expected_shapes(attrs: StoreAttrs) -> dict[str, tuple[int, ...]]:
    """The shape of every array, by path, that a store with these attributes must have."""
    plan, dataset = attrs.plan, attrs.dataset
    shapes = {
        "images/pixels": (dataset.num_images, *dataset.image_shape),
        "images/labels": (dataset.num_images,),
    }
    for spec in POOL_ARRAYS:
        shapes[f"pool/{spec.name}"] = (
            plan.num_kept,
            *_trailing_shape(spec.trailing, plan.batch_size, dataset.num_classes),
        )
    shapes["pool/logits"] = (plan.num_kept, *logits_spec(attrs)[1])
    fidelity = fidelity_spec(attrs)
    if fidelity is not None:
        shapes["pool/fidelity"] = (plan.num_kept, *fidelity)
    return shapes


def check_arrays(group: zarr.Group, attrs: StoreAttrs, where: str) -> dict[str, zarr.Array]:
    """The store's arrays by path, after checking that each exists with the right shape and dtype."""
    dtypes = {f"pool/{s.name}": s.dtype for s in POOL_ARRAYS}
    dtypes |= {"images/pixels": "uint8", "images/labels": "int32", "pool/fidelity": "float64"}
    dtypes["pool/logits"] = logits_spec(attrs)[0]
    arrays: dict[str, zarr.Array] = {}
    for path, shape in expected_shapes(attrs).items():
        try:
            node = group[path]
        except KeyError:
            raise FormatError(f"{where}: array '{path}' is missing.") from None
        if not isinstance(node, zarr.Array):
            raise FormatError(f"{where}: '{path}' should be an array, found a group.")
        if node.shape != shape or str(node.dtype) != dtypes[path]:
            raise FormatError(
                f"{where}: array '{path}' should have shape {shape} and dtype {dtypes[path]}; "
                f"found {node.shape} and {node.dtype}."
            )
        arrays[path] = node
    return arrays


def images_digest(pixels: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the images (uint8, C order) followed by their labels (little-endian int64)."""
    digest = hashlib.sha256()
    flat = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(len(pixels), -1)
    for start in range(0, len(flat), 1024):  # bounded memory for large image sets
        digest.update(flat[start : start + 1024].tobytes())
    digest.update(np.asarray(labels, dtype="<i8").tobytes())
    return digest.hexdigest()
