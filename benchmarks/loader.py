"""Loader throughput: lpldstore's PoolLoader beside an independent floor and the SRe2L/LPLD loader.

Three ways to feed the same training steps, side by side in one run:

A  ``PoolLoader`` (ilp policy) over a store: images read once into (shared) memory; per step one
   logits chunk read, checked and decoded to float32, and the stored crop/flip/CutMix replayed.
F  The floor, written here with torchvision's v2 functional API and nothing of lpldstore: the
   same steps' crop boxes, flips and CutMix (read from the store once, before timing) applied to
   the same in-memory uint8 images, no labels: per sample ``resized_crop`` of the uint8 CHW image,
   ``horizontal_flip`` of the flagged samples, ``to_dtype(scale=True)`` and ``normalize`` on the
   batch, the CutMix box copied from the partners. What plain augmentation costs.
B  The SRe2L/LPLD way, written here from the format facts: one ``torch.save`` file per
   (epoch, batch) holding the six-item list (relative crop coords, flips, CutMix partners, lambda,
   box as NumPy int64, float16 logits), loaded per step with ``weights_only=True``; the distilled
   images as JPEG files opened with PIL per sample, crop+resize and flip replayed per sample on
   the PIL image, ``to_tensor`` + ``normalize``, CutMix on the batch; the consumer casts the
   logits to float32.

A, F and B visit the same batches of the same size under the same DataLoader settings
(``batch_size=None``, the same ``num_workers``, ``fork``, persistent workers), torch 1 thread per
process. They run interleaved -- every repetition times one epoch of each, in a rotating order --
so that load from other processes on a shared machine hits all three alike; the tables give the
median images/s and the median of the per-repetition ratios (targets: A/F at least 0.97, A/B at
least 2.3 at 224 px and 3.5 at 64 px without workers). Where the time of A's step goes is
measured in-process (cProfile on thread CPU time, grouped into the stages of a step).

    python benchmarks/loader.py                  # 64 px (200 classes, batch 64) and 224 px (1,000, batch 128)
    python benchmarks/loader.py --shapes 224     # one shape
    python benchmarks/loader.py --quick          # a small smoke run
    python benchmarks/loader.py --device cuda    # with a GPU: A's device path beside F on the GPU,
                                                 # ImageNet-1K IPC10 shape (10,000 images, batch 1,024)

Results are printed and saved as JSON under benchmarks/results/ (``loader_<device>.json``).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import os
import platform
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
import torch.utils.data
import torchvision.transforms.functional as tf
from PIL import Image
from torchvision.transforms.v2 import functional as tvf

from lpldstore import (
    DatasetInfo,
    PoolLoader,
    PruningPlan,
    RelabelConfig,
    StoreWriter,
    draw_params,
    epoch_schedule,
    open_store,
)

RESULTS = Path(__file__).parent / "results"
METHODS = ("A lpldstore", "F torchvision floor", "B SRe2L files + PIL")
TARGETS = {"A/F": 0.97, "A/B@224": 2.3, "A/B@64": 3.5}


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    images: int
    size: int
    classes: int
    batch: int
    epochs: int  # relabel epochs stored: entries = epochs * ceil(images / batch)
    steps: int  # batches per timed epoch


SHAPES = {
    "64": Shape("64", images=2000, size=64, classes=200, batch=64, epochs=30, steps=50),
    "224": Shape("224", images=1280, size=224, classes=1000, batch=128, epochs=30, steps=20),
}
QUICK = {
    "64": Shape("64", images=256, size=64, classes=20, batch=32, epochs=3, steps=6),
    "224": Shape("224", images=128, size=224, classes=50, batch=32, epochs=2, steps=3),
}
DEVICE = Shape("in1k-ipc10", images=10_000, size=224, classes=1000, batch=1024, epochs=3, steps=10)


def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random images (upsampled coarse noise plus grain), so JPEG sizes and decode times
    are those of photographs rather than of white noise."""
    gen = torch.Generator().manual_seed(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for start in range(0, n, 256):
        k = min(256, n - start)
        coarse = torch.rand(k, 3, max(size // 8, 2), max(size // 8, 2), generator=gen) * 255
        fine = nnf.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        fine += torch.randn(k, 3, size, size, generator=gen) * 8
        out[start : start + k] = fine.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def build(root: Path, shape: Shape, peer_files: bool) -> tuple[Path, Path, PruningPlan]:
    """The store (A, F) and, with ``peer_files``, the SRe2L directory (B) of the same entries."""
    rng = np.random.default_rng(0)
    n, size, classes = shape.images, shape.size, shape.classes
    images = synthetic_images(n, size)
    labels = np.arange(n) % classes
    plan = PruningPlan(num_images=n, batch_size=shape.batch, epochs=shape.epochs, seed=0)
    dataset = DatasetInfo(name="synthetic", num_classes=classes, num_images=n, image_shape=(size, size, 3))
    relabel = RelabelConfig(output_size=(size, size), teacher="random")
    store, peer = root / "pool.zarr", root / "sre2l"
    if peer_files:
        (peer / "images").mkdir(parents=True)
        for i, img in enumerate(images):
            # PIL's default JPEG quality, as a plain save() in the recover step gives.
            Image.fromarray(img).save(peer / "images" / f"{i:06d}.jpg")
    with StoreWriter.create(
        store, plan=plan, images=images, labels=labels, dataset=dataset, relabel=relabel
    ) as writer:
        for epoch, b in writer.todo():
            k = plan.batch_length(b)
            params = draw_params(relabel, (size, size), k, epoch, b)
            logits = (rng.standard_normal((k, classes)) * 3).astype(np.float16)
            writer.write(epoch, b, logits=logits, params=params)
            if peer_files:
                # SRe2L's record: crop boxes relative to the image size, as RandomResizedCropWithCoords saves them.
                coords = params.crops.astype(np.float32) / np.float32(size)
                record = [
                    torch.from_numpy(coords),
                    torch.from_numpy(params.flips.copy()),
                    torch.from_numpy(params.mix_index.astype(np.int64)),
                    params.mix_lam,
                    [np.int64(v) for v in params.mix_box],
                    torch.from_numpy(logits),
                ]
                (peer / f"epoch_{epoch}").mkdir(exist_ok=True)
                torch.save(record, peer / f"epoch_{epoch}" / f"batch_{b}.tar")
    return store, peer, plan


# -- F: the floor, torchvision v2 only ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FloorStep:
    """One step's augmentation in plain arrays: source image numbers, boxes, flags, CutMix."""

    indices: list[int]
    crops: list[tuple[int, int, int, int]]
    flips: torch.Tensor
    mix_index: torch.Tensor
    mix_box: tuple[int, int, int, int]


def floor_steps(store: Path, positions: np.ndarray) -> list[FloorStep]:
    """The steps' crop boxes, flips and CutMix, read from the store once (not timed)."""
    steps = []
    with open_store(store) as s:
        for p in positions.tolist():
            e = s.entry_at(int(p))
            steps.append(
                FloorStep(
                    indices=e.indices.tolist(),
                    crops=[tuple(c) for c in e.crops.tolist()],
                    flips=torch.from_numpy(e.flips.copy()),
                    mix_index=torch.from_numpy(e.mix_index.copy()),
                    mix_box=tuple(int(v) for v in e.mix_box),  # type: ignore[arg-type]
                )
            )
    return steps


class TorchvisionFloor(torch.utils.data.Dataset[torch.Tensor]):
    """Baseline F: torchvision v2 on in-memory uint8 tensors, the same parameters, no labels."""

    def __init__(self, images: torch.Tensor, steps: list[FloorStep], size: int, mean: Any, std: Any) -> None:
        self.chw = images.permute(0, 3, 1, 2)  # (N, 3, H, W) views of the NHWC images
        self.steps, self.size, self.mean, self.std = steps, size, list(mean), list(std)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, k: int) -> torch.Tensor:
        step = self.steps[k]
        x = torch.stack(
            [
                tvf.resized_crop(self.chw[j], t, left, h, w, [self.size, self.size], antialias=True)
                for j, (t, left, h, w) in zip(step.indices, step.crops, strict=True)
            ]
        )
        flips = step.flips.to(x.device)
        x[flips] = tvf.horizontal_flip(x[flips])
        x = tvf.normalize(tvf.to_dtype(x, torch.float32, scale=True), self.mean, self.std, inplace=True)
        t, left, b, r = step.mix_box
        if b > t and r > left:
            x[:, :, t:b, left:r] = x[step.mix_index.to(x.device), :, t:b, left:r]
        return x


# -- B: the SRe2L/LPLD loader ----------------------------------------------------------------------

# What unpickling mix_bbox's NumPy int64 scalars needs, allow-listed for torch.load(weights_only=True):
# NumPy's scalar constructor (found through the scalar's own pickle recipe), dtype and the int64 dtype.
_PEER_GLOBALS: list[Any] = [np.int64(0).__reduce__()[0], np.dtype, type(np.dtype(np.int64))]


class SRe2LBatches(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Baseline B: one label file per step, per-sample PIL replay, CutMix on the batch."""

    def __init__(
        self, peer: Path, steps: list[tuple[int, int, list[int]]], size: int, mean: Any, std: Any
    ) -> None:
        self.peer, self.steps, self.size, self.mean, self.std = peer, steps, size, list(mean), list(std)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, batch, indices = self.steps[step]
        with torch.serialization.safe_globals(_PEER_GLOBALS):
            coords, flip, mix_index, _lam, bbox, logits = torch.load(
                self.peer / f"epoch_{epoch}" / f"batch_{batch}.tar", weights_only=True
            )
        samples = []
        for i, box, flipped in zip(indices, coords.tolist(), flip.tolist(), strict=True):
            with Image.open(self.peer / "images" / f"{i:06d}.jpg") as im:
                img = im.convert("RGB")
            top, left, h, w = (round(v * s) for v, s in zip(box, img.size[::-1] * 2, strict=True))
            img = tf.resized_crop(img, top, left, h, w, [self.size, self.size])
            if flipped:
                img = tf.hflip(img)
            samples.append(tf.normalize(tf.to_tensor(img), self.mean, self.std))
        x = torch.stack(samples)
        t, left_, b, r = (int(v) for v in bbox)
        x[:, :, t:b, left_:r] = x[mix_index, :, t:b, left_:r]
        return x, logits


# -- timing ------------------------------------------------------------------------------------------


def _epoch_rate(batches: Iterable[Any], sync: Callable[[], None]) -> float:
    """Images/s of one epoch, consuming images and float32 logits of every batch."""
    count, start = 0, time.perf_counter()
    for item in batches:
        if isinstance(item, tuple | list):  # B: the consumer casts the float16 logits, as SRe2L's loop does
            images, logits = item[0], item[1].float()
        elif isinstance(item, torch.Tensor):  # F: no labels
            images, logits = item, None
        else:  # A: PoolBatch
            images, logits = item.images, item.logits
        assert logits is None or logits.dtype == torch.float32
        count += len(images)
    sync()
    return count / (time.perf_counter() - start)


def _dataloader(ds: Any, workers: int) -> Callable[[], Iterator[Any]]:
    # Built once, workers persistent across epochs: the settings PoolLoader uses.
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=None,
        num_workers=workers,
        multiprocessing_context="fork" if workers else None,
        persistent_workers=workers > 0,
    )
    return lambda: iter(loader)


def _in_process(ds: torch.utils.data.Dataset[Any]) -> Callable[[], Iterator[Any]]:
    return lambda: (ds[i] for i in range(len(ds)))  # type: ignore[arg-type]


# Stages of A's step, each the cumulative time of the functions whose profile label (file:line(name))
# holds all the substrings of one of its patterns; builtins are counted by their own time.
STAGES: dict[str, tuple[tuple[str, ...], ...]] = {
    "crop+resize": (("kernels.py", "(__call__)"), ("(resized_crop)",)),
    "normalize (uint8 -> float, scale, mean/std)": (("(_normalized)",), ("(normalize_into)",)),
    "flip": (("<method 'flip' of",),),
    "CutMix (uint8 region gather)": (("<method 'index_select' of",),),
    "logits read + decode": (("(logits_at)",),),
    "record checks (entry_from)": (("(entry_from)",),),
}


def profile_a(store: Path, shape: Shape, steps: int) -> dict[str, Any]:
    """Where A's step goes: cProfile on thread CPU time of ``steps`` in-process steps, by stage."""
    loader = PoolLoader(store, policy="ilp", seed=0, steps_per_epoch=steps)
    for _ in loader:  # warm-up (images loaded, store opened)
        pass
    prof = cProfile.Profile(time.thread_time)
    start = time.thread_time()
    prof.enable()
    for _ in loader:
        pass
    prof.disable()
    total = time.thread_time() - start
    loader.close()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    stage_s = dict.fromkeys(STAGES, 0.0)
    rows = []
    for (file, line, name), (_, calls, tottime, cumtime, _) in stats.items():
        label = f"{Path(file).name}:{line}({name})" if file != "~" else name
        rows.append({"function": label, "calls": calls, "own_ms_per_step": 1e3 * tottime / steps})
        for stage, patterns in STAGES.items():
            if any(all(part in label for part in pattern) for pattern in patterns):
                stage_s[stage] += tottime if label.startswith("<") else cumtime
    rows.sort(key=lambda r: -r["own_ms_per_step"])
    out = {stage: 1e3 * v / steps for stage, v in stage_s.items()}
    out["other (bookkeeping, Python)"] = 1e3 * total / steps - sum(out.values())
    return {
        "cpu_ms_per_step": 1e3 * total / steps,
        "stages_cpu_ms_per_step": out,
        "top_own_time": rows[:14],
    }


def cpu_time_shape(shape: Shape, repeats: int, root: Path) -> dict[str, Any]:
    """A and F in-process (no workers) on thread CPU time: a check that load on a shared machine
    does not move (other processes slow wall-clock time, not the CPU time a step takes)."""
    store, _, plan = build(root, shape, peer_files=False)
    positions = epoch_schedule(plan, "ilp", 0, 0, steps_per_epoch=shape.steps)
    with open_store(store) as s:
        mean, std = s.dataset.mean, s.dataset.std
        images = torch.from_numpy(s.images())
    floor = TorchvisionFloor(images, floor_steps(store, positions), shape.size, mean, std)
    pool = PoolLoader(store, policy="ilp", seed=0, steps_per_epoch=shape.steps)

    def run_a() -> None:
        for _ in pool:
            pass

    def run_f() -> None:
        for i in range(len(floor)):
            floor[i]

    run_a()  # warm-up
    run_f()
    cpu: dict[str, list[float]] = {"A": [], "F": []}
    for _ in range(repeats):
        for name, fn in (("A", run_a), ("F", run_f)):
            start = time.thread_time()
            fn()
            cpu[name].append(1e3 * (time.thread_time() - start) / shape.steps)
    pool.close()
    a, f = statistics.median(cpu["A"]), statistics.median(cpu["F"])
    print(
        f"[{shape.name}] CPU ms per step in-process: A {a:.2f}, F {f:.2f}, A/F speed {f / a:.2f}", flush=True
    )
    return {"cpu_ms_per_step": {"A": a, "F": f}, "runs": cpu, "A_over_F_speed": f / a}


def run_shape(
    shape: Shape, workers: list[int], repeats: int, device: torch.device, root: Path
) -> dict[str, Any]:
    on_cpu = device.type == "cpu"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    store, peer, plan = build(root, shape, peer_files=on_cpu)
    built = time.perf_counter() - start
    print(f"[{shape.name}] built {plan.num_kept} entries ({shape}) in {built:.1f} s", flush=True)
    positions = epoch_schedule(plan, "ilp", 0, 0, steps_per_epoch=shape.steps)
    keys = plan.kept_keys[positions]
    peer_steps = [(int(e), int(b), plan.batch_indices(int(e), int(b)).tolist()) for e, b in keys]
    with open_store(store) as s:
        mean, std = s.dataset.mean, s.dataset.std
        images = torch.from_numpy(s.images())
    images = images.share_memory_() if on_cpu else images.to(device)
    f_steps = floor_steps(store, positions)
    loaders: dict[tuple[str, int], Callable[[], Iterable[Any]]] = {}
    for w in workers:
        options: dict[str, Any] = {"policy": "ilp", "seed": 0, "steps_per_epoch": shape.steps}
        if on_cpu:
            options |= {"num_workers": w, "multiprocessing_context": "fork" if w else None}
        else:
            options["device"] = device
        loaders[METHODS[0], w] = PoolLoader(store, **options).__iter__
        floor = TorchvisionFloor(images, f_steps, shape.size, mean, std)
        loaders[METHODS[1], w] = _dataloader(floor, w) if on_cpu else _in_process(floor)
        if on_cpu:
            loaders[METHODS[2], w] = _dataloader(SRe2LBatches(peer, peer_steps, shape.size, mean, std), w)
    for make in loaders.values():  # warm-up: workers, caches, lazy imports, CUDA kernels
        _epoch_rate(make(), sync)
    runs: dict[tuple[str, int], list[float]] = {}
    for r in range(repeats):
        order = list(loaders)
        for key in order[r % len(order) :] + order[: r % len(order)]:
            runs.setdefault(key, []).append(_epoch_rate(loaders[key](), sync))
        print(
            f"  [{shape.name}] rep {r}: "
            + ", ".join(f"{m.split()[0]}(w={w}) {runs[m, w][-1]:.0f}" for m, w in loaders),
            flush=True,
        )
    rows = [
        {"method": m, "workers": w, "median_images_per_s": statistics.median(v), "runs": v}
        for (m, w), v in runs.items()
    ]
    ratios: list[dict[str, Any]] = []
    for w in workers:
        a = runs[METHODS[0], w]
        for other, label in ((METHODS[1], "A/F"), (METHODS[2], "A/B")):
            if (other, w) in runs:
                paired = [x / y for x, y in zip(a, runs[other, w], strict=True)]
                target = (
                    TARGETS["A/F"] if label == "A/F" else TARGETS.get(f"A/B@{shape.size}") if w == 0 else None
                )
                ratios.append(
                    {
                        "ratio": label,
                        "workers": w,
                        "median_of_paired": statistics.median(paired),
                        "paired": paired,
                        "target": target,
                    }
                )
    result: dict[str, Any] = {
        "shape": dataclasses.asdict(shape),
        "entries": plan.num_kept,
        "build_s": built,
        "rows": rows,
        "ratios": ratios,
    }
    if on_cpu:
        result["profile_A_in_process"] = profile_a(store, shape, min(shape.steps, 20))
    return result


def _report(name: str, result: dict[str, Any]) -> None:
    print(f"\n== {name}: {result['shape']}")
    print(f"{'method':28s} {'workers':>7s} {'images/s (median)':>18s}")
    for row in result["rows"]:
        print(f"{row['method']:28s} {row['workers']:7d} {row['median_images_per_s']:18.0f}")
    for r in result["ratios"]:
        verdict = (
            "" if r["target"] is None else ("  meets" if r["median_of_paired"] >= r["target"] else "  MISSES")
        )
        target = "" if r["target"] is None else f" (target >= {r['target']})"
        print(f"{r['ratio']} workers={r['workers']}: {r['median_of_paired']:.2f}{target}{verdict}")
    prof = result.get("profile_A_in_process")
    if prof:
        print(f"A's step in-process, CPU ms per step (cProfile): {prof['cpu_ms_per_step']:.1f}")
        for stage, ms in prof["stages_cpu_ms_per_step"].items():
            print(f"   {stage:44s} {ms:7.2f}")


def plot(results: dict[str, Any], path: Path) -> None:
    """Images/s per method, worker setting and shape (medians), one panel per shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = [r for r in results.values() if "rows" in r]
    if not shapes:
        return
    fig, axes = plt.subplots(1, len(shapes), figsize=(5.5 * len(shapes), 3.6), squeeze=False)
    for ax, result in zip(axes[0], shapes, strict=True):
        rows = result["rows"]
        labels = [f"{r['method'].split()[0]}, {r['workers']} workers" for r in rows]
        colors = [{"A": "tab:blue", "F": "tab:gray", "B": "tab:orange"}[r["method"][0]] for r in rows]
        ax.barh(labels, [r["median_images_per_s"] for r in rows], color=colors)
        ax.invert_yaxis()
        shape = result["shape"]
        ax.set_title(f"{shape['size']} px, {shape['classes']} classes, batch {shape['batch']}")
        ax.set_xlabel("images/s (median); A lpldstore, F torchvision floor, B SRe2L files")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shapes", nargs="+", default=["64", "224"], choices=sorted(SHAPES), help="CPU shapes"
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run of the shapes")
    parser.add_argument(
        "--device", default="cpu", help="cpu (A, F, B with workers) or cuda (device path of A and F)"
    )
    parser.add_argument("--images", type=int, help="distilled images (default: the shape's)")
    parser.add_argument("--steps", type=int, help="batches per timed epoch (default: the shape's)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="num_workers settings (cpu)")
    parser.add_argument("--repeats", type=int, default=7, help="timed epochs per method and setting")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/loader_<device>[_quick].json)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="only A and F in-process on thread CPU time (load-insensitive): loader_cpu_time.json",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        shapes = [DEVICE]
    else:
        shapes = [(QUICK if args.quick else SHAPES)[s] for s in args.shapes]
    shapes = [
        dataclasses.replace(s, images=args.images or s.images, steps=args.steps or s.steps) for s in shapes
    ]
    workers = args.workers if device.type == "cpu" else [0]
    results: dict[str, Any] = {}
    load = [os.getloadavg()]
    for shape in shapes:
        with tempfile.TemporaryDirectory() as tmp:
            if args.cpu_time:
                results[shape.name] = cpu_time_shape(shape, args.repeats, Path(tmp))
            else:
                results[shape.name] = run_shape(shape, workers, args.repeats, device, Path(tmp))
        load.append(os.getloadavg())
        if not args.cpu_time:
            _report(shape.name, results[shape.name])
    config = vars(args) | {
        "torch": torch.__version__,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "load_average_before_and_after_each_shape": load,
    }
    kind = "cpu_time" if args.cpu_time else device.type
    out = Path(args.out) if args.out else RESULTS / f"loader_{kind}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": config, "shapes": results}, indent=2) + "\n")
    if not args.cpu_time:
        plot(results, out.with_suffix(".png"))
    print(f"saved {out}")
    return results


if __name__ == "__main__":
    main()
