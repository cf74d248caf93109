"""lpldstore: a chunked, versioned Zarr v3 store for pruned soft-label pools."""

from lpldstore.config import CodecConfig, DatasetInfo, Provenance, RelabelConfig
from lpldstore.errors import (
    ConfigError,
    EntryError,
    FormatError,
    LpldStoreError,
    NotAStoreError,
    StoreDamagedError,
    StoreExistsError,
    UnsupportedVersionError,
    ValidationError,
)

__version__ = "0.1.0"

__all__ = [
    "CodecConfig",
    "ConfigError",
    "DatasetInfo",
    "EntryError",
    "FormatError",
    "LpldStoreError",
    "NotAStoreError",
    "Provenance",
    "RelabelConfig",
    "StoreDamagedError",
    "StoreExistsError",
    "UnsupportedVersionError",
    "ValidationError",
    "__version__",
]
