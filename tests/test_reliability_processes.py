"""Writers as real processes: killed at random moments (fill and create), and four at once with readers.

The quick versions of ``benchmarks/fault_injection.py`` (which runs 20+ trials).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from lpldstore import EntryError, Layout, NotAStoreError, PruningPlan, StoreWriter, open_store, verify_store
from lpldstore.testing import different_entries, fill, kill_at, make_store, spawn

PLAN = PruningPlan(
    num_images=64, batch_size=4, epochs=6, ratio=1.5, strategy="random", seed=2, last_batch="pad"
)
LAYOUT = Layout(block_entries=4)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    with make_store(path, plan=PLAN, layout=LAYOUT) as writer:
        fill(writer)
    return path


def _committed(store: Path) -> int:
    with open_store(store) as s:
        return int(s.committed().sum())


def _wait_for_commits(store: Path, proc: object, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _committed(store) < at_least:
        assert time.monotonic() < deadline, "the writer made no progress"
        time.sleep(0.01)


def test_writer_killed_twice_at_random_moments_resumes_exactly(reference: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    store = tmp_path / "s.zarr"
    make_store(store, plan=PLAN, layout=LAYOUT).close()
    for _ in range(2):
        proc = spawn("fill", store, "--delay", "0.01", "--commit-every", str(int(rng.integers(1, 6))))
        _wait_for_commits(store, proc, _committed(store) + 1)  # it is writing now
        kill_at(proc, float(rng.uniform(0, 0.15)))
        if proc.stderr:
            proc.stderr.close()
    left = PLAN.num_kept - _committed(store)
    assert left > 0, "the writer should have been killed part-way"
    with StoreWriter.open(store) as writer:
        assert len(writer.todo()) == left  # committed entries are never recomputed
        fill(writer)
    assert different_entries(store, reference) == []
    assert verify_store(store).ok


def test_killed_create_leaves_nothing_or_a_complete_store(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    proc = spawn("create", store, "--images", "600", "--size", "32")
    # Kill once the staging directory exists, i.e. while the store is being built.
    deadline = time.monotonic() + 120
    while proc.poll() is None and not any(p.name.startswith(".s.zarr.creating-") for p in tmp_path.iterdir()):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    kill_at(proc, 0.05)
    if proc.stderr:
        proc.stderr.close()
    if store.exists():  # the rename happened before the kill: the store must be complete
        problems = verify_store(store).problems
        assert all(p.message == "entry not committed (unfinished store)" for p in problems)
    else:
        with pytest.raises(NotAStoreError, match="the path does not exist"):
            open_store(store)
        # Creating again works: the staging directory of the killed run does not block it.
        spawn_again = spawn("create", store, "--images", "600", "--size", "32")
        assert spawn_again.wait(timeout=120) == 0
        if spawn_again.stderr:
            spawn_again.stderr.close()
        assert open_store(store).num_entries > 0


def test_four_writers_with_readers_watching(reference: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    make_store(store, plan=PLAN, layout=LAYOUT).close()
    # Each writer spends >= 1.6 s writing (16 entries, 0.1 s apart) so that the readers, slow on a
    # loaded machine, still catch the store part-filled.
    procs = [spawn("fill", store, "--rank", str(r), "--world", "4", "--delay", "0.1") for r in range(4)]
    seen_partial = 0
    checked = 0
    with open_store(reference) as ref:
        while any(p.poll() is None for p in procs):
            with open_store(store) as reader:  # a reader opened while the writers are at work
                committed = reader.committed()
                if 0 < committed.sum() < PLAN.num_kept:
                    seen_partial += 1
                for pos in range(reader.num_entries):
                    try:
                        got = reader.entry_at(pos)
                    except EntryError:
                        assert not committed[pos], pos  # an entry that was committed stays readable
                        continue
                    want = ref.entry_at(pos)  # committed now (perhaps since the flags were read)
                    assert np.array_equal(got.logits, want.logits), pos
                    assert np.array_equal(got.crops, want.crops), pos
                    assert np.array_equal(got.indices, want.indices), pos
                    assert got.mix_lam == want.mix_lam
                    checked += 1
    for proc in procs:
        assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    assert seen_partial > 0, "the readers should have seen the store part-filled"
    assert checked > 0
    assert different_entries(store, reference) == []
    assert verify_store(store).ok
