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
from lpldstore.format.augmentations import REGISTRY, BatchGeometry
from lpldstore.format.params import AugmentParams
from lpldstore.format.schema import StoreAttrs

__all__ = ["params_of", "record_problems"]


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
