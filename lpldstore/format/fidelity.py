"""Fidelity of decoded logits: KL divergence of the soft targets, top-1 agreement, max logit error.

Soft targets are ``softmax(logits / T)`` at the training temperature ``T``. Both directions of
the KL divergence are reported, in nats per row: ``kl`` = KL(original || decoded), the information
that the decoded targets lose (infinite when they give zero probability to a class the original
does not, as top-k with the MR tail does), and ``kl_reverse`` = KL(decoded || original), finite for
every codec (for MR it is ``-log`` of the top-k's probability mass).

The writer stores per-entry sums (:data:`FIDELITY_FIELDS`) in ``pool/fidelity`` so that many
writers and resumed runs combine exactly; :func:`summarize` turns sums into means. Lossless
codecs measure nothing; lossy ones measure a sample of entries chosen by :func:`fidelity_sampled`
at the store's ``codec.fidelity_rate`` (unmeasured entries stay NaN, "not measured").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from lpldstore.format.codecs import MR_TAIL

__all__ = [
    "DEFAULT_FIDELITY_RATE",
    "FIDELITY_FIELDS",
    "Fidelity",
    "fidelity_sampled",
    "fidelity_sums",
    "summarize",
]

# Columns of pool/fidelity: sums over an entry's rows, the maximum error, and the row count.
FIDELITY_FIELDS = ("kl_sum", "kl_reverse_sum", "top1_agree", "max_abs_error", "rows")

#: The fraction of entries whose fidelity a lossy codec's writer measures unless told otherwise.
#: At ImageNet-1K x batch 128 one measurement costs about as much as writing 4-8 entries
#: (docs/codecs.md); one entry in 16 keeps that under half the write cost and still measures
#: thousands of rows of any store worth summarising (IPC10 at 40x: about 37 entries, 4,700 rows).
DEFAULT_FIDELITY_RATE = 1 / 16

# The golden ratio's fractional part: frac(g * phi) spreads consecutive g evenly over [0, 1).
_PHI = 0.6180339887498949


def fidelity_sampled(global_index: int, rate: float) -> bool:
    """Whether the writer measures the fidelity of the entry with this unpruned index.

    ``global_index`` is ``epoch * batches_per_epoch + batch``, so a pruned (derived) store samples
    the entries its parent sampled. A pure function: ``frac(global_index * phi) < rate`` (a Weyl
    sequence, low-discrepancy: any run of ``n`` consecutive entries holds ``rate * n`` measured
    ones within a few, at most 4 for ``n`` up to 20,000 (tested); entry 0 is always measured when
    ``rate > 0``).
    """
    return rate >= 1.0 or (global_index * _PHI) % 1.0 < rate


@dataclasses.dataclass(frozen=True, kw_only=True)
class Fidelity:
    """Fidelity of a codec on ``rows`` logit rows at ``temperature``."""

    temperature: float
    rows: int
    kl: float
    kl_reverse: float
    top1_agreement: float
    max_abs_error: float

    def to_dict(self) -> dict[str, Any]:
        # JSON has no infinity: an infinite KL or error is written as null.
        return {
            f.name: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }


def _log_softmax(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _kl(logp: npt.NDArray[np.float64], logq: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    p = np.exp(logp)
    with np.errstate(invalid="ignore", over="ignore"):
        terms = np.where(p > 0, p * (logp - logq), 0.0)
    return np.asarray(terms.sum(axis=1))


def fidelity_sums(
    original: npt.ArrayLike, decoded: npt.ArrayLike, temperature: float
) -> npt.NDArray[np.float64]:
    """The :data:`FIDELITY_FIELDS` of ``decoded`` against ``original`` (both (rows, classes))."""
    x = np.asarray(original, dtype=np.float64)
    # The MR tail stands for minus infinity (a dropped class), not for a very wrong logit.
    y = np.asarray(decoded, dtype=np.float64)
    y = np.where(y <= MR_TAIL, -np.inf, y)
    if len(x) == 0:
        return np.array([0.0, 0.0, 0.0, 0.0, 0.0])
    logp, logq = _log_softmax(x / temperature), _log_softmax(y / temperature)
    # exp underflows to exactly 0 for a dropped class: KL(p || q) is then infinite, as it should be.
    logq_exact = np.where(np.exp(logq) > 0, logq, -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = _kl(logp, logq_exact)
    kl_rev = _kl(logq, logp)
    agree = (x.argmax(axis=1) == y.argmax(axis=1)).sum()
    err = float(np.abs(x - y).max())
    return np.array([kl.sum(), kl_rev.sum(), float(agree), err, float(len(x))])


def summarize(sums: npt.ArrayLike, temperature: float) -> Fidelity | None:
    """Combine per-entry sums (entries x fields; NaN rows = not measured) into one :class:`Fidelity`."""
    table = np.asarray(sums, dtype=np.float64).reshape(-1, len(FIDELITY_FIELDS))
    table = table[~np.isnan(table).any(axis=1)]
    rows = float(table[:, 4].sum()) if len(table) else 0.0
    if rows == 0:
        return None
    return Fidelity(
        temperature=float(temperature),
        rows=int(rows),
        kl=float(table[:, 0].sum() / rows),
        kl_reverse=float(table[:, 1].sum() / rows),
        top1_agreement=float(table[:, 2].sum() / rows),
        max_abs_error=float(table[:, 3].max()),
    )
