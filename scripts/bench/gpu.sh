#!/usr/bin/env bash
# One-shot GPU benchmark for a machine with one GPU (H100/H200) and a plain copy of this repo (no venv).
#
#   bash scripts/bench/gpu.sh          # from anywhere; report -> $OUT/gpu_report.txt when $OUT is set
#
# Steps (each printed with a timestamp): a fresh venv + `pip install -e .`, nvidia-smi -L, the start-up
# benchmark, the default `python train.py hardware=gpu` timed end to end (default_run.py), and the
# framework-vs-raw throughput benchmark on the GPU in 16-bit mixed precision (throughput.py).
# Every step has a timeout, and the benchmarks share a deadline (BUDGET, default 420 s from the start),
# so the whole script stays under about 8 minutes even when something hangs (typically ~3 minutes).
#
# Offline machines: the venv also sees the site-packages of $PYTHON (so a preinstalled torch is used,
# never re-downloaded); when PyPI is unreachable the install falls back to --no-index with the wheels in
# $WHEELS (default: .whl or scripts/bench/wheels, made elsewhere by scripts/bench/fetch_wheels.sh).
# Environment: PYTHON (default python3), VENV (default /tmp/aistudio-gpu-venv), WHEELS, OUT, BUDGET.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
VENV=${VENV:-/tmp/aistudio-gpu-venv}
WHEELS=${WHEELS:-}
if [[ -z "$WHEELS" ]]; then  # first of .whl (the device machines' convention) and scripts/bench/wheels
    for dir in "$REPO/.whl" "$REPO/scripts/bench/wheels"; do
        if [[ -d "$dir" ]]; then WHEELS=$dir; break; fi
    done
fi
if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    REPORT=$OUT/gpu_report.txt
else
    REPORT=$(mktemp /tmp/gpu_report.XXXXXX.txt)
fi
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 NO_ALBUMENTATIONS_UPDATE=1
BUDGET=${BUDGET:-420}
START=$SECONDS
FAILED=()

step() { printf '\n=== [%s, +%ds] %s\n' "$(date +%T)" $((SECONDS - START)) "$*"; }

# a benchmark step: at most $1 seconds and never past the deadline; a failure is reported, the next step runs
bench() {
    local limit=$1 name=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    ((left < limit)) && limit=$left
    if ((limit < 20)); then
        echo "!!! $name skipped: the ${BUDGET}s budget is spent"
        FAILED+=("$name")
        return 0
    fi
    step "$name (timeout ${limit}s): $*"
    local rc=0
    timeout --kill-after=10 "$limit" "$@" || rc=$?
    if ((rc != 0)); then
        echo "!!! $name failed (exit code $rc$( ((rc == 124)) && echo ', timed out'))"
        FAILED+=("$name")
    fi
}

main() {
    cd "$REPO"
    step "machine: ${HOSTNAME:-?}, $(nproc) cores; repo $REPO; report $REPORT"
    git log -1 --oneline 2>/dev/null || true

    step "venv $VENV from $PY ($("$PY" --version 2>&1))"
    rm -rf "$VENV"
    # --without-pip: pip and setuptools come from $PYTHON's site-packages, linked in below, so an offline
    # --no-build-isolation install uses the base's (recent) setuptools, not an old bundled one
    "$PY" -m venv --without-pip "$VENV"
    local purelib
    purelib=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # $PYTHON's own site-packages go after the venv's (their .pth files processed too): preinstalled
    # torch & co. are found, not fetched
    "$PY" -c 'import site; print("".join(f"import site; site.addsitedir({d!r})\n" for d in site.getsitepackages()))' \
        >"$purelib/_base_python_site.pth"
    cat "$purelib/_base_python_site.pth"
    if ! "$VENV/bin/python" -m pip --version; then  # a base without pip: the venv gets its own
        "$VENV/bin/python" -m ensurepip --default-pip
    fi
    local VPY=$VENV/bin/python

    step "pip install -e ."
    local links=() online=1
    if [[ -n "$WHEELS" && -d "$WHEELS" ]]; then links=(--find-links "$WHEELS"); fi
    if [[ -z "${PIP_INDEX_URL:-}" ]] && ! timeout 10 "$VPY" -c \
            'import socket; socket.create_connection(("pypi.org", 443), timeout=5)' 2>/dev/null; then
        online=0
        echo "--- pypi.org unreachable"
    fi
    if ((online)) && timeout 100 "$VPY" -m pip install --progress-bar off --retries 1 --timeout 15 \
            ${links[@]+"${links[@]}"} -e "$REPO"; then
        :
    else
        echo "--- offline install: --no-index --no-build-isolation ${links[*]:-(no wheels dir: $WHEELS)}"
        timeout 80 "$VPY" -m pip install --progress-bar off --no-index --no-build-isolation \
            ${links[@]+"${links[@]}"} -e "$REPO"
    fi
    "$VPY" - <<'EOF'
import importlib.metadata as md
import torch
print({p: md.version(p) for p in ("aistudio", "torch", "torchvision", "lightning", "hydra-core", "albumentations")})
print("cuda available:", torch.cuda.is_available(), "| device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
EOF

    step "nvidia-smi -L"
    nvidia-smi -L

    bench 45 "start-up" "$VPY" scripts/bench/startup.py
    local data
    data=$(mktemp -d /tmp/aistudio-gpu-data.XXXXXX)  # shared: the throughput run reuses the digits
    bench 170 "default train on GPU" "$VPY" scripts/bench/default_run.py --data-dir "$data" hardware=gpu
    bench 170 "throughput on GPU" "$VPY" scripts/bench/throughput.py --accelerator gpu --epochs 8 --rounds 2 \
        --data-dir "$data"
    rm -rf "$data"

    local failed="none"
    if ((${#FAILED[@]})); then failed=$(IFS=,; echo "${FAILED[*]}"); fi
    step "done in $((SECONDS - START)) s; failed steps: $failed"
    ((${#FAILED[@]} == 0))
}

main 2>&1 | tee "$REPORT"
rc=${PIPESTATUS[0]}
echo "report: $REPORT"
exit "$rc"
