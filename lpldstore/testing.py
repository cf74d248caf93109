"""Helpers for testing code that writes or reads stores: deterministic fake entries and a filler.

Fake entries are pure functions of (seed, epoch, batch), so a store filled in any order, by any
number of processes, interrupted or not, holds exactly the same data. ``python -m
lpldstore.testing fill STORE`` fills a store from a separate process (for crash and concurrency
tests).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from lpldstore.format.params import AugmentParams
from lpldstore.format.plan import PruningPlan
from lpldstore.format.records import DatasetInfo, Layout, RelabelConfig
from lpldstore.storage.background import BackgroundWriter
from lpldstore.storage.reader import open_store
from lpldstore.storage.writer import StoreWriter

__all__ = [
    "DAMAGE_KINDS",
    "damage_file",
    "different_entries",
    "fake_entry",
    "fake_images",
    "fill",
    "kill_at",
    "make_store",
    "spawn",
]


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
    crops, flips = np.stack([top, left, ch, cw], axis=1), rng.random(n) < 0.5
    logits = (rng.standard_normal((n, dataset.num_classes)) * 4).astype(np.float32)
    extra: dict[str, npt.NDArray[Any]] = {}
    if "cutout" in relabel.extras:
        box = np.stack(
            [rng.integers(0, out_h, n), rng.integers(0, out_w, n), np.full(n, 2), np.full(n, 2)], axis=1
        )
        extra = {"cutout_box": box, "cutout_fill": rng.integers(0, 256, (n, 3)).astype(np.uint8)}
    if relabel.mix == "none":
        params = AugmentParams.without_mix(crops=crops, flips=flips, extra=extra)
    else:
        params = AugmentParams(
            crops=crops,
            flips=flips,
            mix_index=rng.permutation(n),
            mix_lam=float(np.float32(rng.beta(1.0, 1.0))),
            mix_box=(int(rng.integers(0, bottom + 1)), int(rng.integers(0, right + 1)), bottom, right),
            extra=extra,
        )
    entry: dict[str, Any] = {"logits": logits, "params": params}
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
    extras: tuple[str, ...] = (),
    seed: int = 0,
    **writer_options: Any,
) -> StoreWriter:
    """Create a store of fake images for ``plan`` and return its writer (nothing written yet).

    ``extras`` names optional augmentations (``("cutout",)``) whose parameters the store keeps.
    """
    images, labels = fake_images(plan.num_images, *image_hw, num_classes, seed)
    dataset = DatasetInfo(
        name="fake", num_classes=num_classes, num_images=plan.num_images, image_shape=(*image_hw, 3)
    )
    relabel = RelabelConfig(output_size=output_size, mix=mix, teacher="fake", extras=extras)  # type: ignore[arg-type]
    return StoreWriter.create(
        path, plan=plan, images=images, labels=labels, dataset=dataset, relabel=relabel, **writer_options
    )


def fill(
    writer: StoreWriter | BackgroundWriter, *, seed: int = 0, limit: int | None = None, delay: float = 0.0
) -> int:
    """Write fake entries for the writer's remaining work (at most ``limit``); returns the count."""
    attrs = writer.attrs
    done = 0
    for epoch, batch in writer.todo()[:limit]:
        writer.write(epoch, batch, **fake_entry(attrs.plan, attrs.dataset, attrs.relabel, epoch, batch, seed))
        done += 1
        if delay:
            time.sleep(delay)
    return done


def spawn(command: str, store: str | os.PathLike[str], *args: str) -> subprocess.Popen[bytes]:
    """Run ``python -m lpldstore.testing COMMAND STORE ARGS`` in a new process."""
    cmd = [sys.executable, "-m", "lpldstore.testing", command, os.fspath(store), *args]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_at(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    """SIGKILL ``proc`` after ``seconds`` unless it ends first; True if it was killed."""
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True
    return False


def different_entries(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> list[str]:
    """Where two stores differ, entry by entry (commit flags, every array, lambda); [] if equal."""
    found: list[str] = []
    with open_store(a) as sa, open_store(b) as sb:
        if not np.array_equal(sa.keys, sb.keys):
            return ["the stores have different entry keys"]
        if not np.array_equal(sa.images(), sb.images()) or not np.array_equal(sa.labels(), sb.labels()):
            found.append("images or labels differ")
        ca, cb = sa.committed(), sb.committed()
        for pos in range(sa.num_entries):
            if ca[pos] != cb[pos]:
                found.append(f"position {pos}: committed {bool(ca[pos])} vs {bool(cb[pos])}")
                continue
            if not ca[pos]:
                continue
            ea, eb = sa.entry_at(pos), sb.entry_at(pos)
            for field in ("indices", "logits"):
                if not np.array_equal(getattr(ea, field), getattr(eb, field)):
                    found.append(f"position {pos}: {field} differ")
            if ea.params != eb.params:
                found.append(f"position {pos}: augmentation parameters differ")
    return found


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
    cmd.add_argument("--background", action="store_true", help="write through a BackgroundWriter")
    make = sub.add_parser(
        "create", help="create an empty store of fake images (for interrupted-create tests)"
    )
    make.add_argument("store")
    make.add_argument("--images", type=int, default=64)
    make.add_argument("--size", type=int, default=12, help="images are SIZE x SIZE")
    make.add_argument("--batch-size", type=int, default=4)
    make.add_argument("--epochs", type=int, default=4)
    make.add_argument("--block", type=int, default=8)
    args = parser.parse_args(argv)
    if args.command == "create":
        plan = PruningPlan(
            num_images=args.images, batch_size=args.batch_size, epochs=args.epochs, ratio=2, strategy="random"
        )
        make_store(
            args.store, plan=plan, image_hw=(args.size, args.size), layout=Layout(block_entries=args.block)
        ).close()
        return 0
    writer = StoreWriter.open(args.store, part=(args.rank, args.world), commit_every=args.commit_every)
    with BackgroundWriter(writer) if args.background else writer as filling:
        fill(filling, seed=args.seed, delay=args.delay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
