"""The public API: MentorMix, MentorMixPlan, MentorMixLossFunction, backends(), bad input."""

import math

import pytest
import torch
from torch import nn

import mentormix_fast as mf
from mentormix_fast import reference as ref


def batch(seed=0, b=16, k=10, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g).to(dtype), torch.randint(0, k, (b,), generator=g)


def make(**kw):
    base = dict(total_steps=100, backend="reference", generator=torch.Generator().manual_seed(0))
    return mf.MentorMix(**(base | kw))


# --- state and semantics --------------------------------------------------------------------


def test_plan_matches_reference_and_updates_loss_ma():
    z, y = batch()
    mm = make(percentile=0.7, mixup_alpha=2.0, burn_in_epoch=0, weighting="threshold")
    g = torch.Generator().manual_seed(0)
    u, b = ref.draw_uniform(16, g, "cpu"), ref.draw_beta(2.0, 16, g, "cpu")
    plan = mm.plan(z, y, step=50)
    want = ref.weights_and_sample(z, y, torch.tensor(0.0), 50, percentile=0.7, decay=0.5, weighting="threshold",
                                  burn_in_epoch=0, alpha=2.0, uniform=u, beta=b)
    assert torch.equal(plan.partner, want.partner) and torch.equal(plan.weights, want.weights)
    torch.testing.assert_close(plan.lam, want.lam)
    assert mm.loss_ma.item() == pytest.approx(want.loss_ma.item())
    first = mm.loss_ma.clone()
    mm.plan(z, y, step=51)
    q = ref.percentile_nearest(ref.per_sample_ce(z, y), 0.7)
    assert mm.loss_ma.item() == pytest.approx(0.5 * first.item() + 0.5 * q.item(), rel=1e-6)


@pytest.mark.parametrize("second_reweight", [False, True])
def test_mixed_loss_state_and_gradient(second_reweight):
    z, y = batch(1)
    mm = make(second_reweight=second_reweight, burn_in_epoch=0)
    plan = mm.plan(z, y, 60)
    zm = torch.randn(16, 10, generator=torch.Generator().manual_seed(9), requires_grad=True)
    loss = mm.mixed_loss(zm, y, plan, 60)
    loss.backward()
    m = ref.mixed_ce(zm.detach(), y, plan.partner, plan.lam)
    if second_reweight:
        ma2 = 0.5 * ref.percentile_nearest(m, 0.7)
        assert mm.loss_ma_mixed.item() == pytest.approx(ma2.item(), rel=1e-6)
        v2 = ref.mentornet_weights(mm.mentornet, m, ma2, 60)
        assert loss.item() == pytest.approx((v2 * m).sum().item() / 16, rel=1e-5)
    else:
        assert mm.loss_ma_mixed.item() == 0.0
        assert loss.item() == pytest.approx(m.mean().item(), rel=1e-6)
        v2 = None
    torch.testing.assert_close(zm.grad, ref.mixed_loss_grad(zm.detach(), y, plan.partner, plan.lam, v2),
                               rtol=1e-5, atol=1e-7)
    assert mm.num_steps.item() == 61


def test_state_dict_round_trip_resumes_identically():
    z, y = batch(2)
    a = make(generator=torch.Generator().manual_seed(5))
    for t in range(3):
        p = a.plan(z, y, t)
        a.mixed_loss(z, y, p, t)
    b = make()
    b.load_state_dict(a.state_dict())
    assert {"loss_ma", "loss_ma_mixed", "num_steps"} <= set(a.state_dict())
    for name in ("loss_ma", "loss_ma_mixed", "num_steps"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    a.generator, b.generator = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    pa, pb = a.plan(z, y), b.plan(z, y)  # step=None: the saved counter
    assert torch.equal(pa.partner, pb.partner) and torch.equal(a.loss_ma, b.loss_ma)


def test_step_none_uses_and_advances_the_counter():
    z, y = batch(3)
    mm = make()
    for _ in range(3):
        mm.mixed_loss(z, y, mm.plan(z, y))
    assert mm.num_steps.item() == 3


def test_same_seed_same_plan_other_seed_other_plan():
    z, y = batch(4, b=64)
    p1 = make(generator=torch.Generator().manual_seed(3)).plan(z, y, 10)
    p2 = make(generator=torch.Generator().manual_seed(3)).plan(z, y, 10)
    p3 = make(generator=torch.Generator().manual_seed(4)).plan(z, y, 10)
    assert torch.equal(p1.partner, p2.partner) and torch.equal(p1.lam, p2.lam)
    assert not torch.equal(p1.partner, p3.partner)


def test_alpha_zero_means_no_mixing():
    z, y = batch(5)
    mm = make(mixup_alpha=0.0)
    plan = mm.plan(z, y, 0)
    x = torch.randn(16, 3, 4, 4)
    assert torch.equal(plan.partner, torch.arange(16)) and torch.equal(plan.lam, torch.ones(16))
    assert torch.equal(mm.mix_inputs(x, plan), x)


def test_burn_in_gives_unit_weights():
    z, y = batch(6)
    plan = make(burn_in_epoch=10).plan(z, y, step=8)  # epoch 8 < 10 - 1
    assert torch.equal(plan.weights, torch.ones(16))
    plan = make(burn_in_epoch=10).plan(z, y, step=9)  # epoch 9: MentorNet decides
    assert not torch.equal(plan.weights, torch.ones(16))


def test_mix_inputs_any_shape_and_dtype():
    z, y = batch(7, b=4)
    mm = make()
    plan = mm.plan(z, y, 50)
    for shape, dtype in [((4,), torch.float32), ((4, 3, 5, 5), torch.bfloat16), ((4, 2, 3), torch.float64)]:
        x = torch.randn(shape).to(dtype)
        out = mm.mix_inputs(x, plan)
        assert out.dtype == dtype and out.shape == x.shape
        torch.testing.assert_close(out, ref.mix_inputs(x, plan.partner, plan.lam))


def test_forward_leaves_batchnorm_stats_to_the_second_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    mm = make(total_steps=10)
    bn = model[1]
    loss = mm(model, x, y, step=5)
    loss.backward()
    assert bn.num_batches_tracked.item() == 1  # only the second pass counted
    assert bn.track_running_stats  # restored after the first pass


def test_forward_equals_manual_two_pass():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    ref_model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    ref_model.load_state_dict(model.state_dict())
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    loss = make(total_steps=10)(model, x, y, step=5)
    manual = make(total_steps=10)
    with torch.no_grad(), mf.frozen_batchnorm_stats(ref_model):
        logits = ref_model(x)
    assert ref_model[1].num_batches_tracked.item() == 0
    plan = manual.plan(logits, y, 5)
    loss2 = manual.mixed_loss(ref_model(manual.mix_inputs(x, plan)), y, plan, 5)
    assert loss.item() == pytest.approx(loss2.item())
    torch.testing.assert_close(model[1].running_mean, ref_model[1].running_mean)


# --- the autograd.Function --------------------------------------------------------------------


def _fn_inputs(seed, b=13, k=7, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, k, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, k, (b,), generator=g)
    partner = torch.randint(0, b, (b,), generator=g)
    lam = torch.rand(b, generator=g)
    w = torch.rand(b, generator=g)
    return z, y, partner, lam, w


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_function_gradcheck_float64(weighted):
    z, y, partner, lam, w = _fn_inputs(0)
    w = w.double() if weighted else None
    assert torch.autograd.gradcheck(
        lambda t: mf.MentorMixLossFunction.apply(t, y, partner, lam.double(), w), (z.requires_grad_(),))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_loss_function_matches_autograd_reference(dtype, tol):
    z, y, partner, lam, w = _fn_inputs(1, b=33, k=129, dtype=dtype)
    a = z.clone().requires_grad_()
    b = z.clone().requires_grad_()
    la = mf.MentorMixLossFunction.apply(a, y, partner, lam, w)
    lb = ref.weighted_mean(ref.mixed_ce(b, y, partner, lam), w)
    assert la.dtype == torch.float32
    torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-6)
    (3.0 * la).backward()
    (3.0 * lb).backward()
    assert a.grad.dtype == dtype
    torch.testing.assert_close(a.grad.float(), b.grad.float(), rtol=tol, atol=tol / 10)


# --- backends and bad input ------------------------------------------------------------------


def test_backends_reports_reference_and_reasons():
    status = mf.backends()
    assert status["reference"] == "available"
    assert all(isinstance(v, str) and v for v in status.values())
    with pytest.raises(ValueError, match="backend"):
        make(backend="no-such-backend").plan(*batch())


@pytest.mark.parametrize("kwargs, match", [
    (dict(percentile=1.5), "percentile"), (dict(percentile=-0.1), "percentile"),
    (dict(mixup_alpha=-1.0), "mixup_alpha"), (dict(mixup_alpha=math.inf), "mixup_alpha"),
    (dict(total_steps=0), "total_steps"), (dict(total_steps=2.5), "total_steps"),
    (dict(burn_in_epoch=-1), "burn_in_epoch"), (dict(loss_ma_decay=2.0), "loss_ma_decay"),
    (dict(weighting="nope"), "weighting"), (dict(validate="sometimes"), "validate"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_bad_call_arguments_name_the_argument():
    mm = make()
    z, y = batch()
    cases = [
        (lambda: mm.plan(z[0], y), ValueError, "logits"),
        (lambda: mm.plan(z[:0], y[:0]), ValueError, "empty batch"),
        (lambda: mm.plan(z[:, :1], y), ValueError, "at least 2 classes"),
        (lambda: mm.plan(z.int(), y), TypeError, "logits"),
        (lambda: mm.plan(z, y[:5]), ValueError, "target"),
        (lambda: mm.plan(z, y.float()), TypeError, "target"),
        (lambda: mm.plan(z, y + 10), ValueError, r"target: labels must be in \[0, 10\)"),
        (lambda: mm.plan(z, y - 1 - y), ValueError, "target"),
        (lambda: mm.plan(z, y, step=101), ValueError, "step"),
        (lambda: mm.plan(z, y, step=-1), ValueError, "step"),
        (lambda: mm.plan(z, y, step=1.5), TypeError, "step"),
        (lambda: mm.plan(z, list(y)), TypeError, "target"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            fn()
    plan = mm.plan(z, y, 1)
    with pytest.raises(ValueError, match="x"):
        mm.mix_inputs(torch.randn(5, 3), plan)
    with pytest.raises(TypeError, match="x"):
        mm.mix_inputs(torch.ones(16, 3, dtype=torch.int64), plan)
    with pytest.raises(ValueError, match="logits_mixed"):
        mm.mixed_loss(z[0], y, plan, 1)
    with pytest.raises(ValueError, match="target"):
        mm.mixed_loss(z, y[:8], plan, 1)
    with pytest.raises(ValueError, match="plan.partner"):
        mm.mixed_loss(z[:8], y[:8], plan, 1)
    with pytest.raises(TypeError, match="plan"):
        mm.mixed_loss(z, y, (1, 2, 3, 4), 1)


def test_unchecked_bad_labels_give_nan_not_a_crash():
    mm = make(validate=False, second_reweight=False, mixup_alpha=0.0)
    z, y = batch()
    y = y.clone()
    y[3] = 99
    plan = mm.plan(z, y, 50)
    assert torch.isnan(plan.loss[3]) and plan.weights[3] == 0
    assert torch.isfinite(mm.loss_ma)
    assert torch.isnan(mm.mixed_loss(z, y, plan, 50))


# --- non-finite logits and degenerate weights ------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_logits_keep_the_moving_averages_finite(bad):
    mm = make(burn_in_epoch=0)
    z, y = batch(8)
    z[2, 1] = bad
    plan = mm.plan(z, y, 50)
    assert plan.weights[2] == 0 or bad == -math.inf  # -inf off the label is harmless
    assert torch.isfinite(mm.loss_ma) and torch.isfinite(plan.weights).all()
    loss = mm.mixed_loss(z, y, plan, 50)
    assert torch.isfinite(mm.loss_ma_mixed)
    if bad != -math.inf:
        assert not torch.isfinite(loss)  # a diverged row is reported, not hidden
    z2, y2 = batch(9)
    plan = mm.plan(z2, y2, 51)
    assert torch.isfinite(mm.mixed_loss(z2, y2, plan, 51)) and torch.isfinite(mm.loss_ma)


def test_all_nan_batch_leaves_state_unchanged():
    mm = make()
    z, y = batch(10)
    mm.plan(z, y, 50)
    ma = mm.loss_ma.clone()
    plan = mm.plan(torch.full_like(z, math.nan), y, 51)
    assert torch.equal(mm.loss_ma, ma)
    assert torch.equal(plan.weights, torch.zeros(16))
    assert torch.bincount(plan.partner, minlength=16).sum() == 16  # uniform sampling, still defined


def test_batch_of_one():
    mm = make()
    z, y = batch(11, b=1)
    plan = mm.plan(z, y, 50)
    assert plan.partner.tolist() == [0]
    zm = z.clone().requires_grad_()
    mm.mixed_loss(zm, y, plan, 50).backward()
    assert torch.isfinite(zm.grad).all()


def test_float64_and_half_logits():
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        mm = make()
        z, y = batch(12, dtype=dtype)
        plan = mm.plan(z, y, 50)
        assert plan.loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        zm = z.clone().requires_grad_()
        loss = mm.mixed_loss(zm, y, plan, 50)
        loss.backward()
        assert zm.grad.dtype == dtype and torch.isfinite(loss)


@pytest.mark.slow
def test_reference_step_compiles_fullgraph_and_matches_eager():
    """No host sync or data-dependent Python branch: torch.compile(fullgraph=True) traces a step.

    Dynamo cannot trace a torch.Generator object, so a compiled step draws from torch's global RNG
    (generator=None, seeded with torch.manual_seed); fallback_random makes Inductor use the eager
    random ops, so the compiled and eager steps see the same draws.
    """
    z, y = batch(13, b=32)
    zm = torch.randn(32, 10, generator=torch.Generator().manual_seed(1))

    def step(mm, z, zm, y, t):
        plan = mm.plan(z, y, t)
        return mm.mixed_loss(zm, y, plan, t), plan.partner

    eager_mm, compiled_mm = make(burn_in_epoch=0, generator=None), make(burn_in_epoch=0, generator=None)
    compiled = torch.compile(step, fullgraph=True)
    a, b = zm.clone().requires_grad_(), zm.clone().requires_grad_()
    torch.manual_seed(0)
    la, pa = step(eager_mm, z, a, y, torch.tensor(50))
    torch.manual_seed(0)
    with torch._inductor.config.patch(fallback_random=True):
        lb, pb = compiled(compiled_mm, z, b, y, torch.tensor(50))
    la.backward()
    lb.backward()
    assert torch.equal(pa, pb)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(eager_mm.loss_ma_mixed, compiled_mm.loss_ma_mixed)


def test_loss_function_rejects_bad_arguments_by_name():
    z, y, partner, lam, w = _fn_inputs(2)
    cases = [((z[0], y, partner, lam, None), "logits"), ((z, y[:3], partner, lam, None), "target"),
             ((z, y, partner.float(), lam, None), "partner"), ((z, y, partner, lam[:2], None), "lam"),
             ((z, y, partner, lam, w[:1]), "weights")]
    for args, name in cases:
        with pytest.raises((ValueError, TypeError), match=name):
            mf.MentorMixLossFunction.apply(*args)
