"""A store's root attributes: the format name and version and the records that give its meaning.

``docs/format.md`` is the prose version of this module and of :mod:`lpldstore.format.arrays`; keep
them in step.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from lpldstore.errors import (
    ConfigError,
    FormatError,
    NotAStoreError,
    RecordsChangedError,
    UnsupportedVersionError,
)
from lpldstore.format.arrays import Resolved, resolve
from lpldstore.format.augmentations import check_extras
from lpldstore.format.codecs import CODECS, Codec
from lpldstore.format.integrity import RECORDS, Integrity, store_identity
from lpldstore.format.plan import PruningPlan
from lpldstore.format.records import CodecConfig, DatasetInfo, Layout, Provenance, RelabelConfig, _Record

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_ENTRIES",
    "StoreAttrs",
    "images_digest",
]

FORMAT_NAME = "lpldstore"
FORMAT_VERSION = 3
# Version 2 adds the logit codecs (pool/logits as encoded byte rows), codec.temperature and the
# per-entry fidelity array; a version-1 store is a float16 store without pool/fidelity. Version 3
# adds the integrity record (record digests, store id) and pool/digest (lpldstore.format.integrity).

# Sane limits on what a store may declare: a few kilobytes of metadata must not make a reader
# allocate gigabytes. The largest real stores are far below them (ImageNet-1K at IPC200, 300
# epochs, batch 128, unpruned: 469,000 entries; ImageNet-21K at IPC20: 128,000).
MAX_ENTRIES = 1 << 23
MAX_TOTAL_ENTRIES = (1 << 31) - 1  # global entry ids
MAX_IMAGES = (1 << 31) - 1  # int32 image indices
MAX_CLASSES = 1 << 20
MAX_IMAGE_BYTES = 1 << 40


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoreAttrs:
    """The root attributes of a store, parsed; its logits codec is built once, on first use."""

    dataset: DatasetInfo
    plan: PruningPlan
    relabel: RelabelConfig
    codec: CodecConfig
    layout: Layout
    provenance: Provenance
    format_version: int = FORMAT_VERSION
    # Version 3 on: record digests and the store id (None before version 3).
    integrity: Integrity | None = None

    @property
    def bound(self) -> bool:
        """Whether entries and records carry digests (format version 3 on)."""
        return self.integrity is not None

    @functools.cached_property
    def identity(self) -> bytes:
        """The store's 32-byte identity (:func:`lpldstore.format.integrity.store_identity`)."""
        if self.integrity is None:
            raise FormatError(
                f"A format version {self.format_version} store carries no identity (added in version 3)."
            )
        return store_identity(self.integrity)

    def records_json(self) -> dict[str, Any]:
        """The root records as JSON values, by name (what the record digests cover)."""
        return {
            "dataset": self.dataset.to_dict(),
            "plan": self.plan.to_dict(),
            "relabel": self.relabel.to_dict(),
            "codec": self.codec.to_dict(),
            "layout": self.layout.to_dict(),
            "provenance": self.provenance.to_dict(),
        }

    @functools.cached_property
    def logits_codec(self) -> Codec:
        """The codec of ``pool/logits``, built once per store."""
        return self.codec.codec(self.dataset.num_classes)

    @functools.cached_property
    def arrays(self) -> Mapping[str, Resolved]:
        """Every array of the store by path (:func:`lpldstore.format.arrays.resolve`), resolved once."""
        return types.MappingProxyType(resolve(self))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT_NAME, "format_version": self.format_version}
        out |= self.records_json()
        if self.integrity is not None:
            out["integrity"] = self.integrity.to_dict()
        return out

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
        known = {"format", "format_version", *RECORDS} | ({"integrity"} if version >= 3 else set())
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
        if version >= 3:
            records["integrity"] = Integrity
        for key, record in records.items():
            if key not in attrs:
                raise FormatError(f"{where}: root attribute '{key}' is missing.")
            value = attrs[key]
            if key == "codec" and isinstance(value, Mapping) and "fidelity_rate" not in value:
                # Written before the rate was recorded: a lossy codec's writer measured every entry.
                name = value.get("name", "float16")
                if name in CODECS and not CODECS[name].lossless:
                    value = {**value, "fidelity_rate": 1.0}
            try:
                parsed[key] = record.from_dict(value)
            except ConfigError as exc:
                raise FormatError(f"{where}: root attribute '{key}' is invalid: {exc}") from exc
        integrity = parsed.get("integrity")
        if integrity is not None:
            # Checked on the JSON as stored, before anything is derived from the records.
            changed = integrity.changed(attrs)
            if changed:
                raise RecordsChangedError(
                    f"{where}: root record(s) {changed} do not match their digests in the integrity record: "
                    "they were changed after the store was written. The store cannot be trusted; get it again "
                    "from its source.",
                    tuple(changed),
                )
        out = cls(**parsed, format_version=version)
        if version < 2 and out.codec != CodecConfig():
            raise FormatError(
                f"{where}: format version 1 stores hold float16 logits; the codec says {out.codec}."
            )
        out.check_consistent(where)
        return out

    def check_consistent(self, where: str) -> None:
        self.check_limits(where)
        if self.plan.num_images != self.dataset.num_images:
            raise FormatError(
                f"{where}: plan.num_images ({self.plan.num_images}) differs from dataset.num_images "
                f"({self.dataset.num_images})."
            )
        try:
            self.logits_codec  # noqa: B018 - builds the codec: does it fit the class count?
            check_extras(self.relabel.extras)
        except ConfigError as exc:
            raise FormatError(f"{where}: the codec or the relabel extras do not fit: {exc}") from exc

    def check_limits(self, where: str) -> None:
        """Refuse declared sizes beyond :data:`MAX_ENTRIES` and the other sane limits."""
        plan, dataset = self.plan, self.dataset
        h, w, c = dataset.image_shape
        checks = (
            (
                "planned entries (epochs x batches per epoch)",
                plan.epochs * -(-plan.num_images // plan.batch_size),
                MAX_TOTAL_ENTRIES,
            ),
            ("images", dataset.num_images, MAX_IMAGES),
            ("classes", dataset.num_classes, MAX_CLASSES),
            ("bytes of images", dataset.num_images * h * w * c, MAX_IMAGE_BYTES),
        )
        for what, value, limit in checks:
            if value > limit:
                raise FormatError(
                    f"{where} declares {value:,} {what}; lpldstore reads at most {limit:,}. The metadata is "
                    "forged or damaged."
                )
        if plan.num_kept > MAX_ENTRIES:
            raise FormatError(
                f"{where} declares {plan.num_kept:,} entries; lpldstore reads at most {MAX_ENTRIES:,}. The "
                "metadata is forged or damaged."
            )


def images_digest(pixels: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the images (uint8, C order) followed by their labels (little-endian int64)."""
    digest = hashlib.sha256()
    flat = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(len(pixels), -1)
    for start in range(0, len(flat), 1024):  # bounded memory for large image sets
        digest.update(flat[start : start + 1024].tobytes())
    digest.update(np.asarray(labels, dtype="<i8").tobytes())
    return digest.hexdigest()
