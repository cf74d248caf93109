"""What a stored entry's record must look like: the checks that the reader and ``verify`` share.

An entry's record is its image indices and its augmentation parameters (the arrays of roles
``indices`` and ``param`` in :data:`lpldstore.format.arrays.ARRAYS`), padded to the batch size.
:func:`record_problems` checks one padded row of each, derived from the declaration: a value
equal to an impossible fill value means the chunk is missing; padded slots must hold the pad
value; indices must be in range (and follow a seeded plan); and each augmentation's own check
(:data:`lpldstore.format.augmentations.REGISTRY`) must accept its parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from lpldstore.errors import ValidationError
from lpldstore.format.arrays import bound_fields
from lpldstore.format.augmentations import REGISTRY, BatchGeometry
from lpldstore.format.integrity import DIGEST_BYTES, entry_digest, logits_digest
from lpldstore.format.params import AugmentParams
from lpldstore.format.schema import StoreAttrs

__all__ = ["digest_row", "entry_digest_problem", "logits_digest_problem", "params_of", "record_problems"]


def _holds_fill(values: npt.NDArray[Any], fill: Any) -> bool:
    if isinstance(fill, float) and math.isnan(fill):
        return bool(np.isnan(values).any())
    return bool((values == fill).any())


def params_of(row: Mapping[str, npt.NDArray[Any]], n: int, attrs: StoreAttrs) -> AugmentParams:
    """The :class:`AugmentParams` of one padded record row (its first ``n`` slots are real)."""
    arrays: dict[str, npt.NDArray[Any]] = {}
    for array in attrs.arrays.values():
        if array.decl.role == "param":
            value = np.asarray(row[array.name])
            arrays[array.name] = value[:n] if array.decl.scope == "sample" else value
    return AugmentParams.from_arrays(arrays)


def record_problems(
    attrs: StoreAttrs,
    epoch: int,
    batch: int,
    row: Mapping[str, npt.NDArray[Any] | None],
    *,
    check_composition: bool = True,
) -> list[tuple[str, str]]:
    """(array path, message) for everything wrong with one padded record row of entry (epoch, batch).

    ``row`` maps each record array's name to its padded values, or None where the array could not
    be read (then only the other arrays are checked). ``check_composition`` also compares the
    indices with a seeded plan's batch (a permutation of every image: ``verify`` does, a read
    does not).
    """
    plan, dataset, relabel = attrs.plan, attrs.dataset, attrs.relabel
    n = plan.batch_length(batch)
    found: list[tuple[str, str]] = []
    readable: dict[str, npt.NDArray[Any]] = {}
    for array in attrs.arrays.values():
        decl = array.decl
        if decl.role not in ("indices", "param"):
            continue
        value = row.get(array.name)
        if value is None:
            continue
        value = np.asarray(value)
        real, pad = (value[:n], value[n:]) if decl.scope == "sample" else (value, None)
        if not decl.fill_is_data and _holds_fill(real, array.fill_value):
            found.append((decl.path, "chunk missing or damaged (reads as its fill value)"))
            continue
        if pad is not None and pad.size and not _holds_only(pad, decl.pad_value):
            found.append((decl.path, f"padded slots hold values other than {decl.pad_value!r}"))
            continue
        readable[array.name] = value
    indices = readable.get("indices")
    if indices is not None:
        real = indices[:n].astype(np.int64)
        if n and (real.min() < 0 or real.max() >= dataset.num_images):
            found.append(("pool/indices", f"image indices out of range [0, {dataset.num_images})"))
        elif (
            check_composition
            and plan.composition == "seeded"
            and not np.array_equal(real, plan.batch_indices(epoch, batch))
        ):
            found.append(("pool/indices", "batch composition differs from the plan"))
    geometry = BatchGeometry(n=n, image_hw=tuple(dataset.image_shape[:2]), output_size=relabel.output_size)  # type: ignore[arg-type]
    for spec in REGISTRY.values():
        names = [a.name for a in spec.arrays]
        if not all(name in readable for name in names):
            continue
        arrays = {
            a.name: readable[a.name][:n] if a.scope == "sample" else readable[a.name] for a in spec.arrays
        }
        try:
            spec.check(arrays, geometry)
        except ValidationError as exc:
            found.append((f"pool/{names[0]}", str(exc)))
    return found


def _holds_only(values: npt.NDArray[Any], pad: Any) -> bool:
    if isinstance(pad, float) and math.isnan(pad):
        return bool(np.isnan(values).all())
    return bool((values == pad).all())


# -- format version 3: digests -------------------------------------------------------------------


def _logits_digest(attrs: StoreAttrs, epoch: int, batch: int, logits_row: npt.NDArray[Any]) -> bytes:
    dtype = attrs.arrays["pool/logits"].dtype
    return logits_digest(attrs.identity, epoch, batch, np.asarray(logits_row, dtype=dtype))


def _entry_digest(attrs: StoreAttrs, epoch: int, batch: int, row: Mapping[str, Any], logits: bytes) -> bytes:
    fields = [
        (name, np.asarray(row[name], dtype=attrs.arrays[f"pool/{name}"].dtype))
        for name in bound_fields(attrs)
    ]
    return entry_digest(attrs.identity, epoch, batch, fields, logits)


def digest_row(
    attrs: StoreAttrs, epoch: int, batch: int, row: Mapping[str, Any], logits_row: npt.NDArray[Any]
) -> npt.NDArray[np.uint8]:
    """The ``pool/digest`` row (2, 32) of entry (epoch, batch): logits digest, then entry digest.

    ``row`` holds the entry's stored (padded) rows of :func:`lpldstore.format.arrays.bound_fields`,
    ``logits_row`` its stored logits row; both exactly as written.
    """
    logits = _logits_digest(attrs, epoch, batch, logits_row)
    entry = _entry_digest(attrs, epoch, batch, row, logits)
    return np.frombuffer(logits + entry, dtype=np.uint8).reshape(2, DIGEST_BYTES).copy()


def _missing(stored: npt.NDArray[Any]) -> bool:
    return not np.asarray(stored).any()  # the fill value: no digest was ever written here


def logits_digest_problem(
    attrs: StoreAttrs, epoch: int, batch: int, logits_row: npt.NDArray[Any], stored: npt.NDArray[Any]
) -> str | None:
    """What is wrong with the stored logits row against the entry's stored digest row, or None."""
    stored = np.asarray(stored, dtype=np.uint8)
    if _missing(stored):
        return "the entry's digest is missing (its pool/digest chunk is lost)"
    if _logits_digest(attrs, epoch, batch, logits_row) != stored[0].tobytes():
        return (
            "the logits do not match the entry's digest: the chunk is not this entry's (moved, swapped or copied "
            "from another store) or was changed"
        )
    return None


def entry_digest_problem(
    attrs: StoreAttrs, epoch: int, batch: int, row: Mapping[str, Any], stored: npt.NDArray[Any]
) -> str | None:
    """What is wrong with an entry's stored record rows against its stored digest row, or None.

    The logits are bound through the stored logits digest (``stored[0]``), which
    :func:`logits_digest_problem` checks against the logits themselves.
    """
    stored = np.asarray(stored, dtype=np.uint8)
    if _missing(stored):
        return "the entry's digest is missing (its pool/digest chunk is lost)"
    if _entry_digest(attrs, epoch, batch, row, stored[0].tobytes()) != stored[1].tobytes():
        names = ", ".join(f"pool/{n}" for n in bound_fields(attrs))
        return (
            f"the entry's arrays ({names}) do not match its digest: a chunk is not this entry's (moved, swapped "
            "or copied from another store) or was changed"
        )
    return None
