"""lpldstore: a chunked, versioned Zarr v3 store for pruned soft-label pools."""

from lpldstore._schema import FORMAT_NAME, FORMAT_VERSION, Layout
from lpldstore._teacher_check import TeacherReport, check_against_teacher
from lpldstore.augment import (
    REGISTRY,
    AugmentParams,
    AugmentSpec,
    StoredArray,
    apply_params,
    check_kernel_name,
    crop_box_sizes,
    draw_params,
    validate_params,
)
from lpldstore.budget import entry_bytes_bound, parse_size, plan_for_budget
from lpldstore.card import store_card
from lpldstore.codecs import CODECS, Codec
from lpldstore.config import CodecConfig, DatasetInfo, Provenance, RelabelConfig
from lpldstore.derive import derive_store, prune, recode
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
    StoreDamagedError,
    StoreExistsError,
    UnsafePickleError,
    UnsupportedVersionError,
    ValidationError,
)
from lpldstore.fidelity import Fidelity
from lpldstore.info import format_store_info, store_info
from lpldstore.loader import LoaderConfig, Policy, PoolBatch, PoolLoader, epoch_schedule
from lpldstore.pack import pack_store, unpack_store
from lpldstore.plan import PruningPlan
from lpldstore.reader import Entry, EntryMetadata, LabelStore, open_store
from lpldstore.sizes import peer_layout_bytes, storage_bytes
from lpldstore.verify import Problem, VerifyReport, verify_store
from lpldstore.writer import StoreWriter

__version__ = "0.1.0"

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "REGISTRY",
    "ArtifactError",
    "AugmentParams",
    "AugmentSpec",
    "CODECS",
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
    "LoaderConfig",
    "Layout",
    "LpldStoreError",
    "MissingDependencyError",
    "NotAStoreError",
    "Policy",
    "PoolBatch",
    "PoolLoader",
    "Problem",
    "Provenance",
    "PruningPlan",
    "RelabelConfig",
    "StoreDamagedError",
    "StoreExistsError",
    "StoreWriter",
    "StoredArray",
    "TeacherReport",
    "UnsafePickleError",
    "UnsupportedVersionError",
    "ValidationError",
    "VerifyReport",
    "__version__",
    "apply_params",
    "check_against_teacher",
    "check_kernel_name",
    "crop_box_sizes",
    "derive_store",
    "draw_params",
    "entry_bytes_bound",
    "format_store_info",
    "epoch_schedule",
    "open_store",
    "pack_store",
    "parse_size",
    "peer_layout_bytes",
    "plan_for_budget",
    "prune",
    "recode",
    "storage_bytes",
    "store_info",
    "store_card",
    "unpack_store",
    "validate_params",
    "verify_store",
]
