#!/usr/bin/env bash
# One command that installs everything: a virtual environment in .venv with the package (editable),
# its development tools and a matched torch/torchvision pair.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
.venv/bin/python - <<'PY'
import torch, torchvision, zarr
from torchvision.transforms.v2 import functional as F
F.resized_crop(torch.zeros(1, 3, 8, 8), 0, 0, 4, 4, [2, 2])  # fails if torch and torchvision do not match
print(f"ok: torch {torch.__version__}, torchvision {torchvision.__version__}, zarr {zarr.__version__}")
PY
