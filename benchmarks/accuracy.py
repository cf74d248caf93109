"""LPLD's claims, tested on the built-in digits with a study whose statistics can tell.

LPLD (NeurIPS 2024) claims that class-wise synthesis (class batches matched to class-wise BN
statistics) makes random label pruning work: students of class-wise images lose little at 10-100x
fewer labels while students of cross-class (SRe2L-style) images lose much; that the class
statistics (+CS) beat the global ones (+C); and that the improved label pool (ILP) helps. This
study tests each claim as one row with a verdict, plus the paper's metric pruning and the logit
codecs, at a scale that fits a 2-core CPU.

Design (every number below is a flag; ``--quick`` shrinks them):

- One teacher (the ``demo`` squeeze at ``--image-size`` px: trained on relabel's views, class
  statistics collected under them, no horizontal flips for digits).
- Image sets: ``class`` (LPLD, +CS), ``class_global`` (+C) and ``mixed`` (SRe2L) synthesis run to
  convergence (``--iterations``; a sweep over iteration counts and the per-class BN distances of
  every set are recorded), and random real images of the same IPC as a reference.
- Runs: ``--runs`` independent replicates. Run ``r`` uses synthesis seed ``r`` (and real subset
  ``r``), relabel augmentation seed ``r`` and plan seed ``42 + r``, and student and pool seed
  ``1000 + r``: the synthesis and the student seeds differ, and a separate cell varies the student
  seed alone on one store. Every comparison is paired by run (a paired t-test on the per-run
  differences; runs are independent of each other), with Holm's correction within each claim.
- Stores: one full (1x) relabel store per image set and run, with as many augmentation epochs as
  the students train (``--epochs``), so a ratio is the true ratio of labels per training step;
  the pruned stores are prefixes of it (``lpldstore.prune``, exactly what relabeling the prefix
  writes), the metric-pruned ones select from it, and the codec ones re-encode the 40x prefix.
- Cells: accuracy of the final student on the 360 held-out real digits; per cell the mean, the
  standard deviation and the 95 % t-interval over runs.

    python benchmarks/accuracy.py --quick      # 2 runs, short: checks every code path (< 10 min)
    python benchmarks/accuracy.py              # the study (JSON + plots under benchmarks/results/)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats  # type: ignore[import-untyped]

RESULTS = Path(__file__).parent / "results"
MODES = ("class", "class_global", "mixed")
SOURCES = (*MODES, "real")
# Codecs of claim (e): name, params, label. Ten classes: top-2 keeps a fifth of each row.
CODECS: tuple[tuple[str, dict[str, Any], str], ...] = (
    ("quantized", {"bits": 8}, "8-bit"),
    ("quantized", {"bits": 4}, "4-bit"),
    ("quantized", {"bits": 3}, "3-bit"),
    ("quantized", {"bits": 2}, "2-bit"),
    ("topk", {"k": 2, "tail": "MR"}, "top-2 MR"),
    ("topk", {"k": 2, "tail": "MS"}, "top-2 MS"),
    ("topk", {"k": 2, "tail": "MRS"}, "top-2 MRS"),
)
METRICS = (("confidence", "easy"), ("confidence", "hard"), ("margin", "easy"), ("margin", "hard"))
ALPHA = 0.05


@dataclasses.dataclass(frozen=True)
class Setting:
    """The study's size: everything that ``--quick`` changes."""

    runs: int
    epochs: int
    iterations: int
    ratios: tuple[int, ...]
    policy_ratios: tuple[int, ...]
    prune_ratio: int
    sweep: dict[str, tuple[int, ...]]
    codecs: tuple[int, ...]  # indices into CODECS
    metrics: tuple[int, ...]  # indices into METRICS
    real: bool
    temperature_check: bool
    image_size: int = 16


FULL = Setting(
    runs=6,
    epochs=100,
    iterations=2000,
    ratios=(1, 10, 40, 100),
    policy_ratios=(1, 10, 40),
    prune_ratio=40,
    sweep={"class": (500, 1000, 4000), "class_global": (4000,), "mixed": (4000,)},
    codecs=tuple(range(len(CODECS))),
    metrics=tuple(range(len(METRICS))),
    real=True,
    temperature_check=True,
)
QUICK = Setting(
    runs=2,
    epochs=20,
    iterations=250,
    ratios=(1, 40),
    policy_ratios=(40,),
    prune_ratio=40,
    sweep={"class": (100,)},
    codecs=(1, 5),
    metrics=(0, 3),
    real=False,
    temperature_check=False,
)


# -- work done in worker processes (top-level functions: they are pickled) --------------------------


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _synthesis_recipe(squeeze_dir: str, mode: str, seed: int, iterations: int, out: str) -> Any:
    from lpld_pipeline import SYNTHESIS_PRESETS

    return dataclasses.replace(
        SYNTHESIS_PRESETS["demo"],
        squeeze_dir=squeeze_dir,
        out=out,
        mode=mode,  # type: ignore[arg-type]
        seed=seed,
        iterations=iterations,
        progress=False,
        write_imagefolder=False,
    )


def _measure_set(squeeze_dir: str, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """BN distances (per class, under the training views and plain) and within-class diversity."""
    from lpld_pipeline import DataConfig, config_from_dict, load_class_stats, load_teacher_checkpoint
    from lpld_pipeline.artifacts import read_record
    from lpld_pipeline.diagnostics import bn_distances, penultimate_features, within_class_cosine
    from lpld_pipeline.views import training_views

    stats = load_class_stats(squeeze_dir)
    teacher = load_teacher_checkpoint(Path(squeeze_dir) / "teacher.pt")
    record = read_record(squeeze_dir, "squeeze") or {}
    data = config_from_dict(DataConfig, record["config"]["data"])
    views = training_views(data, seed=12345)
    under_views = bn_distances(teacher, stats, images, labels, views=views)
    plain = bn_distances(teacher, stats, images, labels)
    cosine = within_class_cosine(penultimate_features(teacher, images), labels)
    return {
        "bn_distance_views": under_views.summary(),
        "bn_distance_plain": plain.summary(),
        "bn_distance_views_per_class": {
            "own": under_views.own.tolist(),
            "global": under_views.global_.tolist(),
        },
        "within_class_cosine": float(np.mean(list(cosine.values()))),
    }


def _synthesize_task(task: dict[str, Any]) -> dict[str, Any]:
    from lpld_pipeline import load_synthesized, synthesize

    t0 = time.perf_counter()
    cfg = _synthesis_recipe(task["squeeze"], task["mode"], task["seed"], task["iterations"], task["out"])
    synthesize(cfg)
    seconds = time.perf_counter() - t0
    result = load_synthesized(task["out"])
    measured = _measure_set(task["squeeze"], result.images, result.labels)
    if task.get("discard"):
        shutil.rmtree(task["out"], ignore_errors=True)
    return {**task, "seconds": round(seconds, 1), **measured}


def _real_task(task: dict[str, Any]) -> dict[str, Any]:
    """Random real training images, ``ipc`` per class, saved as a synthesize output directory."""
    from lpld_pipeline.data import load_digits_images

    images, labels = load_digits_images(task["image_size"], "train")
    rng = np.random.default_rng([task["seed"], 7])
    classes = int(labels.max()) + 1
    picked = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), task["ipc"], replace=False) for c in range(classes)]
    )
    out = Path(task["out"])
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / "images.npz",
        images=images[picked],
        labels=labels[picked],
        indices=np.tile(np.arange(task["ipc"]), classes),
        class_names=json.dumps([str(i) for i in range(classes)]),
    )
    return {**task, "seconds": 0.0, **_measure_set(task["squeeze"], images[picked], labels[picked])}


def _stores_task(task: dict[str, Any]) -> dict[str, Any]:
    """The 1x store of one image set and run, and every store derived from it."""
    import lpldstore
    from lpld_pipeline import RELABEL_PRESETS, relabel

    root = Path(task["root"])
    full = root / "x1.zarr"
    t0 = time.perf_counter()
    relabel(
        dataclasses.replace(
            RELABEL_PRESETS["demo"],
            squeeze_dir=task["squeeze"],
            synth_dir=task["images"],
            out=str(full),
            epochs=task["epochs"],
            ratio=1.0,
            aug_seed=task["run"],
            plan_seed=42 + task["run"],
            progress=False,
        )
    )
    stores: dict[str, str] = {"prefix/1": str(full)}
    for ratio in task["ratios"]:
        if ratio != 1:
            stores[f"prefix/{ratio}"] = str(lpldstore.prune(full, root / f"x{ratio}.zarr", ratio=ratio))
    r = task["prune_ratio"]
    if task["derived"]:
        stores[f"random/{r}"] = str(
            lpldstore.prune(full, root / f"random{r}.zarr", ratio=r, strategy="random")
        )
        for metric, keep in task["metrics"]:
            path = root / f"{metric}-{keep}{r}.zarr"
            stores[f"{metric}-{keep}/{r}"] = str(
                lpldstore.prune(full, path, ratio=r, metric=metric, keep=keep)
            )
        base = stores.get(f"prefix/{r}") or str(lpldstore.prune(full, root / f"x{r}.zarr", ratio=r))
        stores[f"prefix/{r}"] = base
        for name, params, label in task["codecs"]:
            codec = lpldstore.CodecConfig(name=name, params=params)
            stores[f"codec {label}/{r}"] = str(
                lpldstore.recode(base, root / f"{label.replace(' ', '')}.zarr", codec=codec)
            )
    info: dict[str, Any] = {}
    for key, where in stores.items():
        with lpldstore.open_store(where) as store:
            sizes = lpldstore.storage_bytes(store)
            plan = store.plan
            info[key] = {
                "path": where,
                "entries": plan.num_kept,
                "planned": plan.total_entries,
                "actual_ratio": plan.actual_ratio,
                "logits_bytes_per_entry": sizes["logits"] / plan.num_kept,
                "label_bytes": sizes["total"] - sizes["images"],
                "codec": store.codec.codec(store.dataset.num_classes).label(),
            }
    return {**task, "stores": info, "seconds": round(time.perf_counter() - t0, 1)}


def _train_task(task: dict[str, Any]) -> dict[str, Any]:
    from lpld_pipeline import TRAIN_PRESETS, train

    t0 = time.perf_counter()
    result = train(
        dataclasses.replace(
            TRAIN_PRESETS["demo"],
            store=task["store"],
            out=task["out"],
            epochs=task["epochs"],
            val_interval=task["epochs"],
            policy=task["policy"],
            temperature=task["temperature"],
            seed=task["student_seed"],
            loader_seed=task["student_seed"],
            progress=False,
        )
    )
    shutil.rmtree(task["out"], ignore_errors=True)  # checkpoints: not needed once the accuracy is known
    return {**task, "top1": result.top1, "steps": result.steps, "seconds": round(time.perf_counter() - t0, 1)}


# -- statistics -------------------------------------------------------------------------------------


def cell_summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean, standard deviation and the 95 % t-interval of the mean over runs."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else float("nan")
    return {
        "n": n,
        "mean": float(x.mean()),
        "std": std,
        "ci95": [float(x.mean()) - half, float(x.mean()) + half],
    }


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Mean of ``a - b`` over runs, its 95 % t-interval and the two-sided paired t-test p-value."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    std = float(d.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else float("nan")
    if n < 2:
        p = float("nan")
    elif std == 0.0:
        p = 1.0 if d.mean() == 0 else 0.0
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
    return {
        "n": n,
        "difference": float(d.mean()),
        "ci95": [float(d.mean()) - half, float(d.mean()) + half],
        "p": p,
    }


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN)."""
    finite = [(p, i) for i, p in enumerate(pvalues) if not math.isnan(p)]
    adjusted = [float("nan")] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(finite)):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[i] = running
    return adjusted


def verdict(test: dict[str, Any], expect: str) -> str:
    """``expect`` is ``>`` (the claim says a beats b), ``<`` or ``?`` (no direction claimed)."""
    p, diff = test["p_holm"], test["difference"]
    if math.isnan(p) or p >= ALPHA:
        return "not resolved"
    sign = ">" if diff > 0 else "<"
    if expect == "?":
        return f"difference ({'first' if sign == '>' else 'second'} higher)"
    return "supported" if sign == expect else "contradicted"


# -- the study --------------------------------------------------------------------------------------


def _pool(jobs: int) -> concurrent.futures.ProcessPoolExecutor:
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(1,),
    )


def _map(
    pool: concurrent.futures.Executor,
    fn: Callable[[dict[str, Any]], dict[str, Any]],
    tasks: list[dict[str, Any]],
    what: str,
) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    out: list[dict[str, Any]] = []
    futures = [pool.submit(fn, t) for t in tasks]
    for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
        out.append(future.result())
        if done % max(1, len(tasks) // 10) == 0 or done == len(tasks):
            print(f"  {what}: {done}/{len(tasks)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def _squeeze(work: Path, setting: Setting) -> dict[str, Any]:
    import torch

    from lpld_pipeline import SQUEEZE_PRESETS, DataConfig, load_teacher_checkpoint, squeeze
    from lpld_pipeline.artifacts import read_record
    from lpld_pipeline.data import build_dataset
    from lpld_pipeline.views import training_views

    base = SQUEEZE_PRESETS["demo"]
    data = dataclasses.replace(base.data, image_size=setting.image_size)
    cfg = dataclasses.replace(base, data=data, out=str(work / "squeeze"), progress=False)
    t0 = time.perf_counter()
    squeeze(cfg)
    seconds = time.perf_counter() - t0
    record = read_record(cfg.out, "squeeze") or {}
    teacher = load_teacher_checkpoint(work / "squeeze" / "teacher.pt")
    val = build_dataset(DataConfig(name="digits", image_size=setting.image_size), "val")
    x = torch.stack([val[i][0] for i in range(len(val))])  # type: ignore[arg-type]
    y = torch.tensor([val[i][1] for i in range(len(val))])  # type: ignore[arg-type]
    views = training_views(data, seed=999)
    with torch.no_grad():
        on_views = [float((teacher(views(x, d, 0)).argmax(1) == y).float().mean()) for d in range(4)]
    return {
        "config": record.get("config"),
        "val_top1": record.get("teacher_val_accuracy"),
        "val_top1_on_relabel_views": float(np.mean(on_views)),
        "seconds": round(seconds, 1),
    }


def run_study(work: Path, setting: Setting, jobs: int) -> dict[str, Any]:
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    print("squeeze ...", flush=True)
    teacher = _squeeze(work, setting)
    timing["squeeze"] = teacher["seconds"]
    squeeze_dir = str(work / "squeeze")
    runs = range(setting.runs)
    with _pool(jobs) as pool:
        # Image sets, and the convergence sweep (extra syntheses of run 0 at other iteration counts).
        t0 = time.perf_counter()
        tasks = [
            {
                "squeeze": squeeze_dir,
                "mode": m,
                "seed": r,
                "iterations": setting.iterations,
                "run": r,
                "out": str(work / f"images-{m}-r{r}"),
            }
            for r in runs
            for m in MODES
        ]
        tasks += [
            {
                "squeeze": squeeze_dir,
                "mode": m,
                "seed": 0,
                "iterations": it,
                "run": 0,
                "sweep": True,
                "discard": True,
                "out": str(work / f"sweep-{m}-{it}"),
            }
            for m, its in setting.sweep.items()
            for it in its
        ]
        sets = _map(pool, _synthesize_task, tasks, "synthesis")
        if setting.real:
            real = [
                {
                    "squeeze": squeeze_dir,
                    "mode": "real",
                    "seed": r,
                    "run": r,
                    "ipc": 10,
                    "image_size": setting.image_size,
                    "out": str(work / f"images-real-r{r}"),
                }
                for r in runs
            ]
            sets += _map(pool, _real_task, real, "real subsets")
        timing["synthesis"] = round(time.perf_counter() - t0, 1)

        t0 = time.perf_counter()
        sources = [*MODES, "real"] if setting.real else list(MODES)
        store_tasks = [
            {
                "squeeze": squeeze_dir,
                "images": str(work / f"images-{s}-r{r}"),
                "root": str(work / f"stores-{s}-r{r}"),
                "source": s,
                "run": r,
                "epochs": setting.epochs,
                "ratios": setting.ratios,
                "prune_ratio": setting.prune_ratio,
                "derived": s == "class",
                "metrics": [METRICS[i] for i in setting.metrics],
                "codecs": [CODECS[i] for i in setting.codecs],
            }
            for s in sources
            for r in runs
        ]
        built = _map(pool, _stores_task, store_tasks, "stores")
        timing["relabel_and_derive"] = round(time.perf_counter() - t0, 1)
        stores = {(b["source"], b["run"]): b["stores"] for b in built}

        t0 = time.perf_counter()
        train_tasks = _training_tasks(work, setting, stores)
        trained = _map(pool, _train_task, train_tasks, "students")
        timing["train"] = round(time.perf_counter() - t0, 1)
    timing["total"] = round(time.perf_counter() - t_start, 1)
    return {
        "teacher": teacher,
        "image_sets": sorted(
            sets, key=lambda s: (s["mode"], bool(s.get("sweep")), s["run"], s.get("iterations", 0))
        ),
        "stores": {f"{s}/r{r}": v for (s, r), v in sorted(stores.items())},
        "trainings": sorted(trained, key=lambda t: (t["cell"], t["run"])),
        "seconds": timing,
        "train_steps": int(sum(t["steps"] for t in trained)),
    }


def _training_tasks(
    work: Path, setting: Setting, stores: dict[tuple[str, int], dict[str, Any]]
) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []

    def add(
        cell: str,
        source: str,
        run: int,
        key: str,
        policy: str = "ilp",
        temperature: float = 20.0,
        student: int | None = None,
    ) -> None:
        seed = 1000 + run if student is None else student
        tasks.append(
            {
                "cell": cell,
                "source": source,
                "run": run,
                "store_key": key,
                "store": stores[(source, run)][key]["path"],
                "policy": policy,
                "temperature": temperature,
                "student_seed": seed,
                "synthesis_seed": run,
                "epochs": setting.epochs,
                "out": str(work / "train" / f"{cell.replace('/', '_')}-r{run}-s{seed}"),
            }
        )

    r40 = setting.prune_ratio
    for run in range(setting.runs):
        for source in (*MODES, "real") if setting.real else MODES:
            for ratio in setting.ratios:
                add(f"{source}/ilp/{ratio}x", source, run, f"prefix/{ratio}")
        for ratio in setting.policy_ratios:
            for policy in ("epoch", "order"):
                add(f"class/{policy}/{ratio}x", "class", run, f"prefix/{ratio}", policy=policy)
        add(f"class/ilp/{r40}x/random", "class", run, f"random/{r40}")
        for i in setting.metrics:
            metric, keep = METRICS[i]
            add(f"class/ilp/{r40}x/{metric}-{keep}", "class", run, f"{metric}-{keep}/{r40}")
        for i in setting.codecs:
            label = CODECS[i][2]
            add(f"class/ilp/{r40}x/codec {label}", "class", run, f"codec {label}/{r40}")
        if setting.temperature_check:
            add(f"class/ilp/{r40}x/T4", "class", run, f"prefix/{r40}", temperature=4.0)
        # Student seed alone: run 0's store, another student seed per run.
        add(f"class/ilp/{r40}x/student-seed-only", "class", 0, f"prefix/{r40}", student=2000 + run)
    return tasks


# -- analysis ---------------------------------------------------------------------------------------


def analyse(study: dict[str, Any], setting: Setting) -> dict[str, Any]:
    by_cell: dict[str, dict[int, float]] = {}
    for t in study["trainings"]:
        by_cell.setdefault(t["cell"], {})[
            t["run"] if "student-seed-only" not in t["cell"] else t["student_seed"]
        ] = t["top1"]
    cells = {
        cell: {"runs": dict(sorted(v.items())), **cell_summary(list(dict(sorted(v.items())).values()))}
        for cell, v in by_cell.items()
    }
    for cell, info in cells.items():
        source, _, rest = cell.partition("/")
        ratio = int(rest.split("/")[1].rstrip("x"))
        store_key = next(t["store_key"] for t in study["trainings"] if t["cell"] == cell)
        s = study["stores"][f"{source}/r0"][store_key]
        info["true_ratio"] = s["actual_ratio"]
        info["entries"] = s["entries"]
        info["label_reuse"] = setting.epochs * (s["planned"] // setting.epochs) / s["entries"]
        info["logits_bytes_per_entry"] = s["logits_bytes_per_entry"]
        info["codec"] = s["codec"]
        info["nominal_ratio"] = ratio

    def runs(cell: str) -> list[float]:
        return [cells[cell]["runs"][r] for r in range(setting.runs)]

    def test(a: str, b: str, expect: str, label: str) -> dict[str, Any]:
        return {
            "a": a,
            "b": b,
            "expect": f"a {expect} b" if expect != "?" else "no direction",
            "label": label,
            "_expect": expect,
            **paired_test(runs(a), runs(b)),
        }

    r40 = setting.prune_ratio
    pruned = [r for r in setting.ratios if r != 1]
    claims: dict[str, dict[str, Any]] = {}

    def drops(source: str, ratio: int) -> list[float]:
        return [
            cells[f"{source}/ilp/1x"]["runs"][r] - cells[f"{source}/ilp/{ratio}x"]["runs"][r]
            for r in range(setting.runs)
        ]

    family: list[dict[str, Any]] = []
    for ratio in pruned:
        d = {
            "a": f"drop class 1x->{ratio}x",
            "b": f"drop mixed 1x->{ratio}x",
            "expect": "a < b",
            "_expect": "<",
            "label": f"class-wise students lose less than cross-class ones from 1x to {ratio}x",
            **paired_test(drops("class", ratio), drops("mixed", ratio)),
        }
        family.append(d)
    for ratio in setting.ratios:
        family.append(
            test(
                f"class/ilp/{ratio}x", f"mixed/ilp/{ratio}x", ">", f"class-wise beats cross-class at {ratio}x"
            )
        )
    claims["a"] = {
        "claim": "class-wise (LPLD) vs cross-class (SRe2L) images across true ratios",
        "tests": family,
    }
    claims["b"] = {
        "claim": "class statistics (+CS) vs global statistics (+C), same class batches",
        "tests": [
            test(f"class/ilp/{r}x", f"class_global/ilp/{r}x", ">", f"+CS beats +C at {r}x")
            for r in setting.ratios
        ],
    }
    fam = []
    for ratio in setting.policy_ratios:
        fam.append(
            test(f"class/ilp/{ratio}x", f"class/epoch/{ratio}x", ">", f"ILP beats the epoch pool at {ratio}x")
        )
        fam.append(
            test(f"class/ilp/{ratio}x", f"class/order/{ratio}x", ">", f"ILP beats order replay at {ratio}x")
        )
    claims["c"] = {
        "claim": "ILP vs the epoch pool vs the official order replay (class-wise images)",
        "tests": fam,
    }
    fam = [
        test(
            f"class/ilp/{r40}x/random",
            f"class/ilp/{r40}x",
            "?",
            f"random vs prefix (LPLD's) selection at {r40}x",
        )
    ]
    for i in setting.metrics:
        metric, keep = METRICS[i]
        fam.append(
            test(
                f"class/ilp/{r40}x/{metric}-{keep}",
                f"class/ilp/{r40}x/random",
                "?",
                f"{metric} ({keep}) vs random at {r40}x",
            )
        )
    claims["d"] = {
        "claim": f"random vs metric pruning of stored logits at {r40}x (class-wise images)",
        "tests": fam,
    }
    claims["e"] = {
        "claim": f"student accuracy per logit codec at {r40}x vs float16 (class-wise images)",
        "tests": [
            test(
                f"class/ilp/{r40}x/codec {CODECS[i][2]}",
                f"class/ilp/{r40}x",
                "?",
                f"{CODECS[i][2]} vs float16",
            )
            for i in setting.codecs
        ],
    }
    if setting.temperature_check:
        claims["T"] = {
            "claim": f"temperature 4 vs 20 at {r40}x (class-wise images)",
            "tests": [test(f"class/ilp/{r40}x/T4", f"class/ilp/{r40}x", "?", "T=4 vs T=20")],
        }
    claims["s"] = _synthesis_claims(study, setting)
    for claim in claims.values():
        adjusted = holm([t["p"] for t in claim["tests"]])
        for t, p in zip(claim["tests"], adjusted, strict=True):
            t["p_holm"] = p
            t["verdict"] = verdict(t, t.pop("_expect"))
    noise = {
        "student_seed_only": cells[f"class/ilp/{r40}x/student-seed-only"]["std"],
        "synthesis_and_student_seed": cells[f"class/ilp/{r40}x"]["std"],
    }
    return {"cells": cells, "claims": claims, "noise_std": noise, "convergence": _convergence(study)}


def _synthesis_claims(study: dict[str, Any], setting: Setting) -> dict[str, Any]:
    """What the image sets themselves show, paired by run: matching and within-class diversity."""
    sets = {(s["mode"], s["run"]): s for s in study["image_sets"] if not s.get("sweep")}
    runs = range(setting.runs)

    def values(mode: str, field: str) -> list[float]:
        if field == "cosine":
            return [sets[(mode, r)]["within_class_cosine"] for r in runs]
        return [sets[(mode, r)]["bn_distance_views"][field] for r in runs]

    def row(a: list[float], b: list[float], expect: str, label: str, what: str) -> dict[str, Any]:
        return {
            "a": what,
            "b": "",
            "expect": expect,
            "_expect": expect[2],
            "label": label,
            "scale": 1,  # BN distances and cosines as they are, not as accuracy points
            **paired_test(a, b),
        }

    tests = [
        row(values("class", "own_mean"), values("class", "global_mean"), "a < b",
            "class-wise sets sit closer to their class's statistics than to the global ones",
            "class: own vs global BN distance"),
        row(values("class", "own_mean"), values("mixed", "own_mean"), "a < b",
            "class-wise sets sit closer to their class's statistics than cross-class sets",
            "own-class BN distance: class vs mixed"),
        row(values("class", "cosine"), values("mixed", "cosine"), "a < b",
            "class-wise sets are more diverse within a class than cross-class sets (lower cosine)",
            "within-class cosine: class vs mixed"),
        row(values("class", "cosine"), values("class_global", "cosine"), "a < b",
            "class statistics make sets more diverse within a class than global ones (lower cosine)",
            "within-class cosine: class vs class_global"),
    ]  # fmt: skip
    return {"claim": "the synthetic sets: matching their statistics and within-class diversity (LPLD Table 1)",
            "tests": tests}  # fmt: skip


def _convergence(study: dict[str, Any]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for s in study["image_sets"]:
        key = f"{s['mode']}" + (f" sweep {s['iterations']} it" if s.get("sweep") else "")
        rows.setdefault(key, []).append(
            {
                "run": s["run"],
                "iterations": s.get("iterations"),
                "own": s["bn_distance_views"]["own_mean"],
                "global": s["bn_distance_views"]["global_mean"],
                "own_plain": s["bn_distance_plain"]["own_mean"],
                "global_plain": s["bn_distance_plain"]["global_mean"],
                "within_class_cosine": s["within_class_cosine"],
                "seconds": s["seconds"],
            }
        )
    table = {}
    for key, items in rows.items():
        table[key] = {
            "iterations": items[0]["iterations"],
            "sets": len(items),
            **{
                f: float(np.mean([i[f] for i in items]))
                for f in ("own", "global", "own_plain", "global_plain", "within_class_cosine")
            },
        }
    return table


# -- output -----------------------------------------------------------------------------------------


def _print_report(record: dict[str, Any]) -> None:
    a = record["analysis"]
    print(
        f"\nteacher: {record['study']['teacher']['val_top1']:.1%} on clean held-out digits, "
        f"{record['study']['teacher']['val_top1_on_relabel_views']:.1%} on relabel's views"
    )
    print("\nconvergence (mean BN distance over classes, under the training views; lower = closer):")
    print(f"{'set':<28}{'iters':>7}{'own':>9}{'global':>9}{'cos':>8}")
    for key, row in a["convergence"].items():
        print(
            f"{key:<28}{row['iterations'] or '':>7}{row['own']:>9.2f}{row['global']:>9.2f}{row['within_class_cosine']:>8.3f}"
        )
    print("\ncells (top-1 %, mean [95 % CI] over runs):")
    for cell, c in sorted(a["cells"].items()):
        print(
            f"  {cell:<38} {100 * c['mean']:5.1f} [{100 * c['ci95'][0]:5.1f}, {100 * c['ci95'][1]:5.1f}]  "
            f"n={c['n']} true ratio {c['true_ratio']:.1f}"
        )
    print("\nclaims:")
    for name, claim in a["claims"].items():
        print(f"({name}) {claim['claim']}")
        for t in claim["tests"]:
            k = t.get("scale", 100)  # accuracy differences in points
            print(
                f"    {t['label']:<62} diff {k * t['difference']:+7.3g} "
                f"[{k * t['ci95'][0]:+7.3g}, {k * t['ci95'][1]:+7.3g}]  p={t['p']:.3g} (Holm {t['p_holm']:.3g})  {t['verdict']}"
            )
    print(f"\nnoise (std of top-1): {a['noise_std']}")
    print(f"seconds: {record['study']['seconds']}")


def _plot(record: dict[str, Any], path: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setting, cells = record["setting"], record["analysis"]["cells"]
    ratios = setting["ratios"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    ax = axes[0][0]
    for source in SOURCES:
        keys = [f"{source}/ilp/{r}x" for r in ratios]
        if not all(k in cells for k in keys):
            continue
        xs = [cells[k]["true_ratio"] for k in keys]
        means = [100 * cells[k]["mean"] for k in keys]
        err = [
            [100 * (cells[k]["mean"] - cells[k]["ci95"][0]) for k in keys],
            [100 * (cells[k]["ci95"][1] - cells[k]["mean"]) for k in keys],
        ]
        ax.errorbar(xs, means, yerr=err, marker="o", capsize=3, label=source)
    ax.set_xscale("log")
    ax.set_xlabel("true label pruning ratio (planned / kept entries)")
    ax.set_ylabel("student top-1 (%), mean and 95 % CI")
    ax.set_title("(a, b) images x ratio, ILP")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[0][1]
    for shift, policy in enumerate(("ilp", "epoch", "order")):
        keys = [f"class/{policy}/{r}x" for r in setting["policy_ratios"]]
        if all(k in cells for k in keys):
            # Side by side (x 1.06 per policy) rather than on top of each other.
            ax.errorbar(
                [cells[k]["true_ratio"] * 1.06**shift for k in keys],
                [100 * cells[k]["mean"] for k in keys],
                yerr=[100 * (cells[k]["ci95"][1] - cells[k]["mean"]) for k in keys],
                marker="o",
                capsize=3,
                label=policy,
            )
    ax.set_xscale("log")
    ax.set_xlabel("true ratio")
    ax.set_title("(c) pool policy, class-wise images")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1][0]
    r40 = setting["prune_ratio"]
    keys = [f"class/ilp/{r40}x", f"class/ilp/{r40}x/random"] + [
        f"class/ilp/{r40}x/{m}-{k}" for m, k in (METRICS[i] for i in setting["metrics"])
    ]
    labels = ["prefix", "random"] + [f"{m}\n{k}" for m, k in (METRICS[i] for i in setting["metrics"])]
    ax.bar(
        range(len(keys)),
        [100 * cells[k]["mean"] for k in keys],
        yerr=[100 * (cells[k]["ci95"][1] - cells[k]["mean"]) for k in keys],
        capsize=3,
    )
    ax.set_xticks(range(len(keys)), labels, fontsize=8)
    ax.set_title(f"(d) which {r40}x entries are kept")
    ax.grid(alpha=0.3, axis="y")
    ax = axes[1][1]
    _frontier(ax, record)
    fig.suptitle(
        f"LPLD's claims on digits ({setting['image_size']} px, IPC 10), {setting['runs']} runs per cell"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    _frontier(ax, record)
    frontier = path.with_name(path.stem + "_codecs.png")
    fig.tight_layout()
    fig.savefig(frontier, dpi=110)
    plt.close(fig)
    return [str(path), str(frontier)]


def _frontier(ax: Any, record: dict[str, Any]) -> None:
    setting, cells = record["setting"], record["analysis"]["cells"]
    r40 = setting["prune_ratio"]
    keys = [(f"class/ilp/{r40}x", "float16")] + [
        (f"class/ilp/{r40}x/codec {CODECS[i][2]}", CODECS[i][2]) for i in setting["codecs"]
    ]
    for key, label in keys:
        c = cells[key]
        ax.errorbar(
            [c["logits_bytes_per_entry"]],
            [100 * c["mean"]],
            yerr=[[100 * (c["mean"] - c["ci95"][0])], [100 * (c["ci95"][1] - c["mean"])]],
            marker="o",
            capsize=3,
        )
        ax.annotate(
            label,
            (c["logits_bytes_per_entry"], 100 * c["mean"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("logits bytes per stored entry (10 rows x 10 classes)")
    ax.set_ylabel("student top-1 (%)")
    ax.set_title(f"(e) bytes vs accuracy at {r40}x")
    ax.grid(alpha=0.3)


def markdown(record: dict[str, Any]) -> str:
    """The claims as Markdown rows (for docs/pipeline.md), from a results record."""
    lines = [
        "| claim | test | difference (accuracy points; (s): distance, cosine), 95 % CI | p (Holm) | verdict |",
        "|---|---|---|---|---|",
    ]
    for name, claim in record["analysis"]["claims"].items():
        for t in claim["tests"]:
            k = t.get("scale", 100)
            lo, hi = (k * v for v in t["ci95"])
            lines.append(
                f"| ({name}) | {t['label']} | {k * t['difference']:+.3g} [{lo:+.3g}, {hi:+.3g}] "
                f"| {t['p']:.2g} ({t['p_holm']:.2g}) | {t['verdict']} |"
            )
    lines += ["", "| cell | top-1 % (95 % CI) | true ratio | entries |", "|---|---|---|---|"]
    for cell, c in sorted(record["analysis"]["cells"].items()):
        lines.append(
            f"| {cell} | {100 * c['mean']:.1f} ({100 * c['ci95'][0]:.1f}-{100 * c['ci95'][1]:.1f}) "
            f"| {c['true_ratio']:.1f} | {c['entries']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 runs, 20 epochs, 250 iterations, fewer cells")
    parser.add_argument("--runs", type=int, default=None, help="replicates per cell (full: 6)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="student epochs = relabel epochs (full: 100)"
    )
    parser.add_argument("--iterations", type=int, default=None, help="synthesis iterations (full: 2000)")
    parser.add_argument("--image-size", type=int, default=None, help="digits image size (default 16)")
    parser.add_argument(
        "--jobs", type=int, default=2, help="worker processes, one torch thread each (default 2)"
    )
    parser.add_argument(
        "--work", default=None, help="directory for intermediate outputs (default: a temp dir)"
    )
    parser.add_argument("--out", default=None, help="JSON path (default results/accuracy_study[_quick].json)")
    parser.add_argument(
        "--note", default="", help="a note recorded in the JSON (e.g. what else ran on the machine)"
    )
    parser.add_argument(
        "--report",
        default=None,
        metavar="JSON",
        help="print the report and Markdown of a results file; run nothing",
    )
    parser.add_argument(
        "--reanalyse",
        action="store_true",
        help="with --report: recompute the analysis and plots, rewrite the file",
    )
    args = parser.parse_args(argv)
    if args.report:
        record = json.loads(Path(args.report).read_text(encoding="utf-8"))
        if args.reanalyse:
            # The analysis is a pure function of the raw results kept in the record.
            setting = Setting(**{k: v for k, v in record["setting"].items() if k != "name"})
            setting = dataclasses.replace(
                setting, ratios=tuple(setting.ratios), policy_ratios=tuple(setting.policy_ratios)
            )
            record["analysis"] = analyse(record["study"], setting)
            record["reanalysed"] = (
                "python benchmarks/accuracy.py --report JSON --reanalyse (raw results unchanged)"
            )
            record["plots"] = _plot(record, Path(args.report).with_suffix(".png"))
            Path(args.report).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        _print_report(record)
        print("\n" + markdown(record))
        return
    setting = QUICK if args.quick else FULL
    overrides = {
        k: v
        for k, v in (
            ("runs", args.runs),
            ("epochs", args.epochs),
            ("iterations", args.iterations),
            ("image_size", args.image_size),
        )
        if v is not None
    }
    setting = dataclasses.replace(setting, **overrides)
    if setting.runs < 2:
        parser.error("--runs must be at least 2 for intervals and tests")
    name = "accuracy_study_quick" if args.quick else "accuracy_study"
    out_json = Path(args.out) if args.out else RESULTS / f"{name}.json"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lpld-study-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        study = run_study(work, setting, args.jobs)
    wall = time.perf_counter() - t0
    record = {
        "benchmark": "accuracy_study",
        "command": "python benchmarks/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "setting": {**dataclasses.asdict(setting), "name": "quick" if args.quick else "full"},
        "dataset": f"digits (sklearn) at {setting.image_size} px, 10 classes, IPC 10 (100 images); "
        "validation: the 360 held-out real digits",
        "seeds": "run r: synthesis seed r (real subset r), relabel aug_seed r, plan_seed 42 + r, "
        "student and pool seed 1000 + r; student-seed-only cell: run 0's store, student seed 2000 + r",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "jobs": args.jobs,
            "threads_per_job": 1,
            "wall_seconds": round(wall, 1),
            "note": args.note,
        },
        "study": study,
        "analysis": analyse(study, setting),
    }
    RESULTS.mkdir(exist_ok=True)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    record["plots"] = _plot(record, out_json.with_suffix(".png"))
    out_json.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    _print_report(record)
    print(f"\nwrote {out_json} and {', '.join(record['plots'])} in {wall:.0f} s")


if __name__ == "__main__":
    main()
