"""Loader throughput: lpldstore's PoolLoader against the SRe2L/LPLD per-batch-file way and the floor.

A  ``PoolLoader`` (ilp policy) over a store: images read once into (shared) memory, per step one
   logits chunk read and decoded to float32 and one batched replay of the stored crop/flip/CutMix.
B  The SRe2L/LPLD layout, written by this script from the format facts: one ``torch.save`` file
   per (epoch, batch) holding the six-item list [coords (float32, relative), flip, mix_index,
   mix_lam, mix_bbox (NumPy int64), logits (float16)], and the distilled images as JPEG files (as
   SRe2L's recover saves them). A step loads its file, opens each image with PIL, replays
   crop+resize and flip per sample on the PIL image, converts and normalizes it, then applies the
   CutMix box to the batch (SRe2L's ``RandomResizedCrop_FKD`` + ``mix_aug``); the float16 logits
   are cast to float32 by the consumer, as SRe2L's training loop does.
C  The same augmentations with no labels at all: parameters drawn fresh per step and replayed on
   the in-memory images with the same kernels as A (the floor: what plain augmentation costs).

A, B and C visit the same number of batches of the same size under the same DataLoader settings
(``batch_size=None``, the same ``num_workers`` and start method, new workers every epoch as
PoolLoader does). They run interleaved -- every repetition times one epoch of each, in a rotating
order -- so that load from other processes on a shared machine hits all three alike; the table
gives the median images/s over the repetitions and the median of the per-repetition ratios.

    python benchmarks/loader.py                 # the issue's shape: 224 px, 1,000 classes, batch 128
    python benchmarks/loader.py --quick         # a small smoke run (64 px, 100 classes)
    python benchmarks/loader.py --device cuda   # with a GPU: device path, 10,000 images, batch 1,024

Results are printed and saved as JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
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

from lpldstore import (
    DatasetInfo,
    PoolLoader,
    PruningPlan,
    RelabelConfig,
    StoreWriter,
    apply_params,
    draw_params,
    epoch_schedule,
    open_store,
)

RESULTS = Path(__file__).parent / "results"
METHODS = ("A lpldstore", "B SRe2L files + PIL", "C augment only, no labels")


@dataclasses.dataclass(frozen=True)
class Shape:
    images: int
    size: int
    classes: int
    batch: int
    epochs: int  # relabel epochs stored: entries = epochs * ceil(images / batch)
    steps: int  # batches per timed epoch


ISSUE = Shape(images=1280, size=224, classes=1000, batch=128, epochs=30, steps=20)
QUICK = Shape(images=640, size=64, classes=100, batch=64, epochs=4, steps=10)
DEVICE = Shape(images=10_000, size=224, classes=1000, batch=1024, epochs=30, steps=10)


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
    """The store (A, C) and, with ``peer_files``, the SRe2L directory (B) of the same entries."""
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


class NoLabels(torch.utils.data.Dataset[torch.Tensor]):
    """Baseline C: fresh parameters per step on in-memory images, no labels read."""

    def __init__(self, store: Path, steps: int, batch: int, device: torch.device) -> None:
        with open_store(store) as s:
            self.images = torch.from_numpy(s.images())
            self.relabel, self.info = s.relabel, s.dataset
        self.images = self.images.share_memory_() if device.type == "cpu" else self.images.to(device)
        self.steps, self.batch, self.device = steps, batch, device

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> torch.Tensor:
        idx = np.random.default_rng(step).choice(len(self.images), size=self.batch, replace=False)
        params = draw_params(self.relabel, self.info.image_shape[:2], self.batch, 0, step)
        index = torch.from_numpy(idx).to(self.device)
        return apply_params(
            self.images.index_select(0, index), params, self.relabel, self.info.mean, self.info.std
        )


def _epoch_rate(batches: Iterable[Any], sync: Callable[[], None]) -> float:
    """Images/s of one epoch, consuming images and float32 logits of every batch."""
    count, start = 0, time.perf_counter()
    for item in batches:
        if isinstance(item, tuple | list):  # B: the consumer casts the float16 logits, as SRe2L's loop does
            images, logits = item[0], item[1].float()
        elif isinstance(item, torch.Tensor):  # C: no labels
            images, logits = item, None
        else:  # A: PoolBatch
            images, logits = item.images, item.logits
        assert logits is None or logits.dtype == torch.float32
        count += len(images)
    sync()
    return count / (time.perf_counter() - start)


def _dataloader(ds: Any, workers: int) -> Callable[[], Iterator[Any]]:
    ctx = "fork" if workers else None

    # Built once, workers persistent across epochs: the settings PoolLoader uses.
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=workers, multiprocessing_context=ctx, persistent_workers=workers > 0
    )

    def run() -> Iterator[Any]:
        return iter(loader)

    return run


def _in_process(ds: NoLabels) -> Callable[[], Iterator[torch.Tensor]]:
    def run() -> Iterator[torch.Tensor]:
        return (ds[i] for i in range(len(ds)))

    return run


def label_side_costs(store: Path, positions: np.ndarray, repeats: int = 5) -> dict[str, float]:
    """Milliseconds of what A does and C does not, measured in-process (median over steps)."""
    out: dict[str, list[float]] = {"epoch_metadata_read_per_epoch": [], "logits_read_per_step": []}
    with open_store(store) as s:
        for _ in range(repeats):
            t = time.perf_counter()
            s.metadata(np.unique(positions))
            out["epoch_metadata_read_per_epoch"].append(time.perf_counter() - t)
            for p in positions:
                t = time.perf_counter()
                s.logits_at(int(p)).astype(np.float32)
                out["logits_read_per_step"].append(time.perf_counter() - t)
    return {k: 1e3 * statistics.median(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"small smoke run: {QUICK}")
    parser.add_argument(
        "--device", default="cpu", help="cpu (A, B, C with workers) or cuda (device path of A and C)"
    )
    parser.add_argument("--images", type=int, help="distilled images (default: the shape's)")
    parser.add_argument("--steps", type=int, help="batches per timed epoch (default: the shape's)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="num_workers settings (cpu)")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per method and setting")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/loader_<device>_<size>.json)")
    args = parser.parse_args()
    device = torch.device(args.device)
    shape = QUICK if args.quick else DEVICE if device.type == "cuda" else ISSUE
    shape = dataclasses.replace(shape, images=args.images or shape.images, steps=args.steps or shape.steps)
    on_cpu = device.type == "cpu"
    settings = args.workers if on_cpu else [0]
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    runs: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        store, peer, plan = build(Path(tmp), shape, peer_files=on_cpu)
        built = time.perf_counter() - start
        print(f"built {plan.num_kept} entries ({shape}) in {built:.1f} s")
        positions = epoch_schedule(plan, "ilp", 0, 0, steps_per_epoch=shape.steps)
        keys = plan.kept_keys[positions]
        steps = [(int(e), int(b), plan.batch_indices(int(e), int(b)).tolist()) for e, b in keys]
        with open_store(store) as s:
            mean, std = s.dataset.mean, s.dataset.std
        costs = label_side_costs(store, positions)
        loaders: dict[tuple[str, int], Callable[[], Iterable[Any]]] = {}
        for w in settings:
            options: dict[str, Any] = {"policy": "ilp", "seed": 0, "steps_per_epoch": shape.steps}
            if on_cpu:
                options |= {"num_workers": w, "multiprocessing_context": "fork" if w else None}
            else:
                options["device"] = device
            loaders[METHODS[0], w] = PoolLoader(store, **options).__iter__
            if on_cpu:
                loaders[METHODS[1], w] = _dataloader(SRe2LBatches(peer, steps, shape.size, mean, std), w)
            no_labels = NoLabels(store, shape.steps, shape.batch, device)
            loaders[METHODS[2], w] = _dataloader(no_labels, w) if on_cpu else _in_process(no_labels)
        for make in loaders.values():  # warm-up: caches, lazy imports, CUDA kernels
            _epoch_rate(make(), sync)
        for r in range(args.repeats):
            order = list(loaders)
            for key in order[r % len(order) :] + order[: r % len(order)]:
                runs.setdefault(key, []).append(_epoch_rate(loaders[key](), sync))
                print(f"  rep {r}: {key[0]:28s} workers={key[1]} {runs[key][-1]:8.0f} images/s", flush=True)
    rows = [
        {"method": m, "workers": w, "median_images_per_s": statistics.median(v), "runs": v}
        for (m, w), v in runs.items()
    ]
    ratios: list[dict[str, Any]] = []
    for w in settings:
        a = runs[METHODS[0], w]
        for other, label in ((METHODS[1], "A/B"), (METHODS[2], "A/C")):
            if (other, w) in runs:
                paired = [x / y for x, y in zip(a, runs[other, w], strict=True)]
                ratios.append({"ratio": label, "workers": w, "median_of_paired": statistics.median(paired)})
    print(f"\n{'method':28s} {'workers':>7s} {'images/s (median)':>18s}")
    for row in rows:
        print(f"{row['method']:28s} {row['workers']:7d} {row['median_images_per_s']:18.0f}")
    for ratio in ratios:
        extra = (
            f"  (A/C overhead {100 * (1 / ratio['median_of_paired'] - 1):.1f}%)"
            if ratio["ratio"] == "A/C"
            else ""
        )
        print(f"{ratio['ratio']} workers={ratio['workers']}: {ratio['median_of_paired']:.2f}{extra}")
    print("A's label-side costs (ms, in-process):", {k: round(v, 2) for k, v in costs.items()})
    name = f"loader_{device.type}_{shape.size}{'_quick' if args.quick else ''}.json"
    out = Path(args.out) if args.out else RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    config = vars(args) | {
        "shape": dataclasses.asdict(shape),
        "entries": plan.num_kept,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "build_s": built,
    }
    result = {"config": config, "rows": rows, "ratios": ratios, "label_side_ms": costs}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
