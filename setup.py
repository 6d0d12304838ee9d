"""Build and install mentormix-fast.

    pip install -r requirements.txt
    pip install --no-build-isolation .      # or -e . for development

The Triton kernels in ``kernels/`` install as the subpackage ``mentormix_fast.kernels``. The compiled
extension ``mentormix_fast._C`` (``csrc/``) is described by :func:`extensions`.
"""

import glob
import json
import os
import platform
import shutil
import sys

from setuptools import setup

# ------------------------------------------------------------------------------------------------
# The compiled extension (csrc/): mentormix_fast._C (CPU kernels, always built) and
# mentormix_fast._C_cuda (CUDA kernels, optional). Environment:
#   MENTORMIX_BUILD_CUDA=0/1  force the CUDA extension off/on. Unset: built only when torch has
#                             CUDA, nvcc is found AND a CUDA device is visible, so a machine without
#                             a GPU (CI) never spends ~75 s on it or fails on it.
#   MENTORMIX_CPU_ISA=avx512|avx2|default  instruction set of the CPU kernels. Unset: the best one
#                             the build machine has (the extension is built where it runs; set
#                             "avx2" or "default" to build for other machines).
# A failure of the optional CUDA build is reported and skipped (pip install still succeeds); what
# was built or skipped, and why, goes to mentormix_fast/_build_info.json and is printed.
# ------------------------------------------------------------------------------------------------

_ISA_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "default": ["-DCPU_CAPABILITY=DEFAULT"],
}


def _log(message):
    print(f"mentormix-fast build: {message}", file=sys.stderr, flush=True)


def _cpu_isa(torch):
    """The instruction set of the CPU kernels: MENTORMIX_CPU_ISA, else the best one ATen detects on
    this machine (``torch.backends.cpu.get_cpu_capability()``)."""
    forced = os.environ.get("MENTORMIX_CPU_ISA")
    if forced:
        if forced not in _ISA_FLAGS:
            raise SystemExit(f"MENTORMIX_CPU_ISA must be one of {sorted(_ISA_FLAGS)}, got {forced!r}")
        return forced
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "default"
    capability = torch.backends.cpu.get_cpu_capability().lower()
    return next((isa for isa in ("avx512", "avx2") if capability.startswith(isa)), "default")


def _cuda_decision(torch, cuda_home):
    """(build, reason): whether to build mentormix_fast._C_cuda."""
    forced = os.environ.get("MENTORMIX_BUILD_CUDA")
    if forced == "0":
        return False, "MENTORMIX_BUILD_CUDA=0"
    if torch.version.cuda is None:
        return False, "torch was built without CUDA"
    if cuda_home is None or shutil.which(os.path.join(cuda_home, "bin", "nvcc")) is None:
        return False, "nvcc not found (set CUDA_HOME)"
    if not glob.glob(os.path.join("csrc", "cuda", "*.cu")):
        return False, "no CUDA sources in csrc/cuda"
    if forced == "1":
        return True, "MENTORMIX_BUILD_CUDA=1"
    if not torch.cuda.is_available():
        return False, "no CUDA device visible (set MENTORMIX_BUILD_CUDA=1 to build anyway)"
    return True, "CUDA device visible"


def extensions():
    """The C++/CUDA extensions this machine can build, and the build command that builds them."""
    if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"  # torch's guess from PATH can miss lib64/libcudart
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as exc:  # a metadata-only run (e.g. an sdist) without torch
        _log(f"torch not importable ({exc}): no compiled extension")
        return [], {}

    isa = _cpu_isa(torch)
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    # -ffp-contract=off: no silent FMA contraction, so the fp32 mix matches the reference bit for bit.
    # -g0: no debug info (build time ~25 s, a 0.3 MB library). The warnings silenced are GCC 12's
    # false positives inside the AVX-512 intrinsics headers and ATen's #pragma unroll.
    cxx = ["-O3", "-g0", "-ffp-contract=off", "-Wno-unknown-pragmas", "-Wno-uninitialized",
           "-Wno-maybe-uninitialized", f'-DMENTORMIX_CPU_ISA="{isa}"', *openmp, *_ISA_FLAGS[isa]]
    ext_modules = [CppExtension("mentormix_fast._C", sorted(glob.glob("csrc/cpu/*.cpp")),
                                extra_compile_args={"cxx": cxx}, extra_link_args=openmp)]
    info = {"cpu": f"built ({isa})"}

    build_cuda, reason = _cuda_decision(torch, CUDA_HOME)
    if build_cuda and not torch.cuda.is_available():
        # No device to ask for its architecture (cpp_extension would fail): build for common ones.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    if build_cuda:
        ext_modules.append(CUDAExtension(
            "mentormix_fast._C_cuda", sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp")),
            extra_compile_args={"cxx": ["-O3", "-Wno-unknown-pragmas"], "nvcc": ["-O3"]}))
        info["cuda"] = f"built ({reason})"
    else:
        info["cuda"] = f"skipped: {reason}"
        _log(f"CUDA extension skipped: {reason}")

    class Build(BuildExtension):
        """BuildExtension where the optional CUDA extension may fail without failing the install."""

        def build_extension(self, ext):
            if ext.name != "mentormix_fast._C_cuda":
                return super().build_extension(ext)
            try:
                super().build_extension(ext)
            except Exception as exc:
                info["cuda"] = f"skipped: build failed ({type(exc).__name__}: {str(exc)[-300:]})"
                _log(f"CUDA extension FAILED to build and was skipped: {exc}")

        def run(self):
            super().run()
            _log("; ".join(f"{k}: {v}" for k, v in info.items()))
            out = os.path.join(os.path.dirname(self.get_ext_fullpath("mentormix_fast._C")), "_build_info.json")
            with open(out, "w") as f:
                json.dump(info, f, indent=1)

    return ext_modules, {"build_ext": Build.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = extensions()

setup(
    name="mentormix-fast",
    version="0.1.0",
    description="MentorMix (Jiang et al., ICML 2020) for PyTorch: reference, fused Triton and C++/CUDA kernels",
    python_requires=">=3.10",
    packages=["mentormix_fast", "mentormix_fast.train", "mentormix_fast.kernels"],
    package_dir={"mentormix_fast": "mentormix_fast", "mentormix_fast.kernels": "kernels"},
    package_data={"mentormix_fast": ["data/*.json"]},
    install_requires=["torch", "numpy"],
    extras_require={
        "triton": ["triton"],
        "demo": ["scikit-learn"],
        "train": ["torchvision", "scikit-learn", "tqdm", "matplotlib"],
        "tensorboard": ["tensorboard"],
        "timm": ["timm"],
    },
    entry_points={"console_scripts": [
        "mentormix-train = mentormix_fast.train.cli:main",
        "mentormix-eval = mentormix_fast.train.evaluate:main",
        "mentormix-plots = mentormix_fast.train.plots:main",
    ]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
