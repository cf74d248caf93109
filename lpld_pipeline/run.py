"""Run: squeeze, synthesize, relabel and train from one config, then a report.

Stage outputs live under ``config.out``: ``squeeze/``, ``synth/``, ``labels.zarr`` and
``train/``; the stages' own input and output paths, device and progress settings are filled in
from the run config. Squeeze and synthesize are skipped when their output already records the same
config; relabel and train resume by themselves, so an interrupted run continues where it stopped.
The report (accuracy, the store's storage table as ``lpldstore info`` prints it, seconds per
stage) is printed and saved as ``report.json``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

import lpldstore
from lpld_pipeline import _dist, artifacts
from lpld_pipeline._feedback import note
from lpld_pipeline.bnstats import squeeze
from lpld_pipeline.config import RunConfig, config_to_dict
from lpld_pipeline.relabel import relabel
from lpld_pipeline.synthesize import synthesize
from lpld_pipeline.train import train

__all__ = ["RunReport", "format_report", "run"]

# Settings that do not change a stage's output.
_NEUTRAL = ("progress", "device")


@dataclasses.dataclass(frozen=True)
class RunReport:
    """What ``lpld run`` reports: accuracies, the store's ``lpldstore info`` dict, stage times."""

    out: str
    top1: float
    best_top1: float
    teacher_top1: float | None
    num_classes: int
    store_info: dict[str, Any]
    seconds: dict[str, float]
    skipped: tuple[str, ...]


def _same_output(directory: Path, stage: str, config: Any, required: tuple[str, ...]) -> bool:
    """Whether ``directory`` holds a finished output of ``config`` (neutral settings aside)."""
    record = artifacts.read_record(directory, stage)
    if record is None or not all((directory / name).exists() for name in required):
        return False
    saved = record.get("config", {})
    now = config_to_dict(config)
    return all(saved.get(k) == v for k, v in now.items() if k not in _NEUTRAL)


def run(config: RunConfig) -> RunReport:
    """Run every stage of ``config`` and return (and print, on rank 0) the report."""
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _run(config)
    finally:
        torch.set_num_threads(threads)


def _run(config: RunConfig) -> RunReport:
    out = Path(config.out)
    common: dict[str, Any] = {"device": config.device, "progress": config.progress}
    where = {stage: str(out / name) for stage, name in artifacts.RUN_DIRS.items()}
    sq = dataclasses.replace(config.squeeze, out=where["squeeze"], **common)
    sy = dataclasses.replace(config.synthesize, squeeze_dir=sq.out, out=where["synthesize"], **common)
    rl = dataclasses.replace(
        config.relabel, squeeze_dir=sq.out, synth_dir=sy.out, out=where["relabel"], **common
    )
    tr = dataclasses.replace(config.train, store=rl.out, out=where["train"], **common)
    seconds: dict[str, float] = {}
    skipped: list[str] = []

    def timed(name: str, fn: Any, cfg: Any) -> Any:
        t0 = time.perf_counter()
        result = fn(cfg)
        seconds[name] = round(time.perf_counter() - t0, 2)
        return result

    note(f"[1/4] squeeze: teacher and class-wise BN statistics -> {sq.out}")
    if _same_output(Path(sq.out), "squeeze", sq, (artifacts.CLASS_STATS, artifacts.TEACHER)):
        skipped.append("squeeze")
        note(f"squeeze: {Path(sq.out).name} holds its output for this config; resuming at synthesize")
    else:
        timed("squeeze", squeeze, sq)
    note(f"[2/4] synthesize: {sy.ipc} images per class -> {sy.out}")
    if _same_output(Path(sy.out), "synthesize", sy, ()) and any(Path(sy.out).glob(artifacts.IMAGES_GLOB)):
        skipped.append("synthesize")
        note(f"synthesize: {Path(sy.out).name} holds its output for this config; resuming at relabel")
    else:
        timed("synthesize", synthesize, sy)
    note(f"[3/4] relabel: the teacher's soft labels -> {rl.out}")
    timed("relabel", relabel, rl)
    note(f"[4/4] train: a student from the store -> {tr.out}")
    result = timed("train", train, tr)
    seconds["total"] = round(sum(seconds.values()), 2)

    with lpldstore.open_store(rl.out) as store:
        info = lpldstore.store_info(store)
        num_classes = store.dataset.num_classes
    squeeze_record = artifacts.read_record(sq.out, "squeeze") or {}
    report = RunReport(
        out=str(out),
        top1=result.top1,
        best_top1=result.best_top1,
        teacher_top1=squeeze_record.get("teacher_val_accuracy"),
        num_classes=num_classes,
        store_info=info,
        seconds=seconds,
        skipped=tuple(skipped),
    )
    if _dist.rank_and_world()[0] == 0:
        (out / artifacts.REPORT).write_text(
            json.dumps(dataclasses.asdict(report), indent=2) + "\n", encoding="utf-8"
        )
        print(format_report(report))
    return report


def format_report(report: RunReport) -> str:
    """The report as text: accuracy, the storage table (as ``lpldstore info``), time per stage."""
    lines = [
        "",
        "=" * 72,
        f"lpld run: {report.out}",
        "=" * 72,
        (
            f"student top-1 on the real validation set   {report.top1:.2%}  "
            f"(best {report.best_top1:.2%}; chance {1 / report.num_classes:.2%})"
        ),
    ]
    if report.teacher_top1 is not None:
        lines.append(f"teacher top-1 on the same set              {report.teacher_top1:.2%}")
    lines += ["", "storage (lpldstore info):", ""]
    table = lpldstore.format_store_info(report.store_info)
    lines += [("  " + line).rstrip() for line in table.rstrip("\n").splitlines()]
    lines += ["", "time per stage:"]
    for name, secs in report.seconds.items():
        lines.append(f"  {name:<12}{secs:>9.1f} s")
    for name in report.skipped:
        lines.append(f"  {name:<12}  skipped (output of the same config already there)")
    return "\n".join(lines)
