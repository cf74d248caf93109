"""The errors that lpld_pipeline raises: one hierarchy with lpldstore's.

:class:`ConfigError`, :class:`ArtifactError` and :class:`MissingDependencyError` are lpldstore's
own classes, re-exported, so ``except lpldstore.ConfigError`` also catches a pipeline config error
and ``except lpldstore.LpldStoreError`` catches every error of both packages. Each error also
derives from the built-in exception that fits best. Messages say what was expected, what was got,
and what to do about it.
"""

from __future__ import annotations

from lpldstore import ArtifactError, ConfigError, LpldStoreError, MissingDependencyError

__all__ = ["ArtifactError", "ConfigError", "DataError", "MissingDependencyError", "PipelineError"]


class PipelineError(LpldStoreError):
    """Base class of the errors that only lpld_pipeline raises."""


class DataError(PipelineError, ValueError):
    """A dataset is missing, empty or does not fit the teacher."""
