"""Relabel with the ImageNet-21K recipe's cutout: stored, checked by verify --teacher, replayed exactly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

import lpldstore
from lpld_pipeline import RELABEL_PRESETS, relabel, relabel_entries, store_records
from lpld_pipeline.check import check_against_teacher

from ._stores import one_thread, relabel_config, stage_dirs, tiny_images, tiny_teacher  # noqa: F401


class _Recording(torch.nn.Module):
    """Records every input the teacher is given."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        super().__init__()
        self.teacher = teacher
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return self.teacher(x)


def test_relabel_with_cutout_is_verified_and_replayed_exactly(tmp_path: Path) -> None:
    teacher, synth = tiny_teacher(), tiny_images()
    squeeze_dir, synth_dir = stage_dirs(tmp_path, teacher, synth)
    store = tmp_path / "s.zarr"
    config = relabel_config(
        squeeze_dir=str(squeeze_dir), synth_dir=str(synth_dir), out=str(store), device="cpu", cutout=True
    )
    relabel(config)
    assert check_against_teacher(store, squeeze_dir / "teacher.pt", entries=8).ok
    with lpldstore.open_store(store) as opened:
        assert opened.relabel.extras == ("cutout",)
        mean = torch.tensor(opened.dataset.mean).view(1, 3, 1, 1)
        std = torch.tensor(opened.dataset.std).view(1, 3, 1, 1)
        keys = [tuple(k) for k in opened.plan.kept_keys.tolist()]
        plain_config = dataclasses.replace(opened.relabel, extras=())
        entries = [opened.entry(*key) for key in keys]
    # The teacher's inputs, as relabel_entries computes them (recorded on a second, equal store).
    recording = _Recording(teacher)
    records = store_records(relabel_config(cutout=True), teacher, synth, "tiny")
    rerun = tmp_path / "rerun.zarr"
    with lpldstore.StoreWriter.create(rerun, images=synth.images, labels=synth.labels, **records) as writer:
        relabel_entries(writer, recording, torch.from_numpy(synth.images))
    inputs = dict(zip(keys, recording.inputs, strict=True))
    pixels = torch.from_numpy(synth.images)
    for entry in entries:
        assert entry.params.extra["cutout_box"].shape == (len(entry.indices), 4)
        assert entry.params.extra["cutout_fill"].dtype == np.uint8
        # The cutout was applied: the same entry replayed without it gives other inputs.
        plain = dataclasses.replace(entry.params, extra={})
        without = lpldstore.apply_params(
            pixels[torch.from_numpy(entry.indices)], plain, plain_config, (0.0,) * 3, (1.0,) * 3
        )
        assert not torch.equal(without, inputs[(entry.epoch, entry.batch)])
    # The pool loader's images are the teacher's inputs, normalized with the store's mean/std.
    loader = lpldstore.PoolLoader(store, policy="sequential")
    seen = 0
    for batch in loader:
        key = tuple(batch.keys[0].tolist())
        torch.testing.assert_close(batch.images * std + mean, inputs[key], rtol=0, atol=1e-6)
        seen += 1
    loader.close()
    assert seen == len(keys)


def test_the_imagenet21k_relabel_preset_uses_cutout() -> None:
    assert RELABEL_PRESETS["imagenet21k"].cutout
    assert not RELABEL_PRESETS["imagenet1k"].cutout
