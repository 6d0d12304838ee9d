"""Shared cases of the op tests (tests/ops/): the backends under test, shapes, dtypes, tolerances
and input builders. Every test of an op runs on every backend this machine has: ``reference``,
``cpu`` (C++), ``triton`` (Triton's interpreter on the CPU, compiled kernels on a GPU) and ``cuda``
(C++/CUDA); on a GPU machine the same files are the GPU test suite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

import mentormix_fast as mf
from mentormix_fast import dispatch
from mentormix_fast import reference as ref
from mentormix_fast.mentornet import fold_mentornet

HAS_CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (B, K): B = 1, K = 2, odd and non-power-of-two K, K below and above one vector block / tile.
SHAPES = [(1, 2), (2, 2), (7, 3), (33, 17), (128, 10), (300, 101), (64, 1000), (3, 5003)]
GPU_SHAPES = [(128, 100), (1024, 1000), (4097, 33), (8192, 32000), (65536, 1000), (5, 262144)]
# Gradient error relative to the largest gradient entry.
GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3, torch.float64: 1e-12}


@dataclass(frozen=True)
class Case:
    """A backend under test on a device: ``ops`` are its five ops (SPEC §5)."""

    name: str
    device: str

    @property
    def backend(self) -> dispatch.Backend:
        return dispatch.choose(self.name, self.device)

    @property
    def ops(self):
        return self.backend.ops

    @property
    def interpreted(self) -> bool:
        return self.name == "triton" and self.device == "cpu"

    def mentornet(self, weighting):
        """The ``mentornet`` argument for ``weighting`` ("threshold" or a MentorNet)."""
        net = None if isinstance(weighting, str) else weighting.to(self.device)
        return net if self.backend.reference else fold_mentornet(net, self.device)

    def weights_atol(self, mentornet: bool) -> float:
        """MentorNet weights against the fp32 reference evaluated on the kernel's own losses: the
        C++ kernels use a fast vectorised exp (~20 ulp), GPU exp is ex2.approx (~1e-7 per tanh,
        amplified by output weights of ~40); the interpreter evaluates in numpy."""
        if not mentornet:
            return 0.0
        return {"reference": 0.0, "cpu": 1e-4, "cuda": 1e-4}.get(self.name, 3e-6 if self.interpreted else 3e-5)

    def __str__(self) -> str:
        return f"{self.name}-{self.device}"


def cases() -> list:
    """pytest params of every backend on every device it serves here (unavailable ones skipped)."""
    status = mf.backends()
    out = []
    for name, device in [("reference", "cpu"), ("cpu", "cpu"), ("triton", "cuda" if HAS_CUDA else "cpu"),
                         ("cuda", "cuda")]:
        reason = status.get(name, "unknown")
        if device == "cuda" and not HAS_CUDA:
            reason = "no CUDA device"
        marks = [] if reason == "available" and _serves(name, device) else [pytest.mark.skip(reason=f"{name}: {reason}")]
        out.append(pytest.param(Case(name, device), id=f"{name}-{device}", marks=marks))
    return out


def _serves(name: str, device: str) -> bool:
    try:
        dispatch.choose(name, device)
        return True
    except ValueError:
        return False


def fast_cases() -> list:
    """:func:`cases` without the reference (the backends that draw in their kernels)."""
    return [p for p in cases() if p.values[0].name != "reference"]


def batch(b, k, dtype, device, seed=0, scale=3.0, alpha=4.0):
    """Logits [B, K] (``dtype``), labels [B], uniform draws [B] fp64 and Beta draws [B] fp32."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(b, k, generator=g) * scale).to(dtype)
    y = torch.randint(0, k, (b,), generator=g)
    u = torch.rand(b, generator=g, dtype=torch.float64)
    beta = ref.draw_beta(alpha, b, g, "cpu")
    return z.to(device), y.to(device), u.to(device), beta.to(device)


@dataclass
class Config:
    """The scalar arguments of ``plan`` / ``mixed_loss``."""

    total_steps: int = 100
    percentile: float = 0.7
    decay: float = 0.5
    burn_in_epoch: int = 10
    alpha: float = 8.0
    second_reweight: bool = True


def run_plan(case: Case, z, y, weighting, step, config: Config, uniform=None, beta=None, ma=0.8, pool=None,
             rng=(5, 0)):
    """``ops.plan`` with fresh state; returns ``(loss, weights, partner, lam, loss_ma, rng_state)``."""
    device = z.device
    loss_ma = torch.tensor(float(ma), device=device)
    rng_state = torch.tensor(list(rng), dtype=torch.int64, device=device)
    step = step if isinstance(step, torch.Tensor) else torch.tensor(step)
    out = case.ops.plan(z, y, loss_ma, rng_state, case.mentornet(weighting), step, pool, uniform, beta,
                        config.total_steps, config.percentile, config.decay, config.burn_in_epoch, config.alpha)
    return (*out, loss_ma, rng_state)


def epoch_of(step, config: Config) -> int:
    return ref.epoch_feature(int(step), config.total_steps)


def check_partners(got, v, uniform, want):
    """Partners equal the reference's, except where ``u * total`` lies within rounding of a CDF step."""
    diff = got != want
    if not diff.any():
        return
    cdf = torch.cumsum(torch.softmax(v.double(), 0), 0)
    t = uniform.double() * cdf[-1]
    near = (cdf[want[diff]] - t[diff]).abs().minimum((cdf[got[diff]] - t[diff]).abs())
    assert (near < 1e-5).all(), f"partners differ away from CDF boundaries: {near.max().item()}"


def assert_grad_close(got, want, dtype):
    scale = want.float().abs().max().clamp_min(1e-30)
    err = (got.float() - want.float()).abs().max() / scale
    assert err <= GRAD_RTOL[dtype], f"relative gradient error {float(err):.2e}"


def nan_equal(a, b) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))
