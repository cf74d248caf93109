"""The names of the peer layouts and rules, without importing the converters (which need torch)."""

from __future__ import annotations

__all__ = ["EXPORT_LAYOUTS", "FKD_RULES", "IMPORT_LAYOUTS"]

#: Layouts that ``lpldstore import --from`` reads (one module each in ``lpldstore.interop``).
IMPORT_LAYOUTS = ("fkd", "gvbsm", "hald", "lpld", "lpqld", "sre2l")
#: Layouts that ``lpldstore export --to`` writes.
EXPORT_LAYOUTS = ("lpld", "sre2l")
#: FKD's rules for turning stored top-k probabilities back into soft labels.
FKD_RULES = ("marginal_smoothing", "marginal_renorm", "hard", "smoothing")
