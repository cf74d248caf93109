"""Reader latency: one random entry on an open store beside one peer ``torch.load``.

The same entries (float16 logits of ``--classes`` x ``--batch`` and their augmentation record)
stored two ways, side by side in one run:

A   an open lpldstore store: ``LabelStore.entry_at(position)`` (the record's checks and the
    logits decoded; crc32c and the logits digest checked on every read; the small arrays of a
    fully committed block read and checked once per handle), ``logits_at`` alone, and
    ``entry_at`` with that per-handle record cache emptied before every call (a cold read);
A4  the same with the lossy ``quantized`` 4-bit codec (decoding included);
B   SRe2L/LPLD: ``torch.load(epoch_<e>/batch_<b>.tar, weights_only=True)`` of the six-item list
    (the safe loader, with the allow-list NumPy's int64 scalars need).

Each repetition reads the same random sequence of entries with every method, in a rotating
order; the figures are medians of the per-call time and of the per-repetition ratios B/A
(target: at least 1, i.e. an entry no slower than one ``torch.load``). Also measured: the small
arrays of every entry at once (``LabelStore.metadata()``, what the loader reads per epoch)
beside loading every peer file. Files are in the page cache for both (written just before).

    python benchmarks/reader.py               # 1,000 classes x batch 128
    python benchmarks/reader.py --quick       # a small smoke run

Results are printed and saved as JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

if not __package__:  # run as `python benchmarks/reader.py`: the repository root holds `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.writer import Shape, make_entries, peer_record
from lpldstore import CodecConfig, PruningPlan, StoreWriter, open_store
from lpldstore.storage.reader import LabelStore

RESULTS = Path(__file__).parent / "results"
ISSUE = Shape(classes=1000, batch=128, epochs=8, batches=12)
QUICK = Shape(classes=100, batch=32, epochs=3, batches=4)

# What unpickling mix_bbox's NumPy int64 scalars needs, allow-listed for torch.load(weights_only=True).
_PEER_GLOBALS: list[Any] = [np.int64(0).__reduce__()[0], np.dtype, type(np.dtype(np.int64))]


def build(root: Path, shape: Shape) -> tuple[dict[str, Path], Path, PruningPlan]:
    plan, dataset, relabel, entries = make_entries(shape)
    stores = {}
    for name, codec in (
        ("float16", CodecConfig()),
        ("quantized4", CodecConfig(name="quantized", params={"bits": 4})),
    ):
        path = root / f"{name}.zarr"
        with StoreWriter.create(
            path,
            plan=plan,
            images=np.zeros((plan.num_images, 32, 32, 3), np.uint8),
            labels=np.arange(plan.num_images) % dataset.num_classes,
            dataset=dataset,
            relabel=relabel,
            codec=codec,
        ) as writer:
            for e, b, params, logits in entries:
                writer.write(e, b, logits=logits, params=params)
        stores[name] = path
    peer = root / "peer"
    for e, b, params, logits in entries:
        (peer / f"epoch_{e}").mkdir(parents=True, exist_ok=True)
        torch.save(peer_record(params, logits, 32), peer / f"epoch_{e}" / f"batch_{b}.tar")
    return stores, peer, plan


def _peer_load(path: Path) -> list[Any]:
    with torch.serialization.safe_globals(_PEER_GLOBALS):
        return torch.load(path, weights_only=True)


def _per_call(fn: Callable[[int], Any], positions: list[int]) -> float:
    start = time.perf_counter()
    for p in positions:
        fn(p)
    return (time.perf_counter() - start) / len(positions)


def _cold_entry_at(store: LabelStore, position: int) -> Any:
    store._record_blocks.clear()  # what the first read of each block pays
    return store.entry_at(position)


def cost_breakdown(store: LabelStore, path: Path, repeats: int = 300) -> dict[str, float]:
    """Microseconds of thread CPU time (median) of the pieces of one ``entry_at``."""
    import hashlib

    def median_us(fn: Callable[[], Any]) -> float:
        times = []
        for _ in range(repeats):
            start = time.thread_time()
            fn()
            times.append(time.thread_time() - start)
        return 1e6 * statistics.median(times)

    logits_chunk = (path / "pool/logits/c/0/0/0").read_bytes()
    small_key = "pool/crop/c/0/0/0"
    bounded: Any = store.zarr_store
    meta = store.metadata([0])
    logits = store.logits_at(0)
    return {
        "entry_at": median_us(lambda: store.entry_at(0)),
        "entry_at cold": median_us(lambda: _cold_entry_at(store, 0)),
        "metadata of one entry": median_us(lambda: store.metadata([0])),
        "logits_at": median_us(lambda: store.logits_at(0)),
        "entry_from (record checks, digest)": median_us(lambda: store.entry_from(meta.row(0), 0, logits)),
        "sha256 of one logits chunk's bytes": median_us(lambda: hashlib.sha256(logits_chunk).digest()),
        "a small chunk via the bounded store": median_us(lambda: bounded.get_sync(small_key)),
        "a small chunk, plain open and read": median_us(lambda: (path / small_key).read_bytes()),
        "chunks read per entry": float(len(meta.records) + 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"small smoke run: {QUICK}")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--reads", type=int, default=64, help="random entries read per repetition and method")
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/reader[_quick].json)")
    args = parser.parse_args(argv)
    shape = QUICK if args.quick else ISSUE
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        stores, peer, plan = build(Path(tmp), shape)
        keys = plan.kept_keys.tolist()
        opened: dict[str, LabelStore] = {name: open_store(path) for name, path in stores.items()}
        methods: dict[str, Callable[[int], Any]] = {
            "A entry_at (float16)": opened["float16"].entry_at,
            "A logits_at (float16)": opened["float16"].logits_at,
            "A entry_at cold (float16)": lambda p: _cold_entry_at(opened["float16"], p),
            "A4 entry_at (quantized 4-bit)": opened["quantized4"].entry_at,
            "B torch.load (peer file)": lambda p: _peer_load(
                peer / f"epoch_{keys[p][0]}" / f"batch_{keys[p][1]}.tar"
            ),
        }
        rng = np.random.default_rng(0)
        for fn in methods.values():  # warm-up
            _per_call(fn, list(range(len(keys))))
        runs: dict[str, list[float]] = {m: [] for m in methods}
        names = list(methods)
        for r in range(args.repeats):
            positions = rng.integers(0, len(keys), size=args.reads).tolist()
            for name in names[r % len(names) :] + names[: r % len(names)]:
                runs[name].append(_per_call(methods[name], positions))
        meta_runs: dict[str, list[float]] = {
            "A metadata() of every entry": [],
            "B torch.load of every peer file": [],
        }
        for _ in range(max(3, args.repeats // 3)):
            t = time.perf_counter()
            opened["float16"].metadata()
            meta_runs["A metadata() of every entry"].append(time.perf_counter() - t)
            t = time.perf_counter()
            for e, b in keys:
                _peer_load(peer / f"epoch_{e}" / f"batch_{b}.tar")
            meta_runs["B torch.load of every peer file"].append(time.perf_counter() - t)
        breakdown = cost_breakdown(opened["float16"], stores["float16"])
        for s in opened.values():
            s.close()
    peer_name = "B torch.load (peer file)"
    rows = [
        {"method": m, "median_ms_per_call": 1e3 * statistics.median(v), "runs_ms": [1e3 * x for x in v]}
        for m, v in runs.items()
    ]
    ratios = {
        f"B/{m.split(' (')[0]} ({m.split('(')[1]}": statistics.median(
            [b / a for a, b in zip(v, runs[peer_name], strict=True)]
        )
        for m, v in runs.items()
        if m != peer_name
    }
    metadata = {m: 1e3 * statistics.median(v) for m, v in meta_runs.items()}
    print(f"\n{'method':34s} {'ms per entry (median)':>22s}")
    for row in rows:
        print(f"{row['method']:34s} {row['median_ms_per_call']:22.3f}")
    for name, ratio in ratios.items():
        print(f"{name:38s} {ratio:.2f}  (>= 1: the entry is no slower than one torch.load)")
    print(
        f"all {len(keys)} entries' small arrays: " + ", ".join(f"{m} {v:.1f} ms" for m, v in metadata.items())
    )
    print("where one float16 entry_at goes (us of thread CPU, median):")
    for name, value in breakdown.items():
        print(f"   {name:44s} {value:8.1f}")
    result = {
        "config": {
            "shape": dataclasses.asdict(shape),
            "entries": len(keys),
            "repeats": args.repeats,
            "reads_per_repetition": args.reads,
            "torch": torch.__version__,
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "rows": rows,
        "ratios_median_of_paired": ratios,
        "all_entries_metadata_ms": metadata,
        "entry_at_breakdown_us_thread_cpu": breakdown,
    }
    out = Path(args.out) if args.out else RESULTS / f"reader{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out}")
    return result


if __name__ == "__main__":
    main()
