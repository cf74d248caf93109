"""Every array a store holds, declared once.

:data:`ARRAYS` lists each array with its path, scope, dtype, trailing shape, chunking, compressors,
fill value, the format version that introduced it, the augmentation whose parameters it holds
(if any) and what its fill value means. Everything else is derived from it: creating a store
(:func:`lpldstore.format.schema.create_arrays`), checking one on open, the guard's list of
metadata to vet before zarr parses it, the writer's entry record, the reader's metadata and
entries, ``verify``'s per-array checks and the damage checks, and the loader's step records.
The augmentation arrays come from :data:`lpldstore.format.augmentations.REGISTRY`, so a new
augmentation adds its arrays here without touching this module.

Shapes (N images, E kept entries, B relabel batch size, C classes, R encoded row size):

- scope ``image``: ``(N, *trailing)``; scope ``entry``: ``(E, *trailing)``; scope ``sample``:
  ``(E, B, *trailing)``, one row per batch slot. ``pool/logits`` has the codec's dtype and
  trailing ``(R,)`` (``R = C`` for float16).

Missing chunks: every array is written with ``write_empty_chunks``, so a chunk exists exactly
when it was written. A missing chunk under a committed entry is damage. Where a stored value can
equal the fill value (``fill_is_data``: a flip flag, a colour, a pixel, "not measured"), damage
is found by the chunk's absence; everywhere else the fill value is impossible data (-1 boxes,
NaN lambdas and logits) and reading it is damage.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from lpldstore.format.augmentations import REGISTRY, AugmentSpec
from lpldstore.format.fidelity import FIDELITY_FIELDS

if TYPE_CHECKING:
    from lpldstore.format.schema import StoreAttrs

__all__ = [
    "ALL_PATHS",
    "ARRAYS",
    "ArrayDecl",
    "Resolved",
    "bound_fields",
    "entry_fields",
    "record_fields",
    "resolve",
    "row_fields",
]

Scope = Literal["image", "entry", "sample"]
Role = Literal["images", "labels", "key", "indices", "param", "logits", "fidelity", "digest", "committed"]
# image_block: as many images as fit about 4 MiB; whole: one chunk; block: layout.block_entries
# entries; entry: one entry (the logits; sharded by block when the layout asks).
Chunking = Literal["image_block", "whole", "block", "entry"]
Compression = Literal["images", "small", "logits"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArrayDecl:
    """One array of the format. See the module docstring for the meaning of each field."""

    path: str
    scope: Scope
    dtype: str  # "" for pool/logits: the codec's dtype
    trailing: tuple[int, ...]  # after the scope's axes; () for pool/logits: the codec's row
    chunking: Chunking
    compression: Compression
    fill_value: Any
    dimension_names: tuple[str, ...]
    role: Role
    since: int = 1
    augmentation: str | None = None
    fill_is_data: bool = False
    # What the writer stores in the padded slots of a short last batch (sample scope only).
    pad_value: Any = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def present(self, attrs: StoreAttrs) -> bool:
        """Whether a store with these attributes holds this array."""
        if attrs.format_version < self.since:
            return False
        if self.augmentation is None:
            return True
        spec = REGISTRY[self.augmentation]
        return not spec.optional or spec.name in attrs.relabel.extras


def _param_decls(spec: AugmentSpec) -> list[ArrayDecl]:
    return [
        ArrayDecl(
            path=f"pool/{a.name}",
            scope="sample" if a.scope == "sample" else "entry",
            dtype=a.dtype,
            trailing=a.trailing,
            chunking="block",
            compression="small",
            fill_value=a.fill_value,
            dimension_names=a.dimension_names,
            role="param",
            augmentation=spec.name,
            fill_is_data=a.fill_is_data,
            pad_value=a.pad_value,
        )
        for a in spec.arrays
    ]


_FIXED_HEAD = (
    ArrayDecl(
        path="images/pixels",
        scope="image",
        dtype="uint8",
        trailing=(),  # (H, W, 3) from the dataset record
        chunking="image_block",
        compression="images",
        fill_value=0,
        dimension_names=("image", "y", "x", "channel"),
        role="images",
        fill_is_data=True,
    ),
    ArrayDecl(
        path="images/labels",
        scope="image",
        dtype="int32",
        trailing=(),
        chunking="whole",
        compression="images",
        fill_value=-1,
        dimension_names=("image",),
        role="labels",
    ),
    ArrayDecl(
        path="pool/key",
        scope="entry",
        dtype="int32",
        trailing=(2,),
        chunking="block",
        compression="small",
        fill_value=-1,
        dimension_names=("entry", "field"),
        role="key",
    ),
    ArrayDecl(
        path="pool/indices",
        scope="sample",
        dtype="int32",
        trailing=(),
        chunking="block",
        compression="small",
        fill_value=-2,
        dimension_names=("entry", "slot"),
        role="indices",
        pad_value=-1,
    ),
)
_FIXED_TAIL = (
    ArrayDecl(
        path="pool/logits",
        scope="sample",
        dtype="",
        trailing=(),
        chunking="entry",
        compression="logits",
        fill_value=None,  # the codec's: NaN for float16, 255 bytes (a NaN header) for encoded rows
        dimension_names=("entry", "slot", "class"),
        role="logits",
    ),
    ArrayDecl(
        path="pool/fidelity",
        scope="entry",
        dtype="float64",
        trailing=(len(FIDELITY_FIELDS),),
        chunking="block",
        compression="small",
        fill_value=math.nan,
        dimension_names=("entry", "field"),
        role="fidelity",
        since=2,
        # NaN is "not measured" (a derived store's copied entries, a lossless codec's sampling).
        fill_is_data=True,
    ),
    ArrayDecl(
        path="pool/digest",
        scope="entry",
        dtype="uint8",
        trailing=(2, 32),
        chunking="block",
        compression="small",
        # All zeros is no SHA-256 anyone will meet: a lost chunk reads as a digest that fails.
        fill_value=0,
        dimension_names=("entry", "digest", "byte"),
        role="digest",
        since=3,
    ),
    ArrayDecl(
        path="pool/committed",
        scope="entry",
        dtype="bool",
        trailing=(),
        chunking="block",
        compression="small",
        fill_value=False,
        dimension_names=("entry",),
        role="committed",
        fill_is_data=True,
    ),
)

#: Every array of the format, in store order. Read-only.
ARRAYS: tuple[ArrayDecl, ...] = (
    *_FIXED_HEAD,
    *(d for spec in REGISTRY.values() for d in _param_decls(spec)),
    *_FIXED_TAIL,
)
#: The path of every array any store may hold (the guard vets these before zarr parses them).
ALL_PATHS: tuple[str, ...] = tuple(d.path for d in ARRAYS)
_BY_PATH: Mapping[str, ArrayDecl] = types.MappingProxyType({d.path: d for d in ARRAYS})


def declared(path: str) -> ArrayDecl:
    """The declaration of the array at ``path`` (KeyError if none)."""
    return _BY_PATH[path]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Resolved:
    """An array of one particular store: its declaration and its concrete shape, chunks and dtype."""

    decl: ArrayDecl
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    dtype: str
    fill_value: Any

    @property
    def path(self) -> str:
        return self.decl.path

    @property
    def name(self) -> str:
        return self.decl.name


# About 4 MiB of pixels per image chunk.
_IMAGE_CHUNK_BYTES = 4 << 20


def resolve(attrs: StoreAttrs) -> dict[str, Resolved]:
    """Every array that a store with ``attrs`` holds, by path, with its concrete layout."""
    dataset, plan, layout = attrs.dataset, attrs.plan, attrs.layout
    codec = attrs.logits_codec
    n, e, b, block = dataset.num_images, plan.num_kept, plan.batch_size, layout.block_entries
    out: dict[str, Resolved] = {}
    for decl in ARRAYS:
        if not decl.present(attrs):
            continue
        trailing, dtype, fill = decl.trailing, decl.dtype, decl.fill_value
        if decl.role == "images":
            trailing = tuple(dataset.image_shape)
        elif decl.role == "logits":
            trailing, dtype, fill = (codec.row_size,), codec.dtype, codec.fill_value
        lead = {"image": (n,), "entry": (e,), "sample": (e, b)}[decl.scope]
        shape = (*lead, *trailing)
        shards = None
        if decl.chunking == "image_block":
            per_chunk = max(1, min(n, _IMAGE_CHUNK_BYTES // math.prod(trailing)))
            chunks = (per_chunk, *shape[1:])
        elif decl.chunking == "whole":
            chunks = shape
        elif decl.chunking == "block":
            chunks = (block, *shape[1:])
        else:
            chunks = (1, *shape[1:])
            if layout.logits_shard_entries is not None:
                shards = (layout.logits_shard_entries, *shape[1:])
        out[decl.path] = Resolved(
            decl=decl, shape=shape, chunks=chunks, shards=shards, dtype=dtype, fill_value=fill
        )
    return out


def record_fields(attrs: StoreAttrs) -> tuple[str, ...]:
    """The names of the small per-entry arrays that make an entry's record: indices and parameters."""
    return tuple(r.name for r in attrs.arrays.values() if r.decl.role in ("indices", "param"))


def entry_fields(attrs: StoreAttrs) -> tuple[str, ...]:
    """The block-buffered arrays that the writer fills per entry: the record, fidelity and digests (if kept)."""
    return tuple(
        r.name for r in attrs.arrays.values() if r.decl.role in ("indices", "param", "fidelity", "digest")
    )


def bound_fields(attrs: StoreAttrs) -> tuple[str, ...]:
    """The per-entry arrays that an entry digest covers besides the logits, in declaration order.

    Every per-entry array but the key (the digest binds the planned key itself), the commit flag
    (set after the digest is written) and the digest. Empty for stores before format version 3.
    """
    if "pool/digest" not in attrs.arrays:
        return ()
    return tuple(r.name for r in attrs.arrays.values() if r.decl.role in ("indices", "param", "fidelity"))


def row_fields(attrs: StoreAttrs) -> tuple[str, ...]:
    """The per-entry arrays a reader reads for an entry besides its logits and flag.

    The record (:func:`record_fields`) and, from format version 3, the other bound arrays and the
    digests, so that the entry can be checked against its digest.
    """
    extra = ("digest",) if "pool/digest" in attrs.arrays else ()
    return tuple(dict.fromkeys((*record_fields(attrs), *bound_fields(attrs), *extra)))
