"""Which stored entries a training epoch visits: pure functions of (plan, policy, seed, epoch).

Policies
--------
``ilp``
    LPLD's improved label pool: ``steps`` positions drawn uniformly *with replacement* over all
    kept entries (default ``steps``: the plan's batches per epoch).
``epoch``
    One stored epoch per training epoch, drawn uniformly among the stored epochs, its kept
    entries in batch order. Only *complete* epochs (every batch kept) are drawn when there are
    any, so a prefix plan whose last epoch is partially kept never yields a short epoch; a plan
    with no complete epoch (``random`` at a high ratio) draws among the epochs holding at least
    one entry, whose lengths then differ.
``sequential``
    The whole pool in store order.
``stored``
    Training epoch ``e`` replays stored epoch ``e``, its kept entries in batch order: what the
    SRe2L / CDA reader (``train_FKD.py``) does with its label files, each stored epoch once. An
    epoch the store keeps no entry of is refused, as SRe2L refuses ``--epochs`` beyond the
    stored ones; a prefix plan's last kept epoch may be partial.
``order``
    ``stored`` that cycles: the official LPLD code's ``--prune_metric order`` replays training
    epoch ``e`` from stored epoch ``e``, which a pruned store does not hold past its last epoch.
    Training epoch ``e`` replays the ``(e mod K)``-th of the ``K`` epochs that ``epoch`` draws from,
    its kept entries in batch order: with every epoch stored (1x) and as many training epochs this
    is ``stored``; a pruned store is cycled through.

Distributed sharing: rank ``r`` of ``w`` takes steps ``r, r + w, ...`` of the schedule padded by
wrapping around to a multiple of ``w``, so every rank has the same number of steps and the union
over ranks is the schedule (plus at most ``w - 1`` repeated steps from its start). Cut into
training batches of a fixed size, the shares of a plan with short (``last_batch="pad"``) batches
can hold different numbers of samples; :func:`rank_batches` is the one batch count every rank
yields, so that DDP's ranks step equally often.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from lpldstore.errors import ConfigError
from lpldstore.format.plan import PruningPlan

__all__ = ["Policy", "epoch_schedule", "rank_batches", "rank_share"]

Policy = Literal["ilp", "epoch", "sequential", "stored", "order"]

# Keeps the loader's draws apart from the plan's and the augmentations' streams for equal seeds.
_LOADER_STREAM = 0x4C4F4144
_POLICY_STREAM = {"ilp": 0, "epoch": 1, "sequential": 2, "stored": 3, "order": 4}


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"Expected {name} to be an integer >= {minimum}. Got {value!r} instead.")
    return int(value)


def check_policy(policy: object) -> Policy:
    if policy not in get_args(Policy):
        raise ConfigError(
            f"Expected a pool policy among {get_args(Policy)}. Got {policy!r} instead. "
            "Use 'ilp' for LPLD's improved label pool."
        )
    return policy  # type: ignore[return-value]


def stored_epochs(plan: PruningPlan) -> npt.NDArray[np.int64]:
    """The epochs that the ``epoch`` and ``order`` policies replay (see the module docstring)."""
    epochs, counts = np.unique(plan.kept_keys[:, 0], return_counts=True)
    complete = epochs[counts == plan.batches_per_epoch]
    return (complete if complete.size else epochs).astype(np.int64)


def epoch_schedule(
    plan: PruningPlan, policy: Policy, seed: int, epoch: int, steps_per_epoch: int | None = None
) -> npt.NDArray[np.int64]:
    """The store positions that training epoch ``epoch`` visits, in order (read-only array)."""
    check_policy(policy)
    seed = _check_int("seed", seed, 0)
    epoch = _check_int("epoch", epoch, 0)
    if steps_per_epoch is not None:
        steps_per_epoch = _check_int("steps_per_epoch", steps_per_epoch, 1)
        if policy != "ilp":
            raise ConfigError(
                f"Expected steps_per_epoch=None with policy {policy!r}, whose epoch length is fixed by the "
                f"store. Got {steps_per_epoch} instead. Use policy='ilp' to choose the number of steps."
            )
    rng = np.random.default_rng(np.random.SeedSequence([seed, _LOADER_STREAM, _POLICY_STREAM[policy], epoch]))
    if policy == "ilp":
        steps = plan.batches_per_epoch if steps_per_epoch is None else steps_per_epoch
        out = rng.integers(0, plan.num_kept, size=steps, dtype=np.int64)
    elif policy in ("epoch", "order"):
        epochs = stored_epochs(plan)
        chosen = rng.choice(epochs) if policy == "epoch" else epochs[epoch % len(epochs)]
        # kept_keys is sorted by (epoch, batch), so the matching positions are in batch order.
        out = np.flatnonzero(plan.kept_keys[:, 0] == chosen).astype(np.int64)
    elif policy == "stored":
        out = np.flatnonzero(plan.kept_keys[:, 0] == epoch).astype(np.int64)
        if not out.size:
            held = np.unique(plan.kept_keys[:, 0])
            raise ConfigError(
                f"Expected a training epoch the store holds labels for with policy 'stored'. Got epoch {epoch}, "
                f"of which the store keeps no entry (it holds {held.size} epochs, the last {int(held[-1])}). "
                "Train fewer epochs, or use policy 'ilp' or 'epoch', which reuse the stored epochs."
            )
    else:
        out = np.arange(plan.num_kept, dtype=np.int64)
    out.flags.writeable = False
    return out


def rank_share(schedule: npt.NDArray[np.int64], rank: int, world_size: int) -> npt.NDArray[np.int64]:
    """Rank ``rank``'s steps of ``schedule``: every ``world_size``-th step, padded by wrapping."""
    world_size = _check_int("world_size", world_size, 1)
    rank = _check_int("rank", rank, 0)
    if rank >= world_size:
        raise ConfigError(f"Expected a rank in [0, {world_size}). Got {rank} instead.")
    n = len(schedule)
    total = -(-n // world_size) * world_size
    padded = np.resize(schedule, total) if n else schedule
    return np.asarray(padded[rank::world_size], dtype=np.int64)


def rank_batches(lengths: npt.NDArray[np.int64], world_size: int, batch_size: int, *, drop_last: bool) -> int:
    """Training batches of ``batch_size`` that every rank yields from a schedule of stored batches.

    ``lengths`` holds the real samples of each step of the whole (unshared) schedule. Each rank's
    share (:func:`rank_share`) is cut into batches; the shares can hold different numbers of
    samples (a padded plan's short last batches), and a rank that stepped once more than the
    others would hang DDP's next all-reduce. So every rank yields the fewest batches any share
    fills, leaving out of the epoch the less than one stored batch plus one training batch of
    samples that the fuller shares hold beyond it.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    counts = []
    for rank in range(_check_int("world_size", world_size, 1)):
        total = int(rank_share(np.asarray(lengths, dtype=np.int64), rank, world_size).sum())
        counts.append(total // batch_size if drop_last else -(-total // batch_size))
    return min(counts)
