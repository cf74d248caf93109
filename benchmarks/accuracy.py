"""The small-scale version of LPLD's central table on the built-in digits dataset.

Student top-1 on the real held-out digits at label-pool ratios 1x, 10x, 40x and 100x for three
ways of synthesizing the distilled images, each trained with the improved label pool (ILP) and
with the epoch-level pool:

- ``class``: class batches matched to class-wise BN statistics (LPLD);
- ``class_global``: class batches matched to the global BN statistics (the "+C" ablation);
- ``mixed``: batches across classes against the global statistics (SRe2L-style);
- ``real``: random real training images of the same IPC, relabeled the same way (reference).

One teacher (the demo squeeze) serves every cell; each seed re-draws the synthesis, the real
subset, the relabel augmentations, the student initialization and the pool schedule. Every
ratio's store is relabeled on its own (prefix plans: the 10x store is the first tenth of the 1x
label stream). Prints a table, writes JSON under ``benchmarks/results/`` and a PNG plot.

    python benchmarks/accuracy.py --quick     # 1 seed, short training: a check (minutes)
    python benchmarks/accuracy.py             # 3 seeds, the demo recipe (hours on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpld_pipeline import (
    RELABEL_PRESETS,
    SQUEEZE_PRESETS,
    SYNTHESIS_PRESETS,
    TRAIN_PRESETS,
    relabel,
    squeeze,
    synthesize,
    train,
)
from lpld_pipeline.artifacts import read_record
from lpld_pipeline.data import load_digits_images

RESULTS = Path(__file__).parent / "results"
SOURCES = ("class", "class_global", "mixed", "real")
POOLS = ("ilp", "epoch")
RATIOS = (1, 10, 40, 100)


def _real_subset(root: Path, ipc: int, image_size: int, seed: int) -> Path:
    """Random real training images, ``ipc`` per class, saved as a synthesize output directory."""
    images, labels = load_digits_images(image_size, "train")
    rng = np.random.default_rng([seed, 7])
    picked = np.concatenate([rng.choice(np.flatnonzero(labels == c), ipc, replace=False) for c in range(10)])
    out = root / f"real-s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / "images.npz",
        images=images[picked],
        labels=labels[picked],
        indices=np.tile(np.arange(ipc), 10),
        class_names=json.dumps([str(i) for i in range(10)]),
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 seed, --epochs 40, 100 synthesis iterations")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per cell (default 3; quick 1)")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default: demo preset's)")
    parser.add_argument("--iterations", type=int, default=None, help="synthesis iterations (default: demo's)")
    parser.add_argument(
        "--work", default=None, help="directory for intermediate outputs (default: a temp dir)"
    )
    parser.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/accuracy[_quick].json)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        # On a busy shared machine one thread per process avoids OpenMP threads spinning on a core.
        torch.set_num_threads(args.threads)
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = args.epochs or (40 if args.quick else TRAIN_PRESETS["demo"].epochs)
    iterations = args.iterations or (100 if args.quick else SYNTHESIS_PRESETS["demo"].iterations)
    name = "accuracy_quick" if args.quick else "accuracy"
    out_json = Path(args.out) if args.out else RESULTS / f"{name}.json"
    with tempfile.TemporaryDirectory(prefix="lpld-accuracy-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        results = _run(work, seeds, epochs, iterations)
    record = {
        "benchmark": "accuracy",
        "setting": "quick" if args.quick else "full",
        "dataset": "digits (sklearn), 32x32, 10 classes, IPC 10; validation: 360 held-out real digits",
        "seeds": seeds,
        "student_epochs": epochs,
        "synthesis_iterations": iterations,
        "relabel": dataclasses.asdict(RELABEL_PRESETS["demo"]),
        "train": {k: v for k, v in dataclasses.asdict(TRAIN_PRESETS["demo"]).items() if k != "val"},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, shared with other jobs",
        **results,
    }
    RESULTS.mkdir(exist_ok=True)
    out_json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    _print_table(record)
    _plot(record, out_json.with_suffix(".png"))
    print(f"\nwrote {out_json} and {out_json.with_suffix('.png')}")


def _run(work: Path, seeds: int, epochs: int, iterations: int) -> dict[str, Any]:
    t_start = time.perf_counter()
    timing: dict[str, float] = {"squeeze": 0.0, "synthesize": 0.0, "relabel": 0.0, "train": 0.0}
    steps = 0
    t0 = time.perf_counter()
    sq = dataclasses.replace(SQUEEZE_PRESETS["demo"], out=str(work / "squeeze"), progress=False)
    squeeze(sq)
    timing["squeeze"] += time.perf_counter() - t0
    teacher_top1 = (read_record(work / "squeeze", "squeeze") or {})["teacher_val_accuracy"]
    cells: dict[str, list[float]] = {}
    ipc = SYNTHESIS_PRESETS["demo"].ipc
    for seed in range(seeds):
        for source in SOURCES:
            t0 = time.perf_counter()
            if source == "real":
                images_dir = _real_subset(work, ipc, sq.data.image_size, seed)
            else:
                images_dir = work / f"synth-{source}-s{seed}"
                syn = dataclasses.replace(
                    SYNTHESIS_PRESETS["demo"],
                    squeeze_dir=sq.out,
                    out=str(images_dir),
                    mode=source,  # type: ignore[arg-type]
                    seed=seed,
                    iterations=iterations,
                    progress=False,
                    write_imagefolder=False,
                )
                synthesize(syn)
            timing["synthesize"] += time.perf_counter() - t0
            for ratio in RATIOS:
                store = work / f"{source}-s{seed}-x{ratio}.zarr"
                t0 = time.perf_counter()
                rl = dataclasses.replace(
                    RELABEL_PRESETS["demo"],
                    squeeze_dir=sq.out,
                    synth_dir=str(images_dir),
                    out=str(store),
                    ratio=float(ratio),
                    aug_seed=seed,
                    progress=False,
                )
                relabel(rl)
                timing["relabel"] += time.perf_counter() - t0
                for pool in POOLS:
                    t0 = time.perf_counter()
                    tr = dataclasses.replace(
                        TRAIN_PRESETS["demo"],
                        store=str(store),
                        out=str(work / f"train-{source}-s{seed}-x{ratio}-{pool}"),
                        policy=pool,  # type: ignore[arg-type]
                        epochs=epochs,
                        val_interval=epochs,
                        seed=seed,
                        loader_seed=seed,
                        progress=False,
                    )
                    result = train(tr)
                    timing["train"] += time.perf_counter() - t0
                    steps += result.steps
                    cells.setdefault(f"{source}/{pool}/{ratio}", []).append(result.top1)
                    print(
                        f"seed {seed} {source:<12} {pool:<5} x{ratio:<3} top-1 {result.top1:.4f}", flush=True
                    )
    total = time.perf_counter() - t_start
    summary = {
        key: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "runs": v}
        for key, v in cells.items()
    }
    return {
        "teacher_top1": teacher_top1,
        "cells": summary,
        "seconds": {k: round(v, 1) for k, v in timing.items()} | {"total": round(total, 1)},
        "train_steps": steps,
        "seconds_per_train_step": timing["train"] / max(1, steps),
    }


def _print_table(record: dict[str, Any]) -> None:
    cells = record["cells"]
    print(
        f"\nstudent top-1 (%) on held-out digits, mean ± std over {record['seeds']} seed(s); "
        f"teacher {record['teacher_top1']:.1%}, chance 10%"
    )
    print("| images | pool | " + " | ".join(f"{r}x" for r in RATIOS) + " |")
    print("|---|---|" + "---|" * len(RATIOS))
    for source in SOURCES:
        for pool in POOLS:
            row = [cells[f"{source}/{pool}/{r}"] for r in RATIOS]
            print(
                f"| {source} | {pool} | "
                + " | ".join(f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}" for c in row)
                + " |"
            )
    print(
        f"\nseconds: {record['seconds']}; {record['seconds_per_train_step'] * 1000:.1f} ms per training step"
    )


def _plot(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for source in SOURCES:
        for pool, style in zip(POOLS, ("-", "--"), strict=True):
            cells = [record["cells"][f"{source}/{pool}/{r}"] for r in RATIOS]
            ax.errorbar(
                RATIOS,
                [100 * c["mean"] for c in cells],
                yerr=[100 * c["std"] for c in cells],
                linestyle=style,
                marker="o",
                capsize=3,
                label=f"{source} / {pool}",
            )
    ax.set_xscale("log")
    ax.set_xticks(RATIOS, [f"{r}x" for r in RATIOS])
    ax.set_xlabel("label pruning ratio")
    ax.set_ylabel("student top-1 (%)")
    ax.set_title(f"digits IPC 10, {record['seeds']} seed(s), {record['student_epochs']} student epochs")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
