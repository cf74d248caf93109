"""The examples run, at tiny size: the README quickstart (the README shows that very file), the
train_FKD.py drop-in (its diff is the one in the docs) and the torchrun DDP + AMP loop."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from lpldstore import PoolDataset, PruningPlan, open_store
from lpldstore.testing import fill, make_store

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _env() -> dict[str, str]:
    # The examples import this checkout's lpldstore, installed or not; one thread per process
    # keeps tiny models from fighting over a shared machine's cores.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _block_after(text: str, marker: str, lang: str) -> str:
    start = text.index(marker)
    opening = text.index(f"```{lang}\n", start) + len(f"```{lang}\n")
    return text[opening : text.index("```\n", opening)]


def test_the_readme_shows_the_quickstart_file_exactly() -> None:
    readme = (ROOT / "README.md").read_text()
    assert (
        _block_after(readme, "<!-- examples/quickstart.py -->", "python")
        == (EXAMPLES / "quickstart.py").read_text()
    )


def test_the_docs_show_the_train_fkd_diff_exactly() -> None:
    docs = (ROOT / "docs" / "loader.md").read_text()
    assert (
        _block_after(docs, "<!-- examples/train_FKD.diff -->", "diff")
        == (EXAMPLES / "train_FKD.diff").read_text()
    )


def test_quickstart_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / "quickstart.py")],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "25 entries; entry (0, 1) holds images" in done.stdout
    losses = [float(m) for m in re.findall(r"KD loss ([0-9.]+)", done.stdout)]
    assert len(losses) == 3
    with open_store(tmp_path / "labels.zarr") as store:
        assert store.is_complete
        assert store.num_entries == 25


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("examples") / "labels.zarr"
    plan = PruningPlan(num_images=20, batch_size=8, epochs=3, last_batch="pad", seed=42, sampler="sre2l")
    with make_store(path, plan=plan, image_hw=(16, 16), output_size=(16, 16), num_classes=5) as writer:
        fill(writer)
    return path


@pytest.mark.parametrize("policy", ["stored", "ilp"])
@pytest.mark.usefixtures("one_thread")
def test_train_fkd_drop_in_runs_with_the_sre2l_flags(
    small_store: Path, tmp_path: Path, policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    example = _load("train_fkd_lpldstore")
    example.main(
        [
            "--fkd-path",
            str(small_store),
            "--batch-size",
            "8",
            "--gradient-accumulation-steps",
            "2",
            "-T",
            "20",
            "--epochs",
            "3",
            "--cos",
            "-j",
            "0",
            "--model",
            "resnet18",
            "--label-policy",
            policy,
            "--output-dir",
            str(tmp_path / "save"),
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert out.count("TRAIN Iter") == 3
    assert (tmp_path / "save" / "checkpoint.pth.tar").is_file()


def test_train_fkd_drop_in_refuses_more_epochs_than_stored(small_store: Path, tmp_path: Path) -> None:
    example = _load("train_fkd_lpldstore")
    with pytest.raises(SystemExit, match="--epochs 4 > the 3 epochs the store holds"):
        example.main(["--fkd-path", str(small_store), "--epochs", "4", "--output-dir", str(tmp_path)])


def test_ranks_stop_together_when_batches_are_cut(small_store: Path) -> None:
    # 20 images in stored batches of 8, 8, 4: ranks of 2 get different sample counts per epoch.
    counts = []
    for rank in range(2):
        dataset = PoolDataset(
            small_store, policy="stored", batch_size=3, drop_last=True, rank=rank, world_size=2
        )
        dataset.set_epoch(0)
        counts.append((len(dataset), len(list(dataset))))
    assert counts[0] == counts[1]
    assert counts[0][0] == counts[0][1] == 4  # rank 1 holds 8 + 4 samples (4 batches), rank 0 8 + 8 (5)


def _can_listen() -> bool:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def store_32px(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 32 px, not 16: on the CPU, bfloat16 autocast gives NaN weight gradients in resnet18's layer4
    # when its feature maps are 1x1 (torch 2.14, measured: 4 of 12 seeds at 16 px, 0 of 12 at 32 px).
    path = tmp_path_factory.mktemp("examples32") / "labels.zarr"
    plan = PruningPlan(num_images=20, batch_size=8, epochs=3, last_batch="pad", seed=42, sampler="sre2l")
    with make_store(path, plan=plan, image_hw=(32, 32), output_size=(32, 32), num_classes=5) as writer:
        fill(writer)
    return path


@pytest.mark.skipif(not _can_listen(), reason="torchrun needs a loopback TCP port")
def test_ddp_amp_loop_under_torchrun(store_32px: Path, tmp_path: Path) -> None:
    # kl_mixed_ce runs the KL term and the CutMix hard-label term (labels and partner labels).
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(EXAMPLES / "train_ddp_amp.py"),
        str(store_32px),
        "--model",
        "resnet18",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--policy",
        "stored",
        "--workers",
        "0",
        "--loss",
        "kl_mixed_ce",
        "--out",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    shares = {int(r): int(n) for r, n in re.findall(r"rank (\d) of 2: (\d+) samples", done.stdout)}
    assert sorted(shares) == [0, 1]
    # Stored batches of 8, 8, 4 per epoch: rank 0 takes 8 + 4 = 12, rank 1 takes 8 + 8 = 16 (cut
    # in batches of 4: 3 and 4), so both stop after 3 batches: 12 samples each, per epoch.
    assert shares == {0: 24, 1: 24}
    state = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
