"""The one way a store is opened, by readers, writers and tools alike: everything checked first.

:func:`open_checked` reads the root ``zarr.json`` itself, parses and checks the root attributes
(format version, records, their digests from version 3, sane sizes), checks every node's
metadata against what the declaration says this store must hold (codecs, data types, chunk
grids, fill values, field for field), pins the vetted documents so that zarr parses exactly
them, declares the arrays' chunk keys and size bounds to the :class:`BoundedStore`, and only
then lets zarr open the group. A store whose metadata cannot be fully checked is refused.
"""

from __future__ import annotations

import dataclasses
import json

import zarr

from lpldstore.errors import FormatError
from lpldstore.format.schema import StoreAttrs
from lpldstore.storage import _guard
from lpldstore.storage._arrays import GENERATIONS, check_arrays, compressor_names, expected_metadata
from lpldstore.storage._open import open_root
from lpldstore.storage._safe import BoundedStore, chunk_rules

__all__ = ["Opened", "open_checked"]


@dataclasses.dataclass(frozen=True)
class Opened:
    """A checked store: its bounded zarr store, root group, parsed attributes and arrays by path."""

    store: BoundedStore
    root: zarr.Group
    attrs: StoreAttrs
    arrays: dict[str, zarr.Array]


def open_checked(store: BoundedStore, where: str, *, mode: str = "r") -> Opened:
    """Check ``store`` completely (see the module docstring) and open it with zarr in ``mode``."""
    root_doc = _guard.read_root(store, where)
    attrs = StoreAttrs.from_json(root_doc.get("attributes", {}), where)
    expected = expected_metadata(attrs)
    groups = sorted({path.rpartition("/")[0] for path in expected})
    store.allow_metadata((*groups, *expected))
    # The metadata must be one compressor generation's, field for field (stores written before
    # issue 16 keep their compressors); when none fits, the error names the current generation's.
    first: FormatError | None = None
    for generation in GENERATIONS:
        try:
            pinned = _guard.check_nodes(
                store, root_doc, expected_metadata(attrs, generation), attrs.format_version, where
            )
            break
        except FormatError as exc:
            first = first or exc
    else:
        assert first is not None
        raise first
    store.pin("zarr.json", json.dumps(root_doc).encode())
    for key, document in pinned.items():
        store.pin(key, document)
    store.declare(chunk_rules(attrs.arrays, compressor_names(attrs, generation)))
    if store.member_sizes is not None:
        for name in store.member_sizes:
            try:
                store.limit(name)
            except FormatError:
                raise FormatError(
                    f"{where}: zip member {name[:120]!r} is not a file of this store (not the metadata or a chunk "
                    "of a declared array). A packed store holds only its own files; this archive is refused."
                ) from None
    root = open_root(store, where, mode=mode)
    arrays = check_arrays(root, attrs, where)
    return Opened(store=store, root=root, attrs=attrs, arrays=arrays)
