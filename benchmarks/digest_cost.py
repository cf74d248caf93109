"""What format version 3's digests cost: writer entries/s, loader steps/s and verify, with and without.

    python benchmarks/digest_cost.py                  # 1,000 classes, batch 128, 224 px images
    python benchmarks/digest_cost.py --size 64        # cheaper replay: the digests' share is larger

*With* is lpldstore as it is. *Without* is the same code on the same store with the digest work
taken out: the writer's ``digest_row`` returns zeros instead of hashing, and the reader's three
checks (logits digest, entry digest, images against ``dataset.images_sha256``) are skipped. The
``pool/digest`` array is still written and read in both (one small chunk per block of entries),
so the difference is the hashing and checking; the array's bytes are reported beside it. The two
variants run interleaved, repetition by repetition, and the medians are reported, so that load
from other processes on a shared machine hits both alike.

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


def time_writer(path: Path, create: dict[str, Any], entries: list[Any]) -> float:
    """Entries per second of ``write`` (commits included), the store created beforehand."""
    shutil.rmtree(path, ignore_errors=True)
    StoreWriter.create(path, **create).close()
    start = time.perf_counter()
    with StoreWriter.open(path) as writer:
        for epoch, batch, logits, params in entries:
            writer.write(epoch, batch, logits=logits, params=params)
    return len(entries) / (time.perf_counter() - start)


def time_loader(path: Path, steps: int, workers: int) -> tuple[float, float]:
    """(steps per second of one epoch, seconds of the first iteration's set-up: images read and hashed)."""
    loader = PoolLoader(path, policy="ilp", seed=0, steps_per_epoch=steps, num_workers=workers)
    try:
        start = time.perf_counter()
        it = iter(loader)
        next(it)
        first = time.perf_counter() - start
        start = time.perf_counter()
        done = 1 + sum(1 for _ in it)
        return (done - 1) / (time.perf_counter() - start), first
    finally:
        loader.close()


def time_verify(path: Path) -> float:
    start = time.perf_counter()
    report = verify_store(path)
    assert report.ok, report.problems[:3]
    return time.perf_counter() - start


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
    parser.add_argument("--workers", type=int, default=0, help="loader workers (0: in the main process)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    create, entries = _workload(args)
    results: dict[str, dict[str, list[float]]] = {
        v: {"writer_entries_per_s": [], "loader_steps_per_s": [], "loader_first_step_s": [], "verify_s": []}
        for v in ("with", "without")
    }
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
                    r["writer_entries_per_s"].append(time_writer(root / f"w-{variant}.zarr", create, entries))
                    steps, first = time_loader(reference, args.steps, args.workers)
                    r["loader_steps_per_s"].append(steps)
                    r["loader_first_step_s"].append(first)
                    r["verify_s"].append(time_verify(reference))
            print(
                f"rep {rep}: writer {results['with']['writer_entries_per_s'][-1]:.1f} vs "
                f"{results['without']['writer_entries_per_s'][-1]:.1f} entries/s, loader "
                f"{results['with']['loader_steps_per_s'][-1]:.2f} vs {results['without']['loader_steps_per_s'][-1]:.2f} steps/s"
            )
    med = {v: {k: statistics.median(x) for k, x in r.items()} for v, r in results.items()}
    summary = {
        "writer_entries_per_s": {v: round(med[v]["writer_entries_per_s"], 1) for v in med},
        "writer_cost_percent": round(
            100 * (1 - med["with"]["writer_entries_per_s"] / med["without"]["writer_entries_per_s"]), 1
        ),
        "loader_steps_per_s": {v: round(med[v]["loader_steps_per_s"], 2) for v in med},
        "loader_cost_percent": round(
            100 * (1 - med["with"]["loader_steps_per_s"] / med["without"]["loader_steps_per_s"]), 1
        ),
        "loader_first_step_s": {v: round(med[v]["loader_first_step_s"], 3) for v in med},
        "verify_s": {v: round(med[v]["verify_s"], 3) for v in med},
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
