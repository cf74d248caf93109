"""Bytes on disk of a float16 store at a real shape, beside the SRe2L/LPLD per-batch files.

Default: ImageNet-1K IPC10 at 40x (10,000 images of 224x224, 1,000 classes, batch 128, 300
epochs, LPLD prefix pruning). Images are random and logits are random normals scaled like
teacher logits, so lossless compression has nothing to find: the figure is an upper bound for
real labels. Prints the ``lpldstore info`` table and saves its JSON under benchmarks/results/.

    python benchmarks/store_size.py                      # ImageNet-1K IPC10, 40x
    python benchmarks/store_size.py --ipc 50 --ratio 10  # other shapes
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from lpldstore import (
    AugmentParams,
    DatasetInfo,
    PruningPlan,
    RelabelConfig,
    StoreWriter,
    format_store_info,
    open_store,
    store_info,
)

RESULTS = Path(__file__).parent / "results"


def build(
    path: Path, *, classes: int, ipc: int, size: int, batch: int, epochs: int, ratio: float, seed: int
) -> float:
    rng = np.random.default_rng(seed)
    n = classes * ipc
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(classes), ipc)
    plan = PruningPlan(
        num_images=n, batch_size=batch, epochs=epochs, ratio=ratio, strategy="prefix", seed=seed
    )
    dataset = DatasetInfo(
        name=f"random-{classes}c", num_classes=classes, num_images=n, image_shape=(size, size, 3), ipc=ipc
    )
    relabel = RelabelConfig(output_size=(size, size), teacher="random")
    start = time.perf_counter()
    with StoreWriter.create(
        path, plan=plan, images=images, labels=labels, dataset=dataset, relabel=relabel
    ) as writer:
        del images
        for epoch, b in writer.todo():
            k = plan.batch_length(b)
            hw = rng.integers(size // 4, size + 1, size=(k, 2))
            crops = np.concatenate([rng.integers(0, size - hw + 1), hw], axis=1)[:, [0, 1, 2, 3]]
            writer.write(
                epoch,
                b,
                logits=(rng.standard_normal((k, classes)) * 3).astype(np.float16),
                params=AugmentParams(
                    crops=crops,
                    flips=rng.random(k) < 0.5,
                    mix_index=rng.permutation(k),
                    mix_lam=float(rng.beta(1, 1)),
                    mix_box=(0, 0, size // 2, size // 2),
                ),
            )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--ratio", type=float, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "store_size_in1k_ipc10_40x.json")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lpld-size-"))
    try:
        seconds = build(
            tmp / "store.zarr",
            classes=args.classes,
            ipc=args.ipc,
            size=args.size,
            batch=args.batch,
            epochs=args.epochs,
            ratio=args.ratio,
            seed=args.seed,
        )
        with open_store(tmp / "store.zarr") as store:
            info = store_info(store)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info["source"] = "random data: " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out")
    info["build_seconds"] = round(seconds, 1)
    print(format_store_info(info))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(info, indent=2) + "\n")
    print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()
