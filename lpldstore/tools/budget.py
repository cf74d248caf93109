"""Planning by byte budget: the pruning plan whose store (images plus labels) fits a size.

A budget is an alternative to a ratio: :func:`plan_for_budget` keeps as many entries as fit in
what the images leave, and :func:`entry_bytes_bound` bounds an entry's bytes before anything is
written (a codec's raw row bytes plus per-chunk framing; compression only lowers it).
"""

from __future__ import annotations

import dataclasses
import math
import re
from fractions import Fraction

import numpy as np

from lpldstore.errors import ConfigError, ValidationError
from lpldstore.format.plan import PruningPlan
from lpldstore.format.records import CodecConfig

__all__ = ["entry_bytes_bound", "parse_size", "plan_for_budget"]

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
# Per chunk: blosc's 16-byte header plus crc32c's 4 bytes; zstd frames are smaller.
_CHUNK_OVERHEAD = 32
# The small per-entry arrays (indices int32, crop 4 x int16, flip, mix_index int16 per slot; lambda,
# box, commit flag, key and fidelity per entry), uncompressed.
_SLOT_BYTES = 4 + 8 + 1 + 2
_ENTRY_BYTES = 4 + 8 + 1 + 8 + 5 * 8


def parse_size(text: str | int) -> int:
    """Bytes in a size such as ``100MB``, ``1.5 GB``, ``64MiB`` or ``123456`` (decimal units: MB = 10**6)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        if not match or match.group(2).upper() not in _UNITS:
            raise ConfigError(
                f"Expected a size such as 100MB, 1.5GB, 64MiB or a number of bytes. Got {text!r} instead."
            )
        value, unit = float(match.group(1)), match.group(2).upper()
    size = math.floor(value * _UNITS[unit])
    if size <= 0:
        raise ConfigError(f"Expected a positive size. Got {text!r} instead.")
    return size


def entry_bytes_bound(codec: CodecConfig, num_classes: int, batch_size: int) -> int:
    """An upper bound on one entry's bytes on disk with ``codec`` (before compression gains)."""
    logits = batch_size * codec.codec(num_classes).row_bytes() + _CHUNK_OVERHEAD
    return logits + batch_size * _SLOT_BYTES + _ENTRY_BYTES


def plan_for_budget(plan: PruningPlan, budget: int, *, fixed_bytes: int, entry_bytes: float) -> PruningPlan:
    """``plan`` with the ratio that keeps the most entries fitting ``budget``.

    ``fixed_bytes`` is what the store takes whatever it keeps (images, metadata); ``entry_bytes``
    the bytes of one kept entry. The strategy, seed and schedule of ``plan`` are kept.
    """
    room = budget - fixed_bytes
    fits = math.floor(room / entry_bytes) if room > 0 else 0
    per_epoch = plan.batches_per_epoch
    least = per_epoch if plan.strategy == "epoch" else 1
    if fits < least:
        raise ValidationError(
            f"A budget of {budget:,} bytes does not fit: the images and metadata take {fixed_bytes:,} bytes and "
            f"each entry about {entry_bytes:,.0f} (the '{plan.strategy}' strategy keeps at least {least}). "
            f"Give a budget of at least {fixed_bytes + math.ceil(least * entry_bytes):,} bytes."
        )
    total = plan.total_entries
    if plan.strategy == "epoch":
        epochs = min(plan.epochs, fits // per_epoch)
        ratio = _ratio_keeping(plan.epochs, epochs)
    else:
        ratio = _ratio_keeping(total, min(total, fits))
    return dataclasses.replace(plan, ratio=ratio)


def _ratio_keeping(total: int, kept: int) -> float:
    """The largest float ratio r with floor(total / r) == kept."""
    if kept >= total:
        return 1.0
    ratio = float(total) / kept
    while math.floor(Fraction(total) / Fraction(ratio)) < kept:
        ratio = float(np.nextafter(ratio, 0.0))
    while math.floor(Fraction(total) / Fraction(float(np.nextafter(ratio, np.inf)))) == kept:
        ratio = float(np.nextafter(ratio, np.inf))
    return ratio
