"""lpldstore: a chunked, versioned Zarr v3 store for pruned soft-label pools.

The package is layered (``docs/architecture.md``): ``format`` (what a store is), ``storage``
(reading and writing it with zarr), ``tools`` (whole-store commands), all without torch; then
``augment`` (replay kernels), ``loader`` (the pool loader) and ``interop`` (the peers' pickled
layouts), which need torch. Every public name is exported here; the torch-facing ones
(:func:`apply_params`, :class:`PoolLoader`, :class:`PoolDataset`, ...) are imported on first use, so opening, reading,
verifying and packing a store never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lpldstore._lazy import lazy_attributes
from lpldstore._version import __version__
from lpldstore.errors import (
    ArtifactError,
    ConfigError,
    DamageWarning,
    EntryError,
    FormatError,
    InteropError,
    LpldStoreError,
    MissingDependencyError,
    NotAStoreError,
    RecordsChangedError,
    StoreDamagedError,
    StoreExistsError,
    StoreLockedError,
    UnsafePickleError,
    UnsupportedVersionError,
    ValidationError,
)
from lpldstore.format.arrays import ARRAYS, ArrayDecl
from lpldstore.format.augmentations import REGISTRY, AugmentSpec, StoredArray, crop_box_sizes
from lpldstore.format.codecs import CODECS, Codec
from lpldstore.format.fidelity import Fidelity
from lpldstore.format.params import AugmentParams, check_kernel_name, draw_params, validate_params
from lpldstore.format.plan import PruningPlan
from lpldstore.format.records import CodecConfig, DatasetInfo, Layout, Provenance, RelabelConfig
from lpldstore.format.schema import FORMAT_NAME, FORMAT_VERSION
from lpldstore.storage.background import BackgroundWriter
from lpldstore.storage.reader import Entry, EntryMetadata, LabelStore, open_store
from lpldstore.storage.writer import StoreWriter
from lpldstore.tools.budget import entry_bytes_bound, parse_size, plan_for_budget
from lpldstore.tools.card import store_card
from lpldstore.tools.derive import derive_store, prune, recode, upgrade
from lpldstore.tools.info import format_store_info, store_info
from lpldstore.tools.pack import pack_store, unpack_store
from lpldstore.tools.sizes import peer_layout_bytes, storage_bytes
from lpldstore.tools.verify import Problem, VerifyReport, verify_store

if TYPE_CHECKING:
    from lpldstore.augment import apply_params
    from lpldstore.loader import LoaderConfig, Policy, PoolBatch, PoolDataset, PoolLoader, epoch_schedule

# The torch-facing names, by the module that defines them.
_LAZY = {
    "apply_params": "lpldstore.augment",
    "LoaderConfig": "lpldstore.loader",
    "Policy": "lpldstore.loader",
    "PoolBatch": "lpldstore.loader",
    "PoolDataset": "lpldstore.loader",
    "PoolLoader": "lpldstore.loader",
    "epoch_schedule": "lpldstore.loader",
}

__all__ = [
    "ARRAYS",
    "CODECS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "REGISTRY",
    "ArrayDecl",
    "ArtifactError",
    "AugmentParams",
    "AugmentSpec",
    "BackgroundWriter",
    "Codec",
    "CodecConfig",
    "ConfigError",
    "DamageWarning",
    "DatasetInfo",
    "Entry",
    "EntryError",
    "EntryMetadata",
    "Fidelity",
    "FormatError",
    "InteropError",
    "LabelStore",
    "Layout",
    "LpldStoreError",
    "MissingDependencyError",
    "NotAStoreError",
    "Problem",
    "Provenance",
    "PruningPlan",
    "RecordsChangedError",
    "RelabelConfig",
    "StoreDamagedError",
    "StoreExistsError",
    "StoreLockedError",
    "StoreWriter",
    "StoredArray",
    "UnsafePickleError",
    "UnsupportedVersionError",
    "ValidationError",
    "VerifyReport",
    "__version__",
    "check_kernel_name",
    "crop_box_sizes",
    "derive_store",
    "draw_params",
    "entry_bytes_bound",
    "format_store_info",
    "open_store",
    "pack_store",
    "parse_size",
    "peer_layout_bytes",
    "plan_for_budget",
    "prune",
    "recode",
    "storage_bytes",
    "store_card",
    "store_info",
    "unpack_store",
    "upgrade",
    "validate_params",
    "verify_store",
    # imported on first use (torch)
    "LoaderConfig",
    "Policy",
    "PoolBatch",
    "PoolDataset",
    "PoolLoader",
    "apply_params",
    "epoch_schedule",
]

if not TYPE_CHECKING:  # type checkers see the imports above; a typo stays an error for them
    __getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
