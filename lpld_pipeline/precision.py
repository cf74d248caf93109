"""The arithmetic a relabel ran in, as the store records it, and what ``verify --teacher`` allows for it.

A relabel on a GPU runs in bf16 by default (``amp="auto"``) and its float32 convolutions may use
TF32 (cuDNN's default); ``lpld verify --teacher`` re-runs the teacher elsewhere, usually on the
CPU. So the relabel stage records, in the store's provenance (``provenance.config["precision"]``,
free-form JSON: lpldstore stays unaware of torch), a :func:`relabel_precision` record::

    {"device_type": "cuda", "precision": "bfloat16", "autocast": "bfloat16", "tf32": true}

``precision`` is the one that decides the numbers: the autocast dtype (``bfloat16``/``float16``)
if any, else ``tf32`` where TF32 was allowed on a GPU, else ``float32``. The check runs the
teacher under the same autocast dtype (on the CPU TF32 does not exist: ``tf32`` is checked in
float32) and allows, per entry, ``slack + rel * max|stored logit|`` (:data:`TOLERANCES`):
``rel`` is float16 storage rounding (2^-10) plus the precision's own arithmetic, set at about four
times the largest ``max|logits - float32 logits| / max|float32 logits|`` that
``benchmarks/verify_tolerance.py`` measured on the CPU (bfloat16 8.2e-3, float16 9.0e-4: its
JSON; TF32 keeps float16's 10-bit mantissa and gets float16's allowance), because the same
precision on two devices may differ by the sum of the two distances. A store with no record
(written before the record existed, or by :func:`~lpld_pipeline.relabel.relabel_entries` alone)
is checked as float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

__all__ = ["TOLERANCES", "Precision", "autocast_of", "recorded_precision", "relabel_precision", "tolerance"]

Precision = Literal["float32", "tf32", "bfloat16", "float16"]

_STORAGE_REL = 2.0**-10  # float16 storage keeps 11 significant bits: rounding moves a logit by 2^-11 of it
# (absolute slack, relative allowance) per precision; see the module docstring for the figures.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-2, _STORAGE_REL),
    "tf32": (1e-2, _STORAGE_REL + 2.0**-8),
    "float16": (1e-2, _STORAGE_REL + 2.0**-8),
    "bfloat16": (1e-2, _STORAGE_REL + 2.0**-5),
}
_AUTOCAST = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def relabel_precision(autocast: torch.dtype | None, device: torch.device) -> dict[str, Any]:
    """The record of a relabel that runs under ``autocast`` (None: float32) on ``device``."""
    tf32 = device.type == "cuda" and bool(
        torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    )
    name = None if autocast is None else str(autocast).removeprefix("torch.")
    precision = name or ("tf32" if tf32 else "float32")
    return {"device_type": device.type, "precision": precision, "autocast": name, "tf32": tf32}


def recorded_precision(provenance_config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The precision record of a store's provenance config, or None where it has none."""
    record = provenance_config.get("precision")
    if not isinstance(record, Mapping) or record.get("precision") not in TOLERANCES:
        return None
    return dict(record)


def autocast_of(precision: str) -> torch.dtype | None:
    """The autocast dtype that reproduces ``precision`` (None: plain float32)."""
    return _AUTOCAST.get(precision)


def tolerance(precision: str, max_abs_logit: float) -> float:
    """The largest |teacher logit - stored logit| allowed in an entry of ``precision``."""
    slack, rel = TOLERANCES[precision]
    return slack + rel * max_abs_logit
