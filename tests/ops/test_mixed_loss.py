"""The ``mixed_loss`` / ``mixed_loss_backward`` ops on every backend against the reference, and
:class:`MentorMixLossFunction` (the autograd formula joining them) through each backend.

Stage by stage: the mixed CE ``m`` (via ``ce``) to fp32 rounding; ``ma2`` exactly from the
backend's ``m``; ``v2`` from the backend's ``m`` and ``ma2``; the loss from those; the gradient
against the closed form to the output dtype's rounding.
"""

from __future__ import annotations

import math

import pytest
import torch

import mentormix_fast as mf
from mentormix_fast import reference as ref
from mentormix_fast.autograd import MentorMixLossFunction, MixedLossState
from tests.ops.cases import DTYPES, GPU_SHAPES, SHAPES, Config, assert_grad_close, batch, epoch_of


def mixed_inputs(b, k, dtype, device, seed=1):
    z, y, _, _ = batch(b, k, dtype, device, seed)
    g = torch.Generator().manual_seed(seed + 7)
    partner = torch.randint(0, b, (b,), generator=g).to(device)
    lam = torch.rand(b, generator=g).to(device)
    return z, y, partner, lam


def run_mixed_loss(case, z, y, partner, lam, weighting, step, config, given=None, ma2=0.9, pool=None, steps=True):
    """The op with fresh state: ``(loss, lse, weights, loss_ma_mixed, num_steps)``."""
    device = z.device
    ma = torch.tensor(float(ma2), device=device)
    num_steps = torch.tensor(-1, dtype=torch.int64, device=device) if steps else None
    step = step if isinstance(step, torch.Tensor) else torch.tensor(step)
    loss, lse, w = case.ops.mixed_loss(z, y, partner, lam, given, ma if config.second_reweight else None, num_steps,
                                       case.mentornet(weighting), step, pool, config.total_steps, config.percentile,
                                       config.decay, config.burn_in_epoch, config.second_reweight)
    return loss, lse, w, ma, num_steps


def check_mixed_loss(case, b, k, dtype, weighting, step, config=None, seed=1, given=False, pool=None, upstream=0.37):
    config = config or Config()
    z, y, partner, lam = mixed_inputs(b, k, dtype, case.device, seed)
    weights = torch.rand(b, generator=torch.Generator().manual_seed(seed)).to(case.device) if given else None
    loss, lse, w, ma2, num_steps = run_mixed_loss(case, z, y, partner, lam, weighting, step, config, weights, pool=pool)
    m = case.ops.ce(z, y, partner, lam)
    torch.testing.assert_close(m, ref.mixed_ce(z, y, partner, lam), rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(lse, torch.logsumexp(z.float(), 1), rtol=1e-5, atol=1e-5)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert int(num_steps) == int(step) + 1
    if config.second_reweight:
        q = ref.percentile_nearest(m if pool is None else pool, config.percentile)
        want_ma = ref.update_moving_average(torch.tensor(0.9, device=case.device), q, config.decay)
        torch.testing.assert_close(ma2, want_ma, rtol=1e-6, atol=0)
        net = weighting if isinstance(weighting, str) else weighting.to(case.device)
        v2 = ref.sample_weights(net, m, ma2, epoch_of(step, config), config.burn_in_epoch)
        torch.testing.assert_close(w, v2, rtol=0, atol=case.weights_atol(not isinstance(weighting, str)))
        used = w
    else:
        assert w.numel() == 0 and float(ma2) == pytest.approx(0.9)
        used = weights
    torch.testing.assert_close(loss, ref.weighted_mean(m, used), rtol=1e-5, atol=1e-5)
    g = torch.tensor(upstream, device=case.device)
    grad = case.ops.mixed_loss_backward(g, z, y, partner, lam, lse, used)
    assert grad.dtype == dtype and grad.shape == z.shape
    assert_grad_close(grad, ref.mixed_loss_grad(z, y, partner, lam, used, upstream), dtype)


def _shapes(case):
    return GPU_SHAPES + SHAPES if case.device == "cuda" else SHAPES


@pytest.mark.parametrize("second_reweight", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mixed_loss_matches_reference(case, dtype, second_reweight):
    for b, k in _shapes(case):
        check_mixed_loss(case, b, k, dtype, "threshold", 50, Config(second_reweight=second_reweight), seed=b + k)


@pytest.mark.parametrize("step", [3, 70, 95, "device", "cpu-tensor"])
def test_mixed_loss_mentornet(case, step):
    given = {"device": torch.tensor(60, device=case.device), "cpu-tensor": torch.tensor(60)}.get(step, step)
    check_mixed_loss(case, 64, 10, torch.float32, mf.mentornet_pd(), given, Config(percentile=0.3))


def test_given_weights(case):
    for dtype in DTYPES:
        check_mixed_loss(case, 33, 17, dtype, "threshold", 50, Config(second_reweight=False), given=True)


def test_pool(case):
    z, y, partner, lam = mixed_inputs(50, 7, torch.float32, case.device)
    m = ref.mixed_ce(z, y, partner, lam)
    for pool in (torch.cat([m, m * 0.5 + 1.0]), torch.rand(5000, device=case.device) * 4):
        check_mixed_loss(case, 50, 7, torch.float32, mf.mentornet_pd(), 60, pool=pool.float().contiguous())


def test_many_programs(case, many_programs):
    if case.name != "triton":
        pytest.skip("the many-program path is the Triton kernels'")
    for second in (True, False):
        check_mixed_loss(case, 300, 9, torch.bfloat16, mf.mentornet_pd(), 92, Config(second_reweight=second))
    check_mixed_loss(case, 300, 9, torch.float32, "threshold", 50, Config(second_reweight=False), given=True)
    check_mixed_loss(case, 40, 9, torch.float32, "threshold", 50, pool=torch.rand(40, device=case.device) * 3)


def test_nan_row_propagates_to_the_loss_not_the_state(case):
    z, y, partner, lam = mixed_inputs(16, 5, torch.float32, case.device)
    z[4, 2] = math.nan
    loss, _, w, ma2, _ = run_mixed_loss(case, z, y, partner, lam, "threshold", 50, Config())
    assert torch.isnan(loss) and torch.isfinite(ma2) and w[4] == 0


def test_out_of_range_partner_and_label_rows(case):
    """A hand-edited partner (-1, B, 10**6) or label: that row's m is NaN (weight 0), its gradient
    row 0, and nothing is read outside the batch."""
    z, y, partner, lam = mixed_inputs(12, 5, torch.float32, case.device)
    partner[1], partner[3], partner[5] = -1, 12, 10**6
    y[7] = 9
    m = case.ops.ce(z, y, partner, lam)
    want = ref.mixed_ce(z, y, partner, lam)
    ok = ref.rows_in_range(y, partner, 5)  # rows 1, 3, 5, 7 and those whose partner is 7
    bad = ~ok
    assert not ok[[1, 3, 5, 7]].any() and torch.isnan(m[bad]).all() and torch.isnan(want[bad]).all()
    torch.testing.assert_close(m[ok], want[ok], rtol=1e-5, atol=1e-5)
    loss, lse, w, ma2, _ = run_mixed_loss(case, z, y, partner, lam, "threshold", 50, Config())
    assert torch.isnan(loss) and torch.isfinite(ma2) and (w[bad] == 0).all()
    grad = case.ops.mixed_loss_backward(torch.tensor(1.0, device=case.device), z, y, partner, lam, lse, w)
    assert (grad[bad] == 0).all() and torch.isfinite(grad).all()


def test_masked_minus_inf_logits(case):
    z, y, partner, lam = mixed_inputs(24, 6, torch.float32, case.device)
    z[:, 5] = -math.inf
    y = y % 5
    check = Config(second_reweight=False)
    loss, lse, _, _, _ = run_mixed_loss(case, z, y, partner, lam, "threshold", 50, check)
    torch.testing.assert_close(loss, ref.weighted_mean(ref.mixed_ce(z, y, partner, lam), None), rtol=1e-5, atol=1e-6)
    grad = case.ops.mixed_loss_backward(torch.tensor(1.0, device=case.device), z, y, partner, lam, lse, None)
    torch.testing.assert_close(grad, ref.mixed_loss_grad(z, y, partner, lam, None), rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# The autograd Function through each backend
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_loss_function_through_the_backend(case, dtype):
    """MentorMixLossFunction with the second reweighting (the module's path) and with given weights."""
    z, y, partner, lam = mixed_inputs(33, 11, dtype, case.device)
    compute_lam = lam.to(torch.float32)
    for second in (True, False):
        ma2 = torch.tensor(0.9, device=case.device)
        steps = torch.zeros((), dtype=torch.int64, device=case.device)
        state = MixedLossState(case.backend, ma2, steps, case.mentornet(mf.mentornet_pd()), torch.tensor(60), None,
                               100, 0.6, 0.5, 10, second)
        weights = None if second else torch.rand(33, device=case.device)
        zt, zr = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
        loss = MentorMixLossFunction.apply(zt, y, partner, compute_lam, weights, state)
        out = ref.mixed_loss_step(zr, y, partner, lam, torch.tensor(0.9, device=case.device), 60, second_reweight=second,
                                  percentile=0.6, decay=0.5, weighting=mf.mentornet_pd().to(case.device),
                                  burn_in_epoch=10)
        want = out.loss if second else ref.weighted_mean(ref.mixed_ce(zr, y, partner, lam), weights)
        torch.testing.assert_close(loss, want.float(), rtol=1e-5, atol=1e-4 if second else 1e-5)
        (loss * 0.6).backward()
        (want * 0.6).backward()
        assert zt.grad.dtype == dtype and int(steps) == 61
        if second:  # v2 of the backend vs the reference's: compare through the backend's own weights
            continue
        assert_grad_close(zt.grad, zr.grad, dtype)


def test_opcheck(fast_case):
    case = fast_case
    z, y, partner, lam = mixed_inputs(16, 7, torch.float32, case.device)
    mn = case.mentornet(mf.mentornet_pd())
    ma2 = torch.tensor(0.5, device=case.device)
    steps = torch.tensor(7, device=case.device)
    step = torch.tensor(40, device=case.device)
    op = case.ops.mixed_loss.default
    torch.library.opcheck(op, (z, y, partner, lam, None, ma2, steps, mn, step, None, 100, 0.6, 0.5, 10, True))
    torch.library.opcheck(op, (z, y, partner, lam, torch.rand(16, device=case.device), None, None, mn[:0],
                               torch.tensor(3), None, 100, 0.6, 0.5, 10, False))
    torch.library.opcheck(op, (z, y, partner, lam, None, ma2, steps, mn, steps, torch.rand(30, device=case.device),
                               100, 0.6, 0.5, 10, True))
    lse = torch.logsumexp(z, 1)
    torch.library.opcheck(case.ops.mixed_loss_backward.default,
                          (torch.tensor(0.5, device=case.device), z, y, partner, lam, lse, None))


def test_bad_arguments_name_the_argument(fast_case):
    case = fast_case
    ops, dev = case.ops, case.device
    z, y, partner, lam = mixed_inputs(4, 3, torch.float32, dev)
    ma2, steps, step = torch.tensor(0.0, device=dev), torch.tensor(0, device=dev), torch.tensor(5)
    mn = case.mentornet("threshold")
    calls = [
        (lambda: ops.mixed_loss(z, y, partner[:2], lam, None, ma2, steps, mn, step, None, 100, 0.7, 0.5, 1, True),
         "partner"),
        (lambda: ops.mixed_loss(z, y, partner, lam.double(), None, ma2, steps, mn, step, None, 100, 0.7, 0.5, 1,
                                True), "lam"),
        (lambda: ops.mixed_loss(z, y, partner, lam, lam, ma2, steps, mn, step, None, 100, 0.7, 0.5, 1, True),
         "second_reweight"),
        (lambda: ops.mixed_loss(z, y, partner, lam, None, None, steps, mn, step, None, 100, 0.7, 0.5, 1, True),
         "second_reweight|loss_ma_mixed"),
        (lambda: ops.mixed_loss(z, y, partner, lam, lam[:3], None, None, mn, step, None, 100, 0.7, 0.5, 1, False),
         "given_weights"),
        (lambda: ops.mixed_loss_backward(torch.tensor(1.0, device=dev), z, y, partner, lam, torch.zeros(3, device=dev),
                                         None), "lse"),
    ]
    for call, name in calls:
        with pytest.raises((RuntimeError, ValueError, TypeError), match=name):
            call()


def test_logits_that_are_a_column_slice_of_a_wider_tensor(case):
    """Row-strided logits (a slice of wider ones) are read in place; the gradient is contiguous."""
    wide = torch.randn(40, 30, device=case.device) * 3
    z = wide[:, 5:22]
    y = torch.randint(0, 17, (40,), device=case.device)
    partner = torch.randint(0, 40, (40,), device=case.device)
    lam = torch.rand(40, device=case.device)
    loss, lse, w, _, _ = run_mixed_loss(case, z, y, partner, lam, "threshold", 50, Config(second_reweight=False))
    torch.testing.assert_close(loss, ref.weighted_mean(ref.mixed_ce(z, y, partner, lam), None), rtol=1e-5, atol=1e-6)
    grad = case.ops.mixed_loss_backward(torch.tensor(1.0, device=case.device), z, y, partner, lam, lse, None)
    assert grad.is_contiguous() and grad.shape == z.shape
    torch.testing.assert_close(grad, ref.mixed_loss_grad(z, y, partner, lam, None), rtol=1e-4, atol=1e-7)
