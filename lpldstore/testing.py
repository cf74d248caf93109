"""Helpers for testing code that writes or reads stores: deterministic fake entries and a filler.

Fake entries are pure functions of (seed, epoch, batch), so a store filled in any order, by any
number of processes, interrupted or not, holds exactly the same data. ``python -m
lpldstore.testing fill STORE`` fills a store from a separate process (for crash and concurrency
tests).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from lpldstore.config import DatasetInfo, RelabelConfig
from lpldstore.plan import PruningPlan
from lpldstore.writer import StoreWriter

__all__ = ["DAMAGE_KINDS", "damage_file", "fake_entry", "fake_images", "fill", "make_store"]


def fake_images(
    num_images: int, height: int, width: int, num_classes: int, seed: int = 0
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Random uint8 images (N, H, W, 3) and labels cycling through the classes."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    images = rng.integers(0, 256, size=(num_images, height, width, 3), dtype=np.uint8)
    return images, np.arange(num_images, dtype=np.int64) % num_classes


def fake_entry(
    plan: PruningPlan, dataset: DatasetInfo, relabel: RelabelConfig, epoch: int, batch: int, seed: int = 0
) -> dict[str, Any]:
    """Valid keyword arguments for :meth:`StoreWriter.write`, a pure function of its inputs."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, batch]))
    n = plan.batch_length(batch)
    h, w = dataset.image_shape[:2]
    out_h, out_w = relabel.output_size
    ch = rng.integers(1, h + 1, size=n)
    cw = rng.integers(1, w + 1, size=n)
    top = rng.integers(0, h - ch + 1)
    left = rng.integers(0, w - cw + 1)
    bottom, right = int(rng.integers(0, out_h + 1)), int(rng.integers(0, out_w + 1))
    entry: dict[str, Any] = {
        "crops": np.stack([top, left, ch, cw], axis=1),
        "flips": rng.random(n) < 0.5,
        "logits": (rng.standard_normal((n, dataset.num_classes)) * 4).astype(np.float32),
    }
    if relabel.mix != "none":
        entry |= {
            "mix_index": rng.permutation(n),
            "mix_lam": float(rng.beta(1.0, 1.0)),
            "mix_box": [int(rng.integers(0, bottom + 1)), int(rng.integers(0, right + 1)), bottom, right],
        }
    if plan.composition == "explicit":
        entry["indices"] = rng.integers(0, dataset.num_images, size=n)
    return entry


def make_store(
    path: str | os.PathLike[str],
    *,
    plan: PruningPlan,
    num_classes: int = 5,
    image_hw: tuple[int, int] = (12, 10),
    output_size: tuple[int, int] = (8, 8),
    mix: str = "cutmix",
    seed: int = 0,
    **writer_options: Any,
) -> StoreWriter:
    """Create a store of fake images for ``plan`` and return its writer (nothing written yet)."""
    images, labels = fake_images(plan.num_images, *image_hw, num_classes, seed)
    dataset = DatasetInfo(
        name="fake", num_classes=num_classes, num_images=plan.num_images, image_shape=(*image_hw, 3)
    )
    relabel = RelabelConfig(output_size=output_size, mix=mix, teacher="fake")  # type: ignore[arg-type]
    return StoreWriter.create(
        path, plan=plan, images=images, labels=labels, dataset=dataset, relabel=relabel, **writer_options
    )


def fill(writer: StoreWriter, *, seed: int = 0, limit: int | None = None, delay: float = 0.0) -> int:
    """Write fake entries for the writer's remaining work (at most ``limit``); returns the count."""
    attrs = writer.attrs
    done = 0
    for epoch, batch in writer.todo()[:limit]:
        writer.write(epoch, batch, **fake_entry(attrs.plan, attrs.dataset, attrs.relabel, epoch, batch, seed))
        done += 1
        if delay:
            time.sleep(delay)
    return done


DAMAGE_KINDS = ("flip", "truncate", "delete")


def damage_file(path: str | os.PathLike[str], kind: str, rng: np.random.Generator) -> str:
    """Damage one file of a store: flip one random byte, cut it short at a random length, or delete it.

    Returns a description of what was done. A truncation always removes at least one byte.
    """
    target = os.fspath(path)
    if kind == "delete":
        os.remove(target)
        return "deleted"
    with open(target, "rb") as f:
        data = bytearray(f.read())
    if kind == "flip":
        at = int(rng.integers(0, len(data)))
        data[at] ^= int(rng.integers(1, 256))
        done = f"byte {at} of {len(data)} flipped"
    elif kind == "truncate":
        keep = int(rng.integers(0, len(data)))
        del data[keep:]
        done = f"truncated to {keep} bytes"
    else:
        raise ValueError(f"Expected a damage kind in {DAMAGE_KINDS}. Got {kind!r} instead.")
    with open(target, "wb") as f:
        f.write(bytes(data))
    return done


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpldstore.testing")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("fill", help="fill a store's remaining entries with fake data")
    cmd.add_argument("store")
    cmd.add_argument("--rank", type=int, default=0)
    cmd.add_argument("--world", type=int, default=1)
    cmd.add_argument("--seed", type=int, default=0)
    cmd.add_argument("--delay", type=float, default=0.0, help="seconds to sleep after each entry")
    cmd.add_argument("--commit-every", type=int, default=None)
    args = parser.parse_args(argv)
    with StoreWriter.open(args.store, part=(args.rank, args.world), commit_every=args.commit_every) as writer:
        fill(writer, seed=args.seed, delay=args.delay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
