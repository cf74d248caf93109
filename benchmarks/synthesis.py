"""Synthesis throughput: one class per batch (the reference) against class-packed batches.

Random teacher weights and random class statistics, so no data is needed. Throughput is
images x iterations per second of the optimizer loop after warm-up; the estimate is the time to
synthesize ImageNet-1K (1,000 classes) at IPC 10 and 50 for 4,000 iterations on this device.

    python benchmarks/synthesis.py                 # small CPU run -> benchmarks/results/synthesis_cpu.json
    python benchmarks/synthesis.py --full          # ResNet-18, 224 px, 1,000 classes, bf16, channels-last, GPU
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lpld_pipeline import (
    ClassBNStats,
    SynthesisConfig,
    Teacher,
    TeacherSpec,
    batchnorm_layers,
    build_model,
    synthesize_images,
)

IN1K_CLASSES = 1000
IN1K_ITERATIONS = 4000


def _teacher(arch: str, num_classes: int, small_stem: bool) -> Teacher:
    spec = TeacherSpec(arch=arch, num_classes=num_classes, small_stem=small_stem, source="random")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Teacher(build_model(spec), spec)


def _random_stats(teacher: Teacher, image_size: int) -> ClassBNStats:
    g = torch.Generator().manual_seed(0)
    k = teacher.spec.num_classes
    mean, var, count = {}, {}, {}
    for name, m in batchnorm_layers(teacher.model):
        assert isinstance(m, nn.BatchNorm2d)
        mean[name] = torch.randn(k, m.num_features, generator=g) * 0.2
        var[name] = torch.rand(k, m.num_features, generator=g) + 0.5
        count[name] = torch.ones(k, dtype=torch.long)
    return ClassBNStats(
        layers=tuple(mean),
        mean=mean,
        var=var,
        count=count,
        images_per_class=torch.ones(k, dtype=torch.long),
        class_names=tuple(str(i) for i in range(k)),
        teacher=teacher.spec,
        teacher_sha256=teacher.sha256(),
        image_size=image_size,
    )


def _measure(
    teacher: Teacher,
    stats: ClassBNStats,
    config: SynthesisConfig,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    stamps: list[float] = []

    def tick(batch: int, iteration: int) -> None:
        if batch == 0:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stamps.append(time.perf_counter())

    synthesize_images(
        teacher,
        stats,
        config,
        image_size=args.image_size,
        class_names=stats.class_names,
        device=device,
        callback=tick,
    )
    measured = stamps[args.warmup - 1 :]  # intervals after the warm-up steps
    # The median step resists other processes stealing the CPU for a moment.
    seconds = statistics.median(b - a for a, b in itertools.pairwise(measured))
    images = config.groups_per_batch * config.ipc
    throughput = images / seconds
    return {
        "ipc": config.ipc,
        "way": "one class per batch" if config.groups_per_batch == 1 else "class-packed",
        "classes_per_batch": config.groups_per_batch,
        "batch_images": images,
        "seconds_per_iteration": seconds,
        "throughput_image_iters_per_s": throughput,
        "est_in1k_4000it_hours": IN1K_CLASSES * config.ipc * IN1K_ITERATIONS / throughput / 3600,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="ImageNet-1K shape on the GPU (224 px, 1,000 classes)")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    p.add_argument(
        "--batch-images", type=int, default=0, help="packed batch size in images (default: 10 classes)"
    )
    p.add_argument("--iterations", type=int, default=8, help="measured iterations after warm-up")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.full:
        args.image_size, args.num_classes = 224, IN1K_CLASSES
        args.batch_images = args.batch_images or 1000
        args.iterations, args.warmup = max(args.iterations, 20), max(args.warmup, 5)
        args.device = "cuda" if args.device == "cpu" else args.device
        args.amp, args.channels_last = "bf16", True
    if args.warmup < 1:
        p.error("--warmup must be at least 1")
    device = torch.device(args.device)
    teacher = _teacher(args.arch, args.num_classes, small_stem=False)
    stats = _random_stats(teacher, args.image_size)
    rows = []
    for ipc in args.ipc:
        packed = max(1, min(args.num_classes, (args.batch_images or 10 * ipc) // ipc))
        for groups in (1, packed):
            config = SynthesisConfig(
                ipc=ipc,
                iterations=args.warmup + args.iterations,
                groups_per_batch=groups,
                classes=tuple(range(groups)),
                amp=args.amp,
                channels_last=args.channels_last,
                compile=args.compile,
                progress=False,
            )
            rows.append(_measure(teacher, stats, config, args, device))
            print(json.dumps(rows[-1]), flush=True)
    setting = {
        "arch": args.arch,
        "image_size": args.image_size,
        "teacher_classes": args.num_classes,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "amp": args.amp,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "iterations_measured": args.iterations,
        "statistic": "median seconds per iteration",
        "warmup": args.warmup,
        "note": "estimates extrapolate this shape to 1,000 classes x IPC x 4,000 iterations on one device",
    }
    print(
        f"\n{args.arch}, {args.image_size} px, {args.num_classes}-class teacher on {setting['device']} "
        f"(amp={args.amp}, channels_last={args.channels_last}, compile={args.compile})\n"
    )
    print(
        "| IPC | way | classes/batch | images/batch | s/iter | image-iters/s | est. 1,000 classes x 4k it, this shape (h) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['ipc']} | {r['way']} | {r['classes_per_batch']} | {r['batch_images']} | "
            f"{r['seconds_per_iteration']:.4f} | {r['throughput_image_iters_per_s']:.1f} | "
            f"{r['est_in1k_4000it_hours']:.1f} |"
        )
    out = Path(args.out or f"benchmarks/results/synthesis_{'gpu' if device.type == 'cuda' else 'cpu'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "synthesis", "setting": setting, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
