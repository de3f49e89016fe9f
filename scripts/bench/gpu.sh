#!/usr/bin/env bash
# One-shot GPU benchmark for a machine with one GPU (H100/H200) and a plain copy of this repo (no venv).
#
#   bash scripts/bench/gpu.sh          # from anywhere; report -> $OUT/gpu_report.txt when $OUT is set
#   TINY=1 PYTHON=.venv/bin/python bash scripts/bench/gpu.sh    # the same steps on CPU, tiny sizes (3-8 min)
#
# Steps (each printed with a timestamp): a fresh venv + `pip install -e .`, nvidia-smi -L, the start-up
# benchmark (--help, --cfg job), command start -> first training step, then framework-vs-raw throughput
# (scripts/bench/throughput.py), each case side by side in one process: the default digits recipe
# (16-mixed), resnet50 at 224 px batch 128 in fp32 (no TF32) / bf16-mixed / bf16-mixed + channels_last,
# fasterrcnn_mobilenet_v3_large_320_fpn on the generated shapes, digits compiled (compile on/off); then
# dataset scale (100k images validated first and cached, a 1M-entry listing). It ends with one table
# (scripts/bench/gpu_summary.py over the JSON files every benchmark writes to $OUT/bench/).
# Every step has a timeout, and the benchmarks share a deadline (BUDGET, default 290 s from the start),
# so the whole script stays under 5 minutes even when something hangs; a step the budget cannot fit is
# skipped and named at the end. TINY=1 is a check that every step runs, on a CPU that no device budget
# limits: its timeouts are 3x (STRETCH) and its deadline 900 s, so a slow or shared 2-core VM (steps took
# twice as long on a busy afternoon) still reaches the last step.
#
# Offline machines: the venv also sees the site-packages of $PYTHON (so a preinstalled torch is used,
# never re-downloaded); when PyPI is unreachable the install falls back to --no-index with the wheels in
# $WHEELS (default: .whl or scripts/bench/wheels, made elsewhere by scripts/bench/fetch_wheels.sh).
# Environment: PYTHON (default python3), VENV (default /tmp/aistudio-gpu-venv), WHEELS, OUT, BUDGET, TINY,
# STRETCH (every step's timeout multiplied by it).
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
TINY=${TINY:-0}
if ((TINY)); then BUDGET=${BUDGET:-900} STRETCH=${STRETCH:-3}; else BUDGET=${BUDGET:-290} STRETCH=${STRETCH:-1}; fi
START=$SECONDS
FAILED=()

step() { printf '\n=== [%s, +%ds] %s\n' "$(date +%T)" $((SECONDS - START)) "$*"; }

# a benchmark step: at most $1 seconds and never past the deadline; a failure is reported, the next step runs
bench() {
    local limit=$(($1 * STRETCH)) name=$2
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

    local acc=gpu
    if ((TINY)) || ! nvidia-smi -L; then
        acc=cpu
        echo "--- $( ((TINY)) && echo 'TINY=1' || echo 'no GPU'): every case on the CPU at tiny sizes"
    fi
    local json=${OUT:-$(mktemp -d /tmp/aistudio-gpu-json.XXXXXX)}/bench data
    mkdir -p "$json"
    data=$(mktemp -d /tmp/aistudio-gpu-data.XXXXXX)  # shared: the cases reuse the generated datasets

    bench 45 "start-up" "$VPY" scripts/bench/startup.py --repeat 2
    local -a scale=(--no-train) first=(--runs 3)
    [[ $acc == cpu ]] && scale+=(--images 2000 --entries 20000) first=(--runs 1)
    bench 60 "start -> first step" "$VPY" scripts/bench/first_step.py "${first[@]}" --data-dir "$data" \
        --json "$json/first-step.json"
    # framework vs raw: one case = one throughput.py process (raw and framework alternate inside it)
    local -a common=(--accelerator "$acc" --data-dir "$data")
    local -a digits=(--epochs 5 --rounds 2 --loader-ceiling) compiled=(--epochs 4 --rounds 1 --compile)
    # 30 steps an epoch: with 10, per-epoch costs (checkpoint, metrics files) set the ratio more than the steps
    local -a r50=(--model resnet50 --image-size 224 --batch-size 128 --epochs 3 --rounds 1 --limit-batches 30)
    local -a det=(--experiment shapes_detection --model "" --batch-size 0 --image-size 0 --epochs 3 --rounds 1
                  --limit-batches 20)
    local half=16-mixed
    if [[ $acc == cpu ]]; then  # tiny: 2-3 steps an epoch, small images; CPU has no fp16 autocast
        digits=(--epochs 2 --rounds 1 --limit-batches 3 --loader-ceiling)
        compiled=(--epochs 2 --rounds 1 --limit-batches 3 --compile)
        r50=(--model resnet50 --image-size 32 --batch-size 8 --epochs 2 --rounds 1 --limit-batches 2)
        det=(--experiment shapes_detection --model "" --batch-size 2 --image-size 0 --epochs 2 --rounds 1
             --limit-batches 2)
        common+=(--threads "$(nproc)")
        half=32-true
    fi
    case_() {  # case_ NAME LIMIT ARGS...: one throughput case, its figures in $json/throughput-NAME.json
        local name=$1 limit=$2
        shift 2
        bench "$limit" "throughput $name" "$VPY" scripts/bench/throughput.py "${common[@]}" "$@" --label "$name" \
            --json "$json/throughput-$name.json"
    }
    case_ digits 70 "${digits[@]}"  # the default digits recipe (resnet18, 32 px) in 16-bit mixed precision
    # fp32 = full float32 (matmul_precision=highest: no TF32 in matmuls or cuDNN convolutions), the baseline
    # bf16-mixed >= 1.6x is measured against
    case_ resnet50-fp32 60 "${r50[@]}" --precision 32-true --override hardware.matmul_precision=highest
    case_ resnet50-bf16 60 "${r50[@]}" --precision bf16-mixed --loader-ceiling
    case_ resnet50-bf16-cl 55 "${r50[@]}" --precision bf16-mixed --channels-last
    case_ detector 45 "${det[@]}" --precision "$half"
    case_ digits-compile 100 "${compiled[@]}"  # compile on/off: the small-kernel, launch-bound case
    bench 60 "dataset scale" "$VPY" scripts/bench/dataset_scale.py "${scale[@]}" --json "$json/dataset-scale.json"
    rm -rf "$data"
    step "summary"
    "$VPY" scripts/bench/gpu_summary.py "$json" || FAILED+=("summary")
    if [[ -n "${OUT:-}" ]]; then  # one archive: the device tool brings back at most 8 files
        tar czf "$OUT/bench.tgz" -C "$OUT" bench && rm -rf "$json"
    fi

    local failed="none"
    if ((${#FAILED[@]})); then failed=$(IFS=,; echo "${FAILED[*]}"); fi
    step "done in $((SECONDS - START)) s; failed steps: $failed"
    ((${#FAILED[@]} == 0))
}

main 2>&1 | tee "$REPORT"
rc=${PIPESTATUS[0]}
echo "report: $REPORT"
exit "$rc"
