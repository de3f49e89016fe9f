#!/usr/bin/env bash
# Download, on a machine WITH PyPI access, the wheels gpu.sh needs on an OFFLINE GPU machine whose python3
# already holds torch, torchvision, lightning, torchmetrics, opencv, scikit-learn, tensorboard, numpy,
# scipy, pyyaml (this workplace's CUDA image: CPython 3.12, x86-64). Only the packages that image lacks
# are fetched (about 11 MB); gpu.sh installs them with --no-index --find-links when PyPI is unreachable.
#
#   bash scripts/bench/fetch_wheels.sh [DIR]      # DIR defaults to .whl in the repo root
#   PYVER=3.12 (target CPython version)  PYTHON=python3 (the pip used to download)
#
# Keep the wheels out of git (`echo /.whl/ >> .git/info/exclude`) and ship them with the repo copy
# (for the device tool: carry [".whl"]); gpu.sh looks in .whl, then scripts/bench/wheels.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DIR=${1:-.whl}
PYVER=${PYVER:-3.12}
PY=${PYTHON:-python3}
mkdir -p "$DIR"

# versions known to work together (those of the development venv)
BINARY=(hydra-core==1.3.8 omegaconf==2.3.1 albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4
        pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 stringzilla==5.3.2
        simsimd==6.5.16 pycocotools==2.0.11 faster-coco-eval==1.8.0)
PLATFORMS=()
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
         manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64 \
         manylinux1_x86_64; do
    PLATFORMS+=(--platform "$p")
done

echo "== wheels for CPython $PYVER x86-64 -> $DIR"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${PLATFORMS[@]}" -d "$DIR" "${BINARY[@]}"
# antlr4-python3-runtime 4.9.3 (pinned by omegaconf/hydra) is published as an sdist only: build a
# pure-Python wheel of it here so the offline machine needs no build step for it.
"$PY" -m pip wheel --quiet --no-deps -w "$DIR" antlr4-python3-runtime==4.9.3
ls -la "$DIR"
du -sh "$DIR"
