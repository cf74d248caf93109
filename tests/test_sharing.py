"""The publish recipe of docs/interop.md against fsspec file systems on this machine: pack, upload
(here: to ``memory://``, as to ``s3://`` or ``hf://``), open by URL, train from it.

(HTTP Range reads of a packed store against a loopback server: tests/test_pack_remote.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
import torch
from torch.utils.data import DataLoader

from lpldstore import PoolDataset, PruningPlan, open_store, verify_store
from lpldstore.cli import main
from lpldstore.testing import different_entries, fill, make_store
from lpldstore.tools.card import store_card
from lpldstore.tools.pack import pack_store


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sharing") / "pool.zarr"
    with make_store(path, plan=PruningPlan(num_images=12, batch_size=4, epochs=3, ratio=1.5)) as writer:
        fill(writer)
    return path


@pytest.fixture
def bucket(local: Path) -> Iterator[str]:
    """The store uploaded twice to an in-memory file system: packed, and as a directory."""
    fs = fsspec.filesystem("memory")
    if not (local.parent / "pool.zip").exists():
        pack_store(local, local.parent / "pool.zip")
    fs.put(str(local.parent / "pool.zip"), "/bucket/pool.zip")
    fs.put(str(local), "/bucket/pool.zarr", recursive=True)
    yield "memory://bucket"
    fs.rm("/bucket", recursive=True)


def _epoch(source: str | Path, **options: object) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dataset = PoolDataset(source, policy="epoch", seed=2, **options)  # type: ignore[arg-type]
    dataset.set_epoch(1)
    return list(DataLoader(dataset, batch_size=None))


def _same(a: list[tuple[torch.Tensor, torch.Tensor]], b: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    assert len(a) == len(b) > 0
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb)
        assert torch.equal(ya, yb)


@pytest.mark.parametrize("name", ["pool.zip", "pool.zarr"])
def test_a_published_store_opens_by_url_and_trains_the_same(
    local: Path, bucket: str, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{bucket}/{name}"
    assert different_entries(url, local) == []
    _same(_epoch(url), _epoch(local))
    assert verify_store(url).ok
    assert main(["info", url]) == 0
    assert url in capsys.readouterr().out
    assert "pool" in store_card(url)


def test_a_file_url_serves_dataloader_workers(local: Path) -> None:
    url = local.resolve().as_uri()
    assert url.startswith("file://")
    with open_store(url) as store:
        assert store.is_complete
    _same(_epoch(url, num_workers=2, multiprocessing_context="fork"), _epoch(local))
