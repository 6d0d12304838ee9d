#!/usr/bin/env bash
# Everything the GPU must prove, in ONE device call of at most 8 minutes wall time:
#
#   bash scripts/gpu_check.sh            # on the GPU machine (logs and results under $OUT)
#   bash scripts/gpu_check.sh --dry-run  # any CPU machine: every stage with tiny sizes (GPU_CHECK_DRY=1 too)
#
# Stages, each stopped at its own limit so that the later ones still run (seconds, GPU / dry run):
#   env     GPU, driver, torch/triton versions, mentormix_fast.backends()               15
#   build   the CUDA extension: the prebuilt one from .device-build/ (scripts/prebuild_device.sh
#           makes it here, against the GPU machine's python 3.12 and torch 2.11), else built
#           there with 16 jobs; then the import check on the GPU                      100
#   tests   tests/ops (every op on "cuda" and "triton" against the reference: fp32/bf16/fp16,
#           odd shapes, K up to 262144), tests/test_module_backends.py (steps, in-place state,
#           torch.compile fullgraph, NaN rows), tests/test_gpu.py (CUDA graphs one program and
#           many, 1000 replays, no host sync, profiler launch count, 2^31 elements, bad partners
#           in a subprocess); two pytest processes, --durations                        170
#   bench   bench/run_bench.py: B=128 x K=10/100, 1024 x 1000, 16384 x 16384, 65536 x 1000,
#           5 x 262144; fp32, bf16; every backend beside the eager reference and torch.compile
#           of it (dynamic shapes: one compile per dtype), GB/s and % of the copy bandwidth
#           measured in the same run                                                   110
#   train   bench/bench_train_step.py: wide ResNet-32, B=128, bf16, channels_last: images/s of a
#           MentorMix step and of a plain CE step, and their ratio                       45
#   memcheck compute-sanitizer --tool memcheck on a small op subset, if installed         30
# The limits add up to 470 s, under the 8 minutes one call may take with transfers and start-up.
# The Triton cache (TRITON_CACHE_DIR) is kept between stages. Results: $OUT/bench-*.json/.md,
# $OUT/train.json, $OUT/tests-*.xml, $OUT/stages.txt (each stage's exit code and seconds).
set -uo pipefail
cd "$(dirname "$0")/.."
dry=${GPU_CHECK_DRY:-0}
[ "${1:-}" = "--dry-run" ] && dry=1
out=${OUT:-gpu_out}
mkdir -p "$out"
: >"$out/stages.txt"
export PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/mentormix-triton-cache}
py=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ "$dry" = 1 ] && [ -x .venv/bin/python ] && py=.venv/bin/python
# setup.py maps kernels/ to mentormix_fast.kernels; an in-place run needs the link.
[ -e mentormix_fast/kernels ] || ln -s ../kernels mentormix_fast/kernels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if compgen -G ".whl/*.whl" >/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi

# stage NAME LIMIT_GPU LIMIT_DRY COMMAND...: run with its own time limit, log to $OUT/NAME.log.
stage() {
    local name=$1 limit=$2
    [ "$dry" = 1 ] && limit=$3
    shift 3
    local start=$SECONDS
    echo "== $name (limit ${limit} s)"
    timeout --kill-after=5 "$limit" bash -c "$*" >"$out/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - start)) s" | tee -a "$out/stages.txt"
    tail -n 12 "$out/$name.log"
}

env_facts() {
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null \
        || echo "no nvidia-smi"
    $py -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', \
torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() \
else None)"
}

build() {
    if [ "$dry" = 1 ]; then
        echo "dry run: no CUDA build (the C++ CPU extension of the install is used)"
    elif compgen -G ".device-build/*.so" >/dev/null; then
        echo "prebuilt extensions: $(ls .device-build)"
        cp .device-build/*.so .device-build/_build_info.json mentormix_fast/
    else
        MENTORMIX_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 $py setup.py build_ext --inplace 2>&1 | tail -n 20
    fi
    $py -c "import mentormix_fast as m; s = m.backends(); print(s)
import torch
assert not torch.cuda.is_available() or s['cuda'] == 'available', s['cuda']"
}

tests() {
    local sel=(tests/ops tests/test_module_backends.py tests/test_gpu.py)
    local k1="triton" k2="cuda-cuda or test_gpu"
    if [ "$dry" = 1 ]; then
        sel=(tests/ops/test_mix.py tests/test_gpu.py)
        k1="cpu-cpu and matches" k2="reference-cpu and matches or test_gpu"
    fi
    local common=(-q -p no:cacheprovider -rs --durations=15)
    $py -m pytest "${common[@]}" --junitxml="$out/tests-triton.xml" "${sel[@]}" -k "$k1" >"$out/tests-triton.log" 2>&1 &
    local a=$!
    $py -m pytest "${common[@]}" --junitxml="$out/tests-cuda.xml" "${sel[@]}" -k "$k2" >"$out/tests-cuda.log" 2>&1
    local rc=$?
    wait $a
    local rc_a=$?
    tail -n 25 "$out/tests-triton.log" "$out/tests-cuda.log"
    return $((rc || rc_a))
}

bench() {
    local stamp
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    if [ "$dry" = 1 ]; then
        $py bench/run_bench.py --device cpu --cases 8x10 --dtypes fp32 --variants reference cpu --min-time 0.01 \
            --out "$out/bench-dry-$stamp.json"
    else
        $py bench/run_bench.py --cases 128x10 128x100 1024x1000 16384x16384 65536x1000 5x262144 --dtypes fp32 bf16 \
            --compile-dynamic --min-time 0.1 --out "$out/bench-h200-$stamp.json"
    fi
}

train() {
    if [ "$dry" = 1 ]; then
        $py bench/bench_train_step.py --model resnet8 --batch 8 --steps 2 --warmup 1 --device cpu --out "$out/train.json"
    else
        $py bench/bench_train_step.py --out "$out/train.json"
    fi
}

memcheck() {
    local tool
    tool=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
    if [ -z "$tool" ] || [ "$dry" = 1 ]; then
        echo "compute-sanitizer not run (dry run, or not installed)"
        return 0
    fi
    "$tool" --tool memcheck --error-exitcode 3 $py -m pytest -q -p no:cacheprovider tests/ops/test_mix.py \
        tests/ops/test_mixed_loss.py -k "cuda and (range or nan_row)"
}

export dry out py
export -f env_facts build tests bench train memcheck
stage env 15 30 env_facts
stage build 100 60 build
stage tests 170 300 tests
stage bench 110 200 bench
stage train 45 120 train
stage memcheck 30 10 memcheck
echo "stages (name, exit code, seconds):"
cat "$out/stages.txt"
! grep -qv " rc=0 " "$out/stages.txt"
