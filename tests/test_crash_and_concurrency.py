"""Writers in real processes: killed with SIGKILL part-way, and several filling one store at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lpldstore import Layout, PruningPlan, StoreWriter, open_store, verify_store
from lpldstore.testing import fill, make_store

PLAN = PruningPlan(
    num_images=64, batch_size=4, epochs=6, ratio=1.5, strategy="random", seed=2, last_batch="pad"
)


def _filler(store: Path, *args: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "lpldstore.testing", "fill", str(store), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _committed(store: Path) -> int:
    with open_store(store) as s:
        return int(s.committed().sum())


def _assert_same_entries(a: Path, b: Path) -> None:
    with open_store(a) as sa, open_store(b) as sb:
        assert sa.is_complete
        assert sb.is_complete
        assert np.array_equal(sa.keys, sb.keys)
        for pos in range(sa.num_entries):
            ea, eb = sa.entry_at(pos), sb.entry_at(pos)
            for field in ("indices", "crops", "flips", "mix_index", "mix_box", "logits"):
                assert np.array_equal(getattr(ea, field), getattr(eb, field)), (pos, field)
            assert ea.mix_lam == eb.mix_lam


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    with make_store(path, plan=PLAN, layout=Layout(block_entries=8)) as writer:
        fill(writer)
    return path


@pytest.mark.parametrize("sharded", [False, True], ids=["chunked", "sharded"])
def test_killed_writer_resumes_to_the_uninterrupted_store(
    reference: Path, tmp_path: Path, sharded: bool
) -> None:
    store = tmp_path / "s.zarr"
    layout = Layout(block_entries=8, logits_shard_entries=8 if sharded else None)
    make_store(store, plan=PLAN, layout=layout).close()
    total = PLAN.num_kept
    proc = _filler(store, "--delay", "0.03", "--commit-every", "3")
    deadline = time.monotonic() + 60
    while _committed(store) < total // 3:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the writer made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done_before = _committed(store)
    assert 0 < done_before < total, "kill the writer part-way, not after it finished"

    with StoreWriter.open(store) as writer:
        todo = writer.todo()
        assert len(todo) == total - done_before  # committed entries are never recomputed
        assert fill(writer) == len(todo)
    _assert_same_entries(store, reference)
    assert verify_store(store).ok


def test_two_processes_fill_one_store_concurrently(reference: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    make_store(store, plan=PLAN, layout=Layout(block_entries=8)).close()
    procs = [_filler(store, "--rank", str(r), "--world", "2", "--delay", "0.005") for r in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    _assert_same_entries(store, reference)
    assert verify_store(store).ok


def test_parts_are_disjoint_and_cover_the_plan(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    make_store(store, plan=PLAN, layout=Layout(block_entries=8)).close()
    parts = [set(StoreWriter.open(store, part=(r, 3)).todo()) for r in range(3)]
    assert sum(len(p) for p in parts) == PLAN.num_kept
    assert set.union(*parts) == {tuple(k) for k in PLAN.kept_keys.tolist()}


def test_exception_inside_the_writer_commits_what_was_written(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"

    def relabel_that_crashes() -> None:
        with make_store(store, plan=PLAN) as writer:
            fill(writer, limit=5)
            raise RuntimeError("teacher crashed")

    with pytest.raises(RuntimeError, match="teacher crashed"):
        relabel_that_crashes()
    assert _committed(store) == 5
    assert os.path.isdir(store)


@pytest.mark.parametrize("sharded", [False, True])
def test_resuming_removes_what_a_write_killed_mid_file_left(tmp_path: Path, sharded: bool) -> None:
    # zarr writes a chunk to NAME.<random>.partial and renames it: a SIGKILL in between leaves
    # the temporary file, which verify reports until a resumed writer finishes the store.
    import zarr

    layout = Layout(block_entries=4, logits_shard_entries=4 if sharded else None)
    reference = tmp_path / "ref.zarr"
    with make_store(reference, plan=PLAN, layout=layout) as writer:
        fill(writer)
    store = tmp_path / "s.zarr"
    with make_store(store, plan=PLAN, layout=layout, commit_every=1) as writer:
        fill(writer, limit=5)  # block 0 committed, block 1 holds one committed entry
    logits = zarr.open_array(store / "pool/logits", mode="r")
    crop = zarr.open_array(store / "pool/crop", mode="r")

    def beside(array: zarr.Array, name: str, index: int) -> Path:
        chunk = store / name / array.metadata.encode_chunk_key((index, *(0,) * (array.ndim - 1)))
        chunk.parent.mkdir(parents=True, exist_ok=True)
        leftover = chunk.with_name(f"{chunk.name}.0123456789abcdef.partial")
        leftover.write_bytes(b"half a chunk")
        return leftover

    per_file = 4 if sharded else 1
    uncommitted = [beside(logits, "pool/logits", 6 // per_file), beside(crop, "pool/crop", 1)]
    report = verify_store(store)
    assert any("StoreWriter.open" in p.message for p in report.problems)
    if not sharded:  # a committed entry's chunk cannot have one: it is left for verify to report
        stray = beside(logits, "pool/logits", 0)
    with StoreWriter.open(store) as writer:
        assert not any(p.exists() for p in uncommitted)
        fill(writer)
    _assert_same_entries(store, reference)
    problems = verify_store(store).problems
    assert [p.message.split(" ")[0] for p in problems] == (
        [] if sharded else [stray.relative_to(store).as_posix()]
    )
