"""A compile-only check of csrc/cuda with nvcc, wherever nvcc is found (one architecture, -O1;
MENTORMIX_TEST_CUDA_COMPILE=0 turns it off). The CUDA kernels' behaviour is tested by tests/ops on
a GPU."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest
import torch

import mentormix_fast as mf


@pytest.mark.skipif(os.environ.get("MENTORMIX_TEST_CUDA_COMPILE") == "0", reason="MENTORMIX_TEST_CUDA_COMPILE=0")
@pytest.mark.skipif(shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"),
                    reason="nvcc not found")
@pytest.mark.skipif(torch.version.cuda is None, reason="torch without CUDA headers (CPU-only build)")
def test_cuda_sources_compile(tmp_path):
    """Compile-only: every csrc/cuda source compiles with nvcc / the host compiler against torch."""
    from torch.utils.cpp_extension import include_paths

    root = os.path.join(os.path.dirname(__file__), "..")
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    cuda_home = os.environ.get("CUDA_HOME") or ("/usr/local/cuda" if os.path.isdir("/usr/local/cuda/include") else
                                                os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    cuda_include = os.path.join(cuda_home, "include")
    incs = [f"-I{p}" for p in include_paths(device_type="cuda")] + [f"-I{sysconfig_include()}", f"-I{cuda_include}"]
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    for src in sorted(glob.glob(os.path.join(root, "csrc", "cuda", "*.cu"))):
        cmd = [nvcc, "-c", src, "-o", str(tmp_path / "out.o"), "-std=c++20", "-O1", "--expt-relaxed-constexpr",
               "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
               "-gencode=arch=compute_90,code=sm_90", "-DTORCH_EXTENSION_NAME=_C_cuda", abi, *incs]
        compile_or_fail(cmd)
    for src in sorted(glob.glob(os.path.join(root, "csrc", "cuda", "*.cpp"))):
        cmd = ["c++", "-c", src, "-o", str(tmp_path / "out.o"), "-std=c++20", "-O1", "-fPIC", abi,
               "-DTORCH_EXTENSION_NAME=_C_cuda", *incs]
        compile_or_fail(cmd)


def compile_or_fail(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd[:3])} failed:\n{done.stderr[-3000:]}"


def sysconfig_include() -> str:
    import sysconfig

    return sysconfig.get_paths()["include"]


def test_cuda_status_is_reported():
    """Importing never fails without CUDA: the cuda backend is available or says why not."""
    status = mf.backends().get("cuda")
    assert status is not None
    if not torch.cuda.is_available():
        assert status != "available"
    assert sys.modules.get("mentormix_fast") is not None
