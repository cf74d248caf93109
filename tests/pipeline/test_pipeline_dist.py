"""Multi-process correctness read off the code for NCCL and checked on the CPU (gloo, monkeypatch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lpldstore
from lpld_pipeline import ConfigError, _dist, relabel_entries
from lpldstore.loader.schedule import epoch_schedule, rank_share

from ._stores import create_store, one_thread, tiny_images, tiny_teacher  # noqa: F401  (autouse fixture)


class _FakeCuda:
    """Four visible GPUs; records which one was made current."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.current: list[torch.device] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
        monkeypatch.setattr(torch.cuda, "set_device", self.current.append)


@pytest.mark.parametrize("name", ["cuda", "auto"])
def test_cuda_without_an_index_is_this_ranks_gpu_and_becomes_current(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    cuda = _FakeCuda(monkeypatch)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert _dist.resolve_device(name) == torch.device("cuda", 2)
    assert cuda.current == [torch.device("cuda", 2)]
    monkeypatch.delenv("LOCAL_RANK")
    assert _dist.resolve_device(name) == torch.device("cuda", 0)


def test_an_explicit_gpu_index_is_kept_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = _FakeCuda(monkeypatch)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert _dist.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert cuda.current == [torch.device("cuda", 1)]
    with pytest.raises(ConfigError, match="GPU index below 4"):
        _dist.resolve_device("cuda:4")
    assert _dist.resolve_device("cpu") == torch.device("cpu")
    assert cuda.current == [torch.device("cuda", 1)]  # the CPU leaves the current GPU alone


def test_nccl_reduces_on_the_current_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    assert _dist.collective_device(torch.zeros(2, dtype=torch.float64)) == torch.device("cuda", 3)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    assert _dist.collective_device(torch.zeros(2)) == torch.device("cpu")


def _padded_store(path: Path) -> Path:
    # 20 images in stored batches of 6: every epoch's last batch holds 2 real images (padded).
    teacher, synth = tiny_teacher(), tiny_images()
    with create_store(path, teacher, synth, batch_size=6, ratio=2.0, last_batch="pad") as writer:
        relabel_entries(writer, teacher, torch.from_numpy(synth.images))
    return path


def test_two_gloo_ranks_train_a_padded_store_with_a_batch_size_in_step(tmp_path: Path) -> None:
    store = _padded_store(tmp_path / "s.zarr")
    with lpldstore.open_store(store) as opened:
        plan = opened.plan
    lengths = np.array([plan.batch_length(int(b)) for b in plan.kept_keys[:, 1]])
    # In some epoch the two ranks' shares hold different numbers of samples: cut into batches of
    # 5 on their own they would step unequally often, and DDP would hang on the odd step.
    uneven = [
        epoch
        for epoch in range(4)
        if len(
            {
                -(-int(lengths[rank_share(epoch_schedule(plan, "ilp", 0, epoch), r, 2)].sum()) // 5)
                for r in range(2)
            }
        )
        > 1
    ]
    assert uneven
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    argv += ["-m", "lpld_pipeline.cli", "train", "--store", str(store), "--out", str(tmp_path / "t")]
    argv += ["--device", "cpu", "--no-progress"]
    settings = ("model=tiny_resnet", "width=4", "epochs=4", "batch_size=5", "val_interval=100")
    for setting in (*settings, "val.batch_size=512"):
        argv += ["--set", setting]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    # Its own session: on a hang (the failure this guards against) the ranks die with torchrun.
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the two ranks did not finish within 240 s: unequal step counts hang DDP")
    assert proc.returncode == 0, stderr[-3000:]
    epochs = [
        json.loads(line)
        for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["event"] == "epoch"
    ]
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]
