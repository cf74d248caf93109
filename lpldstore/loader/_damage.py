"""The loader's ``skip_damaged`` option: damaged entries are left out and counted, not fatal.

Without the option the loader stops at the first damaged entry with a
:class:`~lpldstore.errors.StoreDamagedError` naming it. With it, an entry whose logits or small
arrays cannot be read (or read as impossible values) is dropped from the epoch, its (epoch, batch)
is recorded in ``PoolLoader.skipped`` and a :class:`~lpldstore.errors.DamageWarning` at the end of
the epoch says how many were skipped. The images are not skippable: they are read once, whole.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from lpldstore.errors import DamageWarning, StoreDamagedError
from lpldstore.storage.reader import LabelStore

_SKIPPED = "skipped_key"
M = TypeVar("M")


class _Replays(Protocol):
    def replay(self, step: Any) -> dict[str, torch.Tensor]: ...


class SkippingReplayer:
    """Wraps the loader's replayer: a damaged entry yields a marker instead of raising.

    Picklable (the wrapped replayer drops its store handle when pickled), so it works in workers.
    """

    def __init__(self, inner: _Replays) -> None:
        self.inner = inner

    def replay(self, step: Any) -> dict[str, torch.Tensor]:
        try:
            return self.inner.replay(step)
        except StoreDamagedError:
            return {_SKIPPED: torch.tensor([step.epoch, step.batch], dtype=torch.int64)}


def drop_skipped(
    stream: Iterator[dict[str, torch.Tensor]], skipped: list[tuple[int, int]], where: str
) -> Iterator[dict[str, torch.Tensor]]:
    """The stream without skip markers, their keys appended to ``skipped``; warns at the end."""
    for item in stream:
        if _SKIPPED in item:
            epoch, batch = (int(v) for v in item[_SKIPPED].tolist())
            skipped.append((epoch, batch))
            continue
        yield item
    if skipped:
        warnings.warn(
            f"{where}: skipped {len(skipped)} damaged entr{'y' if len(skipped) == 1 else 'ies'} this epoch "
            f"(first: epoch={skipped[0][0]}, batch={skipped[0][1]}); see PoolLoader.skipped and run "
            "`lpldstore verify`.",
            DamageWarning,
            stacklevel=3,
        )


def read_meta_skipping(
    store: LabelStore,
    positions: npt.NDArray[np.int64],
    read: Callable[[LabelStore, npt.NDArray[np.int64]], M],
    skipped: list[tuple[int, int]],
) -> tuple[npt.NDArray[np.int64], M]:
    """``read(store, positions)`` after dropping the positions whose small arrays are damaged."""
    try:
        return positions, read(store, positions)
    except StoreDamagedError:
        pass
    # Find the damaged blocks (the unit of the small arrays' chunks), one block at a time.
    block = store.layout.block_entries
    bad: set[int] = set()
    for number in np.unique(positions // block).tolist():
        span = np.arange(number * block, min((number + 1) * block, store.num_entries), dtype=np.int64)
        try:
            store.metadata(span)
        except StoreDamagedError:
            bad.add(number)
    keep = ~np.isin(positions // block, list(bad))
    skipped.extend((int(e), int(b)) for e, b in store.plan.kept_keys[positions[~keep]])
    return positions[keep], read(store, positions[keep])
