"""``lpld verify STORE --teacher CKPT``: re-run the teacher on sampled entries and compare logits.

The contract shared with the relabel stage: an entry's teacher input is
``apply_params(images_uint8[indices], params, store.relabel, mean=(0,0,0), std=(1,1,1))`` ([0, 1]
pixels; :class:`~lpld_pipeline.teacher.Teacher` normalizes itself) and its logits are
``teacher(x)`` in the precision the store records (:mod:`lpld_pipeline.precision`: float32 unless
the relabel ran under bf16/fp16 autocast or with TF32 on a GPU), stored by the store's codec.
The check re-runs the teacher on the CPU under the recorded autocast dtype; replaying the stored
augmentations through the same kernels must give back the stored logits within that precision's
tolerance (float16 rounding plus its arithmetic), and the report notes when the relabel ran on
another device type, whose kernels round differently. A store paired with other images, made with
another kernel or by another teacher differs by far more than that. This check lives in the pipeline because it needs the pipeline's teacher; lpldstore
itself never imports the pipeline.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

import lpldstore
from lpld_pipeline.errors import ConfigError
from lpld_pipeline.precision import autocast_of, recorded_precision, tolerance
from lpld_pipeline.teacher import Teacher, load_teacher

__all__ = ["EntryCheck", "TeacherReport", "check_against_teacher"]


@dataclasses.dataclass(frozen=True)
class EntryCheck:
    """The largest |teacher logit - stored logit| of one entry, and what it may be at most."""

    epoch: int
    batch: int
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


@dataclasses.dataclass(frozen=True)
class TeacherReport:
    """Per sampled entry the largest |teacher logit - stored logit|, and store-wide findings."""

    source: str
    teacher: str
    entries: tuple[EntryCheck, ...]
    problems: tuple[str, ...]
    precision: str = "float32"
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems and all(e.ok for e in self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "teacher": self.teacher,
            "ok": self.ok,
            "problems": list(self.problems),
            "precision": self.precision,
            "notes": list(self.notes),
            "entries": [{**dataclasses.asdict(e), "ok": e.ok} for e in self.entries],
        }


def check_against_teacher(
    source: str | os.PathLike[str],
    teacher_checkpoint: str | os.PathLike[str],
    *,
    entries: int = 8,
    seed: int = 0,
    override_kernel: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    arch: str = "",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> TeacherReport:
    """Re-run the teacher of ``teacher_checkpoint`` on ``entries`` committed entries drawn by ``seed``.

    The teacher file takes the forms :func:`~lpld_pipeline.teacher.load_teacher` reads (an
    lpld-teacher checkpoint, a TorchScript file, or a plain state dict of the model ``arch``
    names); its normalization is ``mean``/``std``, by default the one the store records.
    """
    if isinstance(entries, bool) or not isinstance(entries, int) or entries < 1:
        raise ConfigError(f"Expected --entries to be a positive integer. Got {entries!r} instead.")
    problems: list[str] = []
    with lpldstore.open_store(source, storage_options=storage_options) as store:
        teacher = _teacher_for(store, teacher_checkpoint, arch=arch, mean=mean, std=std)
        relabel = store.relabel
        if relabel.teacher_sha256 and relabel.teacher_sha256 != teacher.sha256():
            problems.append(
                f"teacher weights hash to {teacher.sha256()}, but the store was labelled by {relabel.teacher} "
                f"with weights {relabel.teacher_sha256}"
            )
        recorded = recorded_precision(store.provenance.config)
        precision = recorded["precision"] if recorded else "float32"
        autocast = autocast_of(precision)
        notes = _precision_notes(recorded)
        committed = np.flatnonzero(store.committed())
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(committed, size=min(entries, len(committed)), replace=False))
        images = torch.from_numpy(store.images())
        checks = []
        for position in picked.tolist():
            entry = store.entry_at(position)
            x = lpldstore.apply_params(
                images[torch.from_numpy(entry.indices)],
                entry.params,
                relabel,
                mean=(0.0, 0.0, 0.0),
                std=(1.0, 1.0, 1.0),
                override_kernel=override_kernel,
            )
            with (
                torch.no_grad(),
                torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None),
            ):
                logits = teacher(x).float().numpy()
            stored = entry.logits.astype(np.float32)
            allowed = tolerance(precision, float(np.abs(stored).max(initial=0.0)))
            diff = float(np.abs(logits - stored).max(initial=0.0))
            checks.append(EntryCheck(entry.epoch, entry.batch, diff, allowed))
        return TeacherReport(store.where, relabel.teacher, tuple(checks), tuple(problems), precision, notes)


def _precision_notes(recorded: dict[str, Any] | None) -> tuple[str, ...]:
    if recorded is None:
        return ("the store records no relabel precision: checked as float32 on the CPU",)
    notes = [f"relabelled in {recorded['precision']} on {recorded['device_type']}; re-run on cpu"]
    if recorded["precision"] == "tf32":
        notes.append("TF32 does not exist on the CPU: re-run in float32 with TF32's tolerance")
    if recorded["device_type"] != "cpu":
        notes.append(
            f"another device type than the relabel's ({recorded['device_type']}): its kernels round "
            f"differently, so logits agree to {recorded['precision']}'s tolerance, not bit for bit"
        )
    return tuple(notes)


def _teacher_for(
    store: lpldstore.LabelStore,
    path: str | os.PathLike[str],
    *,
    arch: str,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> Teacher:
    """The teacher in ``path``, with the store's classes and (unless given) its normalization."""
    dataset = store.dataset
    teacher = load_teacher(
        os.fspath(path),
        num_classes=dataset.num_classes,
        arch=arch,
        mean=mean,
        std=std,
        default_normalization=(dataset.mean, dataset.std),
    )
    return teacher.cpu().float()


def format_teacher_report(report: TeacherReport) -> str:
    """The text that ``lpld verify --teacher`` prints after the chunk check."""
    lines = [f"teacher: {problem}" for problem in report.problems]
    lines += [f"note: {note}" for note in report.notes]
    for e in report.entries:
        mark = "ok" if e.ok else "MISMATCH"
        lines.append(
            f"entry (epoch={e.epoch}, batch={e.batch}): max |teacher - stored| = {e.max_abs_diff:.4g} "
            f"(tolerance {e.tolerance:.3g}) {mark}"
        )
    bad = sum(not e.ok for e in report.entries)
    verdict = "OK" if report.ok else f"{bad} of {len(report.entries)} entries differ"
    lines.append(f"teacher check: {verdict}")
    return "\n".join(lines)
