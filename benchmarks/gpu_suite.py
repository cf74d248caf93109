"""The H200 suite: every GPU figure of issue 16 in one command and one JSON file.

Sections (each one's failure is recorded and the suite goes on; a time budget skips what is left):

1. ``environment``: Python, torch, torchvision, zarr, numcodecs, numpy, lpldstore versions; the
   GPU (name, capability, memory), TF32 and cuDNN settings.
2. ``tests``: the CUDA-marked tests (``pytest -m gpu``) and the relabel and end-to-end pipeline
   tests, run where the pipeline's ``device="auto"`` resolves to the GPU.
3. ``syncs``: host-device synchronizations per step (``torch.cuda.set_sync_debug_mode("warn")``,
   counted warnings) of synthesis, the loader's device path, training and relabel.
4. ``synthesis``: ResNet-18 (random weights), 224 px, 1,000 classes, IPC 10 and 50, bf16 and
   fp32: class-packed batches against one class per batch, image-iterations/s (goal: 10x).
5. ``relabel``: entries/s of the teacher with the writer in the loop (the pipeline's
   ``relabel_entries`` with a plain ``StoreWriter``; and a loop handing GPU logits to a
   ``BackgroundWriter``) against bare teacher inference on the same batches (goal: 0.9x).
6. ``loader``: the loader's device path at the ImageNet-1K IPC10 shape (10,000 images of 224 px on
   the GPU, batch 1,024) against a torchvision v2 floor on the GPU with the same parameters
   (``benchmarks/loader.py``; goal: at most 5% overhead).
7. ``training``: student (ResNet-18) steps/s with the device loader against pre-made tensors on
   the GPU, the same ``DistillationStep`` (goal: 0.9x).
8. ``estimate``: ImageNet-1K IPC10 at 40x end to end (squeeze excluded: synthesis 4,000
   iterations + relabel + 300 student epochs) on one such GPU, from the figures above (goal:
   under 2 h).
9. ``pretrained``: whether the machine holds a cached pretrained ImageNet classifier (torch hub,
   Hugging Face); if so, codec fidelity at 1,000 classes on its logits of real photographs.

    python benchmarks/gpu_suite.py                          # on the GPU machine, at most 8 minutes
    python benchmarks/gpu_suite.py --dry-run                # CPU, tiny sizes, well under a minute
    python benchmarks/gpu_suite.py --out $OUT/gpu_suite.json

On the device tool (docs/loader.md, "The H200 suite"): ``bash scripts/device_wheels.sh`` here
once, then one call that carries ``.whl`` and installs zarr, numcodecs, donfig and google-crc32c
before running this file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import importlib
import importlib.metadata
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

if not __package__:  # run as `python benchmarks/gpu_suite.py`: the repository root holds `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
GOALS = {
    "synthesis_packed_over_one_class": 10.0,
    "relabel_with_writer_over_bare": 0.9,
    "loader_device_over_floor": 0.95,
    "training_device_loader_over_tensors": 0.9,
    "in1k_ipc10_40x_hours": 2.0,
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every size the suite uses: the real ones, or tiny ones for the CPU dry run."""

    image: int
    classes: int
    synth_ipcs: tuple[int, ...]
    synth_packed_images: int
    synth_iterations: int
    synth_warmup: int
    relabel_images: int
    relabel_batch: int
    relabel_epochs: int
    loader_images: int
    loader_batch: int
    loader_steps: int
    loader_repeats: int
    train_batch: int
    train_steps: int
    train_repeats: int
    pretrained_rows: int


REAL = Sizes(
    image=224,
    classes=1000,
    synth_ipcs=(10, 50),
    synth_packed_images=1000,
    synth_iterations=12,
    synth_warmup=4,
    relabel_images=1280,
    relabel_batch=128,
    relabel_epochs=8,
    loader_images=10_000,
    loader_batch=1024,
    loader_steps=8,
    loader_repeats=5,
    train_batch=256,
    train_steps=30,
    train_repeats=3,
    pretrained_rows=2048,
)
DRY = Sizes(
    image=32,
    classes=10,
    synth_ipcs=(2,),
    synth_packed_images=6,
    synth_iterations=2,
    synth_warmup=1,
    relabel_images=32,
    relabel_batch=8,
    relabel_epochs=2,
    loader_images=48,
    loader_batch=16,
    loader_steps=2,
    loader_repeats=1,
    train_batch=8,
    train_steps=2,
    train_repeats=1,
    pretrained_rows=32,
)
# ImageNet-1K IPC10 at 40x (issue 16): what the estimate extrapolates to.
IN1K_IMAGES, IN1K_CLASSES, SYNTH_ITERATIONS, EPOCHS, RATIO, RELABEL_BATCH = 10_000, 1000, 4000, 300, 40, 128


class Suite:
    """Runs sections in order, records each one's result or error, and keeps to the time budget."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.result: dict[str, Any] = {"sections": {}}

    def run(self, name: str, fn: Callable[[], Any], *, cost_s: float = 0.0) -> Any:
        elapsed = time.perf_counter() - self.start
        if elapsed + cost_s > self.budget_s:
            self.result["sections"][name] = {
                "skipped": f"time budget: {elapsed:.0f} s of {self.budget_s:.0f} s used"
            }
            print(f"[{name}] skipped (time budget)", flush=True)
            return None
        t = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - a failing section is a result; the suite goes on
            self.result["sections"][name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-4000:],
                "seconds": time.perf_counter() - t,
            }
            print(f"[{name}] FAILED: {type(exc).__name__}: {exc}", flush=True)
            return None
        self.result["sections"][name] = {"seconds": time.perf_counter() - t, **(out or {})}
        print(f"[{name}] done in {time.perf_counter() - t:.1f} s", flush=True)
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- 1. environment -------------------------------------------------------------------------------


def environment(device: torch.device) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in (
        "torch",
        "torchvision",
        "zarr",
        "numcodecs",
        "numpy",
        "donfig",
        "google-crc32c",
        "scikit-learn",
    ):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    import lpldstore

    out: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": versions | {"lpldstore": lpldstore.__version__},
        "device": str(device),
        "tf32": {
            "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
        "cudnn": {
            "available": torch.backends.cudnn.is_available(),
            "enabled": torch.backends.cudnn.enabled,
            "benchmark": torch.backends.cudnn.benchmark,
            "deterministic": torch.backends.cudnn.deterministic,
            "version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        },
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": props.total_memory / 2**30,
            "multiprocessors": props.multi_processor_count,
            "cuda": torch.version.cuda,
        }
    return out


# -- 2. tests ---------------------------------------------------------------------------------------

PIPELINE_TESTS = ("tests/pipeline/test_pipeline_relabel.py", "tests/pipeline/test_pipeline_e2e.py")
# The files that hold tests marked gpu (tests/test_gpu_suite.py checks that no other file does).
GPU_TEST_FILES = (
    "tests/test_adapters.py",
    "tests/test_augment.py",
    "tests/test_loader.py",
    "tests/pipeline/test_pipeline_synthesis.py",
)


def run_tests(dry: bool, out_dir: Path) -> dict[str, Any]:
    """``pytest -m gpu`` and the relabel and end-to-end pipeline tests (there ``auto`` is the GPU)."""
    results: dict[str, Any] = {}
    runs = {"gpu_marked": ["-m", "gpu", *GPU_TEST_FILES], "pipeline_relabel_e2e": list(PIPELINE_TESTS)}
    for name, args in runs.items():
        report = out_dir / f"pytest_{name}.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *args]
        if dry:
            cmd.append("--collect-only")  # the dry run checks that they collect, not that a GPU passes them
        t = time.perf_counter()
        try:
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150, check=False)
        except subprocess.TimeoutExpired as exc:
            results[name] = {"timeout_s": 150, "tail": str(exc.stdout or "")[-2000:]}
            continue
        counts: dict[str, Any] = {"returncode": done.returncode, "seconds": time.perf_counter() - t}
        if report.exists() and not dry:
            suite = ET.parse(report).getroot()
            node = suite if suite.tag == "testsuite" else suite.find("testsuite")
            if node is not None:
                counts |= {k: int(node.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
                counts["failed"] = [
                    f"{case.get('classname')}::{case.get('name')}"
                    for case in node.iter("testcase")
                    if case.find("failure") is not None or case.find("error") is not None
                ]
        counts["tail"] = (done.stdout + done.stderr)[-2000:]
        results[name] = counts
    from lpld_pipeline import _dist

    results["auto_device_resolves_to"] = str(_dist.resolve_device("auto"))
    return results


# -- 3. syncs ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def count_syncs(device: torch.device) -> Iterator[list[int]]:
    """Count synchronizing CUDA calls (``set_sync_debug_mode("warn")``) inside the block: [count]."""
    counter = [0]
    if device.type != "cuda":
        counter[0] = -1  # not measurable off a GPU
        yield counter
        return
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counter
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    counter[0] = sum("synchroniz" in str(w.message) for w in seen)


def _per_step(count: int, steps: int) -> float | None:
    return None if count < 0 else count / steps


# -- 4. synthesis -----------------------------------------------------------------------------------


def synthesis(device: torch.device, sizes: Sizes, syncs: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.synthesis import _random_stats, _teacher
    from lpld_pipeline.config import SynthesisConfig
    from lpld_pipeline.synthesize import synthesize_images

    teacher = _teacher("resnet18", sizes.classes, small_stem=False)
    stats = _random_stats(teacher, sizes.image)
    rows: list[dict[str, Any]] = []
    for amp in ("bf16", "none"):
        for ipc in sizes.synth_ipcs:
            packed = max(1, min(sizes.classes, sizes.synth_packed_images // ipc))
            for groups in (1, packed):
                config = SynthesisConfig(
                    ipc=ipc,
                    iterations=sizes.synth_warmup + sizes.synth_iterations,
                    groups_per_batch=groups,
                    classes=tuple(range(groups)),
                    amp=amp,
                    channels_last=device.type == "cuda",
                    progress=False,
                )
                stamps: list[float] = []

                def tick(batch: int, iteration: int, stamps: list[float] = stamps) -> None:
                    if batch == 0:
                        _sync(device)
                        stamps.append(time.perf_counter())

                counted = amp == "bf16" and ipc == sizes.synth_ipcs[0] and groups > 1
                with count_syncs(device) if counted else contextlib.nullcontext([0]) as n:
                    synthesize_images(
                        teacher,
                        stats,
                        config,
                        image_size=sizes.image,
                        class_names=stats.class_names,
                        device=device,
                        callback=tick,
                    )
                if counted:
                    syncs["synthesis_per_iteration"] = _per_step(n[0], config.iterations)
                measured = stamps[sizes.synth_warmup - 1 :]
                seconds = statistics.median(b - a for a, b in itertools.pairwise(measured))
                images = groups * ipc
                rows.append(
                    {
                        "amp": amp,
                        "ipc": ipc,
                        "way": "one class per batch" if groups == 1 else "class-packed",
                        "batch_images": images,
                        "seconds_per_iteration": seconds,
                        "image_iterations_per_s": images / seconds,
                    }
                )
                print(f"   synthesis {rows[-1]}", flush=True)
    ratios = {}
    for amp in ("bf16", "none"):
        for ipc in sizes.synth_ipcs:
            one, packed_row = (
                next(r for r in rows if r["amp"] == amp and r["ipc"] == ipc and r["way"] == way)
                for way in ("one class per batch", "class-packed")
            )
            ratios[f"{amp} ipc{ipc}"] = packed_row["image_iterations_per_s"] / one["image_iterations_per_s"]
    return {"rows": rows, "packed_over_one_class": ratios, "goal": GOALS["synthesis_packed_over_one_class"]}


# -- 5. relabel -------------------------------------------------------------------------------------


def _relabel_template(root: Path, sizes: Sizes) -> Path:
    """An empty store of random images to relabel (copied for every run: creating is the slow part)."""
    import lpldstore

    n = sizes.relabel_images
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, sizes.image, sizes.image, 3), dtype=np.uint8)
    plan = lpldstore.PruningPlan(
        num_images=n, batch_size=sizes.relabel_batch, epochs=sizes.relabel_epochs, seed=0
    )
    path = root / "template.zarr"
    lpldstore.StoreWriter.create(
        path,
        plan=plan,
        images=images,
        labels=np.arange(n) % sizes.classes,
        dataset=lpldstore.DatasetInfo(
            name="suite", num_classes=sizes.classes, num_images=n, image_shape=(sizes.image, sizes.image, 3)
        ),
        relabel=lpldstore.RelabelConfig(output_size=(sizes.image, sizes.image), teacher="resnet18-random"),
    ).close()
    return path


@torch.no_grad()
def _teacher_loop(
    write: Callable[..., None] | None,
    pixels: torch.Tensor,
    todo: list[tuple[int, int]],
    writer: Any,
    teacher: torch.nn.Module,
    device: torch.device,
) -> None:
    """Draw, replay and run the teacher on each entry of ``todo``; hand GPU logits to ``write``."""
    import lpldstore
    from lpld_pipeline.relabel import autocast_dtype

    plan, cfg = writer.plan, writer.attrs.relabel
    hw = (pixels.shape[1], pixels.shape[2])
    dtype = autocast_dtype("auto", device)
    for epoch, batch in todo:
        idx = plan.batch_indices(epoch, batch)
        params = lpldstore.draw_params(cfg, hw, len(idx), epoch, batch)
        # The replay exactly as the pipeline's relabel_entries does it, so that only the write differs.
        x = lpldstore.apply_params(
            pixels[torch.from_numpy(idx).to(device)], params, cfg, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        )
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = teacher(x).float()
        if write is not None:
            write(epoch, batch, logits=logits, params=params)
    _sync(device)


def relabel(device: torch.device, sizes: Sizes, root: Path, syncs: dict[str, Any]) -> dict[str, Any]:
    import lpldstore
    from benchmarks.synthesis import _teacher
    from lpld_pipeline.relabel import relabel_entries

    teacher = _teacher("resnet18", sizes.classes, small_stem=False).to(device).eval()
    if device.type == "cuda":
        teacher.model.to(memory_format=torch.channels_last)
    names = ("bare teacher", "relabel_entries + StoreWriter", "GPU logits -> BackgroundWriter")
    rates: dict[str, list[float]] = {name: [] for name in names}
    template = _relabel_template(root, sizes)
    with lpldstore.open_store(template) as store:
        host = torch.from_numpy(store.images())
    pixels = host.to(device)
    entries = 0
    for rep in range(2):
        counted = rep == 1
        for name in names:
            path = root / f"run{rep}-{names.index(name)}.zarr"
            shutil.copytree(template, path)
            writer = lpldstore.StoreWriter.open(path)
            todo = writer.todo()
            entries = len(todo)
            _sync(device)
            t = time.perf_counter()
            with count_syncs(device) if counted else contextlib.nullcontext([0]) as n:
                if name == "bare teacher":  # the same batches, nothing written
                    _teacher_loop(None, pixels, todo, writer, teacher, device)
                    writer.close()
                elif (
                    name == "relabel_entries + StoreWriter"
                ):  # the pipeline's loop: D2H copy and write per entry
                    with writer:
                        relabel_entries(
                            writer, teacher, host, device=device, channels_last=device.type == "cuda"
                        )
                else:  # the copy to the host and the write overlap the teacher
                    with lpldstore.BackgroundWriter(writer) as background:
                        _teacher_loop(background.write, pixels, todo, writer, teacher, device)
            rates[name].append(entries / (time.perf_counter() - t))
            if counted:
                syncs[f"relabel_per_entry: {name}"] = _per_step(n[0], entries)
    medians = {k: statistics.median(v) for k, v in rates.items()}
    bare_rate = medians["bare teacher"]
    return {
        "entries": entries,
        "batch": sizes.relabel_batch,
        "entries_per_s": medians,
        "runs": rates,
        "with_writer_over_bare": {k: v / bare_rate for k, v in medians.items() if k != "bare teacher"},
        "goal": GOALS["relabel_with_writer_over_bare"],
    }


# -- 6. loader --------------------------------------------------------------------------------------


def loader(device: torch.device, sizes: Sizes, root: Path, syncs: dict[str, Any]) -> dict[str, Any]:
    from benchmarks import loader as bench
    from lpldstore import PoolLoader

    shape = bench.Shape(
        "in1k-ipc10" if sizes is REAL else "dry",
        images=sizes.loader_images,
        size=sizes.image,
        classes=sizes.classes,
        batch=sizes.loader_batch,
        epochs=3,
        steps=sizes.loader_steps,
    )
    result = bench.run_shape(shape, [0], sizes.loader_repeats, device, root)
    store = root / "pool.zarr"
    if store.exists():
        pool = PoolLoader(store, policy="ilp", seed=0, steps_per_epoch=shape.steps, device=device)
        for _ in pool:
            pass
        with count_syncs(device) as n:
            steps = sum(1 for _ in pool)
        syncs["loader_per_step"] = _per_step(n[0], steps)
    ratio = next(r["median_of_paired"] for r in result["ratios"] if r["ratio"] == "A/F")
    return {"result": result, "device_over_floor": ratio, "goal": GOALS["loader_device_over_floor"]}


# -- 7. training ------------------------------------------------------------------------------------


def training(device: torch.device, sizes: Sizes, root: Path, syncs: dict[str, Any]) -> dict[str, Any]:
    import lpldstore
    from benchmarks import loader as bench
    from lpld_pipeline.config import TrainConfig
    from lpld_pipeline.train import DistillationStep, build_student

    shape = bench.Shape(
        "train",
        images=max(sizes.train_batch * 4, 64),
        size=sizes.image,
        classes=sizes.classes,
        batch=sizes.train_batch,
        epochs=2,
        steps=sizes.train_steps,
    )
    store, _, _ = bench.build(root / "train", shape, peer_files=False)
    config = TrainConfig(store=str(store), model="resnet18", amp="auto", channels_last=device.type == "cuda")
    student: torch.nn.Module = build_student(config, shape.classes)
    student.to(device)
    if device.type == "cuda":
        student.to(memory_format=torch.channels_last)
    step = DistillationStep(student, torch.optim.AdamW(student.parameters(), lr=1e-3), config, device)
    pool = lpldstore.PoolLoader(store, policy="ilp", seed=0, steps_per_epoch=shape.steps, device=device)
    batches = list(pool)[: shape.steps]
    premade = [
        lpldstore.PoolBatch(
            images=b.images.clone(), logits=b.logits.clone(), keys=b.keys.clone(), mix_lam=b.mix_lam.clone()
        )
        for b in batches
    ]

    def with_loader() -> float:
        t = time.perf_counter()
        for b in pool:
            step(b)
        _sync(device)
        return shape.steps / (time.perf_counter() - t)

    def with_tensors() -> float:
        t = time.perf_counter()
        for b in premade:
            step(b)
        _sync(device)
        return len(premade) / (time.perf_counter() - t)

    with_loader(), with_tensors()  # warm-up: cuDNN, allocator, autocast caches
    runs: dict[str, list[float]] = {"device loader": [], "pre-made tensors": []}
    for _ in range(sizes.train_repeats):
        runs["device loader"].append(with_loader())
        runs["pre-made tensors"].append(with_tensors())
    with count_syncs(device) as n:
        with_loader()
    syncs["training_per_step_with_device_loader"] = _per_step(n[0], shape.steps)
    medians = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "batch": sizes.train_batch,
        "steps_per_s": medians,
        "images_per_s": {k: v * sizes.train_batch for k, v in medians.items()},
        "runs": runs,
        "device_loader_over_tensors": medians["device loader"] / medians["pre-made tensors"],
        "goal": GOALS["training_device_loader_over_tensors"],
    }


# -- 8. estimate ------------------------------------------------------------------------------------


def estimate(sections: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    """Hours of ImageNet-1K IPC10 at 40x on this device, from the measured throughputs."""
    synth, relab, train = (sections.get(k) or {} for k in ("synthesis", "relabel", "training"))
    out: dict[str, Any] = {
        "shape": "ImageNet-1K IPC10: 10,000 images, 4,000 synthesis iterations, 300 epochs at 40x"
    }
    if "rows" in synth:
        best = max(
            (r for r in synth["rows"] if r["ipc"] == sizes.synth_ipcs[0]),
            key=lambda r: r["image_iterations_per_s"],
        )
        out["synthesis_h"] = IN1K_IMAGES * SYNTH_ITERATIONS / best["image_iterations_per_s"] / 3600
        out["synthesis_setting"] = {k: best[k] for k in ("amp", "way", "batch_images")}
    if "entries_per_s" in relab:
        entries = math.ceil(EPOCHS * math.ceil(IN1K_IMAGES / RELABEL_BATCH) / RATIO)
        rate = max(v for k, v in relab["entries_per_s"].items() if k != "bare teacher")
        # The entries here have the suite's batch; at batch 128 an entry is 128 images.
        out["relabel_h"] = entries * (RELABEL_BATCH / relab["batch"]) / rate / 3600
    if "images_per_s" in train:
        out["training_h"] = EPOCHS * IN1K_IMAGES / train["images_per_s"]["device loader"] / 3600
    parts = [out.get(k) for k in ("synthesis_h", "relabel_h", "training_h")]
    if all(p is not None for p in parts):
        out["total_h"] = sum(p for p in parts if p is not None)
        out["goal_h"] = GOALS["in1k_ipc10_40x_hours"]
    if sizes is not REAL:
        out["note"] = "dry run: tiny sizes on the CPU, not an estimate of anything"
    return out


# -- 9. pretrained ---------------------------------------------------------------------------------


def find_pretrained() -> list[dict[str, str]]:
    """Cached ImageNet classifiers: torchvision weights in the torch hub cache, HF image classifiers."""
    found = []
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for path in sorted(glob.glob(str(hub / "*.pth"))):
        arch = Path(path).name.split("-")[0]
        found.append({"kind": "torchvision", "path": path, "arch": arch})
    hf = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    for folder in sorted(glob.glob(str(hf / "models--*"))):
        configs = glob.glob(os.path.join(folder, "snapshots", "*", "config.json"))
        for config in configs[:1]:
            try:
                doc = json.loads(Path(config).read_text())
            except (OSError, ValueError):
                continue
            if len(doc.get("id2label", {})) == 1000:
                found.append(
                    {
                        "kind": "huggingface",
                        "path": str(Path(config).parent),
                        "arch": doc.get("model_type", "?"),
                    }
                )
    return found


def _photos(size: int) -> torch.Tensor:
    """Real photographs shipped with scikit-image (float [0, 1], N x 3 x size x size), or none."""
    try:
        data = importlib.import_module("skimage.data")
    except ImportError:
        return torch.empty(0, 3, size, size)
    images = []
    for name in (
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "cat",
        "retina",
        "immunohistochemistry",
        "motorcycle_left",
    ):
        try:
            img = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001, S112 - an image that is not shipped: the others will do
            continue
        if img.ndim == 3 and img.shape[2] >= 3:
            t = torch.from_numpy(np.ascontiguousarray(img[:, :, :3])).permute(2, 0, 1).float() / 255
            images.append(
                torch.nn.functional.interpolate(t[None], size=(size, size), mode="bilinear", antialias=True)[
                    0
                ]
            )
    return torch.stack(images) if images else torch.empty(0, 3, size, size)


def pretrained(device: torch.device, sizes: Sizes) -> dict[str, Any]:
    from benchmarks.storage import _augmented_batches, fidelity_table

    found = find_pretrained()
    out: dict[str, Any] = {"found": found}
    model, source = None, None
    for item in found:
        try:
            if item["kind"] == "torchvision":
                import torchvision

                model = torchvision.models.get_model(item["arch"], weights=None)
                model.load_state_dict(torch.load(item["path"], map_location="cpu", weights_only=True))
            else:
                transformers = importlib.import_module("transformers")
                hf = transformers.AutoModelForImageClassification.from_pretrained(
                    item["path"], local_files_only=True
                )
                model = _Logits(hf)
            source = item
            break
        except Exception as exc:  # noqa: BLE001 - try the next cached model
            item["load_error"] = f"{type(exc).__name__}: {exc}"
    if model is None:
        if sizes is REAL:
            out["fidelity"] = None
            return out
        import torchvision

        model = torchvision.models.resnet18(weights=None)  # dry run: the code path on random weights
        source = {"kind": "dry run", "arch": "resnet18 (random weights, not a pretrained classifier)"}
    photos = _photos(sizes.image)
    origin = "scikit-image sample photographs, random resized crops, flips, CutMix"
    if len(photos) == 0:
        photos = torch.rand(8, 3, sizes.image, sizes.image)
        origin = "uniform noise (no photographs on this machine)"
    batches = _augmented_batches(
        photos, max(1, sizes.pretrained_rows // 128), min(128, sizes.pretrained_rows), 0
    )
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    model = model.to(device).eval()
    with torch.no_grad():
        logits = torch.cat([model(((x - mean) / std).to(device)).float().cpu() for x in batches]).numpy()
    out |= {"model": source, "inputs": origin, "rows": len(logits), "fidelity": fidelity_table(logits, 20.0)}
    return out


class _Logits(torch.nn.Module):
    """A Hugging Face image classifier as a module returning logits."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(pixel_values=x).logits


# -- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="the whole suite on the CPU at tiny sizes")
    parser.add_argument(
        "--budget-s", type=float, default=450.0, help="skip sections that would pass this (s)"
    )
    parser.add_argument("--no-tests", action="store_true", help="leave out the pytest section")
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/gpu_suite[_dry].json)")
    args = parser.parse_args(argv)
    if args.dry_run:
        device, sizes = torch.device("cpu"), DRY
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run on the GPU machine, or with --dry-run")
        device, sizes = torch.device("cuda"), REAL
    out = Path(args.out) if args.out else RESULTS / f"gpu_suite{'_dry' if args.dry_run else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    suite = Suite(args.budget_s)
    syncs: dict[str, Any] = {}
    suite.result |= {
        "dry_run": args.dry_run,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "sizes": dataclasses.asdict(sizes),
        "goals": GOALS,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        suite.run("environment", lambda: environment(device))  # the settings as found
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes throughout (recorded below)
            suite.result["cudnn_benchmark_set_by_suite"] = True
        if not args.no_tests:
            suite.run("tests", lambda: run_tests(args.dry_run, out.parent), cost_s=0 if args.dry_run else 120)
        suite.run("synthesis", lambda: synthesis(device, sizes, syncs), cost_s=0 if args.dry_run else 60)
        suite.run(
            "relabel",
            lambda: relabel(device, sizes, root / "relabel", syncs),
            cost_s=0 if args.dry_run else 30,
        )
        suite.run(
            "loader", lambda: loader(device, sizes, root / "loader", syncs), cost_s=0 if args.dry_run else 60
        )
        suite.run(
            "training",
            lambda: training(device, sizes, root / "training", syncs),
            cost_s=0 if args.dry_run else 30,
        )
        suite.run("pretrained", lambda: pretrained(device, sizes))
    suite.result["sections"]["syncs"] = syncs
    suite.result["sections"]["estimate"] = estimate(suite.result["sections"], sizes)
    suite.result["elapsed_s"] = time.perf_counter() - suite.start
    out.write_text(json.dumps(suite.result, indent=2, default=str) + "\n")
    summary = {
        "synthesis packed/one": (suite.result["sections"].get("synthesis") or {}).get(
            "packed_over_one_class"
        ),
        "relabel with writer/bare": (suite.result["sections"].get("relabel") or {}).get(
            "with_writer_over_bare"
        ),
        "loader device/floor": (suite.result["sections"].get("loader") or {}).get("device_over_floor"),
        "training loader/tensors": (suite.result["sections"].get("training") or {}).get(
            "device_loader_over_tensors"
        ),
        "syncs": syncs,
        "estimate": suite.result["sections"]["estimate"],
        "failed sections": [
            k for k, v in suite.result["sections"].items() if isinstance(v, dict) and "error" in v
        ],
    }
    print(json.dumps(summary, indent=1, default=str))
    print(f"saved {out} after {suite.result['elapsed_s']:.0f} s")
    return suite.result


if __name__ == "__main__":
    main()
