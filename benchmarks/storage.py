"""Bytes on disk of soft labels per layout and codec, and each codec's fidelity on teacher logits.

One run measures:

1. **Logits.** A teacher relabels augmented batches (random-resized crop, flip, CutMix, as the
   relabel step does) of an image set: by default the pipeline's teacher (``tiny_resnet``) trained
   on the spot on the built-in digits set (10 classes), plus a *1000-output proxy*: the same
   network with 1,000 outputs trained on digits, where only 10 of the 1,000 classes ever occur. The
   proxy gives 1,000-class rows for top-100 comparisons; it is not an ImageNet teacher and its
   logit distribution is not ImageNet's. ``--teacher CKPT --images DIR`` relabels an ImageFolder
   with your own teacher (saved by ``lpld_pipeline.teacher.save_teacher_checkpoint``) instead.
2. **Fidelity per codec** on those logits: KL at ``--temperature`` (both directions), top-1
   agreement, max abs logit error (:mod:`lpldstore.fidelity`).
3. **Bytes per entry per codec** by writing real stores: ``--sample-entries`` entries of each
   shape's (batch, classes) with logits resampled from the proxy rows (classes tiled or cut to the
   shape's class count), measured on disk. Whole configurations are too big to write here (the
   ImageNet-21K-P IPC20 1x labels are 1.3 TB), so totals are the measured bytes per entry times
   the exact entry count of each (shape, ratio), plus the measured fixed metadata: exact for the
   fixed-width codecs (packed quantization, top-k) up to compression noise, an extrapolation of
   the sample's mean for float16 and the entropy-coded codec.
4. **Peer layouts**, written as the peers write them (one file per distinct size, then counted):
   SRe2L/LPLD per-batch ``torch.save`` files (:func:`lpldstore.peer_layout_bytes`), LPQLD top-k
   files (7-item record, flat ``batch_<global>.tar``, ``sampler_indices_batch.json``), and FKD
   per-image files (top-5 marginal smoothing, fp16) where they apply (no CutMix).
5. **The float16 byte compressor**: candidates on the teacher logits through zarr, size and decode
   speed (median of ``--repeats``), to choose the default.

Prints tables and saves ``benchmarks/results/storage.json`` and ``storage_bytes_vs_kl.png``.

    python benchmarks/storage.py                         # digits teacher + 1000-output proxy
    python benchmarks/storage.py --teacher t.pt --images /data/imagenet/val --classes-from-teacher
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
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

from lpldstore import (
    AugmentParams,
    CodecConfig,
    DatasetInfo,
    Layout,
    PruningPlan,
    RelabelConfig,
    StoreWriter,
    open_store,
    peer_layout_bytes,
    storage_bytes,
)
from lpldstore.format.fidelity import fidelity_sums, summarize

RESULTS = Path(__file__).parent / "results"

SHAPES: dict[str, dict[str, Any]] = {
    "in1k_ipc10": {"classes": 1000, "batch": 128, "epochs": 300, "images": 10_000},
    "in1k_ipc50": {"classes": 1000, "batch": 128, "epochs": 300, "images": 50_000},
    "in1k_ipc200": {"classes": 1000, "batch": 128, "epochs": 300, "images": 200_000},
    "tiny_ipc50": {"classes": 200, "batch": 64, "epochs": 100, "images": 10_000, "mix": False},
    "tiny_ipc100": {"classes": 200, "batch": 64, "epochs": 100, "images": 20_000, "mix": False},
    "in21k_ipc10": {"classes": 10_450, "batch": 32, "epochs": 300, "images": 104_500, "mix": False},
    "in21k_ipc20": {"classes": 10_450, "batch": 32, "epochs": 300, "images": 209_000, "mix": False},
}
RATIOS = (1, 10, 40, 100, 200)
# Published label sizes in GB (LPLD README at 40x; LPQLD README 40x / 80x / 200x = top-100 / 50 / 10).
PUBLISHED = {
    "in1k_ipc10": {"full": 5.67, "lpld_40x": 0.14, "lpqld_40x": 0.13, "lpqld_80x": 0.07, "lpqld_200x": 0.03},
    "in1k_ipc50": {"full": 28.33, "lpld_40x": 0.71, "lpqld_40x": 0.63, "lpqld_80x": 0.37, "lpqld_200x": 0.14},
    "in1k_ipc200": {
        "full": 113.33,
        "lpld_40x": 2.85,
        "lpqld_40x": 2.54,
        "lpqld_80x": 1.47,
        "lpqld_200x": 0.58,
    },
    "tiny_ipc50": {"full": 0.449, "lpld_40x": 0.011},
    "tiny_ipc100": {"full": 0.898, "lpld_40x": 0.022},
    "in21k_ipc10": {"full": 643, "lpld_40x": 16, "lpqld_40x": 16, "lpqld_400x": 1.6},
    "in21k_ipc20": {"full": 1286, "lpld_40x": 32, "lpqld_40x": 32, "lpqld_400x": 2.7},
}


def codec_grid(classes: int) -> list[CodecConfig]:
    """Every codec setting measured for rows of ``classes`` logits."""
    grid = [CodecConfig()]
    grid += [CodecConfig(name="quantized", params={"bits": b}) for b in range(2, 9)]
    grid += [CodecConfig(name="quantized_entropy", params={"bits": b}) for b in (2, 3, 4, 5, 6, 8)]
    ks = (1, 2, 5) if classes <= 10 else (10, 50, 100)
    grid += [
        CodecConfig(name="topk", params={"k": k, "tail": t})
        for k in ks
        if k < classes
        for t in ("MR", "MS", "MRS")
    ]
    return grid


# -- logits from a teacher ------------------------------------------------------------------


def _augmented_batches(images: torch.Tensor, batches: int, batch: int, seed: int) -> list[torch.Tensor]:
    """Batches of [0, 1] images after random-resized crop, flip and CutMix (as the relabel step)."""
    from torchvision.transforms.v2 import RandomResizedCrop
    from torchvision.transforms.v2 import functional as tvf

    g = torch.Generator().manual_seed(seed)
    size = images.shape[-1]
    out = []
    for _ in range(batches):
        idx = torch.randint(len(images), (batch,), generator=g)
        crops = []
        for i in idx.tolist():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(2**31, (1,), generator=g)))
                top, left, h, w = RandomResizedCrop.get_params(
                    images[i], scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3]
                )
            x = tvf.resized_crop(images[i], top, left, h, w, [size, size], antialias=True)
            if torch.rand(1, generator=g) < 0.5:
                x = x.flip(-1)
            crops.append(x)
        x = torch.stack(crops)
        lam = float(torch.distributions.Beta(1.0, 1.0).sample())
        cut = int(size * math.sqrt(1 - lam))
        cy, cx = (int(v) for v in torch.randint(size, (2,), generator=g))
        t, b = max(cy - cut // 2, 0), min(cy + cut // 2, size)
        left_, r = max(cx - cut // 2, 0), min(cx + cut // 2, size)
        perm = torch.randperm(batch, generator=g)
        x[:, :, t:b, left_:r] = x[perm][:, :, t:b, left_:r]
        out.append(x)
    return out


@torch.no_grad()
def teacher_logits(teacher: torch.nn.Module, batches: list[torch.Tensor]) -> npt.NDArray[np.float32]:
    return torch.cat([teacher(x).float() for x in batches]).numpy()


def digits_teachers(rows: int, seed: int, proxy: bool) -> dict[str, tuple[str, npt.NDArray[np.float32]]]:
    from lpld_pipeline.config import DataConfig, TeacherConfig
    from lpld_pipeline.data import build_dataset, load_digits_images
    from lpld_pipeline.teacher import make_teacher, teacher_accuracy

    data = build_dataset(DataConfig())
    val = build_dataset(DataConfig(), "val")
    pixels, _ = load_digits_images(DataConfig().image_size, "train")
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    batches = _augmented_batches(images, max(1, rows // 128), 128, seed)
    out = {}
    teacher = make_teacher(TeacherConfig(), num_classes=10, train_data=data, seed=seed)
    acc = teacher_accuracy(teacher, val, device=torch.device("cpu"))
    out["digits10"] = (
        (
            f"pipeline teacher (tiny_resnet, TeacherConfig() defaults, seed {seed}) trained on digits; "
            f"val top-1 {acc:.3f}; relabelling augmented digits train images (crop, flip, CutMix)"
        ),
        teacher_logits(teacher, batches),
    )
    if proxy:
        teacher = make_teacher(TeacherConfig(), num_classes=1000, train_data=data, seed=seed)
        acc = teacher_accuracy(teacher, val, device=torch.device("cpu"))
        out["proxy1000"] = (
            (
                "PROXY, not an ImageNet teacher: tiny_resnet with 1,000 outputs trained on digits (only classes "
                f"0-9 occur; the other 990 logits are never a target); val top-1 {acc:.3f}"
            ),
            teacher_logits(teacher, batches),
        )
    return out


def user_teacher(
    ckpt: Path, folder: Path, rows: int, seed: int
) -> dict[str, tuple[str, npt.NDArray[np.float32]]]:
    from torchvision import datasets, transforms

    from lpld_pipeline.teacher import load_teacher_checkpoint

    teacher = load_teacher_checkpoint(ckpt)
    size = 224
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(size), transforms.ToTensor()])
    ds = datasets.ImageFolder(str(folder), transform=tf)
    g = np.random.default_rng(seed)
    pick = g.choice(len(ds), size=min(len(ds), max(rows // 4, 128)), replace=False)
    images = torch.stack([ds[int(i)][0] for i in pick])
    batches = _augmented_batches(images, max(1, rows // 128), 128, seed)
    return {
        f"user{teacher.spec.num_classes}": (
            f"teacher {ckpt} ({teacher.spec.arch}, {teacher.spec.num_classes} classes) on {folder}",
            teacher_logits(teacher, batches),
        )
    }


# -- fidelity ----------------------------------------------------------------------------------


def fidelity_table(logits: npt.NDArray[np.float32], temperature: float) -> list[dict[str, Any]]:
    classes = logits.shape[1]
    rows = []
    for config in codec_grid(classes):
        codec = CodecConfig(name=config.name, params=config.params, temperature=temperature).codec(classes)
        source = logits.astype(np.float16) if codec.lossless else logits
        decoded = codec.decode(codec.encode(source))
        fid = summarize(fidelity_sums(logits, decoded, temperature)[None], temperature)
        assert fid is not None
        rows.append(
            {"codec": codec.label(), "config": config.to_dict(), "row_bytes": codec.row_bytes()}
            | fid.to_dict()
        )
    return rows


# -- bytes ---------------------------------------------------------------------------------------


def _rows_for(
    pool: npt.NDArray[np.float32], classes: int, count: int, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    rows = pool[rng.integers(len(pool), size=count)]
    if classes <= rows.shape[1]:
        return rows[:, :classes]
    reps = math.ceil(classes / rows.shape[1])
    tiles = [pool[rng.integers(len(pool), size=count)] for _ in range(reps)]
    return np.concatenate(tiles, axis=1)[:, :classes]


def measure_entry_bytes(
    shape: dict[str, Any],
    codec: CodecConfig,
    pool: npt.NDArray[np.float32],
    sample: int,
    tmp: Path,
    seed: int,
) -> dict[str, float]:
    """Write ``sample`` entries at ``shape`` with ``codec``; measured bytes per entry and fixed bytes."""
    classes, batch = shape["classes"], shape["batch"]
    n = batch * 2
    plan = PruningPlan(num_images=n, batch_size=batch, epochs=sample // 2)
    dataset = DatasetInfo(name="sample", num_classes=classes, num_images=n, image_shape=(8, 8, 3))
    relabel = RelabelConfig(
        output_size=(8, 8), teacher="sample", mix="cutmix" if shape.get("mix", True) else "none"
    )
    rng = np.random.default_rng(seed)
    path = tmp / f"s-{classes}-{codec.name}-{json.dumps(codec.params, sort_keys=True)}.zarr"
    images = np.zeros((n, 8, 8, 3), dtype=np.uint8)
    with StoreWriter.create(
        path,
        plan=plan,
        images=images,
        labels=np.arange(n) % classes,
        dataset=dataset,
        relabel=relabel,
        codec=codec,
        layout=Layout(block_entries=64),
    ) as writer:
        for e, b in writer.todo():
            crops, flips = np.tile([0, 0, 8, 8], (batch, 1)), rng.random(batch) < 0.5
            params = (
                AugmentParams.without_mix(crops=crops, flips=flips)
                if relabel.mix == "none"
                else AugmentParams(
                    crops=crops,
                    flips=flips,
                    mix_index=rng.permutation(batch),
                    mix_lam=float(rng.beta(1, 1)),
                    mix_box=(0, 0, 4, 4),
                )
            )
            writer.write(e, b, logits=_rows_for(pool, classes, batch, rng), params=params)
    with open_store(path) as store:
        sizes = storage_bytes(store)
    shutil.rmtree(path)
    entries = plan.num_kept
    per_entry = (sizes["total"] - sizes["images"] - sizes["metadata"]) / entries
    return {
        "per_entry": per_entry,
        "logits_per_entry": sizes["logits"] / entries,
        "metadata": sizes["metadata"],
    }


def lpld_sidecar_bytes(plan: PruningPlan) -> int:
    """Bytes of LPLD's ``sampler_indices_epoch.json`` for a seeded plan's kept entries."""
    keys = plan.kept_keys
    body, epochs = 0, np.unique(keys[:, 0])
    for epoch in epochs.tolist():
        batches = keys[keys[:, 0] == epoch, 1]
        perm = plan.epoch_permutation(epoch)
        starts = batches * plan.batch_size
        ids = np.concatenate(
            [perm[s : s + plan.batch_length(int(b))] for s, b in zip(starts, batches, strict=True)]
        )
        digits = np.floor(np.log10(np.maximum(ids, 1))).astype(np.int64) + 1
        body += len(f'"{epoch}": ') + 2 + int(digits.sum()) + 2 * (len(ids) - 1)
    return 2 + body + 2 * (len(epochs) - 1)


def lpqld_file_bytes(batch: int, k: int, digits: int) -> int:
    """One LPQLD ``batch_<global>.tar`` with top-k: 7 all-tensor items, as its writer saves them."""
    record = [
        torch.zeros(batch, 4, dtype=torch.float16),
        torch.zeros(batch, dtype=torch.bool),
        torch.zeros(batch, dtype=torch.uint8),
        0.5,
        [torch.tensor(1, dtype=torch.uint8) for _ in range(4)],
        torch.zeros(batch, k, dtype=torch.float16),
        torch.zeros(batch, k, dtype=torch.int16),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"batch_{'1' * digits}.tar"
        torch.save(record, path)
        return path.stat().st_size


def lpqld_bytes(plan: PruningPlan, k: int) -> int:
    ids = plan.kept_ids
    digits = np.array([len(str(int(i))) for i in ids])
    sizes = {d: lpqld_file_bytes(plan.batch_size, k, d) for d in np.unique(digits).tolist()}
    files = sum(sizes[int(d)] for d in digits)
    # sampler_indices_batch.json: {"<global>": [ids...]}; ids average digits of num_images - 1.
    id_digits = np.mean([len(str(i)) for i in range(0, plan.num_images, max(1, plan.num_images // 1000))])
    sidecar = (
        2 + sum(len(f'"{i}": ') for i in ids.tolist()) + len(ids) * (2 + plan.batch_size * (id_digits + 2))
    )
    return int(files + sidecar)


def fkd_bytes(images: int, crops: int, k: int = 5) -> int:
    """FKD per-image files: [coords N x 4, flips N, labels N x 2 x k] NumPy fp16, one file per image."""
    record = [
        np.zeros((crops, 4), dtype=np.float16),
        np.zeros(crops, dtype=bool),
        np.zeros((crops, 2, k), dtype=np.float16),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "n01440764_10026.tar"
        torch.save(record, path)
        return path.stat().st_size * images


# -- float16 compressor choice ----------------------------------------------------------------------


def compressor_table(logits: npt.NDArray[np.float32], batch: int, repeats: int) -> list[dict[str, Any]]:
    half = logits.astype(np.float16)
    entries = len(half) // batch
    data = half[: entries * batch].reshape(entries, batch, -1)
    candidates: dict[str, list[Any]] = {
        "none": [],
        "zstd(3)": [ZstdCodec(level=3)],
        "zstd(9)": [ZstdCodec(level=9)],
        "blosc(zstd,5,shuffle)": [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")],
        "blosc(zstd,5,bitshuffle)": [BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")],
        "blosc(zstd,9,shuffle)": [BloscCodec(cname="zstd", clevel=9, shuffle="shuffle")],
        "blosc(lz4,5,shuffle)": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
        "blosc(lz4hc,9,shuffle)": [BloscCodec(cname="lz4hc", clevel=9, shuffle="shuffle")],
    }
    out = []
    tmp = Path(tempfile.mkdtemp(prefix="lpld-comp-"))
    for i, (name, compressors) in enumerate(candidates.items()):
        array = zarr.create_array(
            LocalStore(tmp / f"{i}.zarr"),
            shape=data.shape,
            chunks=(1, *data.shape[1:]),
            dtype="float16",
            compressors=[*compressors, Crc32cCodec()],
        )
        writes, reads = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            array[:] = data
            writes.append(time.perf_counter() - t)
            t = time.perf_counter()
            back = array[:]
            reads.append(time.perf_counter() - t)
        assert np.array_equal(back, data)
        stored = sum(f.stat().st_size for f in (tmp / f"{i}.zarr" / "c").rglob("*") if f.is_file())
        out.append(
            {
                "compressor": name,
                "ratio": data.nbytes / stored,
                "bytes": stored,
                "encode_MBps": data.nbytes / statistics.median(writes) / 1e6,
                "decode_MBps": data.nbytes / statistics.median(reads) / 1e6,
            }
        )
    shutil.rmtree(tmp, ignore_errors=True)
    return out


# -- report ------------------------------------------------------------------------------------------


def _gb(n: float) -> str:
    return f"{n / 1e9:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", type=Path, help="teacher checkpoint (lpld_pipeline format)")
    parser.add_argument("--images", type=Path, help="ImageFolder to relabel with --teacher")
    parser.add_argument("--rows", type=int, default=4096, help="logit rows to measure fidelity on")
    parser.add_argument("--no-proxy", action="store_true", help="skip the 1000-output proxy teacher")
    parser.add_argument("--temperature", type=float, default=20.0)
    parser.add_argument("--sample-entries", type=int, default=8, help="entries written per (shape, codec)")
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logits-cache", type=Path, help="npz to reuse teacher logits between runs")
    parser.add_argument("--out", type=Path, default=RESULTS / "storage.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)

    started = time.perf_counter()
    if args.logits_cache and args.logits_cache.exists():
        cached = np.load(args.logits_cache)
        sources = {str(k): (str(cached[f"{k}/description"]), cached[f"{k}/logits"]) for k in cached["names"]}
    elif args.teacher:
        if not args.images:
            parser.error("--teacher needs --images (an ImageFolder to relabel)")
        sources = user_teacher(args.teacher, args.images, args.rows, args.seed)
    else:
        sources = digits_teachers(args.rows, args.seed, proxy=not args.no_proxy)
    if args.logits_cache and not args.logits_cache.exists():
        flat = {f"{k}/logits": x for k, (_, x) in sources.items()}
        flat |= {f"{k}/description": np.array(d) for k, (d, _) in sources.items()}
        np.savez(args.logits_cache, names=np.array(list(sources)), **flat)
    result: dict[str, Any] = {
        "machine": "2 shared CPU cores (other jobs running); timings are medians and indicative only",
        "command": "python benchmarks/storage.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if v not in (None, False) and k != "out"
        ),
        "temperature": args.temperature,
        "logit_sources": {
            name: {"description": d, "rows": len(x), "classes": x.shape[1]}
            for name, (d, x) in sources.items()
        },
        "fidelity": {},
    }
    for name, (desc, logits) in sources.items():
        print(
            f"\n== fidelity on {name}: {desc}\n   {len(logits)} rows x {logits.shape[1]} classes, T={args.temperature:g}"
        )
        table = fidelity_table(logits, args.temperature)
        result["fidelity"][name] = table
        print(f"{'codec':<34}{'B/row':>8}{'KL(o||d)':>12}{'KL(d||o)':>12}{'top-1':>8}{'max|err|':>11}")
        for r in table:
            kl = "inf" if r["kl"] is None else f"{r['kl']:.3g}"
            err = "unbounded" if r["max_abs_error"] is None else f"{r['max_abs_error']:.3g}"
            print(
                f"{r['codec']:<34}{r['row_bytes']:>8}{kl:>12}{r['kl_reverse']:>12.3g}{r['top1_agreement']:>8.4f}{err:>11}"
            )

    pool_name = max(sources, key=lambda n: sources[n][1].shape[1])
    pool = sources[pool_name][1]
    # Sizes of the compressed codecs depend on the logits. Teacher (or proxy) rows are one measure;
    # Gaussian rows (std 3, what benchmarks/store_size.py uses) compress least, so they bound it.
    gaussian = (np.random.default_rng(args.seed).standard_normal((4096, 1000)) * 3).astype(np.float32)
    size_pools = {"gaussian": gaussian, pool_name: pool}
    print(f"\n== float16 byte compressors on {pool_name} logits (batch 128), median of {args.repeats}")
    comp = compressor_table(pool, 128, args.repeats)
    result["float16_compressors"] = {"logits": pool_name, "table": comp}
    for r in comp:
        print(
            f"{r['compressor']:<28}ratio {r['ratio']:.3f}  encode {r['encode_MBps']:7.0f} MB/s  decode {r['decode_MBps']:7.0f} MB/s"
        )

    result["shapes"] = {}
    tmp = Path(tempfile.mkdtemp(prefix="lpld-storage-"))
    try:
        for shape_name in args.shapes:
            shape = SHAPES[shape_name]
            classes = shape["classes"]
            base = PruningPlan(num_images=shape["images"], batch_size=shape["batch"], epochs=shape["epochs"])
            relabel = RelabelConfig(
                output_size=(224, 224), mix="cutmix" if shape.get("mix", True) else "none"
            )
            by_pool: dict[str, Any] = {}
            for pool_label, rows_pool in size_pools.items():
                if pool_label != "gaussian" and shape_name != "in1k_ipc10":
                    continue  # teacher-row sizes only at the target shape (time on a shared machine)
                by_pool[pool_label] = {
                    codec.codec(classes).label(): measure_entry_bytes(
                        shape, codec, rows_pool, args.sample_entries, tmp, args.seed
                    )
                    for codec in codec_grid(classes)
                }
            rows = []
            for ratio in RATIOS:
                plan = PruningPlan.from_dict(base.to_dict() | {"ratio": ratio})
                # Files exactly as peer_layout_bytes writes them; the LPLD sidecar computed here with one
                # permutation per epoch (peer_layout_bytes derives it per entry: too slow at 21K scale).
                files = peer_layout_bytes(plan, relabel, classes, np.zeros((plan.num_kept, 1), np.int64))[
                    "files"
                ]
                peer = {"total": files + lpld_sidecar_bytes(plan)}
                row: dict[str, Any] = {
                    "ratio": ratio,
                    "entries": plan.num_kept,
                    "lpld_files": peer["total"],
                    "lpqld_top100_files": lpqld_bytes(plan, min(100, classes - 1)),
                }
                for pool_label, table in by_pool.items():
                    key = "store" if pool_label == "gaussian" else f"store_on_{pool_label}_rows"
                    row[key] = {
                        label: m["metadata"] + plan.num_kept * m["per_entry"] for label, m in table.items()
                    }
                if not shape.get("mix", True):
                    crops = max(1, plan.num_kept * shape["batch"] // shape["images"])
                    row["fkd_top5_files"] = fkd_bytes(shape["images"], crops)
                rows.append(row)
            result["shapes"][shape_name] = {
                "shape": shape,
                "sample_entries_written_per_codec": args.sample_entries,
                "extrapolated": "totals = measured bytes per entry x exact entry count + measured metadata",
                "store_sizes_from": "'store': Gaussian rows (std 3, least compressible); "
                "'store_on_<source>_rows': teacher rows",
                "bytes_per_entry": by_pool,
                "ratios": rows,
                "published_GB": PUBLISHED.get(shape_name, {}),
            }
            print(
                f"\n== {shape_name}: {classes} classes, batch {shape['batch']}, {shape['epochs']} epochs, "
                f"{shape['images']} images (GB; store totals extrapolated from {args.sample_entries} written entries)"
            )
            show = [
                "float16",
                "quantized(bits=8)",
                "quantized(bits=4)",
                "quantized(bits=3)",
                "quantized(bits=2)",
                "quantized_entropy(bits=4)",
                "topk(k=100, tail=MR)",
                "topk(k=10, tail=MRS)",
            ]
            show = [s for s in show if s in by_pool["gaussian"]]
            print(
                f"{'ratio':>6}{'entries':>9}{'LPLD':>10}{'LPQLD-k100':>11}"
                + "".join(f"{s[:18]:>20}" for s in show)
            )
            for key in [k for k in rows[0] if k.startswith("store")]:
                print(f"   this store, sizes measured on {'Gaussian' if key == 'store' else key[9:]} rows:")
                for r in rows:
                    print(
                        f"{r['ratio']:>5}x{r['entries']:>9}{_gb(r['lpld_files']):>10}"
                        f"{_gb(r['lpqld_top100_files']):>11}" + "".join(f"{_gb(r[key][s]):>20}" for s in show)
                    )
            pub = PUBLISHED.get(shape_name)
            if pub:
                print("   published (GB): " + ", ".join(f"{k} {v}" for k, v in pub.items()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out.with_name("storage_bytes_vs_kl.png"))
    print(f"\nsaved {args.out} and {args.out.with_name('storage_bytes_vs_kl.png')} in {result['seconds']} s")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    shape = result["shapes"].get("in1k_ipc10")
    source = "proxy1000" if "proxy1000" in result["fidelity"] else next(iter(result["fidelity"]))
    fid = {r["codec"]: r for r in result["fidelity"][source]}
    if shape is None:
        return
    at40 = next(r for r in shape["ratios"] if r["ratio"] == 40)
    for label, size in at40["store"].items():
        if label not in fid:
            continue
        kl = fid[label]["kl_reverse"]
        family = label.split("(")[0]
        marker = {"float16": "o", "quantized": "s", "quantized_entropy": "D", "topk": "^"}[family]
        color = {"float16": "C0", "quantized": "C1", "quantized_entropy": "C2", "topk": "C3"}[family]
        ax.scatter(size / 1e6, max(kl, 1e-9), marker=marker, color=color, label=family)
        ax.annotate(
            label.replace("quantized_entropy", "qe").replace("quantized", "q"),
            (size / 1e6, max(kl, 1e-9)),
            fontsize=6,
        )
    ax.axvline(at40["lpld_files"] / 1e6, color="gray", ls="--", label="LPLD files (same entries)")
    ax.axvline(at40["lpld_files"] / 4e6, color="gray", ls=":", label="1/4 of LPLD")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("labels on disk, MB (ImageNet-1K IPC10 shape, 40x, 585 entries)")
    ax.set_ylabel(f"KL(decoded || original) at T={result['temperature']:g}, nats/row ({source})")
    ax.set_title("bytes vs fidelity per codec (float16 KL ~0 plotted at 1e-9)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    main()
