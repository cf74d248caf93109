"""Fault injection: writers killed with SIGKILL at random moments, and stores damaged at random.

    python benchmarks/fault_injection.py                 # 20 fill + 6 create trials, damage sweep
    python benchmarks/fault_injection.py --trials 60 --seed 1

Crash trials. A real writing process (``python -m lpldstore.testing fill``) is killed with SIGKILL
once or twice in a row; each kill comes at a moment drawn uniformly from the writer's first
commit to the end an uninterrupted run would have (the interpreter's start-up before it is dead
time, not worth killing); then the store is resumed to the end. Each finished store must equal an
uninterrupted one entry for entry and pass ``verify``. Layouts (chunked or sharded logits) and
commit intervals are drawn per trial. Create trials kill ``python -m lpldstore.testing create``
(a store built in a staging directory and renamed into place): afterwards the path holds either
nothing or a complete store, never a partial one.

Damage sweep: every file of a small finished store, flipped, truncated and deleted in turn
(metadata files too); each case must be reported by ``verify`` and refused by the reader.

Moved-chunk sweep (format version 3): every chunk file swapped with another chunk file of the
same array (intact bytes, checksums right, wrong place), and replaced by the same chunk of
another store of the same plan; ``verify`` must name it and the reader must not return wrong data.

Results: ``benchmarks/results/fault_injection.json``. Wall-clock figures depend on the machine
(shared, 2 cores, when the committed results were made).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lpldstore import (
    FORMAT_VERSION,
    Layout,
    LpldStoreError,
    PruningPlan,
    StoreWriter,
    open_store,
    verify_store,
)
from lpldstore.testing import DAMAGE_KINDS, damage_file, different_entries, fill, kill_at, make_store, spawn

PLAN = PruningPlan(
    num_images=96, batch_size=4, epochs=6, ratio=1.5, strategy="random", seed=2, last_batch="pad"
)
DELAY = 0.01  # seconds per entry, so that a run lasts long enough to be cut at many places
RESULTS = Path(__file__).parent / "results" / "fault_injection.json"


def _layout(sharded: bool) -> Layout:
    return Layout(block_entries=8, logits_shard_entries=8 if sharded else None)


def _committed(store: Path) -> int:
    with open_store(store) as s:
        return int(s.committed().sum())


def _reference(root: Path, sharded: bool) -> Path:
    path = root / f"ref-{'sharded' if sharded else 'chunked'}.zarr"
    with make_store(path, plan=PLAN, layout=_layout(sharded)) as writer:
        fill(writer)
    return path


def crash_trial(root: Path, refs: dict[bool, Path], rng: np.random.Generator) -> dict[str, Any]:
    """One fill trial: one or two kills at random moments, then resumed in-process to the end."""
    sharded = bool(rng.integers(0, 2))
    commit_every = int(rng.integers(1, 9))
    store = root / "trial.zarr"
    shutil.rmtree(store, ignore_errors=True)
    make_store(store, plan=PLAN, layout=_layout(sharded)).close()
    kills: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(1, 3))):
        before = _committed(store)
        proc = spawn("fill", store, "--delay", str(DELAY), "--commit-every", str(commit_every))
        # The interpreter's start-up is dead time: wait until this writer commits, then kill it
        # at a moment drawn uniformly over what an uninterrupted run still has to do.
        while proc.poll() is None and _committed(store) == before:
            time.sleep(0.005)
        at = float(rng.uniform(0, (PLAN.num_kept - before) * DELAY * 1.5))
        killed = kill_at(proc, at)
        if not killed and proc.returncode:
            raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "filler failed")
        if proc.stderr:
            proc.stderr.close()
        kills.append(
            {
                "after_first_commit_s": round(at, 3),
                "killed": killed,
                "committed_before": before,
                "committed_after": _committed(store),
            }
        )
    todo_after_kills = PLAN.num_kept - _committed(store)
    with StoreWriter.open(store) as writer:
        resumed = len(writer.todo())
        fill(writer)
    diffs = different_entries(store, refs[sharded])
    report = verify_store(store)
    return {
        "layout": "sharded" if sharded else "chunked",
        "commit_every": commit_every,
        "kills": kills,
        "entries_left_after_kills": todo_after_kills,
        "resumed_entries": resumed,
        "recomputed_committed": resumed - todo_after_kills,  # must be 0: committed work is never redone
        "equal_to_uninterrupted": not diffs,
        "differences": diffs[:5],
        "verify_ok": report.ok,
        "ok": not diffs and report.ok and resumed == todo_after_kills,
    }


def create_trial(root: Path, rng: np.random.Generator) -> dict[str, Any]:
    """Kill the create step while it builds: the path holds nothing or a complete store."""
    work = root / "create"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    store = work / "s.zarr"
    proc = spawn("create", store, "--images", "1500", "--size", "48")
    # Wait until the staging directory exists, then kill within the next second or so (the
    # build takes about that long), or after the rename if the draw is late.
    while proc.poll() is None and not any(p.name.startswith(".s.zarr.creating-") for p in work.iterdir()):
        time.sleep(0.005)
    at = float(rng.uniform(0, 1.5))
    killed = kill_at(proc, at)
    if proc.stderr:
        proc.stderr.close()
    leftovers = sorted(p.name for p in work.iterdir() if p.name != "s.zarr")
    outcome: dict[str, Any] = {"at_s": round(at, 3), "killed": killed, "staging_left": len(leftovers)}
    if store.exists():
        problems = verify_store(store).problems
        # A complete new store: every array and image present, only its entries still to write.
        complete = all(p.message == "entry not committed (unfinished store)" for p in problems)
        outcome |= {"result": "complete store" if complete else "PARTIAL STORE", "ok": complete}
    else:
        try:
            open_store(store)
            outcome |= {"result": "opened a missing store?", "ok": False}
        except LpldStoreError:
            outcome |= {"result": "no store (create again)", "ok": True}
    return outcome


def damage_sweep(root: Path, rng: np.random.Generator) -> dict[str, Any]:
    """Every file of a small store, damaged each way in turn: verify and the reader must both notice."""
    plan = PruningPlan(num_images=16, batch_size=4, epochs=3, ratio=1.5, strategy="random", seed=4)
    cases: list[dict[str, Any]] = []
    for sharded in (False, True):
        template = root / f"damage-template-{sharded}.zarr"
        layout = Layout(block_entries=4, logits_shard_entries=4 if sharded else None)
        with make_store(template, plan=plan, layout=layout) as writer:
            fill(writer)
        files = sorted(p.relative_to(template) for p in template.rglob("*") if p.is_file())
        for rel in files:
            for kind in DAMAGE_KINDS:
                path = root / "damaged.zarr"
                shutil.rmtree(path, ignore_errors=True)
                shutil.copytree(template, path)
                what = damage_file(path / rel, kind, rng)
                report = verify_store(path)
                # Everything a reader returns, compared with the undamaged store.
                reader = _reader_outcome(path, template)
                cases.append(
                    {
                        "layout": "sharded" if sharded else "chunked",
                        "file": str(rel),
                        "kind": kind,
                        "what": what,
                        "verify_detected": not report.ok,
                        "reader": reader,
                        "named": sorted({str(p).split(":")[0] for p in report.problems})[:4],
                    }
                )
    return {
        "cases": len(cases),
        "verify_detected": sum(c["verify_detected"] for c in cases),
        "reader_refused": sum(c["reader"] == "refused" for c in cases),
        "reader_correct_data": sum(c["reader"] == "correct data" for c in cases),
        "reader_wrong_data": sum(c["reader"] == "wrong data" for c in cases),
        "missed_by_verify": [c for c in cases if not c["verify_detected"]],
        "reader_unaffected": sorted({c["file"] for c in cases if c["reader"] == "correct data"}),
        "reader_wrong": [c for c in cases if c["reader"] == "wrong data"],
        "details": cases,
    }


def _reader_outcome(path: Path, template: Path) -> str:
    try:
        with open_store(path) as store:
            complete = store.is_complete
        # Entries whose commit flags are lost are not served at all (a resumed writer redoes them).
        if not complete:
            return "refused"
        return "wrong data" if different_entries(path, template) else "correct data"
    except LpldStoreError:
        return "refused"


def moved_sweep(root: Path) -> dict[str, Any]:
    """Every chunk swapped with another of its array, and replaced by another store's: all named."""
    plan = PruningPlan(num_images=16, batch_size=4, epochs=3, ratio=1.5, strategy="random", seed=4)
    cases: list[dict[str, Any]] = []
    for sharded in (False, True):
        layout = Layout(block_entries=4, logits_shard_entries=4 if sharded else None)
        template = root / f"moved-template-{sharded}.zarr"
        other = root / f"moved-other-{sharded}.zarr"
        for path, seed in ((template, 0), (other, 1)):
            with make_store(path, plan=plan, layout=layout, seed=seed) as writer:
                fill(writer, seed=seed)
        chunks = sorted(
            p.relative_to(template)
            for p in template.rglob("*")
            if p.is_file() and "/c/" in f"/{p.relative_to(template).as_posix()}"
        )
        for rel in chunks:
            array = rel.as_posix().split("/c/")[0]
            peers = [c for c in chunks if c.as_posix().split("/c/")[0] == array and c != rel]
            kinds: list[tuple[str, Path | None]] = (
                [("swapped with " + str(peers[0]), peers[0])] if peers else []
            )
            kinds.append(("from another store", None))
            for what, peer in kinds:
                path = root / "moved.zarr"
                shutil.rmtree(path, ignore_errors=True)
                shutil.copytree(template, path)
                if peer is None:
                    if (path / rel).read_bytes() == (other / rel).read_bytes():
                        continue  # identical in both stores (keys, images of the same seed): nothing moved
                    shutil.copyfile(other / rel, path / rel)
                else:
                    if (path / rel).read_bytes() == (path / peer).read_bytes():
                        continue  # byte-identical chunks: a swap changes nothing
                    a, b = (path / rel).read_bytes(), (path / peer).read_bytes()
                    (path / rel).write_bytes(b)
                    (path / peer).write_bytes(a)
                report = verify_store(path)
                cases.append(
                    {
                        "layout": "sharded" if sharded else "chunked",
                        "file": str(rel),
                        "what": what,
                        "verify_detected": not report.ok,
                        "reader": _reader_outcome(path, template),
                        "named": sorted({str(p).split(":")[0] for p in report.problems})[:4],
                    }
                )
    return {
        "cases": len(cases),
        "verify_detected": sum(c["verify_detected"] for c in cases),
        "reader_refused": sum(c["reader"] == "refused" for c in cases),
        "reader_correct_data": sum(c["reader"] == "correct data" for c in cases),
        "reader_wrong_data": sum(c["reader"] == "wrong data" for c in cases),
        "missed_by_verify": [c for c in cases if not c["verify_detected"]],
        "reader_wrong": [c for c in cases if c["reader"] == "wrong data"],
        "details": cases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="fill trials (SIGKILL + resume)")
    parser.add_argument("--create-trials", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        refs = {sharded: _reference(root, sharded) for sharded in (False, True)}
        trials = []
        for i in range(args.trials):
            trial = crash_trial(root, refs, rng)
            trials.append(trial)
            print(
                f"fill trial {i:2d} {trial['layout']:7s} commit_every={trial['commit_every']} "
                f"kills {[k['after_first_commit_s'] for k in trial['kills']]} s after a commit, committed after kills "
                f"{PLAN.num_kept - trial['entries_left_after_kills']}/{PLAN.num_kept}: "
                f"{'OK' if trial['ok'] else 'FAILED ' + str(trial['differences'])}"
            )
        creates = []
        for i in range(args.create_trials):
            outcome = create_trial(root, rng)
            creates.append(outcome)
            print(f"create trial {i}: killed at {outcome['at_s']} s: {outcome['result']}")
        damage = damage_sweep(root, rng)
        print(
            f"damage sweep: {damage['verify_detected']}/{damage['cases']} detected by verify, "
            f"reader refused {damage['reader_refused']}, read correct data {damage['reader_correct_data']}, "
            f"returned wrong data {damage['reader_wrong_data']}"
        )
        moved = moved_sweep(root)
        print(
            f"moved-chunk sweep: {moved['verify_detected']}/{moved['cases']} detected by verify, "
            f"reader refused {moved['reader_refused']}, read correct data {moved['reader_correct_data']}, "
            f"returned wrong data {moved['reader_wrong_data']}"
        )
    summary = {
        "format_version": FORMAT_VERSION,
        "fill_trials": len(trials),
        "fill_trials_ok": sum(t["ok"] for t in trials),
        "kills": sum(k["killed"] for t in trials for k in t["kills"]),
        "kills_mid_write": sum(
            k["killed"] and 0 < k["committed_after"] < PLAN.num_kept for t in trials for k in t["kills"]
        ),
        "committed_entries_recomputed": sum(t["recomputed_committed"] for t in trials),
        "create_trials": len(creates),
        "create_trials_ok": sum(c["ok"] for c in creates),
        "create_killed": sum(c["killed"] for c in creates),
        "damage_cases": damage["cases"],
        "damage_detected_by_verify": damage["verify_detected"],
        "damage_reader_refused": damage["reader_refused"],
        "damage_reader_correct_data": damage["reader_correct_data"],
        "damage_reader_wrong_data": damage["reader_wrong_data"],
        "moved_cases": moved["cases"],
        "moved_detected_by_verify": moved["verify_detected"],
        "moved_reader_refused": moved["reader_refused"],
        "moved_reader_correct_data": moved["reader_correct_data"],
        "moved_reader_wrong_data": moved["reader_wrong_data"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": f"python benchmarks/fault_injection.py --trials {args.trials} "
                f"--create-trials {args.create_trials} --seed {args.seed}",
                "plan": PLAN.to_dict(),
                "entries": PLAN.num_kept,
                "summary": summary,
                "fill_trials": trials,
                "create_trials": creates,
                "damage": {k: v for k, v in damage.items() if k != "details"},
                "damage_cases": damage["details"],
                "moved": {k: v for k, v in moved.items() if k != "details"},
                "moved_cases": moved["details"],
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
