"""The errors that lpldstore raises.

Every error derives from :class:`LpldStoreError` and also from the built-in exception that fits
best, so callers can catch either. Messages follow one template: what was expected, what was got,
and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DamageWarning",
    "EntryError",
    "FormatError",
    "LpldStoreError",
    "NotAStoreError",
    "StoreDamagedError",
    "StoreExistsError",
    "UnsupportedVersionError",
    "ValidationError",
]


class LpldStoreError(Exception):
    """Base class of every error raised by lpldstore."""


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


class UnsupportedVersionError(FormatError):
    """The store's format version is not one that this lpldstore reads."""


class StoreExistsError(LpldStoreError, FileExistsError):
    """The writer was asked to create a store where something already exists."""


class StoreDamagedError(LpldStoreError, OSError):
    """Stored bytes fail their checksum, are missing, or decode to impossible values."""


class DamageWarning(UserWarning):
    """Damaged entries were skipped (``LoaderConfig(skip_damaged=True)``); the message says how many."""
