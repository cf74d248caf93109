#!/usr/bin/env bash
# Download the wheels the GPU machine lacks into .whl/ (git-ignored), for CPython 3.12 on
# manylinux x86_64: the device image has torch 2.11, torchvision 0.26, numpy, packaging,
# typing-extensions, PyYAML, fsspec, tqdm, scikit-learn, pytest and hypothesis, but no zarr,
# numcodecs, donfig or google-crc32c. The versions are the ones this project is tested with.
#
#   bash scripts/device_wheels.sh            # here, once: fills .whl/ (about 10 MB)
#
# Then, on the device tool (one call; docs/loader.md "The H200 suite" has the exact command),
# carry .whl and install them before anything imports lpldstore:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.whl
mkdir -p "$dest"
pip=(python3 -m pip)
if [ -x .venv/bin/python ]; then pip=(.venv/bin/python -m pip); fi
# pip matches manylinux tags exactly: name every glibc level a wheel may be built for.
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
"${pip[@]}" download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dest" \
    zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
# One version of each: pip refuses to install two.
for name in zarr numcodecs donfig google_crc32c; do
    count=$(find "$dest" -maxdepth 1 -name "${name}-*.whl" | wc -l)
    if [ "$count" -ne 1 ]; then
        echo "expected one ${name} wheel in $dest, found $count: remove the others" >&2
        exit 2
    fi
done
ls -1 "$dest"
du -sh "$dest"
