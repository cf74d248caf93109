"""Single-file artifacts (pack/unpack/verify), and reading stores over HTTP Range requests."""

from __future__ import annotations

import asyncio
import os
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp import web

from lpldstore import FORMAT_VERSION, PoolLoader, open_store, verify_store
from lpldstore.cli import main
from lpldstore.errors import ArtifactError, StoreExistsError
from lpldstore.format.plan import PruningPlan
from lpldstore.testing import fill, make_store
from lpldstore.tools.card import store_card
from lpldstore.tools.pack import checksum_path, pack_store, unpack_store


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "pool.zarr"
    with make_store(path, plan=PruningPlan(num_images=10, batch_size=4, epochs=3, ratio=2)) as writer:
        fill(writer)
    return path


class _RangeServer:
    """aiohttp's static files on loopback: answers Range requests (suffix ranges too), logs them."""

    def __init__(self, root: Path) -> None:
        self.ranges: list[str] = []
        self._loop = asyncio.new_event_loop()

        @web.middleware
        async def log(request: web.Request, handler: Any) -> Any:
            if "Range" in request.headers:
                self.ranges.append(request.headers["Range"])
            return await handler(request)

        app = web.Application(middlewares=[log])
        app.router.add_static("/", root)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_RangeServer]:
    (tmp_path / "www").mkdir()
    srv = _RangeServer(tmp_path / "www")
    yield srv
    srv.stop()


def _epoch(source: str | Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = PoolLoader(source, policy="epoch", seed=3)
    loader.set_epoch(1)
    try:
        return [(b.images, b.logits) for b in loader]
    finally:
        loader.close()


def _same(a: list[tuple[torch.Tensor, torch.Tensor]], b: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    assert len(a) == len(b) > 0
    for (xa, la), (xb, lb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb)
        assert torch.equal(la, lb)


def test_pack_writes_a_stored_zip_with_root_metadata_first_and_its_checksum(
    store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pool.zip"
    digest = pack_store(store, out)
    assert checksum_path(out).read_text() == f"{digest}  pool.zip\n"
    with zipfile.ZipFile(out) as zf:
        infos = zf.infolist()
        assert infos[0].filename == "zarr.json"
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
        assert len(infos) == sum(1 for p in store.rglob("*") if p.is_file())
    assert verify_store(out).ok
    _same(_epoch(out), _epoch(store))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.zarr", "pool.zip", "pool.zip.sha256"]
    with pytest.raises(StoreExistsError, match="already exists"):
        pack_store(store, out)


def test_verify_catches_a_changed_zip_and_a_missing_checksum(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "pool.zip"
    pack_store(store, out)
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0xFF
    out.write_bytes(bytes(data))
    report = verify_store(out)
    assert any(p.array == "zip" and "damaged or was changed" in p.message for p in report.problems)
    with pytest.raises(ArtifactError, match="damaged or was changed"):
        unpack_store(out, tmp_path / "back")
    checksum_path(out).unlink()
    assert any("no checksum file" in p.message for p in verify_store(out).problems)
    assert not (tmp_path / "back").exists()


def test_unpack_gives_back_the_store(store: Path, tmp_path: Path) -> None:
    pack_store(store, tmp_path / "pool.zip")
    assert main(["unpack", str(tmp_path / "pool.zip"), str(tmp_path / "back")]) == 0
    assert verify_store(tmp_path / "back").ok
    _same(_epoch(tmp_path / "back"), _epoch(store))


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt", "C:\\evil.txt"])
def test_unpack_refuses_members_outside_the_target(tmp_path: Path, name: str) -> None:
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("zarr.json", "{}")
        zf.writestr(name, "x")
    with pytest.raises(ArtifactError, match="refusing to unpack members"):
        unpack_store(bad, tmp_path / "out" / "store")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_pack_refuses_an_unfinished_store_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "half.zarr"
    with make_store(path, plan=PruningPlan(num_images=10, batch_size=4, epochs=3)) as writer:
        fill(writer, limit=2)
    with pytest.raises(ArtifactError, match="uncommitted entries"):
        pack_store(path, tmp_path / "half.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.zarr"]


def test_loader_reads_a_store_directory_over_http(store: Path, tmp_path: Path, server: _RangeServer) -> None:
    os.rename(store, tmp_path / "www" / "pool.zarr")
    url = server.url("pool.zarr")
    with open_store(url) as remote:
        assert remote.num_entries == 3
    assert verify_store(url).ok
    _same(_epoch(url), _epoch(tmp_path / "www" / "pool.zarr"))


def test_loader_reads_a_zip_over_http_range_requests(
    store: Path, tmp_path: Path, server: _RangeServer
) -> None:
    pack_store(store, tmp_path / "www" / "pool.zip")
    url = server.url("pool.zip")
    local = _epoch(store)
    _same(_epoch(url), local)
    assert server.ranges, "the zip must be read by ranged requests, not downloaded whole"
    assert main(["info", url]) == 0
    # Workers open the remote store themselves.
    loader = PoolLoader(url, policy="epoch", seed=3, num_workers=1, multiprocessing_context="spawn")
    loader.set_epoch(1)
    remote = [(b.images, b.logits) for b in loader]
    _same(remote, local)
    card = store_card(url)
    assert "## Storage" in card


def test_card_summarizes_the_store(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pack_store(store, tmp_path / "pool.zip")
    assert main(["card", str(tmp_path / "pool.zip")]) == 0
    text = capsys.readouterr().out
    digest = checksum_path(tmp_path / "pool.zip").read_text().split()[0]
    with open_store(store) as opened:
        sha = opened.dataset.images_sha256
        kept, total = opened.plan.num_kept, opened.plan.total_entries
    for needle in (
        "# fake:",
        "| teacher | `fake` |",
        f"{kept} kept of {total}",
        "| codec | float16 |",
        "| logits |",
        f"`{sha}`",
        f"`{digest}`",
        "lpldstore version",
        f"format version {FORMAT_VERSION} (Zarr v3)",
    ):
        assert needle in text
