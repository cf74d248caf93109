"""Relabel: only kept entries, one teacher call each, resume after a crash, torchrun equality."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lpldstore
from lpld_pipeline import ConfigError, relabel, relabel_entries

from ._stores import (
    CountingTeacher,
    create_store,
    one_thread,  # noqa: F401  (autouse fixture)
    relabel_config,
    stage_dirs,
    store_arrays,
    tiny_images,
    tiny_teacher,
)


def test_teacher_runs_once_per_kept_entry_and_never_on_pruned_ones(tmp_path: Path) -> None:
    teacher, synth = tiny_teacher(), tiny_images()
    counting = CountingTeacher(teacher)
    with create_store(tmp_path / "s.zarr", teacher, synth) as writer:
        plan = writer.plan
        assert plan.num_kept == 8 < plan.total_entries == 32
        assert relabel_entries(writer, counting, torch.from_numpy(synth.images)) == 8
    assert counting.calls == plan.num_kept
    with lpldstore.open_store(tmp_path / "s.zarr") as store:
        assert store.is_complete
        # The contract with `lpldstore verify --teacher`: logits = teacher(apply_params(..., mean 0, std 1)).
        epoch, batch = (int(v) for v in plan.kept_keys[-1])
        entry = store.entry(epoch, batch)
        params = lpldstore.draw_params(store.relabel, (16, 16), len(entry), epoch, batch)
        x = lpldstore.apply_params(
            torch.from_numpy(synth.images[entry.indices]), params, store.relabel, (0, 0, 0), (1, 1, 1)
        )
        with torch.no_grad():
            expected = teacher(x).numpy().astype(np.float16)
        np.testing.assert_array_equal(entry.logits, expected)
        assert store.relabel.teacher == "tiny_resnet"
        assert store.relabel.teacher_sha256 == teacher.sha256()
        assert store.dataset.mean == teacher.spec.mean


def test_resume_after_a_crash_computes_only_the_rest_and_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    teacher, synth = tiny_teacher(), tiny_images()
    images = torch.from_numpy(synth.images)
    with create_store(tmp_path / "whole.zarr", teacher, synth) as writer:
        relabel_entries(writer, teacher, images)
    crashing = CountingTeacher(teacher, fail_on=6)
    with (
        pytest.raises(RuntimeError, match="simulated crash"),
        create_store(tmp_path / "crash.zarr", teacher, synth) as writer,
    ):
        relabel_entries(writer, crashing, images)
    reopened = lpldstore.StoreWriter.open(tmp_path / "crash.zarr")
    assert len(reopened.todo()) == 3  # five entries were written and committed before the crash
    resumed = CountingTeacher(teacher)
    with reopened:
        assert relabel_entries(reopened, resumed, images) == 3
    assert resumed.calls == 3
    whole, crash = store_arrays(tmp_path / "whole.zarr"), store_arrays(tmp_path / "crash.zarr")
    for name, value in whole.items():
        np.testing.assert_array_equal(crash[name], value, err_msg=name)


def test_stage_resumes_a_matching_store_and_refuses_a_different_one(tmp_path: Path) -> None:
    teacher, synth = tiny_teacher(), tiny_images()
    squeeze_dir, synth_dir = stage_dirs(tmp_path, teacher, synth)
    config = relabel_config(
        squeeze_dir=str(squeeze_dir), synth_dir=str(synth_dir), out=str(tmp_path / "s.zarr")
    )
    first = relabel(config)
    assert (first.entries_computed, first.entries_kept, first.entries_planned) == (8, 8, 32)
    before = store_arrays(tmp_path / "s.zarr")
    assert relabel(config).entries_computed == 0  # complete: nothing left to do
    with pytest.raises(ConfigError, match="Its plan record differs"):
        relabel(dataclasses.replace(config, ratio=2.0))
    with pytest.raises(ConfigError, match="resume=false"):
        relabel(dataclasses.replace(config, resume=False))
    with pytest.raises(ConfigError, match="Invalid relabel settings"):
        relabel(dataclasses.replace(config, out=str(tmp_path / "other.zarr"), batch_size=50))
    assert not (tmp_path / "other.zarr").exists()
    after = store_arrays(tmp_path / "s.zarr")
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_torchrun_with_two_gloo_ranks_writes_the_same_store_as_one_process(tmp_path: Path) -> None:
    teacher, synth = tiny_teacher(), tiny_images()
    squeeze_dir, synth_dir = stage_dirs(tmp_path, teacher, synth)
    # block_entries=2: the 8 kept entries form 4 blocks, shared out over the two ranks.
    # Both sides on the CPU: with a GPU, "auto" would relabel this side in bf16 on CUDA while the
    # torchrun side runs on the CPU, and the stores could not be equal.
    single = relabel_config(
        squeeze_dir=str(squeeze_dir),
        synth_dir=str(synth_dir),
        out=str(tmp_path / "one.zarr"),
        block_entries=2,
        device="cpu",
    )
    relabel(single)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    argv += ["-m", "lpld_pipeline.cli", "relabel", "--squeeze-dir", str(squeeze_dir), "--synth-dir"]
    argv += [str(synth_dir), "--out", str(tmp_path / "two.zarr"), "--device", "cpu", "--no-progress"]
    for setting in ("batch_size=5", "epochs=8", "ratio=4", "crop_scale=[0.5,1]", "block_entries=2"):
        argv += ["--set", setting]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("computed 4 entries on this rank") == 2  # each rank did its own half
    one, two = store_arrays(tmp_path / "one.zarr"), store_arrays(tmp_path / "two.zarr")
    for name, value in one.items():
        np.testing.assert_array_equal(two[name], value, err_msg=name)
