"""The CUDA kernels ("cuda" backend, mentormix_fast._C_cuda) against the reference on a GPU, and an
opt-in compile-only check of csrc/cuda with nvcc.

Without a CUDA device every GPU test skips; the compile check runs wherever nvcc is found (~20 s
on 2 cores, one architecture, -O1; MENTORMIX_TEST_CUDA_COMPILE=0 turns it off).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest
import torch

import mentormix_fast as mf
from mentormix_fast import reference as R
from mentormix_fast.backends import backends, get_backend
from mentormix_fast.config import MentorMixConfig

HAS_CUDA = torch.cuda.is_available()
STATUS = backends().get("cuda")
needs_gpu = pytest.mark.skipif(not HAS_CUDA or STATUS != "available", reason=f"cuda backend: {STATUS}")
pytestmark = pytest.mark.cuda

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 2), (7, 3), (33, 17), (128, 10), (257, 100), (64, 1000), (1024, 1000), (5000, 10)]
GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def config(second_reweight=False, alpha=8.0):
    return MentorMixConfig(percentile=0.7, mixup_alpha=alpha, second_reweight=second_reweight, burn_in_epoch=10,
                           total_steps=1000, loss_ma_decay=0.5)


def inputs(B, K, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(B, K, generator=g) * 3).to(dtype)
    y = torch.randint(0, K, (B,), generator=g)
    u = torch.rand(B, generator=g, dtype=torch.float64)
    beta = R.draw_beta(8.0, B, g, "cpu")
    return [t.cuda() for t in (z, y, u, beta)]


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,K", SHAPES)
@pytest.mark.parametrize("weighting", ["threshold", "mentornet"])
def test_weights_and_sample_matches_reference(B, K, dtype, weighting):
    cuda, ref = get_backend("cuda", torch.device("cuda")), get_backend("reference", torch.device("cuda"))
    w = mf.mentornet_pd().cuda() if weighting == "mentornet" else "threshold"
    z, y, u, beta = inputs(B, K, dtype, seed=B + K)
    for epoch in (torch.tensor(3, device="cuda"), torch.tensor(60, device="cuda"), 99):
        ma = torch.tensor(1.7, device="cuda")
        a = cuda.weights_and_sample(z, y, ma, epoch, config(), w, None, u, beta)
        r = ref.weights_and_sample(z, y, ma, epoch, config(), w, None, u, beta)
        torch.testing.assert_close(a.loss, r.loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.loss_ma, r.loss_ma, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.weights, r.weights, rtol=0, atol=1e-4 if weighting == "mentornet" else 0)
        mismatch = (a.partner != r.partner).float().mean()
        assert mismatch <= 1e-3, f"partner mismatch rate {float(mismatch)}"


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,K", SHAPES)
@pytest.mark.parametrize("second_reweight", [False, True])
def test_mixed_loss_and_grad_match_reference(B, K, dtype, second_reweight):
    cuda, ref = get_backend("cuda", torch.device("cuda")), get_backend("reference", torch.device("cuda"))
    w = mf.mentornet_pd().cuda()
    cfg = config(second_reweight)
    z, y, u, beta = inputs(B, K, dtype, seed=3 * B + K)
    plan = ref.weights_and_sample(z, y, torch.tensor(0.5, device="cuda"), 50, cfg, w, None, u, beta)
    for upstream in (1.0, 2.5):
        za, zr = z.clone().requires_grad_(), z.clone().requires_grad_()
        ma2 = torch.tensor(2.0, device="cuda")
        la, ma_a = cuda.mixed_loss(za, y, plan.partner, plan.lam, ma2, 50, cfg, w)
        lr, ma_r = ref.mixed_loss(zr, y, plan.partner, plan.lam, ma2, 50, cfg, w)
        torch.testing.assert_close(la, lr.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ma_a, ma_r, rtol=1e-6, atol=1e-6)
        (la * upstream).backward()
        (lr * upstream).backward()
        err = (za.grad.float() - zr.grad.float()).abs().max() / zr.grad.float().abs().max().clamp_min(1e-30)
        assert err <= GRAD_RTOL[dtype]


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mix_matches_reference(dtype):
    cuda, ref = get_backend("cuda", torch.device("cuda")), get_backend("reference", torch.device("cuda"))
    x = torch.randn(64, 3, 8, 8, device="cuda").to(dtype)
    partner = torch.randint(0, 64, (64,), device="cuda")
    lam = torch.rand(64, device="cuda")
    tol = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(cuda.mix(x, partner, lam).float(), ref.mix(x, partner, lam).float(), rtol=tol,
                               atol=4 * tol)


@needs_gpu
def test_module_step_has_no_sync_and_graph_captures():
    """A whole step: no host synchronisation, and replayable under CUDA-graph capture."""
    torch.manual_seed(0)
    net = torch.nn.Linear(16, 10).cuda()
    mm = mf.MentorMix(total_steps=100, backend="cuda", generator=torch.Generator("cuda").manual_seed(0)).cuda()
    x = torch.randn(256, 16, device="cuda")
    y = torch.randint(0, 10, (256,), device="cuda")
    mm(net, x, y).backward()  # warm-up
    torch.cuda.set_sync_debug_mode("error")
    try:
        mm(net, x, y).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    static = mf.MentorMix(total_steps=100, backend="cuda", validate=False).cuda()
    step = torch.zeros((), dtype=torch.int64, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        static(net, x, y, step)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = static(net, x, y, step)
    graph.replay()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(loss)


@needs_gpu
def test_kernel_draws_reproducible():
    cuda = get_backend("cuda", torch.device("cuda"))
    z = torch.zeros(4096, 2, device="cuda")
    y = torch.zeros(4096, dtype=torch.int64, device="cuda")
    outs = [cuda.weights_and_sample(z, y, torch.zeros((), device="cuda"), 0, config(), "threshold",
                                    torch.Generator("cuda").manual_seed(0)) for _ in range(2)]
    assert torch.equal(outs[0].lam, outs[1].lam) and torch.equal(outs[0].partner, outs[1].partner)
    assert 0.55 < float(outs[0].lam.mean()) < 0.65  # E[max(b, 1 - b)], b ~ Beta(8, 8): ~0.598


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
    assert STATUS is not None
    if not HAS_CUDA:
        assert STATUS != "available"
    assert sys.modules.get("mentormix_fast") is not None
