"""What format version 3's digests cost: writer entries/s, loader steps/s and verify, with and without.

    python benchmarks/digest_cost.py                  # 1,000 classes, batch 128, 224 px images
    python benchmarks/digest_cost.py --size 64        # cheaper replay: the digests' share is larger

*With* is lpldstore as it is. *Without* is the same code on the same store with the digest work
taken out: the writer's ``digest_row`` returns zeros instead of hashing, and the reader's three
checks (logits digest, entry digest, images against ``dataset.images_sha256``) and verify's two
are skipped. The ``pool/digest`` array is still written and read in both (one small chunk per
block of entries), so the difference is the hashing and checking; the array's bytes are reported
beside it. The two variants run interleaved, repetition by repetition, and the medians are
reported. Everything runs in the main process (loader ``num_workers=0``, torch on one thread, so
that CPU time is not inflated by threads spinning while they wait), so besides wall-clock rates
the script reports CPU seconds per entry and per step (``time.process_time``), which load from
other processes on a shared machine disturbs far less; the cost percentages are computed from CPU
time. One untimed epoch of each variant runs first (warm-up). It also times the digest code alone on one entry (``digest_row``; the two checks), for a
direct figure that needs no subtraction.

The hash was chosen by measurement too: the script times SHA-256, BLAKE2b and BLAKE2s from hashlib
on one logits row of the shape asked for. Results: ``benchmarks/results/digest_cost.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpldstore import (
    DatasetInfo,
    PoolLoader,
    PruningPlan,
    RelabelConfig,
    StoreWriter,
    draw_params,
    open_store,
    verify_store,
)
from lpldstore.storage import reader as storage_reader
from lpldstore.storage import writer as storage_writer
from lpldstore.tools import sizes
from lpldstore.tools import verify as tools_verify

RESULTS = Path(__file__).parent / "results" / "digest_cost.json"


@contextlib.contextmanager
def without_digests(images_sha256: str | None) -> Iterator[None]:
    """The digest work taken out of the writer, the reader and verify (see the module docstring)."""
    zeros = np.zeros((2, 32), dtype=np.uint8)
    patches: list[tuple[Any, str, Any]] = [
        (storage_writer, "digest_row", lambda *args, **kwargs: zeros),
        (storage_reader, "logits_digest_problem", lambda *args, **kwargs: None),
        (storage_reader, "entry_digest_problem", lambda *args, **kwargs: None),
        # images() compares images_digest(...) with the record: the comparison holds without hashing.
        (storage_reader, "images_digest", lambda pixels, labels: images_sha256),
        (tools_verify, "logits_digest_problem", lambda *args, **kwargs: None),
        (tools_verify, "entry_digest_problem", lambda *args, **kwargs: None),
    ]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, replacement in patches:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


def _workload(args: argparse.Namespace) -> tuple[dict[str, Any], list[tuple[int, int, Any, Any]]]:
    rng = np.random.default_rng(0)
    n, size = args.images, args.size
    plan = PruningPlan(num_images=n, batch_size=args.batch, epochs=args.epochs)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % args.classes
    dataset = DatasetInfo(name="bench", num_classes=args.classes, num_images=n, image_shape=(size, size, 3))
    relabel = RelabelConfig(output_size=(size, size), teacher="bench")
    entries = []
    for epoch, batch in plan.kept_keys.tolist():
        k = plan.batch_length(batch)
        params = draw_params(relabel, (size, size), k, epoch, batch)
        logits = (rng.standard_normal((k, args.classes)) * 4).astype(np.float32)
        entries.append((epoch, batch, logits, params))
    create = {"plan": plan, "images": images, "labels": labels, "dataset": dataset, "relabel": relabel}
    return create, entries


def time_writer(path: Path, create: dict[str, Any], entries: list[Any]) -> tuple[float, float]:
    """(entries per second of ``write``, commits included; CPU seconds per entry), store created beforehand."""
    shutil.rmtree(path, ignore_errors=True)
    StoreWriter.create(path, **create).close()
    start, cpu = time.perf_counter(), time.process_time()
    with StoreWriter.open(path) as writer:
        for epoch, batch, logits, params in entries:
            writer.write(epoch, batch, logits=logits, params=params)
    return len(entries) / (time.perf_counter() - start), (time.process_time() - cpu) / len(entries)


def time_loader(path: Path, steps: int) -> tuple[float, float, float]:
    """(steps per second of one epoch; CPU seconds per step; wall seconds of the first step, images read and hashed)."""
    loader = PoolLoader(path, policy="ilp", seed=0, steps_per_epoch=steps, num_workers=0)
    try:
        start = time.perf_counter()
        it = iter(loader)
        next(it)
        first = time.perf_counter() - start
        start, cpu = time.perf_counter(), time.process_time()
        done = sum(1 for _ in it)
        return done / (time.perf_counter() - start), (time.process_time() - cpu) / done, first
    finally:
        loader.close()


def time_verify(path: Path) -> float:
    """CPU seconds of one verify."""
    cpu = time.process_time()
    report = verify_store(path)
    assert report.ok, report.problems[:3]
    return time.process_time() - cpu


def time_digest_code(path: Path, rounds: int = 50) -> dict[str, float]:
    """Milliseconds per entry of the digest code alone: computing an entry's digests, and checking them."""
    from lpldstore.format.entries import digest_row, entry_digest_problem, logits_digest_problem

    with open_store(path) as store:
        meta = store.metadata([0])
        row, (epoch, batch) = meta.row(0), store.keys[0].tolist()
        raw = np.asarray(store.array("pool/logits")[0])
        attrs = store.attrs
        start = time.process_time()
        for _ in range(rounds):
            digest_row(attrs, epoch, batch, row, raw)
        compute = (time.process_time() - start) / rounds
        start = time.process_time()
        for _ in range(rounds):
            assert logits_digest_problem(attrs, epoch, batch, raw, row["digest"]) is None
            assert entry_digest_problem(attrs, epoch, batch, row, row["digest"]) is None
        check = (time.process_time() - start) / rounds
    return {"compute_ms_per_entry": round(compute * 1e3, 3), "check_ms_per_entry": round(check * 1e3, 3)}


def hash_speeds(row_bytes: int, rounds: int = 200) -> dict[str, float]:
    data = np.random.default_rng(0).integers(0, 256, row_bytes, dtype=np.uint8).tobytes()
    out = {}
    for name in ("sha256", "blake2b", "blake2s"):
        start = time.perf_counter()
        for _ in range(rounds):
            hashlib.new(name, data).digest()
        out[name] = round(row_bytes * rounds / (time.perf_counter() - start) / 1e9, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--steps", type=int, default=40, help="loader steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    create, entries = _workload(args)
    fields = (
        "writer_entries_per_s",
        "writer_cpu_s_per_entry",
        "loader_steps_per_s",
        "loader_cpu_s_per_step",
        "loader_first_step_s",
        "verify_cpu_s",
    )
    results: dict[str, dict[str, list[float]]] = {v: {f: [] for f in fields} for v in ("with", "without")}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reference = root / "reference.zarr"
        time_writer(reference, create, entries)
        with open_store(reference) as store:
            images_sha = store.dataset.images_sha256
            total_bytes = sizes.storage_bytes(store)["total"]
        digest_bytes = sum(
            p.stat().st_size for p in (reference / "pool" / "digest").rglob("*") if p.is_file()
        )
        for rep in range(args.repeats):
            order = ("with", "without") if rep % 2 == 0 else ("without", "with")
            for variant in order:
                ctx = without_digests(images_sha) if variant == "without" else contextlib.nullcontext()
                with ctx:
                    r = results[variant]
                    rate, cpu = time_writer(root / f"w-{variant}.zarr", create, entries)
                    r["writer_entries_per_s"].append(rate)
                    r["writer_cpu_s_per_entry"].append(cpu)
                    steps, step_cpu, first = time_loader(reference, args.steps)
                    r["loader_steps_per_s"].append(steps)
                    r["loader_cpu_s_per_step"].append(step_cpu)
                    r["loader_first_step_s"].append(first)
                    r["verify_cpu_s"].append(time_verify(reference))
            w, wo = results["with"], results["without"]
            print(
                f"rep {rep}: writer {w['writer_cpu_s_per_entry'][-1] * 1e3:.1f} vs "
                f"{wo['writer_cpu_s_per_entry'][-1] * 1e3:.1f} CPU ms/entry, loader "
                f"{w['loader_cpu_s_per_step'][-1] * 1e3:.0f} vs {wo['loader_cpu_s_per_step'][-1] * 1e3:.0f} CPU ms/step",
                flush=True,
            )
        digest_code = time_digest_code(reference)
    med = {v: {k: statistics.median(x) for k, x in r.items()} for v, r in results.items()}
    summary = {
        "writer_cpu_ms_per_entry": {v: round(med[v]["writer_cpu_s_per_entry"] * 1e3, 2) for v in med},
        "writer_cost_percent": round(
            100 * (med["with"]["writer_cpu_s_per_entry"] / med["without"]["writer_cpu_s_per_entry"] - 1), 1
        ),
        "writer_entries_per_s_wall": {v: round(med[v]["writer_entries_per_s"], 1) for v in med},
        "loader_cpu_ms_per_step": {v: round(med[v]["loader_cpu_s_per_step"] * 1e3, 1) for v in med},
        "loader_cost_percent": round(
            100 * (med["with"]["loader_cpu_s_per_step"] / med["without"]["loader_cpu_s_per_step"] - 1), 1
        ),
        "loader_steps_per_s_wall": {v: round(med[v]["loader_steps_per_s"], 2) for v in med},
        "loader_first_step_s_wall": {v: round(med[v]["loader_first_step_s"], 3) for v in med},
        "verify_cpu_s": {v: round(med[v]["verify_cpu_s"], 3) for v in med},
        "digest_code_alone": digest_code,
        "digest_array_bytes": digest_bytes,
        "store_bytes": total_bytes,
        "hash_gb_per_s_on_one_logits_row": hash_speeds(args.batch * args.classes * 2),
    }
    print(json.dumps(summary, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": "python benchmarks/digest_cost.py "
                + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "processor": platform.processor(),
                },
                "shape": {k: v for k, v in vars(args).items() if k not in ("out", "repeats")},
                "entries": len(entries),
                "summary": summary,
                "repetitions": results,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
