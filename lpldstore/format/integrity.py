"""Format version 3's binding of every entry to its key and its store, and of the root records.

A CRC-32C proves that a chunk is intact, not that it belongs where it lies. Version 3 adds:

- **Record digests.** The root attribute ``integrity`` holds, for each root record (``dataset``,
  ``plan``, ``relabel``, ``codec``, ``layout``, ``provenance``), the SHA-256 of its canonical JSON
  (:func:`canonical_json`), and a random ``store_id`` drawn when the store is created.
- **The store's identity**, :func:`store_identity`: SHA-256 over the store id and the digests of
  the records that give the entries their meaning (``dataset``, ``plan``, ``relabel``, ``codec``).
  ``layout`` (how the pool is cut into files) and ``provenance`` (which an importer completes
  after the entries are written) are checked by their own digests only, so a store cut into
  files differently keeps its entry digests. An edited record, or a chunk from another store,
  fails.
- **Entry digests**, stored in ``pool/digest`` (E, 2, 32) through the array declaration:
  ``[0]`` binds the stored logits row to (identity, epoch, batch) (:func:`logits_digest`);
  ``[1]`` binds every other per-entry array of the entry and the logits digest
  (:func:`entry_digest`). A chunk moved to another position, swapped with another chunk of the
  same size, or copied from another store fails them and names the entry.

What is hashed is the array *values* as stored (after zarr has removed compression and
checksums), in C order and little-endian, padding slots included, each prefixed by the array's
name, dtype and shape; NaNs are hashed as one canonical NaN. So the digests do not depend on
compression, chunking or sharding (the same entries cut into other files verify with the same
digests), and the writer hashes what it is about to write without reading anything back.

SHA-256 was chosen by measurement (``benchmarks/digest_cost.py``): with the SHA extensions of
current x86 and ARM CPUs hashlib's SHA-256 hashed a logits row 1.8 to 2.7 times as fast as BLAKE2b
(and faster still than BLAKE2s) on the machine the figures were taken on. No key is used: the
digests are checked by anyone who holds the store, and a key that readers hold could be used by
anyone to forge them. What this does and does not protect against is in ``docs/reliability.md``
(threat model).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from lpldstore.errors import ConfigError
from lpldstore.format.records import _Record

__all__ = [
    "ALGORITHM",
    "DIGEST_BYTES",
    "IDENTITY_RECORDS",
    "RECORDS",
    "Integrity",
    "canonical_json",
    "entry_digest",
    "logits_digest",
    "record_digest",
    "store_identity",
]

ALGORITHM = "sha256"
DIGEST_BYTES = 32
#: The root records that carry a digest.
RECORDS: tuple[str, ...] = ("dataset", "plan", "relabel", "codec", "layout", "provenance")
#: The records hashed into the store's identity, in this order: what an entry means.
IDENTITY_RECORDS: tuple[str, ...] = ("dataset", "plan", "relabel", "codec")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")


def canonical_json(value: Any) -> bytes:
    """The one byte string of a JSON value: sorted keys, no spaces, ASCII, shortest float repr."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def record_digest(name: str, value: Any) -> str:
    """Hex SHA-256 of root record ``name`` as stored (its canonical JSON), domain-separated by name."""
    h = hashlib.sha256(b"lpldstore/record/v3\0")
    h.update(name.encode("ascii") + b"\0")
    h.update(canonical_json(value))
    return h.hexdigest()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Integrity(_Record):
    """The ``integrity`` root attribute of a version-3 store.

    ``store_id`` is 32 random hex digits drawn when the store is created (a derived store draws
    its own); ``records`` maps every name of :data:`RECORDS` to :func:`record_digest` of it.
    """

    record_name: ClassVar[str] = "integrity"

    algorithm: str
    store_id: str
    records: Mapping[str, str]

    def __post_init__(self) -> None:
        if self.algorithm != ALGORITHM:
            raise ConfigError(
                f"integrity.algorithm must be {ALGORITHM!r} (format version 3). Got {self.algorithm!r} instead."
            )
        if not isinstance(self.store_id, str) or not _HEX32.fullmatch(self.store_id):
            raise ConfigError(
                f"integrity.store_id must be 32 lowercase hex digits. Got {self.store_id!r} instead."
            )
        if not isinstance(self.records, Mapping) or sorted(self.records) != sorted(RECORDS):
            got = sorted(self.records) if isinstance(self.records, Mapping) else type(self.records).__name__
            raise ConfigError(f"integrity.records must name exactly {sorted(RECORDS)}. Got {got} instead.")
        for name, digest in self.records.items():
            if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
                raise ConfigError(f"integrity.records.{name} must be a 64-digit hex SHA-256. Got {digest!r}.")

    @classmethod
    def of(cls, store_id: str, records: Mapping[str, Any]) -> Integrity:
        """The integrity record of root records given as their JSON values."""
        return cls(
            algorithm=ALGORITHM,
            store_id=store_id,
            records={name: record_digest(name, records[name]) for name in RECORDS},
        )

    def changed(self, records: Mapping[str, Any]) -> list[str]:
        """The names of the records (JSON values, as stored) whose digest differs."""
        return [name for name in RECORDS if record_digest(name, records.get(name)) != self.records[name]]


def store_identity(integrity: Integrity) -> bytes:
    """The 32-byte identity of a store: its id and the digests of :data:`IDENTITY_RECORDS`."""
    h = hashlib.sha256(b"lpldstore/identity/v3\0")
    h.update(integrity.store_id.encode("ascii"))
    for name in IDENTITY_RECORDS:
        h.update(b"\0" + name.encode("ascii") + b"=" + integrity.records[name].encode("ascii"))
    return h.digest()


# Exponent and mantissa masks of IEEE floats, by item size: NaN is "exponent all ones, mantissa
# not zero". Testing the bits is an integer operation; np.isnan on float16 is ten times slower.
_LITTLE = np.little_endian
_NAN_MASKS = {2: (0x7C00, 0x03FF), 4: (0x7F800000, 0x007FFFFF), 8: (0x7FF0000000000000, 0x000FFFFFFFFFFFFF)}


def _canonical_values(values: npt.NDArray[Any]) -> memoryview:
    """The values as little-endian C-order bytes; bools as 0/1 bytes; every NaN as one canonical NaN."""
    arr = np.ascontiguousarray(values)
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not _LITTLE):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if arr.dtype.kind == "b":
        arr = arr.view(np.uint8)
    elif arr.dtype.kind == "f":
        exponent, mantissa = _NAN_MASKS[arr.dtype.itemsize]
        bits = arr.view(f"<u{arr.dtype.itemsize}")
        special = (bits & exponent) == exponent  # inf or NaN: rare, so the mantissa test waits for one
        if special.any():
            nan = special & ((bits & mantissa) != 0)
            if nan.any():  # a missing chunk's fill and a written NaN must hash alike
                arr = np.where(nan, np.array(math.nan, dtype=arr.dtype), arr)
    return np.ascontiguousarray(arr).data.cast("B")


def _update(h: Any, name: str, values: npt.NDArray[Any]) -> None:
    arr = np.asarray(values)
    dtype = "|b1" if arr.dtype.kind == "b" else arr.dtype.newbyteorder("<").str
    h.update(f"{name}\0{dtype}\0{arr.shape}\0".encode("ascii"))
    h.update(_canonical_values(arr))


def _key(h: Any, identity: bytes, epoch: int, batch: int) -> None:
    h.update(identity)
    h.update(np.array([epoch, batch], dtype="<i8").tobytes())


def logits_digest(identity: bytes, epoch: int, batch: int, row: npt.NDArray[Any]) -> bytes:
    """Digest ``[0]`` of entry (epoch, batch): its stored logits row (B, R), padding included."""
    h = hashlib.sha256(b"lpldstore/logits/v3\0")
    _key(h, identity, epoch, batch)
    _update(h, "logits", row)
    return h.digest()


def entry_digest(
    identity: bytes,
    epoch: int,
    batch: int,
    fields: Iterable[tuple[str, npt.NDArray[Any]]],
    logits: bytes,
) -> bytes:
    """Digest ``[1]`` of entry (epoch, batch): every other per-entry array's row, then digest ``[0]``.

    ``fields`` gives (array name, stored row) in the order of the declaration
    (:func:`lpldstore.format.arrays.bound_fields`).
    """
    h = hashlib.sha256(b"lpldstore/entry/v3\0")
    _key(h, identity, epoch, batch)
    for name, values in fields:
        _update(h, name, values)
    h.update(b"logits\0" + logits)
    return h.digest()
