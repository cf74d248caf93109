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

from lpldstore.errors import ConfigError, FormatError, NotAStoreError, UnsupportedVersionError
from lpldstore.format.arrays import Resolved, resolve
from lpldstore.format.augmentations import check_extras
from lpldstore.format.codecs import CODECS, Codec
from lpldstore.format.plan import PruningPlan
from lpldstore.format.records import CodecConfig, DatasetInfo, Layout, Provenance, RelabelConfig, _Record

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "StoreAttrs",
    "images_digest",
]

FORMAT_NAME = "lpldstore"
FORMAT_VERSION = 2
# Version 2 adds the logit codecs (pool/logits as encoded byte rows), codec.temperature and the
# per-entry fidelity array; a version-1 store is a float16 store without pool/fidelity.


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

    @functools.cached_property
    def logits_codec(self) -> Codec:
        """The codec of ``pool/logits``, built once per store."""
        return self.codec.codec(self.dataset.num_classes)

    @functools.cached_property
    def arrays(self) -> Mapping[str, Resolved]:
        """Every array of the store by path (:func:`lpldstore.format.arrays.resolve`), resolved once."""
        return types.MappingProxyType(resolve(self))

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
            self.logits_codec  # noqa: B018 - builds the codec: does it fit the class count?
            check_extras(self.relabel.extras)
        except ConfigError as exc:
            raise FormatError(f"{where}: the codec or the relabel extras do not fit: {exc}") from exc


def images_digest(pixels: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the images (uint8, C order) followed by their labels (little-endian int64)."""
    digest = hashlib.sha256()
    flat = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(len(pixels), -1)
    for start in range(0, len(flat), 1024):  # bounded memory for large image sets
        digest.update(flat[start : start + 1024].tobytes())
    digest.update(np.asarray(labels, dtype="<i8").tobytes())
    return digest.hexdigest()
