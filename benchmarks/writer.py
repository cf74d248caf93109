"""Writer throughput: lpldstore's StoreWriter beside the peers' ``torch.save`` per batch file.

Side by side in one run, interleaved (every repetition times each method once, in a rotating
order, so load from other processes hits all alike), on the same pre-made entries (float16
logits of ``--classes`` x ``--batch`` and their drawn augmentation parameters):

A   ``StoreWriter.write`` per entry, float16 codec: validation, encoding, crc32c checksums on
    every chunk, the small arrays and commit flags every 16 entries; ``close`` included.
A+  the same through :class:`lpldstore.BackgroundWriter` (one background thread owns the writer;
    the caller only queues), until ``close`` returns.
AS  ``StoreWriter`` with the logits sharded by block (``Layout(logits_shard_entries=64)``): one
    shard file per 64 entries instead of one file per entry.
Q   ``StoreWriter`` with the lossy ``quantized`` 8-bit codec at the default fidelity sample rate,
    and Q1 at rate 1.0 (fidelity measured on every entry, as before the rate existed).
B   SRe2L/LPLD: ``torch.save`` of the six-item list per batch file
    (``epoch_<e>/batch_<b>.tar``: relative float32 crop coords, bool flips, int64 CutMix partners,
    the float lambda, the box as four NumPy int64, float16 logits), exactly as they write it.

The table gives entries/s per process (median over repetitions) and the median of the paired
ratios A/B (target: at least 0.3). Also measured:

- **compressors**: bytes and per-entry encode/decode time of candidate float16 byte compressors
  (+ crc32c) on the same logits, through the writer's own chunk path (``_chunkio``), to choose the
  default (docs/codecs.md);
- **scaling**: 1-4 writer processes filling one store (``part=(rank, world)``), entries/s per
  process and in total;
- **profile**: where A's time goes (cProfile, top functions), saved with the results.

    python benchmarks/writer.py                 # 1,000 classes x batch 128, float16
    python benchmarks/writer.py --quick         # a small smoke run
    python benchmarks/writer.py --proxy         # compressors also on the 1000-output proxy teacher's logits

Results are printed and saved as JSON (and a plot) under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import multiprocessing as mp
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.storage import LocalStore

if not __package__:  # run as `python benchmarks/writer.py`: the repository root holds `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lpldstore import (
    AugmentParams,
    BackgroundWriter,
    CodecConfig,
    DatasetInfo,
    Layout,
    PruningPlan,
    RelabelConfig,
    StoreWriter,
    draw_params,
)
from lpldstore.storage._chunkio import ChunkIO

RESULTS = Path(__file__).parent / "results"
TARGET = 0.3


@dataclasses.dataclass(frozen=True)
class Shape:
    classes: int
    batch: int
    epochs: int
    batches: int  # per epoch; entries per repetition = epochs * batches

    @property
    def images(self) -> int:
        return self.batch * self.batches


ISSUE = Shape(classes=1000, batch=128, epochs=8, batches=12)
QUICK = Shape(classes=100, batch=32, epochs=2, batches=4)

Entry = tuple[int, int, AugmentParams, npt.NDArray[np.float16]]


def make_entries(shape: Shape, seed: int = 0) -> tuple[PruningPlan, DatasetInfo, RelabelConfig, list[Entry]]:
    plan = PruningPlan(num_images=shape.images, batch_size=shape.batch, epochs=shape.epochs, seed=seed)
    dataset = DatasetInfo(
        name="bench", num_classes=shape.classes, num_images=shape.images, image_shape=(32, 32, 3)
    )
    relabel = RelabelConfig(output_size=(32, 32), teacher="random")
    rng = np.random.default_rng(seed)
    entries = [
        (
            e,
            b,
            draw_params(relabel, (32, 32), plan.batch_length(b), e, b),
            (rng.standard_normal((plan.batch_length(b), shape.classes)) * 3).astype(np.float16),
        )
        for e, b in plan.kept_keys.tolist()
    ]
    return plan, dataset, relabel, entries


def _new_store(
    root: Path,
    plan: PruningPlan,
    dataset: DatasetInfo,
    relabel: RelabelConfig,
    codec: CodecConfig,
    layout: Layout | None = None,
) -> StoreWriter:
    images = np.zeros((plan.num_images, 32, 32, 3), np.uint8)
    labels = np.arange(plan.num_images) % dataset.num_classes
    return StoreWriter.create(
        root / f"s{time.perf_counter_ns()}.zarr",
        plan=plan,
        images=images,
        labels=labels,
        dataset=dataset,
        relabel=relabel,
        codec=codec,
        layout=layout,
    )


def _timed_store(writer: StoreWriter | BackgroundWriter, entries: list[Entry]) -> float:
    start = time.perf_counter()
    with writer:
        for e, b, params, logits in entries:
            writer.write(e, b, logits=logits, params=params)
    return time.perf_counter() - start


# What SRe2L/LPLD store per batch file (peer-formats.md section 1-3), built from the same entry.
def peer_record(params: AugmentParams, logits: npt.NDArray[np.float16], size: int) -> list[Any]:
    coords = params.crops.astype(np.float32) / np.float32(size)
    return [
        torch.from_numpy(coords),
        torch.from_numpy(params.flips.copy()),
        torch.from_numpy(params.mix_index.astype(np.int64)),
        params.mix_lam,
        [np.int64(v) for v in params.mix_box],
        torch.from_numpy(logits),
    ]


def _timed_peer(root: Path, entries: list[Entry]) -> float:
    out = root / f"peer{time.perf_counter_ns()}"
    start = time.perf_counter()
    for e, b, params, logits in entries:
        folder = out / f"epoch_{e}"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(peer_record(params, logits, 32), folder / f"batch_{b}.tar")
    return time.perf_counter() - start


def throughput(shape: Shape, repeats: int, root: Path) -> dict[str, Any]:
    plan, dataset, relabel, entries = make_entries(shape)
    codecs = {
        "A": CodecConfig(),
        "A+": CodecConfig(),
        "AS": CodecConfig(),
        "Q": CodecConfig(name="quantized", params={"bits": 8}),
        "Q1": CodecConfig(name="quantized", params={"bits": 8}, fidelity_rate=1.0),
    }
    labels = {
        "A": "A  StoreWriter float16",
        "A+": "A+ BackgroundWriter float16",
        "AS": "AS StoreWriter float16, logits sharded by block",
        "Q": "Q  StoreWriter quantized8, default sample",
        "Q1": "Q1 StoreWriter quantized8, every entry",
        "B": "B  torch.save per batch file",
    }

    def run(key: str) -> float:
        if key == "B":
            seconds = _timed_peer(root, entries)
        else:
            layout = Layout(logits_shard_entries=64) if key == "AS" else None
            writer = _new_store(root, plan, dataset, relabel, codecs[key], layout)
            seconds = _timed_store(BackgroundWriter(writer) if key == "A+" else writer, entries)
        return len(entries) / seconds

    keys = list(labels)
    for key in keys:  # warm-up: imports, page cache, first-call costs
        run(key)
    runs: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(repeats):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            runs[key].append(run(key))
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
        print(f"  rep {r}: " + ", ".join(f"{k} {runs[k][-1]:.0f}/s" for k in keys), flush=True)
    rows = [
        {"method": labels[k], "key": k, "median_entries_per_s": statistics.median(v), "runs": v}
        for k, v in runs.items()
    ]
    ratios = {
        f"{k}/B": statistics.median([a / b for a, b in zip(runs[k], runs["B"], strict=True)])
        for k in keys
        if k != "B"
    }
    return {"entries_per_repetition": len(entries), "rows": rows, "ratios_median_of_paired": ratios}


def profile_writer(shape: Shape, root: Path, top: int = 14) -> dict[str, Any]:
    """Where A's time goes: cProfile of one repetition, the functions with the most own time."""
    plan, dataset, relabel, entries = make_entries(shape)
    writer = _new_store(root, plan, dataset, relabel, CodecConfig())
    prof = cProfile.Profile()
    prof.enable()
    _timed_store(writer, entries)
    prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (file, line, name), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{Path(file).name}:{line}({name})",
                "calls": ncalls,
                "own_ms_per_entry": 1e3 * tottime / len(entries),
                "cumulative_ms_per_entry": 1e3 * cumtime / len(entries),
            }
        )
    rows.sort(key=lambda r: -r["own_ms_per_entry"])
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(12)
    return {"ms_per_entry": 1e3 * total / len(entries), "top_own_time": rows[:top], "text": buf.getvalue()}


# -- compressors ------------------------------------------------------------------------------------


def candidates() -> dict[str, list[Any]]:
    return {
        "none": [],
        "zstd(1)": [ZstdCodec(level=1)],
        "zstd(3)": [ZstdCodec(level=3)],
        "blosc(zstd,5,shuffle) [old default]": [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")],
        "blosc(zstd,1,shuffle)": [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")],
        "blosc(zstd,1,shuffle,256K block) [default]": [
            BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", blocksize=256 * 1024)
        ],
        "blosc(zstd,3,shuffle,256K block)": [
            BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", blocksize=256 * 1024)
        ],
        "blosc(zstd,1,bitshuffle,256K block)": [
            BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", blocksize=256 * 1024)
        ],
        "blosc(lz4,5,shuffle)": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
        "blosc(blosclz,5,shuffle)": [BloscCodec(cname="blosclz", clevel=5, shuffle="shuffle")],
    }


def compressor_table(logits: npt.NDArray[np.float16], root: Path, repeats: int) -> list[dict[str, Any]]:
    """Per candidate: stored bytes of each (batch, classes) entry and the writer's per-entry encode/decode."""
    out = []
    for i, (name, compressors) in enumerate(candidates().items()):
        array = zarr.create_array(
            LocalStore(root / f"c{i}.zarr"),
            shape=logits.shape,
            chunks=(1, *logits.shape[1:]),
            dtype="float16",
            fill_value=np.nan,
            compressors=[*compressors, Crc32cCodec()],
            config={"write_empty_chunks": True},
        )
        chunk_io = ChunkIO.of(array, write=True)
        assert chunk_io is not None
        writes, reads = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            for p in range(len(logits)):
                chunk_io.write(p, logits[p][None])
            writes.append((time.perf_counter() - t) / len(logits))
            t = time.perf_counter()
            for p in range(len(logits)):
                back = chunk_io.read(p)
            reads.append((time.perf_counter() - t) / len(logits))
        assert np.array_equal(back[0], logits[-1])
        stored = sum(f.stat().st_size for f in (root / f"c{i}.zarr" / "c").rglob("*") if f.is_file())
        out.append(
            {
                "compressor": name,
                "ratio": logits.nbytes / stored,
                "bytes_per_entry": stored / len(logits),
                "write_ms_per_entry": 1e3 * statistics.median(writes),
                "read_ms_per_entry": 1e3 * statistics.median(reads),
            }
        )
    return out


def proxy_logits(rows: int, classes: int, batch: int) -> npt.NDArray[np.float16]:
    """Rows of the 1000-output proxy teacher of benchmarks/storage.py (trained on digits on the spot)."""
    from benchmarks.storage import digits_teachers

    logits = digits_teachers(rows, seed=0, proxy=True)["proxy1000"][1][:, :classes]
    entries = len(logits) // batch
    return logits[: entries * batch].reshape(entries, batch, -1).astype(np.float16)


# -- processes ---------------------------------------------------------------------------------------


def _scaling_worker(path: str, rank: int, world: int, classes: int, barrier: Any, out: Any) -> None:
    torch.set_num_threads(1)
    writer = StoreWriter.open(path, part=(rank, world))
    todo = writer.todo()
    rng = np.random.default_rng(rank)
    relabel, plan = writer.attrs.relabel, writer.plan
    entries = [
        (
            e,
            b,
            draw_params(relabel, (32, 32), plan.batch_length(b), e, b),
            (rng.standard_normal((plan.batch_length(b), classes)) * 3).astype(np.float16),
        )
        for e, b in todo
    ]
    barrier.wait()
    start = time.perf_counter()
    seconds = _timed_store(writer, entries)
    out.put((rank, len(entries), start, start + seconds))


def scaling(
    shape: Shape, root: Path, processes: list[int], blocks_per_process: int, block: int
) -> list[dict[str, Any]]:
    """Entries/s of 1..N processes filling one store, each owning its part (disjoint blocks)."""
    from lpldstore import Layout

    ctx = mp.get_context("spawn")  # a clean interpreter per writer, as torchrun gives
    rows = []
    for world in processes:
        entries = world * blocks_per_process * block
        epochs = -(-entries // shape.batches)
        plan = PruningPlan(num_images=shape.images, batch_size=shape.batch, epochs=epochs, seed=0)
        dataset = DatasetInfo(
            name="bench", num_classes=shape.classes, num_images=shape.images, image_shape=(32, 32, 3)
        )
        relabel = RelabelConfig(output_size=(32, 32), teacher="random")
        path = root / f"scale{world}.zarr"
        StoreWriter.create(
            path,
            plan=plan,
            images=np.zeros((shape.images, 32, 32, 3), np.uint8),
            labels=np.arange(shape.images) % shape.classes,
            dataset=dataset,
            relabel=relabel,
            layout=Layout(block_entries=block),
        ).close()
        barrier, out = ctx.Barrier(world), ctx.Queue()
        procs = [
            ctx.Process(target=_scaling_worker, args=(str(path), r, world, shape.classes, barrier, out))
            for r in range(world)
        ]
        for p in procs:
            p.start()
        results = [out.get() for _ in procs]
        for p in procs:
            p.join()
            assert p.exitcode == 0, f"writer process failed ({p.exitcode})"
        wall = max(r[3] for r in results) - min(r[2] for r in results)
        total = sum(r[1] for r in results)
        per = [r[1] / (r[3] - r[2]) for r in results]
        rows.append(
            {
                "processes": world,
                "entries": total,
                "total_entries_per_s": total / wall,
                "per_process_entries_per_s": statistics.median(per),
            }
        )
        print(
            f"  {world} process(es): {total / wall:.0f} entries/s in total, {statistics.median(per):.0f} per process",
            flush=True,
        )
        shutil.rmtree(path, ignore_errors=True)
    return rows


# -- report ------------------------------------------------------------------------------------------


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rows = result["throughput"]["rows"]
    ax1.barh([r["method"] for r in rows], [r["median_entries_per_s"] for r in rows], color="tab:blue")
    ax1.set_xlabel("entries/s per process (median)")
    ax1.set_title(
        f"writer, {result['config']['shape']['classes']} classes x batch {result['config']['shape']['batch']}"
    )
    ax1.invert_yaxis()
    if result.get("scaling"):
        s = result["scaling"]
        ax2.plot([r["processes"] for r in s], [r["total_entries_per_s"] for r in s], "o-", label="total")
        ax2.plot(
            [r["processes"] for r in s],
            [r["per_process_entries_per_s"] for r in s],
            "s--",
            label="per process",
        )
        ax2.set_xlabel(f"writer processes ({result['config']['cpus']} CPUs)")
        ax2.set_ylabel("entries/s")
        ax2.legend()
        ax2.set_title("one store, disjoint parts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"small smoke run: {QUICK}")
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions of each method")
    parser.add_argument(
        "--processes", type=int, nargs="*", default=[1, 2, 3, 4], help="writer processes to scale over"
    )
    parser.add_argument("--proxy", action="store_true", help="compressors also on the proxy teacher's logits")
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/writer[_quick].json)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    shape = QUICK if args.quick else ISSUE
    torch.set_num_threads(1)
    result: dict[str, Any] = {
        "config": {
            "shape": dataclasses.asdict(shape),
            "repeats": args.repeats,
            "torch": torch.__version__,
            "zarr": zarr.__version__,
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "digests": "not in this branch (integrity issue 13): re-run once they land",
        }
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "t"
        root.mkdir()
        print(f"== throughput: {shape}, {args.repeats} repetitions of {shape.epochs * shape.batches} entries")
        result["throughput"] = throughput(shape, args.repeats, root)
        result["profile_A"] = profile_writer(shape, root)
        _, _, _, entries = make_entries(shape)
        gauss = np.stack([e[3] for e in entries if len(e[3]) == shape.batch])
        print("== compressors (float16 + crc32c), per entry, through the writer's chunk path")
        result["compressors"] = {
            "gaussian x3": compressor_table(gauss, root / "g", max(3, args.repeats // 2))
        }
        if args.proxy:
            result["compressors"]["proxy1000 teacher"] = compressor_table(
                proxy_logits(len(gauss) * shape.batch, shape.classes, shape.batch), root / "p", 3
            )
        if args.processes:
            print(f"== scaling over {args.processes} writer processes")
            result["scaling"] = scaling(
                shape, root, args.processes, blocks_per_process=2 if args.quick else 4, block=16
            )
        result["config"]["load_average_at_end"] = os.getloadavg()
    t = result["throughput"]
    print(f"\n{'method':45s} {'entries/s (median)':>20s}")
    for row in t["rows"]:
        print(f"{row['method']:45s} {row['median_entries_per_s']:20.0f}")
    for name, ratio in t["ratios_median_of_paired"].items():
        print(f"{name:6s} {ratio:.2f}" + (f"  (target >= {TARGET})" if name == "A/B" else ""))
    for source, table in result["compressors"].items():
        print(f"\ncompressors on {source}:")
        print(f"{'compressor':45s} {'ratio':>6s} {'write ms':>9s} {'read ms':>8s}")
        for row in table:
            print(
                f"{row['compressor']:45s} {row['ratio']:6.3f} {row['write_ms_per_entry']:9.2f} {row['read_ms_per_entry']:8.2f}"
            )
    if t["ratios_median_of_paired"]["A/B"] < TARGET:
        print(f"\nA/B misses the target {TARGET}: where A's time goes (cProfile, one repetition):")
        print(result["profile_A"]["text"])
    out = Path(args.out) if args.out else RESULTS / f"writer{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_plot:
        plot(result, out.with_suffix(".png"))
    print(f"saved {out}")
    return result


if __name__ == "__main__":
    main()
