"""How far reduced-precision teacher logits stray from float32: the basis of verify's tolerances.

    python benchmarks/verify_tolerance.py            # CPU; writes benchmarks/results/verify_tolerance.json
    python benchmarks/verify_tolerance.py --device cuda   # the same on a GPU (bf16, fp16, TF32)

``lpld verify --teacher`` re-runs the teacher in the precision the relabel recorded and allows
``slack + rel * max|stored logit|`` per entry (:data:`lpld_pipeline.precision.TOLERANCES`). This
script measures, per teacher and precision, ``max|logits - float32 logits| / max|float32 logits|``
on relabel-like batches (random images through the store's crop/flip/CutMix replay), so that the
``rel`` of each precision can be read against what the arithmetic does. Two runs in the same
precision on different devices (the check on the CPU, the relabel on a GPU) differ by at most
the sum of their two distances to float32, hence the factor the tolerances keep over the largest
ratio measured here. Teachers have random weights (no pretrained weights are needed); a trained
teacher's logits are larger, which the relative measure absorbs.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpld_pipeline.teacher import Teacher, TeacherSpec, build_model
from lpldstore import RelabelConfig, apply_params, draw_params

CASES = (("tiny_resnet", 16, 16), ("tiny_resnet", 16, 32), ("resnet18", 0, 64), ("resnet18", 0, 112))


def _teacher(arch: str, width: int, classes: int, seed: int) -> Teacher:
    spec = TeacherSpec(arch=arch, num_classes=classes, width=max(width, 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Teacher(build_model(spec), spec)


def measure(device: torch.device, batches: int, batch_size: int, classes: int) -> list[dict[str, Any]]:
    rows = []
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    for arch, width, size in CASES:
        teacher = _teacher(arch, width, classes, seed=0).to(device)
        relabel = RelabelConfig(output_size=(size, size))
        rng = np.random.default_rng(0)
        ratios: dict[str, list[float]] = {}
        scale = []
        for b in range(batches):
            images = torch.from_numpy(rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8))
            params = draw_params(relabel, (size, size), batch_size, 0, b)
            x = apply_params(images.to(device), params, relabel, mean=(0, 0, 0), std=(1, 1, 1))
            with torch.no_grad():
                if device.type == "cuda":
                    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
                ref = teacher(x).float()
                variants = {"bfloat16": torch.bfloat16, "float16": torch.float16}
                out = {}
                for name, dtype in variants.items():
                    with torch.autocast(device.type, dtype=dtype):
                        out[name] = teacher(x).float()
                if device.type == "cuda":
                    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
                    out["tf32"] = teacher(x).float()
            top = float(ref.abs().max())
            scale.append(top)
            for name, logits in out.items():
                ratios.setdefault(name, []).append(float((logits - ref).abs().max()) / top)
        for name, values in ratios.items():
            rows.append(
                {
                    "teacher": arch,
                    "image_size": size,
                    "precision": name,
                    "max_ratio": max(values),
                    "median_ratio": float(np.median(values)),
                    "median_max_abs_logit": float(np.median(scale)),
                }
            )
            print(
                f"{arch:12s} {size:4d}px {name:9s} max |diff|/max|logit| = {max(values):.2e} "
                f"(median {np.median(values):.2e}; max|logit| ~ {np.median(scale):.3g})"
            )
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--out", default="benchmarks/results/verify_tolerance.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    rows = measure(device, args.batches, args.batch_size, args.classes)
    doc = {
        "command": "python benchmarks/verify_tolerance.py"
        + (f" --device {args.device}" if args.device != "cpu" else ""),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batches": args.batches,
        "batch_size": args.batch_size,
        "classes": args.classes,
        "rows": rows,
    }
    out = Path(args.out)
    if device.type == "cuda" and args.out == parser.get_default("out"):
        out = out.with_name("verify_tolerance_cuda.json")
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
