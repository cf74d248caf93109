"""The errors that lpld_pipeline raises.

Each error also derives from the built-in exception that fits best, so callers can catch either.
Messages say what was expected, what was got, and what to do about it.
"""

from __future__ import annotations

__all__ = ["ArtifactError", "ConfigError", "DataError", "PipelineError"]


class PipelineError(Exception):
    """Base class of every error raised by lpld_pipeline."""


class ConfigError(PipelineError, ValueError):
    """A configuration value, file or override is invalid."""


class DataError(PipelineError, ValueError):
    """A dataset is missing, empty or does not fit the teacher."""


class ArtifactError(PipelineError, ValueError):
    """A saved artifact (class statistics, teacher checkpoint) is unreadable or does not match."""
