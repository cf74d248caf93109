"""The errors that lpldstore raises.

Every error derives from :class:`LpldStoreError` and also from the built-in exception that fits
best, so callers can catch either. Messages follow one template: what was expected, what was got,
and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DamageWarning",
    "EntryError",
    "FormatError",
    "InteropError",
    "LpldStoreError",
    "MissingDependencyError",
    "NotAStoreError",
    "RecordsChangedError",
    "StoreDamagedError",
    "StoreExistsError",
    "StoreLockedError",
    "UnsafePickleError",
    "UnsupportedVersionError",
    "ValidationError",
]


class LpldStoreError(Exception):
    """Base class of every error raised by lpldstore and lpld_pipeline."""


class ConfigError(LpldStoreError, ValueError):
    """A configuration value or a JSON record of one is invalid."""


class ValidationError(LpldStoreError, ValueError):
    """Data given to the writer is invalid; nothing of it was written."""


class EntryError(LpldStoreError, KeyError):
    """An (epoch, batch) entry is not in the plan, not committed, or already written."""

    def __str__(self) -> str:
        # KeyError quotes its argument; these messages are sentences.
        return str(self.args[0]) if self.args else ""


class FormatError(LpldStoreError, ValueError):
    """A store's metadata does not follow the lpldstore format."""


class NotAStoreError(FormatError, FileNotFoundError):
    """The path holds no lpldstore store (nothing, or a foreign Zarr group)."""


class RecordsChangedError(FormatError):
    """Root records of a store no longer match their digests (format version 3); ``changed`` names them."""

    def __init__(self, message: str, changed: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.changed = changed


class UnsupportedVersionError(FormatError):
    """The store's format version is not one that this lpldstore reads."""


class StoreExistsError(LpldStoreError, FileExistsError):
    """The writer was asked to create a store where something already exists."""


class StoreLockedError(LpldStoreError, RuntimeError):
    """Another live writer holds a lease on part of the store this writer was to fill."""


class StoreDamagedError(LpldStoreError, OSError):
    """Stored bytes fail their checksum, are missing, or decode to impossible values."""


class InteropError(LpldStoreError, ValueError):
    """A peer label directory cannot be imported, or a store cannot be exported to a peer layout."""


class UnsafePickleError(InteropError):
    """A peer file would need code beyond the allow-listed tensor and NumPy types to unpickle."""


class ArtifactError(LpldStoreError, OSError):
    """A packed store (zip) or its checksum is missing, damaged or unsafe to unpack."""


class MissingDependencyError(LpldStoreError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


class DamageWarning(UserWarning):
    """Damaged entries were skipped (``LoaderConfig(skip_damaged=True)``); the message says how many."""
