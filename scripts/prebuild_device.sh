#!/usr/bin/env bash
# Build, on this machine, the extensions for the lent GPU machine (python 3.12, torch 2.11 + CUDA 13.0,
# triton 3.6), so that scripts/gpu_check.sh spends no device time compiling C++/CUDA:
#
#   bash scripts/prebuild_device.sh [VENV]     # default VENV: .device-venv (made if missing, ~5 min)
#
# Writes mentormix_fast/_C and _C_cuda for cp312 into .device-build/ (ignored by git; carry it to the
# device: `carry: [".device-build"]`), and compiles every Triton kernel variant with the device's
# triton 3.6 for sm_90 (python -m mentormix_fast.kernels.aot_check), printing what failed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.device-venv}
if [ ! -x "$venv/bin/python" ]; then
    py312=$(command -v python3.12 || ls /root/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | head -n 1)
    "$py312" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q "torch==2.11.0" "triton==3.6.0" numpy setuptools
fi
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MENTORMIX_BUILD_CUDA=1
info=mentormix_fast/_build_info.json
[ -e "$info" ] && cp "$info" "$info.local"
"$venv/bin/python" setup.py build_ext --inplace --build-temp build/device-temp
mkdir -p .device-build
mv mentormix_fast/_C.cpython-312-*.so mentormix_fast/_C_cuda.cpython-312-*.so .device-build/
mv "$info" .device-build/_build_info.json
[ -e "$info.local" ] && mv "$info.local" "$info"
ls -l .device-build
[ -e mentormix_fast/kernels ] || ln -s ../kernels mentormix_fast/kernels
env -u TRITON_INTERPRET PYTHONPATH=$PWD "$venv/bin/python" -m mentormix_fast.kernels.aot_check --jobs "$(nproc)"
