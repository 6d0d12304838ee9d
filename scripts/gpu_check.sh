#!/usr/bin/env bash
# The GPU checks of issues 3 and 4 on the lent machine (python3 3.12, torch 2.11 + CUDA 13.0,
# triton 3.6, nvcc 13.0, no network), in stages that each fit one 10-minute device call:
#
#   bash scripts/gpu_check.sh build   # the C++ CPU and CUDA extensions, in place (+ import check)
#   bash scripts/gpu_check.sh test    # GPU tests: Triton compiled for real, C++/CUDA, graphs, compile
#   bash scripts/gpu_check.sh bench   # the benchmark table (bench/run_bench.py)
#
# Logs and results go under $OUT (the device tool's folder; ./gpu_out elsewhere). Build once per warm
# machine: its outputs stay between calls. Wheels of packages the machine lacks (hypothesis) may
# travel in .whl/ (see the device README); they are installed to /tmp/site first.
set -uo pipefail
stage=${1:?usage: gpu_check.sh build|test|bench}
out=${OUT:-gpu_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# setup.py maps the folder kernels/ to mentormix_fast.kernels; an in-place run needs the link.
[ -e mentormix_fast/kernels ] || ln -s ../kernels mentormix_fast/kernels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

case "$stage" in
build)
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
        | tee -a "$out/gpu.txt"
    MENTORMIX_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 setup.py build_ext --inplace \
        >"$out/build.log" 2>&1
    echo "build exit $?"
    tail -n 5 "$out/build.log"
    python3 -c "import mentormix_fast as mf; print(mf.backends())" | tee -a "$out/gpu.txt"
    ;;
test)
    timeout 560 python3 -m pytest -q -p no:cacheprovider -rs --junitxml="$out/gpu-tests.xml" \
        tests/test_triton_gpu.py tests/test_cpp_cuda.py tests/test_triton_state.py tests/test_triton_compile.py \
        tests/test_triton_kernels.py 2>&1 | tee "$out/tests.log" | tail -n 40
    ;;
bench)
    timeout 560 python3 bench/run_bench.py --out "$out/bench-$(date -u +%Y%m%dT%H%M%SZ).json" 2>&1 \
        | tee "$out/bench.txt"
    ;;
*)
    echo "unknown stage: $stage" >&2
    exit 2
    ;;
esac
