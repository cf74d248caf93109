"""lpld verify --teacher: a store labelled by a tiny teacher under the relabel contract passes; wrong images fail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lpld_pipeline.check import check_against_teacher
from lpld_pipeline.cli import main
from lpld_pipeline.teacher import (
    Teacher,
    TeacherSpec,
    build_model,
    save_teacher_checkpoint,
    state_dict_sha256,
)
from lpldstore import DatasetInfo, PruningPlan, RelabelConfig, StoreWriter, apply_params, draw_params

from ._stores import one_thread  # noqa: F401  (autouse fixture)

CLASSES = 4


def _teacher(seed: int) -> Teacher:
    torch.manual_seed(seed)
    spec = TeacherSpec(arch="tiny_resnet", num_classes=CLASSES, width=4)
    return Teacher(build_model(spec), spec)


def _labelled_store(path: Path, teacher: Teacher, images: np.ndarray, stored_images: np.ndarray) -> None:
    """Relabel ``images`` with ``teacher`` under the contract, but store ``stored_images``."""
    plan = PruningPlan(num_images=len(images), batch_size=4, epochs=2)
    relabel = RelabelConfig(
        output_size=(8, 8),
        teacher="tiny_resnet",
        teacher_sha256=state_dict_sha256(teacher.model.state_dict()),
    )
    dataset = DatasetInfo(
        name="tiny", num_classes=CLASSES, num_images=len(images), image_shape=images.shape[1:]
    )
    labels = np.arange(len(images)) % CLASSES
    with StoreWriter.create(
        path, plan=plan, images=stored_images, labels=labels, dataset=dataset, relabel=relabel
    ) as writer:
        for epoch, batch in writer.todo():
            idx = plan.batch_indices(epoch, batch)
            params = draw_params(relabel, images.shape[1:3], len(idx), epoch, batch)
            x = apply_params(torch.from_numpy(images[idx]), params, relabel, mean=(0, 0, 0), std=(1, 1, 1))
            with torch.no_grad():
                logits = teacher(x).float().numpy()
            writer.write(epoch, batch, logits=logits, params=params)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tmp_path = tmp_path_factory.mktemp("teacher_check")
    teacher = _teacher(0)
    save_teacher_checkpoint(teacher, tmp_path / "teacher.pt")
    images = np.random.default_rng(1).integers(0, 256, (10, 12, 10, 3), dtype=np.uint8)
    other = np.random.default_rng(2).integers(0, 256, (10, 12, 10, 3), dtype=np.uint8)
    _labelled_store(tmp_path / "good.zarr", teacher, images, images)
    _labelled_store(tmp_path / "wrong_images.zarr", teacher, images, other)
    return tmp_path / "good.zarr", tmp_path / "wrong_images.zarr", tmp_path / "teacher.pt"


def test_the_teacher_reproduces_its_own_store(setup: tuple[Path, Path, Path]) -> None:
    good, _, ckpt = setup
    report = check_against_teacher(good, ckpt, entries=3)
    assert report.ok, report.to_dict()
    assert len(report.entries) == 3
    assert all(e.max_abs_diff <= e.tolerance for e in report.entries)


def test_a_mismatched_image_set_is_caught(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, wrong, ckpt = setup
    report = check_against_teacher(wrong, ckpt, entries=4)
    assert not report.ok
    assert all(not e.ok for e in report.entries)
    assert main(["verify", str(wrong), "--teacher", str(ckpt), "--entries", "2"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out
    assert "teacher check: 2 of 2 entries differ" in out
    assert "4/4 entries committed; OK" in out  # the chunk check ran first, and passed


def test_another_teacher_is_caught_by_hash_and_logits(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    good, _, _ = setup
    save_teacher_checkpoint(_teacher(1), tmp_path / "other.pt")
    report = check_against_teacher(good, tmp_path / "other.pt", entries=2)
    assert not report.ok
    assert any("weights hash to" in p for p in report.problems)
    assert all(not e.ok for e in report.entries)


def test_lpld_verify_passes_a_good_store_and_speaks_json(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    good, _, ckpt = setup
    assert main(["verify", str(good), "--teacher", str(ckpt), "--entries", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "teacher check: OK"
    assert main(["verify", str(good), "--teacher", str(ckpt), "--entries", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"]
    assert doc["teacher"]["ok"]
    assert len(doc["teacher"]["entries"]) == 2


def test_lpld_verify_reports_a_damaged_chunk_and_a_bad_entries_count(
    setup: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, _, ckpt = setup
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(good, damaged)
    chunk = next(
        p for p in sorted((damaged / "pool" / "logits").rglob("*")) if p.is_file() and p.name != "zarr.json"
    )
    chunk.write_bytes(chunk.read_bytes()[:-3] + b"xyz")
    assert main(["verify", str(damaged), "--teacher", str(ckpt), "--entries", "1"]) == 1
    assert "pool/logits" in capsys.readouterr().out
    assert main(["verify", str(good), "--teacher", str(ckpt), "--entries", "0"]) == 2
    assert "Expected --entries to be a positive integer. Got 0 instead." in capsys.readouterr().err
