"""verify --teacher re-runs the teacher in the precision the relabel recorded, with its tolerance."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import lpldstore
from lpld_pipeline import ConfigError, Teacher, relabel, save_teacher_checkpoint, store_records
from lpld_pipeline.check import TeacherReport, check_against_teacher, format_teacher_report
from lpld_pipeline.precision import TOLERANCES, relabel_precision, tolerance
from lpld_pipeline.relabel import _UNIT_MEAN, _UNIT_STD

from ._stores import (
    one_thread,  # noqa: F401  (autouse fixture)
    relabel_config,
    stage_dirs,
    tiny_images,
    tiny_teacher,
)


def _loud_teacher() -> Teacher:
    # Logits of ~10-20, as a trained teacher's: bf16's rounding then shows above the absolute slack.
    teacher = tiny_teacher()
    fc = teacher.model.fc
    assert isinstance(fc, torch.nn.Linear)
    with torch.no_grad():
        fc.weight.mul_(200.0)
    return teacher


def _relabel(tmp_path: Path, teacher: Teacher, **kw: object) -> tuple[Path, Path]:
    squeeze_dir, synth_dir = stage_dirs(tmp_path, teacher, tiny_images())
    out = tmp_path / "s.zarr"
    config = relabel_config(squeeze_dir=str(squeeze_dir), synth_dir=str(synth_dir), out=str(out), **kw)
    relabel(config)
    return out, squeeze_dir / "teacher.pt"


def test_a_bf16_relabel_records_its_precision_and_passes_verify(tmp_path: Path) -> None:
    store, ckpt = _relabel(tmp_path, _loud_teacher(), device="cpu", amp="bf16")
    with lpldstore.open_store(store) as opened:
        record = opened.provenance.config["precision"]
    assert record == {"device_type": "cpu", "precision": "bfloat16", "autocast": "bfloat16", "tf32": False}
    report = check_against_teacher(store, ckpt, entries=4)
    assert report.ok, report.to_dict()
    assert report.precision == "bfloat16"
    assert "relabelled in bfloat16 on cpu; re-run on cpu" in format_teacher_report(report)
    # Re-run in bf16 on the same device, the logits come back within float16 storage rounding.
    tops = _largest_logits(store, report)
    assert all(
        e.max_abs_diff <= tolerance("float32", top) for e, top in zip(report.entries, tops, strict=True)
    )


def test_a_float32_store_is_held_to_the_tight_tolerance(tmp_path: Path) -> None:
    store, ckpt = _relabel(tmp_path, _loud_teacher(), device="cpu", amp="none")
    report = check_against_teacher(store, ckpt, entries=4)
    assert report.ok
    assert report.precision == "float32"
    slack, rel = TOLERANCES["float32"]
    for e, top in zip(report.entries, _largest_logits(store, report), strict=True):
        assert e.tolerance == pytest.approx(slack + rel * top)
        assert e.tolerance < tolerance("bfloat16", top)


def _largest_logits(store: Path, report: TeacherReport) -> list[float]:
    with lpldstore.open_store(store) as opened:
        return [
            float(np.abs(opened.entry(e.epoch, e.batch).logits.astype(np.float32)).max())
            for e in report.entries
        ]


def _store_with_record(path: Path, teacher: Teacher, precision: dict[str, Any], noise: float = 0.0) -> None:
    """Entries labelled in float32 on the CPU under a given precision record (another device's stand-in)."""
    synth = tiny_images()
    records = store_records(relabel_config(), teacher, synth, "tiny")
    provenance = {"stage": "relabel", "precision": precision}
    with lpldstore.StoreWriter.create(
        path, images=synth.images, labels=synth.labels, config=provenance, **records
    ) as writer:
        pixels = torch.from_numpy(synth.images)
        for epoch, batch in writer.todo():
            idx = writer.plan.batch_indices(epoch, batch)
            params = lpldstore.draw_params(writer.attrs.relabel, (16, 16), len(idx), epoch, batch)
            x = lpldstore.apply_params(pixels[idx], params, writer.attrs.relabel, _UNIT_MEAN, _UNIT_STD)
            with torch.no_grad():
                logits = teacher(x).numpy()
            # Tampering: one class's logit moved by ``noise`` of the entry's largest logit.
            logits[:, 0] += noise * float(np.abs(logits).max())
            writer.write(epoch, batch, logits=logits, params=params)


def test_bf16_on_a_gpu_is_checked_in_bf16_on_the_cpu_with_a_note(tmp_path: Path) -> None:
    teacher = _loud_teacher()
    gpu_bf16 = relabel_precision(torch.bfloat16, torch.device("cuda"))
    assert gpu_bf16["precision"] == "bfloat16"
    assert gpu_bf16["device_type"] == "cuda"
    ckpt = tmp_path / "teacher.pt"
    save_teacher_checkpoint(teacher, ckpt)
    # float32 logits stand in for another device's bf16 ones: CPU bf16 differs from them by about
    # what two bf16 runs on two devices differ by, which bf16's tolerance allows.
    _store_with_record(tmp_path / "ok.zarr", teacher, gpu_bf16)
    report = check_against_teacher(tmp_path / "ok.zarr", ckpt, entries=4)
    assert report.ok, report.to_dict()
    # bf16 did round: the float32 tolerance, which the check used to apply, would refuse the store.
    tops = _largest_logits(tmp_path / "ok.zarr", report)
    assert any(
        e.max_abs_diff > tolerance("float32", top) for e, top in zip(report.entries, tops, strict=True)
    )
    text = format_teacher_report(report)
    assert "another device type than the relabel's (cuda)" in text
    # Tampered logits fail under the bf16 tolerance too.
    _store_with_record(tmp_path / "bad.zarr", teacher, gpu_bf16, noise=0.1)
    bad = check_against_teacher(tmp_path / "bad.zarr", ckpt, entries=4)
    assert not bad.ok
    assert all(not e.ok for e in bad.entries)


def test_tf32_is_checked_in_float32_with_its_own_tolerance(tmp_path: Path) -> None:
    teacher = _loud_teacher()
    save_teacher_checkpoint(teacher, tmp_path / "teacher.pt")
    record = {"device_type": "cuda", "precision": "tf32", "autocast": None, "tf32": True}
    _store_with_record(tmp_path / "s.zarr", teacher, record)
    report = check_against_teacher(tmp_path / "s.zarr", tmp_path / "teacher.pt", entries=2)
    assert report.ok
    assert report.precision == "tf32"
    assert "TF32 does not exist on the CPU" in format_teacher_report(report)


def test_a_store_is_continued_only_in_the_precision_it_was_started_in(tmp_path: Path) -> None:
    teacher = tiny_teacher()
    squeeze_dir, synth_dir = stage_dirs(tmp_path, teacher, tiny_images())
    config = relabel_config(
        squeeze_dir=str(squeeze_dir), synth_dir=str(synth_dir), out=str(tmp_path / "s.zarr"), device="cpu"
    )
    relabel(dataclasses.replace(config, amp="none"))
    assert relabel(dataclasses.replace(config, amp="auto")).entries_computed == 0  # float32 on the CPU too
    with pytest.raises(ConfigError, match=r"precision it was started in \(float32 on cpu\).*Got bfloat16"):
        relabel(dataclasses.replace(config, amp="bf16"))
