"""The ``mix`` op on every backend against the reference: values, the gradient through the
registered autograd formula, out-of-range partners, non-contiguous inputs."""

from __future__ import annotations

import pytest
import torch

from mentormix_fast import reference as ref
from tests.ops.cases import DTYPES

SHAPES = [(1,), (1, 1), (5, 3), (5, 3, 7, 7), (64, 33), (3, 2000), (16, 3, 5, 7)]
GPU_SHAPES = [(7, 3, 32, 32), (4096, 1000), (3, 1 << 20)]
# The backward scatter-adds over partners in another order than autograd's index_put.
GRAD_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
            torch.float16: dict(rtol=2e-3, atol=2e-3), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def value_tol(case, dtype):
    if dtype == torch.float64:
        return dict(rtol=1e-15, atol=1e-15)
    if dtype == torch.float32:
        return dict(rtol=1e-6, atol=1e-6)
    if case.interpreted and dtype == torch.bfloat16:
        return dict(rtol=2e-2, atol=2e-2)  # the interpreter rounds fp32 -> bf16 toward zero (GPUs: to nearest)
    if case.name in ("cpu", "cuda"):  # one rounding of the fp32 lerp instead of one per operation
        return dict(rtol={torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype], atol=4e-2)
    return dict(rtol=0, atol=0)  # the same per-operation rounding as the eager reference


def inputs(shape, dtype, device, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype).to(device)
    b = shape[0]
    return x, torch.randint(0, b, (b,), generator=g).to(device), torch.rand(b, generator=g).to(device)


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_mix_matches_reference(case, dtype):
    if dtype not in case.backend.mix_dtypes:
        pytest.skip(f"{case.name} mixes {case.backend.mix_dtypes}")
    for shape in SHAPES + (GPU_SHAPES if case.device == "cuda" else []):
        x, partner, lam = inputs(shape, dtype, case.device, seed=sum(shape))
        xt, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        got, want = case.ops.mix(xt, partner, lam), ref.mix_inputs(xr, partner, lam)
        assert got.dtype == dtype and got.shape == x.shape
        torch.testing.assert_close(got, want, **value_tol(case, dtype))
        gy = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype).to(case.device)
        got.backward(gy)
        want.backward(gy)
        torch.testing.assert_close(xt.grad.float(), xr.grad.float(), **GRAD_TOL[dtype])


def test_channels_last_input(case):
    x, partner, lam = inputs((16, 3, 5, 7), torch.float32, case.device)
    xc = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(case.ops.mix(xc, partner, lam), ref.mix_inputs(x, partner, lam), rtol=1e-6, atol=1e-6)


def test_out_of_range_partner_gives_a_nan_row(case):
    """A hand-edited plan with partner -1, B or 10**6: a NaN row, never a read outside x (and the
    reference does not wrap -1 around to the last row)."""
    x, partner, lam = inputs((6, 4), torch.float32, case.device)
    bad = partner.clone()
    bad[1], bad[3], bad[4] = -1, 6, 10**6
    out = case.ops.mix(x, bad, lam)
    assert torch.isnan(out[[1, 3, 4]]).all()
    keep = torch.tensor([0, 2, 5], device=case.device)
    torch.testing.assert_close(out[keep], ref.mix_inputs(x, partner, lam)[keep])


def test_opcheck(fast_case):
    x, partner, lam = inputs((6, 2, 3), torch.float32, fast_case.device)
    torch.library.opcheck(fast_case.ops.mix.default, (x.requires_grad_(), partner, lam))


def test_bad_arguments_name_the_argument(fast_case):
    ops, dev = fast_case.ops, fast_case.device
    x, partner, lam = inputs((4, 3), torch.float32, dev)
    for call, name in [(lambda: ops.mix(x, partner[:3], lam), "partner"), (lambda: ops.mix(x, partner, lam[:2]), "lam"),
                       (lambda: ops.mix(x, partner.float(), lam), "partner"),
                       (lambda: ops.mix(x.int(), partner, lam), "x")]:
        with pytest.raises((RuntimeError, ValueError, TypeError), match=name):
            call()


def test_far_out_of_range_partners_do_not_crash_the_process(fast_case):
    """Partner 10**6 once killed the process (an out-of-bounds read, signal 11): the mix and the
    mixed loss run in a subprocess, which must exit cleanly with NaN rows and a NaN loss."""
    import subprocess
    import sys

    dev = fast_case.device
    code = (f"import torch, mentormix_fast as mf\n"
            f"ops = mf.dispatch.choose({fast_case.name!r}, {dev!r}).ops\n"
            f"x = torch.randn(64, 1000, device={dev!r})\n"
            f"y = torch.randint(0, 1000, (64,), device={dev!r})\n"
            f"lam = torch.rand(64, device={dev!r})\n"
            "for bad in (10**6, -1, 64, -10**6):\n"
            f"    p = torch.full((64,), bad, dtype=torch.int64, device={dev!r})\n"
            "    assert torch.isnan(ops.mix(x, p, lam)).all()\n"
            "    assert torch.isnan(ops.ce(x, y, p, lam)).all()\n"
            "    out = ops.mixed_loss(x, y, p, lam, None, torch.tensor(0.5, device=x.device), None, torch.empty(0, "
            "device=x.device), torch.tensor(5), None, 100, 0.7, 0.5, 0, True)\n"
            "    assert torch.isnan(out[0]) and (out[2] == 0).all()\n"
            "print('clean')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "clean" in done.stdout, done.stderr[-2000:]
