"""The pruning plan: which (epoch, batch) label entries a store keeps, and what each batch holds.

A plan is a pure function of its fields. Relabeling runs the teacher on the kept entries only, so
a 40x plan is 40x less teacher work as well as 40x less storage.

Global entry ids run over every planned entry, ``epoch * batches_per_epoch + batch``; a store
holds the kept ones in ascending order, so an entry's *position* in the store is its rank among
the kept ids.

Strategies
----------
``prefix``
    The first ``floor(total / ratio)`` global ids: what the LPLD reference code generates. Epochs
    are independent augmentation draws, so a prefix is as good a sample as any.
``random``
    ``floor(total / ratio)`` ids drawn uniformly without replacement.
``epoch``
    The first ``max(1, floor(epochs / ratio))`` whole epochs (LPLD's epoch-level pool).

Batch composition
-----------------
Epoch ``e`` shuffles the images with a permutation and cuts it into consecutive batches. The
permutation comes from ``sampler``: ``lpldstore`` (the default) draws it from ``(seed, e)`` alone
with NumPy; ``sre2l`` gives the ``e``-th permutation of ``torch.utils.data.RandomSampler`` with a
``torch.Generator`` seeded ``seed`` and iterated once per epoch, as the SRe2L / CDA / LPLD relabel
scripts draw their batches (``--fkd-seed 42``), computed here without torch, so that a store
exports to those layouts exactly (``lpldstore export --to sre2l``). A short last batch is dropped (``last_batch="drop"``) or kept with fewer
images (``last_batch="pad"``: the store pads it with -1). ``composition="explicit"`` records
that the batches came from elsewhere (an imported label directory, say): the plan then fixes only
how many images each batch holds.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from functools import cached_property
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import numpy.typing as npt

from lpldstore.errors import ConfigError, EntryError
from lpldstore.format.records import _Record

__all__ = ["Composition", "LastBatch", "PruningPlan", "Sampler", "Strategy"]

Strategy = Literal["prefix", "random", "epoch"]
LastBatch = Literal["drop", "pad"]
Composition = Literal["seeded", "explicit"]
Sampler = Literal["lpldstore", "sre2l"]

# Distinct streams for the two random draws, so that changing the strategy never changes the
# batch composition.
_COMPOSITION_STREAM = 0
_SELECTION_STREAM = 1


def _int_field(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"plan.{name} must be an integer >= {minimum}. Got {value!r} instead.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PruningPlan(_Record):
    """Which label entries exist and which images each batch holds.

    Parameters
    ----------
    num_images, batch_size, epochs
        The relabel schedule: ``epochs`` augmentation epochs over ``num_images`` images in batches
        of ``batch_size``.
    ratio
        Keep ``1/ratio`` of the entries; any real number >= 1 (1 keeps everything).
    strategy
        ``prefix``, ``random`` or ``epoch`` (see the module docstring).
    seed
        Seeds the batch composition and, for ``random``, the selection.
    last_batch
        ``drop`` or ``pad`` a short last batch of an epoch.
    composition
        ``seeded`` (batches are a function of ``seed``) or ``explicit`` (given by the writer).
    sampler
        How a seeded composition draws each epoch's permutation: ``lpldstore`` or ``sre2l``
        (torch's ``RandomSampler`` as the SRe2L family's relabel scripts use it; see the module
        docstring). Written to the store only when it is not the default.
    """

    record_name: ClassVar[str] = "plan"
    written_if_set: ClassVar[tuple[str, ...]] = ("sampler",)

    num_images: int
    batch_size: int
    epochs: int
    ratio: float = 1.0
    strategy: Strategy = "prefix"
    seed: int = 0
    last_batch: LastBatch = "drop"
    composition: Composition = "seeded"
    sampler: Sampler = "lpldstore"

    def __post_init__(self) -> None:
        _int_field("num_images", self.num_images, 1)
        _int_field("batch_size", self.batch_size, 1)
        _int_field("epochs", self.epochs, 1)
        _int_field("seed", self.seed, 0)
        if self.batch_size > 32767:
            # CutMix partners are stored as int16 positions within the batch.
            raise ConfigError(f"plan.batch_size must be at most 32767. Got {self.batch_size} instead.")
        if (
            not isinstance(self.ratio, int | float)
            or isinstance(self.ratio, bool)
            or not math.isfinite(self.ratio)
            or self.ratio < 1
        ):
            raise ConfigError(
                f"plan.ratio must be a real number >= 1 (40 keeps 1/40 of the entries). Got {self.ratio!r} instead."
            )
        for name, value, allowed in (
            ("strategy", self.strategy, get_args(Strategy)),
            ("last_batch", self.last_batch, get_args(LastBatch)),
            ("composition", self.composition, get_args(Composition)),
            ("sampler", self.sampler, get_args(Sampler)),
        ):
            if value not in allowed:
                raise ConfigError(f"plan.{name} must be one of {allowed}. Got {value!r} instead.")
        if self.sampler != "lpldstore" and self.composition != "seeded":
            raise ConfigError(
                f"plan.sampler {self.sampler!r} draws a seeded composition. Got composition "
                f"{self.composition!r} instead; use sampler='lpldstore' with explicit batches."
            )
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"A plan with last_batch='drop' needs at least one full batch: num_images ({self.num_images}) "
                f"< batch_size ({self.batch_size}). Use a smaller batch size or last_batch='pad'."
            )
        if self.num_kept == 0:
            raise ConfigError(
                f"plan.ratio {self.ratio} keeps no entry of the {self.total_entries} planned "
                f"({self.epochs} epochs x {self.batches_per_epoch} batches); use a ratio of at most "
                f"{self.total_entries if self.strategy != 'epoch' else self.epochs}."
            )

    # -- sizes ---------------------------------------------------------------------------------

    @property
    def batches_per_epoch(self) -> int:
        if self.last_batch == "drop":
            return self.num_images // self.batch_size
        return -(-self.num_images // self.batch_size)

    @property
    def total_entries(self) -> int:
        """Entries in the unpruned label stream."""
        return self.epochs * self.batches_per_epoch

    @property
    def num_kept(self) -> int:
        if self.strategy == "epoch":
            return self._kept_epochs * self.batches_per_epoch
        # Fraction keeps the arithmetic exact: 23400 entries at ratio 40 keep exactly 585.
        return math.floor(Fraction(self.total_entries) / Fraction(self.ratio))

    @property
    def _kept_epochs(self) -> int:
        return max(1, math.floor(Fraction(self.epochs) / Fraction(self.ratio)))

    @property
    def actual_ratio(self) -> float:
        """Planned entries per kept entry (differs from ``ratio`` by rounding)."""
        return self.total_entries / self.num_kept

    def batch_length(self, batch: int) -> int:
        """Number of real images in batch ``batch`` of any epoch."""
        if not 0 <= batch < self.batches_per_epoch:
            raise EntryError(f"batch must be in [0, {self.batches_per_epoch}). Got {batch} instead.")
        if batch == self.batches_per_epoch - 1 and self.last_batch == "pad":
            rest = self.num_images % self.batch_size
            return rest or self.batch_size
        return self.batch_size

    # -- kept entries --------------------------------------------------------------------------

    @cached_property
    def kept_ids(self) -> npt.NDArray[np.int64]:
        """Sorted global ids of the kept entries (read-only)."""
        total, kept = self.total_entries, self.num_kept
        if self.strategy == "random":
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, _SELECTION_STREAM]))
            ids = np.sort(rng.choice(total, size=kept, replace=False)).astype(np.int64)
        else:
            ids = np.arange(kept, dtype=np.int64)
        ids.flags.writeable = False
        return ids

    @property
    def kept_keys(self) -> npt.NDArray[np.int64]:
        """(num_kept, 2) array of the kept (epoch, batch) pairs, in store order."""
        ids = self.kept_ids
        return np.stack([ids // self.batches_per_epoch, ids % self.batches_per_epoch], axis=1)

    def global_id(self, epoch: int, batch: int) -> int:
        if not (0 <= epoch < self.epochs and 0 <= batch < self.batches_per_epoch):
            raise EntryError(
                f"Entry (epoch={epoch}, batch={batch}) is outside the plan of {self.epochs} epochs x "
                f"{self.batches_per_epoch} batches."
            )
        return epoch * self.batches_per_epoch + batch

    def position(self, epoch: int, batch: int) -> int:
        """Position of a kept entry in the store; :class:`EntryError` if it was pruned."""
        gid = self.global_id(epoch, batch)
        pos = int(np.searchsorted(self.kept_ids, gid))
        if pos == self.num_kept or self.kept_ids[pos] != gid:
            raise EntryError(
                f"Entry (epoch={epoch}, batch={batch}) was pruned: it is not among the {self.num_kept} "
                f"entries that this {self.strategy} plan at ratio {self.ratio} keeps."
            )
        return pos

    def key_at(self, position: int) -> tuple[int, int]:
        if not 0 <= position < self.num_kept:
            raise EntryError(f"Position must be in [0, {self.num_kept}). Got {position} instead.")
        gid = int(self.kept_ids[position])
        return divmod(gid, self.batches_per_epoch)

    # -- batch composition ---------------------------------------------------------------------

    def epoch_permutation(self, epoch: int) -> npt.NDArray[np.int64]:
        """The image order of augmentation epoch ``epoch``: a pure function of (seed, epoch)."""
        if self.composition != "seeded":
            raise EntryError("This plan's batch composition is explicit: read it from the store.")
        if not 0 <= epoch < self.epochs:
            raise EntryError(f"epoch must be in [0, {self.epochs}). Got {epoch} instead.")
        if self.sampler == "sre2l":
            return self._sre2l_permutation(epoch)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _COMPOSITION_STREAM, epoch]))
        return rng.permutation(self.num_images).astype(np.int64)

    @cached_property
    def _sre2l_memo(self) -> dict[str, Any]:
        # Generator states at the start of epochs already reached, and the last permutation made:
        # epoch e needs 2e(n-1) draws of the generator, so readers walking the epochs in order
        # (writer, verify, export) pay for each epoch once.
        return {"states": {}, "last": None}

    def _sre2l_permutation(self, epoch: int) -> npt.NDArray[np.int64]:
        memo = self._sre2l_memo
        last = memo["last"]
        if last is not None and last[0] == epoch:
            return last[1]
        state = torch_randperm_states(self.num_images, self.seed, epoch, memo["states"])
        perm = _torch_randperm(self.num_images, state)
        perm.flags.writeable = False
        memo["last"] = (epoch, perm)
        return perm

    def batch_indices(self, epoch: int, batch: int) -> npt.NDArray[np.int64]:
        """The image indices of batch ``batch`` of epoch ``epoch`` (no padding)."""
        length = self.batch_length(batch)
        start = batch * self.batch_size
        return self.epoch_permutation(epoch)[start : start + length]


# -- torch's RandomSampler without torch ------------------------------------------------------------
#
# torch.Generator is a 32-bit Mersenne Twister seeded by MT19937's init_genrand, the same seeding
# as NumPy's legacy RandomState(seed). torch.randperm(n, generator) on the CPU (n < 2**32 / 20)
# starts from arange(n) and swaps r[i] with r[i + g() % (n - i)] for i < n - 1, one 32-bit draw
# g() each. RandomSampler(range(n), generator) iterated once calls randperm(n) twice: once for
# the epoch and once for the empty remainder (``randperm(n)[:0]``), so epoch e starts after
# 2e(n - 1) draws. tests/test_plan.py checks this against torch for many sizes and epochs.

_SKIP_CHUNK = 1 << 20


def _mt19937(seed: int) -> np.random.MT19937:
    bits = np.random.MT19937()
    state: Any = np.random.RandomState(seed & 0xFFFFFFFF).get_state(legacy=False)
    bits.state = state
    return bits


def torch_randperm_states(num_images: int, seed: int, epoch: int, memo: dict[int, Any]) -> Any:
    """The generator state at the start of ``epoch`` of SRe2L's sampler over ``num_images`` images.

    ``memo`` maps epochs to states already computed (it is filled in), so walking the epochs in
    order costs one pass over the draws.
    """
    per_epoch = 2 * max(num_images - 1, 0)
    start = max((e for e in memo if e <= epoch), default=None)
    if start is None:
        bits, start = _mt19937(seed), 0
        memo[0] = bits.state
    else:
        bits = np.random.MT19937()
        bits.state = memo[start]
    for e in range(start + 1, epoch + 1):
        left = per_epoch
        while left:
            step = min(left, _SKIP_CHUNK)
            bits.random_raw(step)
            left -= step
        memo[e] = bits.state
    return memo[epoch]


def _torch_randperm(n: int, state: Any) -> npt.NDArray[np.int64]:
    bits = np.random.MT19937()
    bits.state = state
    if n < 2:
        return np.arange(n, dtype=np.int64)
    draws = bits.random_raw(n - 1)
    offsets = (draws % (n - np.arange(n - 1, dtype=np.uint64))).tolist()
    order = list(range(n))
    for i, z in enumerate(offsets):
        j = i + z
        order[i], order[j] = order[j], order[i]
    return np.asarray(order, dtype=np.int64)
