"""What the benchmarks measure: the full MentorMix loss step, per backend, and its minimal traffic.

One step = the public module's op 1 ``plan`` on first-pass logits ``z1`` [B, K] (with its random
draws and state update), op 2 ``mix_inputs`` of an input ``x`` [B, D] (D = :data:`MIX_DIM`), op 3
``mixed_loss`` forward on second-pass logits ``z2`` [B, K] and its backward (``dL/dz2``). No
network runs: only the loss ops.

Minimal bytes (what any implementation must move, s = bytes per element of the logits' dtype):
read z1 once (B K s), mix reads x and writes x~ (2 B D s), the mixed loss reads z2 in the forward
and reads it again and writes dL/dz2 in the backward (3 B K s; docs/SPEC.md and kernels/mixed_loss.py explain
why 2 reads are the minimum with second reweighting). Per-example O(B) vectors are left out (< 1% at these sizes
except K = 10). Achieved bandwidth = minimal bytes / time, reported as a fraction of the device's
measured copy bandwidth (``2 * bytes / time`` of a large ``Tensor.copy_``).

Variants: every available backend of :func:`mentormix_fast.backends` that supports the device (so a
new backend, e.g. the C++ "cpu"/"cuda" ones, is benchmarked without touching this file), plus
``reference+compile``: ``torch.compile`` of the reference step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

import mentormix_fast as mf
from mentormix_fast import dispatch

MIX_DIM = 256
GPU_CASES = [(128, 10), (128, 100), (1024, 1000), (8192, 32000), (65536, 1000)]
CPU_CASES = [(128, 10), (128, 100)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
COMPILED = "reference+compile"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_cases(device: str):
    return GPU_CASES if device == "cuda" else CPU_CASES


def variants(device: str) -> list[str]:
    """Backend names to benchmark on ``device``, then the compiled reference."""
    names = [name for name, status in mf.backends().items() if status == "available" and _supports(name, device)]
    return names + [COMPILED]


def _supports(name: str, device: str) -> bool:
    try:
        dispatch.choose(name, device)
        return True
    except ValueError:
        return False


def minimal_bytes(batch: int, classes: int, dtype: torch.dtype) -> int:
    s = torch.tensor([], dtype=dtype).element_size()
    return 4 * batch * classes * s + 2 * batch * MIX_DIM * s


@dataclass
class Step:
    """A ready-to-run loss step: ``run()`` does ops 1-3 forward and backward once."""

    run: object
    batch: int
    classes: int
    dtype: torch.dtype
    device: str


def make_step(variant: str, batch: int, classes: int, dtype: torch.dtype, device: str,
              second_reweight: bool = True, seed: int = 0, dynamic: bool = False) -> Step:
    """The step as a user runs it: :class:`mentormix_fast.MentorMix` (its buffers updated in place
    where the backend can, else with copies), ``plan``, ``mix_inputs``, ``mixed_loss``, backward."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    z1 = (torch.randn(batch, classes, generator=g) * 2).to(device=device, dtype=dtype)
    z2 = (torch.randn(batch, classes, generator=g) * 2).to(device=device, dtype=dtype).requires_grad_(True)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    x = torch.randn(batch, MIX_DIM, generator=g).to(device=device, dtype=dtype)
    # A step budget so large that the epoch feature stays 0 (no burn-in: every weight is computed).
    mm = mf.MentorMix(total_steps=10**9, percentile=0.7, mixup_alpha=8.0, second_reweight=second_reweight,
                      burn_in_epoch=0, backend="reference" if variant == COMPILED else variant,
                      validate=False).to(device)

    def forward(z1, y, x, z2):
        plan = mm.plan(z1, y)
        xm = mm.mix_inputs(x, plan)
        return mm.mixed_loss(z2, y, plan), xm

    if variant == COMPILED:
        # Static shapes: one graph per shape (the fastest code, a compile per case); dynamic: one
        # graph for every batch size and class count (a compile per dtype, for short runs).
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        fwd = torch.compile(forward, fullgraph=True, dynamic=dynamic)
    else:
        fwd = forward

    def run():
        z2.grad = None
        loss, _ = fwd(z1, y, x, z2)
        loss.backward()
        return loss

    return Step(run, batch, classes, dtype, device)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_step(step: Step, warmup: int = 3, min_time: float = 0.2, rounds: int = 5) -> float:
    """Seconds per call of ``step.run``: the median over ``rounds`` of (time of n back-to-back calls
    between two device synchronisations) / n, n chosen so one round takes about min_time / rounds
    (so launch queues stay full and the sync cost is amortised, as in a training loop)."""
    for _ in range(warmup):
        step.run()
    synchronize(step.device)
    t0 = time.perf_counter()
    step.run()
    synchronize(step.device)
    once = max(time.perf_counter() - t0, 1e-6)
    n = max(1, int(min_time / rounds / once))
    per_call = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            step.run()
        synchronize(step.device)
        per_call.append((time.perf_counter() - t0) / n)
    per_call.sort()
    return per_call[len(per_call) // 2]


def device_launches(step: Step) -> int | None:
    """Device operations (kernels, memsets, memcpys) one ``step.run()`` puts on the GPU, from the
    profiler's CUDA activity (the issue's launch budget, measured where it applies); None on the
    CPU or when the profiler cannot say."""
    if step.device != "cuda":
        return None
    try:
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        step.run()
        synchronize(step.device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step.run()
            synchronize(step.device)
        return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)
    except Exception:  # a profiler problem must not stop the timings
        return None


def copy_bandwidth(device: str, nbytes: int | None = None) -> float:
    """Measured device copy bandwidth in bytes/s (read + write), from a large ``copy_``."""
    nbytes = nbytes or ((1 << 30) if device == "cuda" else (64 << 20))
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    synchronize(device)
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
