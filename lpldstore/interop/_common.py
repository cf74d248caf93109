"""What every peer layout shares: the parsed batch, the scanned source, and the conversions.

A layout module scans a label directory into a :class:`PeerSource` (the plan, the relabel
settings and one lazy reader per stored batch) and parses each stored record into a
:class:`PeerBatch` in store terms: image ids, crop boxes in source pixels, flips, CutMix partner,
lambda and box (top, left, bottom, right) and dense logits. A record that cannot be converted
raises :class:`RecordProblem`; the importer collects those and writes no store.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from lpldstore.errors import ConfigError, InteropError
from lpldstore.format.params import AugmentParams
from lpldstore.format.plan import LastBatch, PruningPlan
from lpldstore.format.records import RelabelConfig

__all__ = [
    "FILL_LOGIT",
    "PIL_KERNEL",
    "BatchRef",
    "ImportOptions",
    "PeerBatch",
    "PeerSource",
    "RecordProblem",
    "TopkRule",
    "num_classes_of",
]

# The SRe2L family and FKD replay crops on PIL images through torchvision's v1 functional API;
# the store records that kernel, so the tensor kernel never replays them silently.
PIL_KERNEL = "torchvision.transforms.functional.resized_crop[PIL]"
# A class that a top-k or probability record gives zero mass: the most negative float16, so that
# softmax(logits / T) is exactly zero there in float32 for any T >= 1.
FILL_LOGIT = float(np.finfo(np.float16).min)
# SRe2L, LPLD and the rest replay their sampler from this seed (``--fkd-seed 42``).
PEER_SEED = 42

TopkRule = Literal["mr", "ms"]


class RecordProblem(Exception):
    """A stored record that cannot be converted; the message says which and why."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImportOptions:
    """Choices an import cannot read from the peer files.

    ``output_size`` is the relabel crop size (224 in the ImageNet recipes); None takes it from the
    export sidecar or, failing that, from the images when they are square (the SRe2L family
    relabels its distilled images at their own size), and refuses to guess otherwise. ``mean``,
    ``std`` (the teacher's normalization; None: the sidecar's, else ImageNet's, said in the
    report's notes) and ``teacher`` (a name) describe what the files cannot. ``epochs`` is the
    number of augmentation epochs of the original run when the files are a pruned prefix of it
    (default: the epochs present); ``temperature`` turns stored probabilities p back into logits
    T·log(p) (HALD: its ``--temperature``, 20; FKD: 1); ``topk_rule`` is LPQLD's reconstruction
    (``mr``: softmax over the k stored logits, ``ms``: stored probabilities); ``fkd_rule`` FKD's
    ``Recover_soft_label`` mode; ``batch_size`` groups FKD's per-image files into entries;
    ``num_classes`` is needed where only top-k ids are stored. ``ignore_sidecar`` reads an
    exported directory as plain peer files.
    """

    output_size: tuple[int, int] | None = None
    epochs: int | None = None
    temperature: float | None = None
    topk_rule: TopkRule = "mr"
    fkd_rule: str = "marginal_smoothing"
    batch_size: int | None = None
    num_classes: int | None = None
    dataset_name: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    teacher: str | None = None
    ignore_sidecar: bool = False

    def __post_init__(self) -> None:
        def positive_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value > 0

        def triple(value: object) -> bool:
            return (
                isinstance(value, tuple)
                and len(value) == 3
                and all(
                    isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
                )
            )

        checks = [
            (
                self.output_size is None
                or (
                    isinstance(self.output_size, tuple)
                    and len(self.output_size) == 2
                    and all(positive_int(v) and v <= 32767 for v in self.output_size)
                ),
                "output_size (the relabel crop size) to be two integers in [1, 32767]",
                self.output_size,
            ),
            *[
                (
                    getattr(self, k) is None or positive_int(getattr(self, k)),
                    f"{k} to be a positive integer",
                    getattr(self, k),
                )
                for k in ("epochs", "batch_size", "num_classes")
            ],
            (
                self.temperature is None
                or (
                    isinstance(self.temperature, int | float)
                    and math.isfinite(self.temperature)
                    and self.temperature > 0
                ),
                "temperature to be a positive number",
                self.temperature,
            ),
            (self.topk_rule in ("mr", "ms"), "topk_rule 'mr' or 'ms'", self.topk_rule),
            (self.mean is None or triple(self.mean), "mean to be three finite numbers (R G B)", self.mean),
            (
                self.std is None or (triple(self.std) and all(v > 0 for v in self.std)),
                "std to be three positive numbers (R G B)",
                self.std,
            ),
            (
                self.teacher is None or (isinstance(self.teacher, str) and bool(self.teacher)),
                "a teacher name",
                self.teacher,
            ),
        ]
        for ok, what, got in checks:
            if not ok:
                raise ConfigError(f"Expected {what}. Got {got!r} instead.")


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class PeerBatch:
    """One stored peer batch in store terms (``n`` real images)."""

    indices: npt.NDArray[np.int64]
    crops: npt.NDArray[np.int64]
    flips: npt.NDArray[np.bool_]
    logits: npt.NDArray[Any]
    mix_index: npt.NDArray[np.int64] | None = None
    mix_lam: float | None = None
    mix_box: npt.NDArray[np.int64] | None = None

    def params(self, *, mix: bool) -> AugmentParams:
        """The batch's augmentation record; ``mix``: whether the source's batches carry CutMix."""
        if self.mix_index is None or self.mix_lam is None or self.mix_box is None:
            if mix:
                raise RecordProblem("no CutMix record, although the directory's batches carry one")
            return AugmentParams.without_mix(crops=self.crops, flips=self.flips)
        return AugmentParams(
            crops=self.crops,
            flips=self.flips,
            mix_index=self.mix_index,
            mix_lam=self.mix_lam,
            mix_box=tuple(int(v) for v in self.mix_box),  # type: ignore[arg-type]
        )


@dataclasses.dataclass(frozen=True)
class BatchRef:
    """A stored batch: its key, where it lives (for messages) and how to read it."""

    epoch: int
    batch: int
    where: str
    read: Callable[[], PeerBatch]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PeerSource:
    """A scanned peer directory, ready to convert."""

    layout: str
    plan: PruningPlan
    relabel: RelabelConfig
    num_classes: int
    refs: Sequence[BatchRef]
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)


# -- batch composition ---------------------------------------------------------------------------


def replay_sampler(
    num_images: int, batch_size: int, epochs: int, seed: int = PEER_SEED
) -> Iterator[list[list[int]]]:
    """Each epoch's batches exactly as the SRe2L writer drew them.

    SRe2L iterates one ``DataLoader`` over ``RandomSampler(generator seeded 42)`` with
    ``BatchSampler(drop_last=False)`` once per epoch; torch's own samplers are used here, so the
    generator advances exactly as it did there (including the draw for the empty remainder).
    """
    from torch.utils.data import BatchSampler, RandomSampler

    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = BatchSampler(
        RandomSampler(range(num_images), generator=generator), batch_size=batch_size, drop_last=False
    )
    for _ in range(epochs):
        yield [list(b) for b in sampler]


def prefix_plan(
    *,
    num_images: int,
    batch_size: int,
    last_batch: LastBatch,
    present: Sequence[tuple[int, int]],
    epochs: int | None,
    where: str,
) -> tuple[PruningPlan, list[str]]:
    """The prefix plan whose kept entries are exactly ``present``, and the missing files if any.

    Peers write a prefix of the label stream (all of it, or LPLD's first ``1 - r``); a gap is a
    missing batch file.
    """
    probe = PruningPlan(num_images=num_images, batch_size=batch_size, epochs=1, last_batch=last_batch)
    bpe = probe.batches_per_epoch
    ids = sorted(e * bpe + b for e, b in present)
    bad = [
        f"{where}: batch file epoch {e} batch {b} is beyond the {bpe} batches of an epoch"
        for e, b in present
        if b >= bpe
    ]
    if bad:
        return probe, bad
    kept = (ids[-1] + 1) if ids else 0
    missing = sorted(set(range(kept)) - set(ids))
    problems = [f"{where}: missing batch file for epoch {g // bpe} batch {g % bpe}" for g in missing]
    total_epochs = epochs if epochs is not None else max(1, math.ceil(kept / bpe))
    if kept > total_epochs * bpe:
        problems.append(f"{where}: {kept} stored batches exceed --epochs {total_epochs} x {bpe} batches")
        total_epochs = math.ceil(kept / bpe)
    plan = PruningPlan(
        num_images=num_images,
        batch_size=batch_size,
        epochs=total_epochs,
        ratio=_ratio_keeping(total_epochs * bpe, max(kept, 1)),
        strategy="prefix",
        seed=PEER_SEED,
        last_batch=last_batch,
        composition="explicit",
    )
    return plan, problems


def _ratio_keeping(total: int, kept: int) -> float:
    # The plan keeps floor(total / ratio) entries; find the float ratio that keeps exactly `kept`.
    ratio = total / kept
    for _ in range(8):
        got = math.floor(Fraction(total) / Fraction(ratio))
        if got == kept:
            return ratio
        ratio = math.nextafter(ratio, 0.0 if got < kept else math.inf)
    raise AssertionError(f"no ratio keeps {kept} of {total}")  # pragma: no cover


# -- record fields -------------------------------------------------------------------------------


def as_numpy(value: Any, what: str) -> npt.NDArray[Any]:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise RecordProblem(f"expected {what} as a tensor or array, got {type(value).__name__}")


def pixel_crops(coords: Any, hw: tuple[int, int], n: int) -> npt.NDArray[np.int64]:
    """Normalized (top/H, left/W, height/H, width/W) -> (top, left, height, width) source pixels.

    The peers scale back by the PIL image size and let ``PIL.Image.crop`` round each box edge
    (``round`` of left, top, right, bottom); this does the same arithmetic in float64.
    """
    arr = as_numpy(coords, "coords")
    if arr.shape != (n, 4) or arr.dtype.kind != "f":
        raise RecordProblem(f"expected coords of shape ({n}, 4) floating, got {arr.dtype} {arr.shape}")
    height, width = hw
    c = arr.astype(np.float64)
    top, left = c[:, 0] * height, c[:, 1] * width
    bottom, right = top + c[:, 2] * height, left + c[:, 3] * width
    t, l_, b, r = (np.rint(v).astype(np.int64) for v in (top, left, bottom, right))
    return np.stack([t, l_, b - t, r - l_], axis=1)


def normalized_coords(crops: npt.NDArray[Any], hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pixel_crops` as the peers compute it: Python float division, then float32."""
    height, width = hw
    rows = [(int(t) / height, int(l_) / width, int(h) / height, int(w) / width) for t, l_, h, w in crops]
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 4)


def flips_of(value: Any, n: int) -> npt.NDArray[np.bool_]:
    arr = as_numpy(value, "flip")
    if arr.shape != (n,) or arr.dtype.kind not in "bui":
        raise RecordProblem(
            f"expected flip flags of shape ({n},) (got {arr.dtype} {arr.shape}); "
            "a float array here is a cutout or RandAugment record, which the lpldstore format does not hold from peers"
        )
    return arr.astype(bool)


def mix_of(
    index: Any, lam: Any, bbox: Any, n: int
) -> tuple[npt.NDArray[np.int64] | None, float | None, npt.NDArray[np.int64] | None]:
    """CutMix partner, lambda and box (top, left, bottom, right), or three Nones without mixing.

    The peers' box is ``(bbx1, bby1, bbx2, bby2)`` applied as ``x[:, :, bbx1:bbx2, bby1:bby2]``:
    bbx runs over rows, so it is (top, left, bottom, right) as stored.
    """
    if index is None and lam is None and bbox is None:
        return None, None, None
    if bbox is None:
        raise RecordProblem("Mixup record (lambda without a box); the lpldstore format holds CutMix only")
    if index is None or lam is None:
        raise RecordProblem("incomplete CutMix record (partner, lambda and box must all be present)")
    perm = as_numpy(index, "mix_index").astype(np.int64).reshape(-1)
    if perm.shape != (n,):
        raise RecordProblem(f"expected mix_index of shape ({n},), got {perm.shape}")
    if isinstance(lam, torch.Tensor | np.ndarray | np.floating | float | int) and np.size(lam) == 1:
        lam_value = float(np.asarray(lam.detach().cpu() if isinstance(lam, torch.Tensor) else lam))
    else:
        raise RecordProblem(f"expected mix_lam as a number, got {type(lam).__name__}")
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        raise RecordProblem(f"expected mix_bbox as 4 integers, got {type(bbox).__name__}")
    box = []
    for v in bbox:
        # Type first: np.asarray of an untrusted nested list could be arbitrarily large.
        if (
            not isinstance(v, int | np.integer | np.ndarray | torch.Tensor)
            or (v.numel() if isinstance(v, torch.Tensor) else np.size(v)) != 1
        ):
            raise RecordProblem(f"expected mix_bbox as 4 integers, got an item of type {type(v).__name__}")
        arr = np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v)
        if arr.size != 1 or arr.dtype.kind not in "iu":
            raise RecordProblem(f"expected mix_bbox as 4 integers, got {bbox!r}")
        box.append(int(arr))
    return perm, lam_value, np.asarray(box, dtype=np.int64)


def logits_of(value: Any, n: int, num_classes: int | None = None) -> npt.NDArray[Any]:
    arr = as_numpy(value, "logits")
    if arr.ndim != 2 or arr.shape[0] != n or arr.dtype.kind != "f":
        raise RecordProblem(f"expected logits of shape ({n}, C) floating, got {arr.dtype} {arr.shape}")
    if num_classes is not None and arr.shape[1] != num_classes:
        raise RecordProblem(f"expected {num_classes} classes, got {arr.shape[1]}")
    return arr


def probs_to_logits(probs: npt.NDArray[Any], temperature: float) -> npt.NDArray[np.float32]:
    """Logits whose softmax at ``temperature`` is ``probs``: T·log(p), zero mass -> :data:`FILL_LOGIT`."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore"):
        out = temperature * np.log(p)
    out = np.where(p > 0, np.maximum(out, FILL_LOGIT), FILL_LOGIT)
    return out.astype(np.float32)


def topk_to_logits(
    values: npt.NDArray[Any], ids: npt.NDArray[Any], num_classes: int, rule: TopkRule, temperature: float
) -> npt.NDArray[np.float32]:
    """Dense logits from top-k records (LPQLD).

    ``mr``: the k stored logits in place, every other class at :data:`FILL_LOGIT` (softmax over the
    top k, zero elsewhere, at any temperature). ``ms``: the stored values are probabilities,
    scattered into zeros, returned as T·log(p).
    """
    n, k = values.shape
    ids64 = np.asarray(ids).astype(np.int64)
    if ids64.shape != (n, k) or (ids64 < 0).any() or (ids64 >= num_classes).any():
        raise RecordProblem(f"expected top-k class ids of shape ({n}, {k}) in [0, {num_classes})")
    rows = np.arange(n)[:, None]
    if rule == "mr":
        dense = np.full((n, num_classes), FILL_LOGIT, dtype=np.float32)
        dense[rows, ids64] = values.astype(np.float32)
        return dense
    probs = np.zeros((n, num_classes), dtype=np.float64)
    probs[rows, ids64] = values.astype(np.float64)
    return probs_to_logits(probs, temperature)


def relabel_for(
    options: ImportOptions, *, mix: bool, teacher: str, crop_scale: tuple[float, float]
) -> RelabelConfig:
    if options.output_size is None:
        raise AssertionError("the importer resolves the output size before scanning")  # pragma: no cover
    return RelabelConfig(
        output_size=options.output_size,
        teacher=options.teacher or teacher,
        crop_scale=crop_scale,
        mix="cutmix" if mix else "none",
        seed=PEER_SEED,
        kernel=PIL_KERNEL,
        interpolation="bilinear",
    )


def sre2l_record(
    items: Any, *, n: int, hw: tuple[int, int], indices: Sequence[int], length: int = 6
) -> PeerBatch:
    """Parse a SRe2L-family record ``[coords, flip, mix_index, mix_lam, mix_bbox, logits, ...]``."""
    if not isinstance(items, list | tuple) or len(items) != length:
        got = f"{len(items)} items" if isinstance(items, list | tuple) else type(items).__name__
        raise RecordProblem(f"expected a list of {length} items, got {got} (unknown record layout)")
    flips_arr = as_numpy(items[1], "flip")
    if flips_arr.shape[:1] != (n,):
        raise RecordProblem(
            f"short batch: {flips_arr.shape[0] if flips_arr.ndim else 0} images, expected {n}"
        )
    perm, lam, box = mix_of(items[2], items[3], items[4], n)
    return PeerBatch(
        indices=np.asarray(indices, dtype=np.int64),
        crops=pixel_crops(items[0], hw, n),
        flips=flips_of(items[1], n),
        logits=logits_of(items[5], n),
        mix_index=perm,
        mix_lam=lam,
        mix_box=box,
    )


def num_classes_of(items: Any, where: str) -> int:
    """The class count of a SRe2L-family record: the width of its logits (item 5), a 2-D tensor or array.

    Checked by type and shape before any conversion: an untrusted nested list is never turned
    into a tensor.
    """
    logits = items[5] if isinstance(items, list | tuple) and len(items) > 5 else None
    if not isinstance(logits, torch.Tensor | np.ndarray) or logits.ndim != 2:
        got = type(logits).__name__ if logits is not None else "no item 5"
        raise InteropError(f"{where}: expected logits (item 5) as a 2-D tensor. Got {got} instead.")
    return int(logits.shape[1])


def record_length(items: Any) -> int:
    """The batch size of a SRe2L-family record: the length of item 1 (what SRe2L's reader takes)."""
    if not isinstance(items, list | tuple) or len(items) < 2:
        raise RecordProblem("expected a list of items")
    return int(as_numpy(items[1], "flip").shape[0])
