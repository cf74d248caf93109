"""Relabel and training throughput at ImageNet-1K shape, random weights, no data needed.

1. Relabel: images/s of ``lpld_pipeline.relabel_entries`` (draw augmentation parameters, replay
   them with ``lpldstore.apply_params``, teacher forward, write the entry into a store; the
   store's one-off creation is not timed) against
   plain teacher inference on random tensors of the same batch shape: what the store and the
   augmentation replay cost on top of the teacher itself.
2. Training: student images/s (forward, KD loss, backward, AdamW step) with batches from the
   pool loader's device-resident path (images on the device, replayed in the main process) against
   its worker path (``num_workers`` processes replaying on the CPU, batches copied over).

ResNet-18, 1,000 classes, random weights, random uint8 "distilled" images. The default is a
reduced CPU size (112 px, small batches, few steps); ``--full`` is the ImageNet-1K shape for a GPU
(224 px, relabel batch 128, training batch 128, bf16 autocast, channels-last):

    python benchmarks/pipeline.py                  # CPU, reduced -> benchmarks/results/pipeline_cpu.json
    python benchmarks/pipeline.py --full           # H200 -> benchmarks/results/pipeline_gpu.json

Medians of ``--repeats`` timed runs after one warm-up; both sides of each ratio run in the same
process, interleaved.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.models import resnet18

import lpldstore
from lpld_pipeline import Teacher, TeacherSpec, kd_loss, relabel_entries

RESULTS = Path(__file__).parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    fn()  # warm-up: cudnn autotuning, allocator, first zarr writes
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _teacher(classes: int, device: torch.device, channels_last: bool) -> Teacher:
    torch.manual_seed(0)
    model = resnet18(num_classes=classes)
    spec = TeacherSpec(arch="resnet18", num_classes=classes, source="random")
    teacher = Teacher(model, spec).to(device)
    if channels_last:
        teacher.model.to(memory_format=torch.channels_last)
    return teacher


def _records(args: argparse.Namespace, num_images: int, batch: int, epochs: int) -> dict[str, Any]:
    size = args.size
    return {
        "plan": lpldstore.PruningPlan(
            num_images=num_images, batch_size=batch, epochs=epochs, ratio=1, seed=0
        ),
        "dataset": lpldstore.DatasetInfo(
            name="random-in1k-shape",
            num_classes=args.classes,
            num_images=num_images,
            image_shape=(size, size, 3),
        ),
        "relabel": lpldstore.RelabelConfig(output_size=(size, size), teacher="resnet18"),
    }


def bench_relabel(args: argparse.Namespace, device: torch.device, tmp: Path) -> dict[str, Any]:
    teacher = _teacher(args.classes, device, args.channels_last)
    batch, entries = args.relabel_batch, args.relabel_entries
    num_images = batch * entries
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (num_images, args.size, args.size, 3), dtype=np.uint8)
    labels = rng.integers(0, args.classes, num_images)
    pixels = torch.from_numpy(images)
    counter = iter(range(1_000_000))

    def relabel_once() -> float:
        # The store is created untimed: its one-off cost (images, metadata) is not per entry.
        path = tmp / f"relabel-{next(counter)}.zarr"
        records = _records(args, num_images, batch, 1)
        with lpldstore.StoreWriter.create(path, images=images, labels=labels, **records) as writer:
            _sync(device)
            t0 = time.perf_counter()
            relabel_entries(
                writer, teacher, pixels, device=device, amp=args.amp, channels_last=args.channels_last
            )
            writer.flush()
            _sync(device)
            return time.perf_counter() - t0

    dtype = torch.bfloat16 if args.amp == "bf16" and device.type == "cuda" else None
    x = torch.rand(batch, 3, args.size, args.size, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def plain_once() -> None:
        for _ in range(entries):
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                teacher(x).float().cpu()

    relabel_s: list[float] = []
    plain_s: list[float] = []
    relabel_once()  # warm-up
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        relabel_s.append(relabel_once())
        plain_s.append(_median_time(plain_once, 1, device))
    r, p = statistics.median(relabel_s), statistics.median(plain_s)
    return {
        "batch": batch,
        "entries": entries,
        "relabel_images_per_s": num_images / r,
        "plain_teacher_images_per_s": num_images / p,
        "relabel_over_plain": p / r,
        "relabel_seconds": relabel_s,
        "plain_seconds": plain_s,
    }


def _pool_store(args: argparse.Namespace, tmp: Path) -> Path:
    """A complete store with random logits (no teacher needed to time training)."""
    batch, steps = args.train_batch, args.train_steps
    num_images = batch * steps
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (num_images, args.size, args.size, 3), dtype=np.uint8)
    labels = rng.integers(0, args.classes, num_images)
    path = tmp / "pool.zarr"
    records = _records(args, num_images, batch, 2)
    with lpldstore.StoreWriter.create(path, images=images, labels=labels, **records) as writer:
        relabel_cfg = writer.attrs.relabel
        for epoch, b in writer.todo():
            idx = writer.plan.batch_indices(epoch, b)
            params = lpldstore.draw_params(relabel_cfg, (args.size, args.size), len(idx), epoch, b)
            logits = rng.normal(0, 3, (len(idx), args.classes)).astype(np.float32)
            writer.write(epoch, b, logits=logits, params=params)
    return path


def bench_train(args: argparse.Namespace, device: torch.device, tmp: Path) -> dict[str, Any]:
    store = _pool_store(args, tmp)
    torch.manual_seed(0)
    student = resnet18(num_classes=args.classes).to(device)
    if args.channels_last:
        student.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.01)
    dtype = torch.bfloat16 if args.amp == "bf16" and device.type == "cuda" else None
    loaders = {
        "device_resident": lpldstore.PoolLoader(store, policy="sequential", device=device),
        "workers": lpldstore.PoolLoader(
            store, policy="sequential", num_workers=args.workers, multiprocessing_context="fork"
        ),
    }
    epoch = iter(range(1_000_000))

    def run(loader: lpldstore.PoolLoader) -> Callable[[], None]:
        def once() -> None:
            loader.set_epoch(next(epoch))
            for b in loader:
                x = b.images.to(device, non_blocking=True)
                if args.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                    out = student(x)
                loss = kd_loss(out, b.logits.to(device, non_blocking=True), 20.0, t2=False)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        return once

    seconds: dict[str, list[float]] = {k: [] for k in loaders}
    for _ in range(args.repeats):
        for name, loader in loaders.items():
            seconds[name].append(_median_time(run(loader), 1, device))
    images = args.train_batch * args.train_steps
    out: dict[str, Any] = {"batch": args.train_batch, "steps": args.train_steps, "workers": args.workers}
    for name, s in seconds.items():
        out[f"{name}_images_per_s"] = images / statistics.median(s)
        out[f"{name}_seconds"] = s
    out["device_resident_over_workers"] = out["device_resident_images_per_s"] / out["workers_images_per_s"]
    for loader in loaders.values():
        loader.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--full", action="store_true", help="ImageNet-1K shape on a GPU (224 px, batches of 128)"
    )
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--relabel-batch", type=int, default=None)
    parser.add_argument("--relabel-entries", type=int, default=None)
    parser.add_argument("--train-batch", type=int, default=None)
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None, help="default: cuda with --full, else cpu")
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    full = args.full
    args.size = args.size or (224 if full else 112)
    args.relabel_batch = args.relabel_batch or (128 if full else 16)
    args.relabel_entries = args.relabel_entries or (40 if full else 4)
    args.train_batch = args.train_batch or (128 if full else 16)
    args.train_steps = args.train_steps or (40 if full else 4)
    args.workers = args.workers if args.workers is not None else (8 if full else 2)
    device = torch.device(args.device or ("cuda" if full else "cpu"))
    args.amp = "bf16" if device.type == "cuda" else "none"
    args.channels_last = device.type == "cuda"
    with tempfile.TemporaryDirectory(prefix="lpld-pipeline-bench-") as tmp:
        relabel_result = bench_relabel(args, device, Path(tmp))
        train_result = bench_train(args, device, Path(tmp))
    record = {
        "benchmark": "pipeline",
        "setting": "full" if full else "reduced-cpu",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "note": "machine shared with other jobs" if device.type == "cpu" else "",
        "model": "resnet18 (random weights)",
        "classes": args.classes,
        "image_size": args.size,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "repeats": args.repeats,
        "relabel": relabel_result,
        "train": train_result,
    }
    RESULTS.mkdir(exist_ok=True)
    path = (
        Path(args.out)
        if args.out
        else RESULTS / ("pipeline_gpu.json" if device.type == "cuda" else "pipeline_cpu.json")
    )
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    r, t = relabel_result, train_result
    print(f"{record['setting']}: {args.size} px, {args.classes} classes, ResNet-18, {record['device']}")
    print(
        f"relabel   {r['relabel_images_per_s']:9.1f} img/s   plain teacher {r['plain_teacher_images_per_s']:9.1f} img/s"
        f"   ratio {r['relabel_over_plain']:.2f}"
    )
    print(
        f"train     device-resident {t['device_resident_images_per_s']:9.1f} img/s   "
        f"{t['workers']} workers {t['workers_images_per_s']:9.1f} img/s   ratio {t['device_resident_over_workers']:.2f}"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
