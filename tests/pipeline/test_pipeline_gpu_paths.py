"""The GPU speed paths, checked on the CPU: the same stores and images as the plain paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import lpldstore
from lpld_pipeline import _dist, relabel_entries
from lpld_pipeline.config import RELABEL_PRESETS, SYNTHESIS_PRESETS, TRAIN_PRESETS

from ._stores import create_store, one_thread, store_arrays, tiny_images, tiny_teacher  # noqa: F401


def test_relabel_through_a_background_writer_writes_the_same_store(tmp_path: Path) -> None:
    teacher, synth = tiny_teacher(), tiny_images()
    with create_store(tmp_path / "plain.zarr", teacher, synth) as writer:
        assert relabel_entries(writer, teacher, torch.from_numpy(synth.images)) == 8
    # What the relabel stage does on a GPU: logits handed over as tensors, written by a thread.
    with lpldstore.BackgroundWriter(create_store(tmp_path / "bg.zarr", teacher, synth)) as background:
        assert relabel_entries(background, teacher, torch.from_numpy(synth.images)) == 8
    plain, bg = store_arrays(tmp_path / "plain.zarr"), store_arrays(tmp_path / "bg.zarr")
    for name, value in plain.items():
        np.testing.assert_array_equal(bg[name], value, err_msg=name)


def test_cudnn_autotune_is_on_for_a_gpu_only_and_restored() -> None:
    before = torch.backends.cudnn.benchmark
    with _dist.cudnn_autotune(torch.device("cpu")):
        assert torch.backends.cudnn.benchmark == before
    try:
        with _dist.cudnn_autotune(torch.device("cuda", 0)):
            assert torch.backends.cudnn.benchmark
            raise RuntimeError("a failing stage")
    except RuntimeError:
        pass
    assert torch.backends.cudnn.benchmark == before


def test_the_gpu_presets_run_channels_last_wherever_synthesis_does() -> None:
    for name, synth in SYNTHESIS_PRESETS.items():
        assert RELABEL_PRESETS[name].channels_last == synth.channels_last, name
        assert TRAIN_PRESETS[name].channels_last == synth.channels_last, name
