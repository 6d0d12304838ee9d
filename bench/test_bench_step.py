"""pytest-benchmark suite: the full loss step per backend (``pytest bench/ --benchmark-enable``).

Parameterised over every backend available on this machine (see ``harness.variants``) and the
(B, K) cases of the device (GPU: the five issue shapes; CPU: the two small ones), fp32 and bf16.
``extra_info`` records the minimal bytes and the achieved fraction of copy bandwidth.
"""

from __future__ import annotations

import harness
import pytest
import torch

DEVICE = harness.default_device()
CASES = harness.default_cases(DEVICE)


@pytest.fixture(scope="session")
def copy_bw():
    return harness.copy_bandwidth(DEVICE)


@pytest.mark.parametrize("dtype", list(harness.DTYPES), ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-K{c[1]}")
@pytest.mark.parametrize("variant", harness.variants(DEVICE))
def test_loss_step(benchmark, variant, case, dtype, copy_bw):
    step = harness.make_step(variant, *case, harness.DTYPES[dtype], DEVICE)
    step.run()  # compile / warm up outside the timing

    def run():
        step.run()
        harness.synchronize(DEVICE)

    benchmark.extra_info["minimal_bytes"] = harness.minimal_bytes(*case, harness.DTYPES[dtype])
    benchmark.extra_info["copy_bandwidth"] = copy_bw
    benchmark(run)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        seconds = stats.stats.median
        benchmark.extra_info["fraction_of_copy_bw"] = benchmark.extra_info["minimal_bytes"] / seconds / copy_bw
    assert torch.isfinite(step.run())
