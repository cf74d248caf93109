"""Loader throughput: lpldstore's PoolLoader against an SRe2L-style per-batch-file baseline.

A  ``PoolLoader`` (ilp policy) over a store: images in memory per worker, one logits read and one
   batched replay per step.
B  The SRe2L/LPLD layout, written by this script: one ``torch.save`` file per (epoch, batch) with
   the crop coordinates, flips, CutMix partner/lambda/box and float32 soft labels, and the
   distilled images as PNG files; replay opens each image with PIL, crops+resizes+flips it per
   sample, converts and normalizes it, then applies CutMix to the batch (as SRe2L's
   ``ImageFolder_FKD_MIX`` + ``mix_aug`` do).
C  The same augmentations with no labels at all: parameters drawn fresh per batch and replayed
   on in-memory images (the floor: what plain augmentation costs).

All three visit the same entries in the same order and run under the same DataLoader settings.
Reports the median images/s over ``--repeats`` epochs and saves JSON under benchmarks/results/.

    python benchmarks/loader.py                               # reduced CPU size (< 3 min, 2 cores)
    python benchmarks/loader.py --images 10000 --size 64 --batch 256 --workers 0 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data
import torchvision.transforms.functional as tf
from PIL import Image

from lpldstore import DatasetInfo, PruningPlan, RelabelConfig, StoreWriter, apply_params, draw_params
from lpldstore._schedule import epoch_schedule
from lpldstore.loader import PoolLoader

RESULTS = Path(__file__).parent / "results"


def build(root: Path, args: argparse.Namespace) -> tuple[Path, Path, PruningPlan]:
    rng = np.random.default_rng(0)
    n, size, classes = args.images, args.size, args.classes
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % classes
    plan = PruningPlan(num_images=n, batch_size=args.batch, epochs=args.epochs, seed=0)
    dataset = DatasetInfo(name="random", num_classes=classes, num_images=n, image_shape=(size, size, 3))
    relabel = RelabelConfig(output_size=(size, size), teacher="random")
    store = root / "pool.zarr"
    peer = root / "sre2l"
    (peer / "images").mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(peer / "images" / f"{i:06d}.png")
    with StoreWriter.create(
        store, plan=plan, images=images, labels=labels, dataset=dataset, relabel=relabel
    ) as writer:
        for epoch, b in writer.todo():
            k = plan.batch_length(b)
            params = draw_params(relabel, (size, size), k, epoch, b)
            logits = (rng.standard_normal((k, classes)) * 3).astype(np.float32)
            writer.write(
                epoch,
                b,
                logits=logits,
                crops=params.crops,
                flips=params.flips,
                mix_index=params.mix_index,
                mix_lam=params.mix_lam,
                mix_box=list(params.mix_box),
            )
            epoch_dir = peer / f"epoch_{epoch}"
            epoch_dir.mkdir(exist_ok=True)
            torch.save(
                {
                    "indices": torch.from_numpy(plan.batch_indices(epoch, b)),
                    "coords": torch.from_numpy(params.crops.astype(np.int64)),
                    "flip_status": torch.from_numpy(params.flips.copy()),
                    "mix_index": torch.from_numpy(params.mix_index.copy()),
                    "mix_lam": params.mix_lam,
                    "mix_bbox": list(params.mix_box),
                    "soft_label": torch.from_numpy(logits),
                },
                epoch_dir / f"batch_{b}.tar",
            )
    return store, peer, plan


class SRe2LBatches(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Baseline B: one label file per step and per-sample PIL replay."""

    def __init__(self, peer: Path, keys: list[tuple[int, int]], size: int, mean: Any, std: Any) -> None:
        self.peer, self.keys, self.size, self.mean, self.std = peer, keys, size, list(mean), list(std)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, batch = self.keys[step]
        rec = torch.load(self.peer / f"epoch_{epoch}" / f"batch_{batch}.tar", weights_only=True)
        samples = []
        for i, (top, left, h, w), flip in zip(
            rec["indices"].tolist(), rec["coords"].tolist(), rec["flip_status"].tolist(), strict=True
        ):
            with Image.open(self.peer / "images" / f"{i:06d}.png") as im:
                img = im.convert("RGB")
            img = tf.resized_crop(img, top, left, h, w, [self.size, self.size])
            if flip:
                img = tf.hflip(img)
            samples.append(tf.normalize(tf.to_tensor(img), self.mean, self.std))
        x = torch.stack(samples)
        t, left_, b, r = rec["mix_bbox"]
        x[:, :, t:b, left_:r] = x[rec["mix_index"], :, t:b, left_:r]
        return x, rec["soft_label"]


class NoLabels(torch.utils.data.Dataset[torch.Tensor]):
    """Baseline C: fresh parameters per step on in-memory images, no labels read."""

    def __init__(self, store: Path, steps: int, batch: int) -> None:
        from lpldstore import open_store

        with open_store(store) as s:
            self.images = torch.from_numpy(s.images())
            self.relabel, self.info = s.relabel, s.dataset
        self.steps, self.batch = steps, batch

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> torch.Tensor:
        n = len(self.images)
        idx = np.random.default_rng(step).choice(n, size=self.batch, replace=False)
        params = draw_params(self.relabel, self.info.image_shape[:2], self.batch, 0, step)
        return apply_params(self.images[idx], params, self.relabel, self.info.mean, self.info.std)


def _time(make_iter: Any, repeats: int) -> list[float]:
    rates = []
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        for item in make_iter():
            count += len(item[0] if isinstance(item, tuple | list) else item)
        rates.append(count / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="relabel epochs stored")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "loader_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        store, peer, plan = build(Path(tmp), args)
        print(f"built store and SRe2L files in {time.perf_counter() - start:.1f} s")
        positions = epoch_schedule(plan, "ilp", 0, 0)
        keys = [(int(plan.kept_keys[p, 0]), int(plan.kept_keys[p, 1])) for p in positions]
        from lpldstore import open_store

        with open_store(store) as s:
            mean, std = s.dataset.mean, s.dataset.std
        for workers in args.workers:
            ctx = "fork" if workers else None
            a = PoolLoader(store, policy="ilp", seed=0, num_workers=workers, multiprocessing_context=ctx)

            def run_a(loader: PoolLoader = a) -> Any:
                return (b.images for b in loader)

            def loader_of(ds: Any, w: int = workers, c: Any = ctx) -> Any:
                return lambda: torch.utils.data.DataLoader(
                    ds, batch_size=None, num_workers=w, multiprocessing_context=c
                )

            results = {
                "A lpldstore": _time(run_a, args.repeats),
                "B SRe2L files + PIL": _time(
                    loader_of(SRe2LBatches(peer, keys, args.size, mean, std)), args.repeats
                ),
                "C augment only, no labels": _time(
                    loader_of(NoLabels(store, len(keys), args.batch)), args.repeats
                ),
            }
            for name, rates in results.items():
                rows.append(
                    {
                        "method": name,
                        "workers": workers,
                        "median_images_per_s": statistics.median(rates),
                        "runs": rates,
                    }
                )
    print(f"{'method':28s} {'workers':>7s} {'images/s (median)':>18s}")
    for r in rows:
        print(f"{r['method']:28s} {r['workers']:7d} {r['median_images_per_s']:18.0f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "config": vars(args)
                | {"torch_threads": 1, "machine": platform.platform(), "cpus": os.cpu_count()},
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"saved {out}")


if __name__ == "__main__":
    main()
