"""Tiny stores and stage directories for the relabel and train tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import lpldstore
from lpld_pipeline import RelabelStageConfig, Teacher, save_teacher_checkpoint, store_records
from lpld_pipeline.synthesize import SynthesisResult

from .conftest import make_tiny_teacher

NUM_CLASSES = 10
IMAGE_SIZE = 16


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and spinning threads crawl on a busy shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_images(ipc: int = 2, seed: int = 0) -> SynthesisResult:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (NUM_CLASSES * ipc, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), ipc)
    indices = np.tile(np.arange(ipc, dtype=np.int64), NUM_CLASSES)
    return SynthesisResult(images, labels, indices, tuple(str(i) for i in range(NUM_CLASSES)))


def tiny_teacher() -> Teacher:
    return make_tiny_teacher(num_classes=NUM_CLASSES, width=4)


class CountingTeacher(torch.nn.Module):
    """Wraps a teacher; counts calls and can fail on a given call (a simulated crash)."""

    def __init__(self, teacher: Teacher, fail_on: int | None = None) -> None:
        super().__init__()
        self.teacher = teacher
        self.calls = 0
        self.fail_on = fail_on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("simulated crash")
        return self.teacher(x)


def relabel_config(**kw: object) -> RelabelStageConfig:
    base = {"batch_size": 5, "epochs": 8, "ratio": 4.0, "crop_scale": (0.5, 1.0), "progress": False}
    base.update(kw)
    return RelabelStageConfig(**base)  # type: ignore[arg-type]


def create_store(path: Path, teacher: Teacher, synth: SynthesisResult, **kw: object) -> lpldstore.StoreWriter:
    records = store_records(relabel_config(**kw), teacher, synth, "tiny")
    return lpldstore.StoreWriter.create(path, images=synth.images, labels=synth.labels, **records)


def stage_dirs(root: Path, teacher: Teacher, synth: SynthesisResult) -> tuple[Path, Path]:
    """A squeeze directory (teacher.pt) and a synthesize directory (images.npz) for the stages."""
    squeeze_dir, synth_dir = root / "squeeze", root / "synth"
    squeeze_dir.mkdir(parents=True)
    synth_dir.mkdir(parents=True)
    save_teacher_checkpoint(teacher, squeeze_dir / "teacher.pt")
    np.savez(
        synth_dir / "images.npz",
        images=synth.images,
        labels=synth.labels,
        indices=synth.indices,
        class_names=json.dumps(list(synth.class_names)),
    )
    return squeeze_dir, synth_dir


def store_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a store that its writers fill (provenance timestamps aside)."""
    with lpldstore.open_store(path) as store:
        out = {
            name: np.asarray(store.array(f"pool/{name}")[:])
            for name in ("indices", "crop", "flip", "mix_index", "mix_lam", "mix_box", "logits", "committed")
        }
        out["pixels"] = store.images()
    return out
