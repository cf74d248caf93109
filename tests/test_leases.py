"""One writer per part: leases taken atomically, refusals naming the holder, takeover of the dead.

Two writers on the same or on overlapping parts are refused before anything is written; writers
on disjoint parts run together; a lease left by a writer killed with SIGKILL (reaped or still a
zombie) is taken over, and the store finishes equal to an uninterrupted one; a lease of another
host is taken over only after ``STALE_AFTER_S`` without renewal; and a commit re-checks both its
lease and the flags it is about to set.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from lpldstore import Layout, PruningPlan, StoreLockedError, StoreWriter, open_store, verify_store
from lpldstore.storage import _lease
from lpldstore.testing import different_entries, fake_entry, fill, make_store, spawn

PLAN = PruningPlan(
    num_images=24, batch_size=4, epochs=4, ratio=1.5, strategy="random", seed=9, last_batch="pad"
)
LAYOUT = Layout(block_entries=2)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "s.zarr"
    make_store(path, plan=PLAN, layout=LAYOUT).close()
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    with make_store(path, plan=PLAN, layout=LAYOUT) as writer:
        fill(writer)
    return path


def _leases(store: Path) -> dict[int, _lease.Holder | None]:
    return _lease.Leases.holders(store)


def test_a_second_writer_on_the_same_part_is_refused_naming_the_holder(store: Path) -> None:
    with StoreWriter.open(store) as first:
        fill(first, limit=1)
        with pytest.raises(
            StoreLockedError, match=r"leased by another writer: pid \d+ on host .* part \(0, 1\)"
        ):
            StoreWriter.open(store)
        first.flush()
    # Released on close: the next writer opens and finishes the store.
    with StoreWriter.open(store) as second:
        fill(second)
    assert _leases(store) == {}
    assert not (store / ".leases").exists()


def test_overlapping_parts_are_refused_and_disjoint_parts_run_together(store: Path, reference: Path) -> None:
    with StoreWriter.open(store, part=(0, 2)) as even:
        with pytest.raises(StoreLockedError, match=r"part \(0, 2\)"):
            StoreWriter.open(store, part=(0, 1))  # all blocks: overlaps every part
        with pytest.raises(StoreLockedError):
            StoreWriter.open(store, part=(2, 4))  # blocks 2, 6, ...: inside part (0, 2)
        with StoreWriter.open(store, part=(1, 2)) as odd:  # disjoint: both run
            fill(odd)
        fill(even)
    assert different_entries(store, reference) == []
    assert verify_store(store).ok


def test_a_refused_writer_takes_no_lease(store: Path) -> None:
    with StoreWriter.open(store, part=(1, 2)):
        before = {b: h.token if h else None for b, h in _leases(store).items()}
        with pytest.raises(StoreLockedError):
            StoreWriter.open(store, part=(0, 1))  # takes block 0 first, then fails on block 1
        assert {b: h.token if h else None for b, h in _leases(store).items()} == before


def test_a_dropped_writer_gives_its_leases_back(store: Path) -> None:
    writer = StoreWriter.open(store)
    assert _leases(store)
    del writer  # never closed
    assert _leases(store) == {}


def _start_filler(store: Path, *args: str) -> subprocess.Popen[bytes]:
    proc = spawn("fill", store, "--delay", "0.3", "--commit-every", "1", *args)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open_store(store) as s:
            if s.committed().any():
                return proc
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "filler died"
        time.sleep(0.05)
    raise AssertionError("the filler never committed")


@pytest.mark.parametrize("reap", [True, False], ids=["reaped", "zombie"])
def test_a_lease_left_by_a_killed_writer_is_taken_over(store: Path, reference: Path, reap: bool) -> None:
    proc = _start_filler(store)
    held = _leases(store)
    assert held
    assert all(h is not None and h.pid == proc.pid for h in held.values())
    proc.send_signal(signal.SIGKILL)
    if reap:
        proc.wait()
    else:
        while not Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1].startswith("Z"):
            time.sleep(0.01)
    try:
        with StoreWriter.open(store) as writer:  # the dead writer's leases are taken over
            fill(writer)
    finally:
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert different_entries(store, reference) == []
    assert verify_store(store).ok
    assert _leases(store) == {}


def test_a_second_filler_process_on_a_live_part_is_refused(store: Path) -> None:
    proc = _start_filler(store)
    try:
        second = spawn("fill", store)
        second.wait(60)
        assert second.returncode != 0
        assert second.stderr is not None
        err = second.stderr.read()
        second.stderr.close()
        assert b"StoreLockedError" in err
        assert f"pid {proc.pid} on host".encode() in err
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()


def _foreign_lease(store: Path, block: int, renewed: float) -> None:
    holder = _lease.Holder(
        token="f" * 32,
        owner="someone",
        host="another-host.example",
        boot_id=None,
        pid=4242,
        pid_started=None,
        part=(0, 1),
        since_utc="2026-01-01T00:00:00+00:00",
        renewed=renewed,
    )
    (store / ".leases").mkdir(exist_ok=True)
    (store / ".leases" / f"block-{block}.json").write_bytes(holder.to_json())


def test_a_lease_of_another_host_is_taken_over_only_when_stale(store: Path) -> None:
    _foreign_lease(store, 1, renewed=time.time())
    with pytest.raises(StoreLockedError, match=r"pid 4242 on host another-host.example \(user someone\)"):
        StoreWriter.open(store)
    _foreign_lease(store, 1, renewed=time.time() - 2 * _lease.STALE_AFTER_S)
    with StoreWriter.open(store) as writer:
        fill(writer)
    assert verify_store(store).ok


def test_a_commit_rechecks_its_lease(store: Path) -> None:
    writer = StoreWriter.open(store, commit_every=100)
    fill(writer, limit=1)  # staged, not committed
    # Another writer took the block over (as one does after STALE_AFTER_S without renewal).
    block = writer.plan.position(*writer.plan.kept_keys[0].tolist()) // LAYOUT.block_entries
    path = store / ".leases" / f"block-{block}.json"
    theft = json.loads(path.read_text()) | {"token": "e" * 32, "pid": 1}
    path.write_text(json.dumps(theft))
    with pytest.raises(StoreLockedError, match=f"no longer holds the lease of block {block}"):
        writer.flush()
    with open_store(store) as s:
        assert not s.committed().any()  # nothing committed


def test_a_commit_rechecks_the_flags_it_sets(store: Path) -> None:
    writer = StoreWriter.open(store, commit_every=100)
    epoch, batch = writer.todo()[0]
    attrs = writer.attrs
    writer.write(epoch, batch, **fake_entry(attrs.plan, attrs.dataset, attrs.relabel, epoch, batch))
    pos = attrs.plan.position(epoch, batch)
    # A process that ignores leases commits an entry of the same block behind the writer's back.
    flags = zarr.open_array(store / "pool" / "committed", mode="r+")
    other = pos ^ 1
    flags[other] = True
    with pytest.raises(StoreLockedError, match=r"commit flags of block .* changed under this writer"):
        writer.flush()
    assert np.flatnonzero(flags[:]).tolist() == [other]  # the writer set nothing
