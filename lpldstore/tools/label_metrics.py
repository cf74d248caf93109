"""Pruning by a metric of the stored logits: keep the easiest or the hardest entries, no teacher.

LPLD (Table 5a/6a of the paper) compares random label pruning with pruning by metrics of the soft
labels, keeping the "easy" or the "hard" ones; its released code implements none of them. Here an
entry (one stored batch) is scored by the mean over its real rows of a metric of the softmax of
its decoded logits at ``temperature`` (1: the teacher's own probabilities):

``confidence``
    the largest probability of a row;
``margin``
    the largest minus the second-largest probability.

A high score is an easy entry (the teacher is sure), a low score a hard one. :func:`select_by_metric`
turns the scores into a ``selected`` :class:`~lpldstore.plan.PruningPlan` keeping the entries a
ratio allows; :func:`lpldstore.prune` with ``metric=`` writes it as a derived store.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from lpldstore.errors import ConfigError
from lpldstore.format.plan import PruningPlan
from lpldstore.storage.reader import LabelStore

__all__ = ["Keep", "Metric", "entry_scores", "row_scores", "select_by_metric"]

Metric = Literal["confidence", "margin"]
Keep = Literal["easy", "hard"]


def _check(metric: object, keep: object, temperature: object) -> None:
    if metric not in get_args(Metric):
        raise ConfigError(f"Expected a pruning metric among {get_args(Metric)}. Got {metric!r} instead.")
    if keep not in get_args(Keep):
        raise ConfigError(f"Expected keep among {get_args(Keep)}. Got {keep!r} instead.")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
        raise ConfigError(f"Expected a temperature > 0. Got {temperature!r} instead.")


def row_scores(logits: npt.ArrayLike, metric: Metric, temperature: float = 1.0) -> npt.NDArray[np.float64]:
    """The metric of every row of ``logits`` (rows, classes)."""
    _check(metric, "easy", temperature)
    z = np.asarray(logits, dtype=np.float64) / temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if metric == "confidence":
        return p.max(axis=1)
    if p.shape[1] == 1:
        return np.ones(len(p))  # one class: nothing to be confused with
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def entry_scores(store: LabelStore, metric: Metric, temperature: float = 1.0) -> npt.NDArray[np.float64]:
    """One score per stored entry, in store order: the mean of :func:`row_scores` over its real rows."""
    _check(metric, "easy", temperature)
    plan = store.plan
    scores = np.empty(store.num_entries, dtype=np.float64)
    for position in range(store.num_entries):
        n = plan.batch_length(int(plan.key_at(position)[1]))
        scores[position] = row_scores(store.logits_at(position)[:n], metric, temperature).mean()
    return scores


def select_by_metric(
    store: LabelStore, ratio: float, metric: Metric, keep: Keep, temperature: float = 1.0
) -> PruningPlan:
    """A ``selected`` plan keeping ``floor(total / ratio)`` of ``store``'s entries by ``metric``.

    ``easy`` keeps the highest scores, ``hard`` the lowest; ties go to the earlier entry. The
    schedule (images, batch size, epochs, seed) is the store's; a store that holds fewer entries
    than the ratio asks for is refused.
    """
    _check(metric, keep, temperature)
    parent = store.plan
    schedule = {k: v for k, v in parent.to_dict().items() if k != "selection"}
    # The ratio's count, exactly as a prefix plan at this ratio would keep.
    count = PruningPlan.from_dict(schedule | {"strategy": "prefix", "ratio": ratio}).num_kept
    if count > store.num_entries:
        raise ConfigError(
            f"Ratio {ratio:g} keeps {count} entries, but {store.where} holds only {store.num_entries} "
            f"(its ratio is {parent.ratio:g}). Use a ratio of at least "
            f"{parent.total_entries / store.num_entries:.4g}."
        )
    scores = entry_scores(store, metric, temperature)
    # Stable sort of the negated scores for easy keeps the earlier of two equal scores first.
    order = np.argsort(-scores if keep == "easy" else scores, kind="stable")
    ids = np.sort(parent.kept_ids[order[:count]])
    return PruningPlan.from_dict(
        schedule | {"strategy": "selected", "ratio": ratio, "selection": tuple(int(i) for i in ids)}
    )
