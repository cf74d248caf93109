"""Start-up time: ``lpldstore info STORE`` and ``import lpldstore`` beside ``import zarr``.

Each command runs in a fresh interpreter, the three interleaved round by round so that machine
noise hits them alike; the figures are medians of wall time over the rounds. The
target: ``lpldstore info`` at most 2.5x ``python -c "import zarr"``, the floor any zarr-based
tool pays. ``python -c "import torch"`` is measured too, as the cost the core no longer pays.

    python benchmarks/startup.py                       # ImageNet-1K IPC10 label shape at 40x
    python benchmarks/startup.py --rounds 5 --out /tmp/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lpldstore import PruningPlan
from lpldstore.testing import fill, make_store

RESULTS = Path(__file__).parent / "results"


def _build_store(path: Path, args: argparse.Namespace) -> None:
    """Random images and logits in the label shape asked for (ImageNet-1K IPC10 at 40x by default)."""
    n, size = args.classes * args.ipc, args.size
    plan = PruningPlan(num_images=n, batch_size=args.batch, epochs=args.epochs, ratio=args.ratio)
    with make_store(
        path, plan=plan, num_classes=args.classes, image_hw=(size, size), output_size=(size, size)
    ) as w:
        fill(w)


def _lpldstore_command() -> list[str]:
    script = Path(sys.executable).with_name("lpldstore")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lpldstore"]


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument(
        "--size", type=int, default=32, help="image side (the images do not change what info reads)"
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--ratio", type=float, default=40)
    parser.add_argument("--out", type=Path, default=RESULTS / "startup.json")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lpld-startup-"))
    try:
        store = tmp / "labels.zarr"
        _build_store(store, args)
        commands = {
            "import_zarr": [sys.executable, "-c", "import zarr"],
            "import_lpldstore": [sys.executable, "-c", "import lpldstore"],
            "lpldstore_info": [*_lpldstore_command(), "info", str(store)],
            "import_torch": [sys.executable, "-c", "import torch"],
        }
        for cmd in commands.values():  # warm the page cache once
            _time(cmd)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, cmd in commands.items():
                times[name].append(_time(cmd))
        with subprocess.Popen(
            [sys.executable, "-c", "import lpldstore, sys; print(len(sys.modules))"],
            stdout=subprocess.PIPE,
            text=True,
        ) as proc:
            modules = int(proc.communicate()[0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    medians = {name: statistics.median(values) for name, values in times.items()}
    ratios = {name: medians[name] / medians["import_zarr"] for name in medians}
    result = {
        "command": "python benchmarks/startup.py " + " ".join(sys.argv[1:]),
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count()},
        "store": {k: getattr(args, k) for k in ("classes", "ipc", "size", "batch", "epochs", "ratio")},
        "rounds": args.rounds,
        "median_seconds": medians,
        "ratio_to_import_zarr": ratios,
        "seconds": times,
        "modules_after_import_lpldstore": modules,
        "target": {"lpldstore_info_over_import_zarr": 2.5, "met": ratios["lpldstore_info"] <= 2.5},
    }
    print(f"{'command':<20}{'median s':>10}{'x import zarr':>15}")
    for name in commands:
        print(f"{name:<20}{medians[name]:>10.3f}{ratios[name]:>15.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
