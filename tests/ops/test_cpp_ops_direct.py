"""The C++ CPU ops ``torch.ops.mentormix_cpp.*`` (csrc/, the op contract of docs/SPEC.md §5) called
directly on CPU tensors and compared with ``mentormix_fast.reference`` stage by stage.

Draws are explicit (``uniform``/``beta`` given) wherever values are compared; the kernel's own
Philox draws are checked for reproducibility, counter handling and their distributions. Later
stages are compared against the reference computed FROM THE KERNEL'S OWN earlier outputs (losses,
moving average, weights), so a 1-ulp loss difference, which MentorNet amplifies near l = ma, does
not cascade. Tolerances fit the dtype: the kernels compute in fp32 from the same rounded inputs.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from mentormix_fast import reference as R
from mentormix_fast.mentornet import FOLD_SIZE, fold_mentornet, mentornet_pd

try:
    importlib.import_module("mentormix_fast._C")
    ops = torch.ops.mentormix_cpp
    _MISSING = None
except ImportError as exc:  # not built
    ops, _MISSING = None, str(exc)

pytestmark = pytest.mark.skipif(ops is None, reason=f"mentormix_fast._C not built: {_MISSING}")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Every B in (1, 2, 7, 33, 128, 300) and every K in (2, 3, 17, 101, 1000, 5003) at least once.
SHAPES = [(1, 2), (2, 3), (7, 17), (33, 101), (128, 1000), (300, 5003), (128, 2), (7, 5003), (300, 17),
          (33, 1000), (2, 101), (1, 3)]
TOTAL, BURN_IN, P, DECAY, ALPHA = 1000, 10, 0.7, 0.5, 8.0
STEP_BURN_IN, STEP_AFTER = 50, 500  # epochs 5 (< BURN_IN - 1) and 50
GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
GRAD_FLOOR = {torch.float32: 0.0, torch.bfloat16: 0.0, torch.float16: 2.0**-24}
MN_ATOL = 5e-5  # MentorNet: vectorised exp (~20 ulp) and the folded fc1 against the fp32 reference


@pytest.fixture(scope="module")
def net():
    return mentornet_pd()


@pytest.fixture(scope="module")
def folded(net):
    f = fold_mentornet(net)
    assert f.shape == (FOLD_SIZE,) == (2072,) and f.dtype == torch.float32
    return f


def make_inputs(B, K, dtype, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(B, K, generator=g) * scale).to(dtype)
    y = torch.randint(0, K, (B,), generator=g)
    u = torch.rand(B, generator=g, dtype=torch.float64)
    b = R.draw_beta(ALPHA, B, g, "cpu")
    return z, y, u, b


def no_mentornet():
    return torch.empty(0)


def rng(key=1234, counter=0):
    return torch.tensor([key, counter], dtype=torch.int64)


def call_plan(z, y, ma, rng_state, mn, step, pool=None, u=None, b=None, alpha=ALPHA, p=P, decay=DECAY,
              burn_in=BURN_IN, total=TOTAL):
    return ops.plan(z, y, ma, rng_state, mn, torch.tensor(step), pool, u, b, total, p, decay, burn_in, alpha)


def call_mixed(z, y, partner, lam, mn, step, *, ma2=None, num_steps=None, given=None, pool=None, second=False):
    return ops.mixed_loss(z, y, partner, lam, given, ma2, num_steps, mn, torch.tensor(step), pool, TOTAL, P, DECAY,
                          BURN_IN, second)


def ref_weights(weighting, loss, ma, step):
    return R.sample_weights(weighting, loss, ma, R.epoch_feature(step, TOTAL), BURN_IN)


def assert_partners_match(got, want, v, uniform):
    """Equal, except where ``u_i * total`` lies within rounding of the reference CDF boundary."""
    mismatch = (got != want).nonzero().flatten()
    if mismatch.numel() == 0:
        return
    cdf = torch.cumsum(R.partner_probabilities(v), 0)
    for i in mismatch.tolist():
        lo = min(int(got[i]), int(want[i]))
        gap = abs(float(cdf[lo]) - float(uniform[i]) * float(cdf[-1]))
        assert gap <= 1e-5 * float(cdf[-1]), f"partner {i}: {int(got[i])} vs {int(want[i])} (gap {gap})"


# ------------------------------------------------------------------------------------------------
# ce
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,K", SHAPES)
def test_ce_matches_reference(B, K, dtype):
    z, y, u, b = make_inputs(B, K, dtype, seed=B * 1000 + K)
    loss = ops.ce(z, y, None, None)
    assert loss.dtype == torch.float32 and loss.shape == (B,)
    torch.testing.assert_close(loss, R.per_sample_ce(z, y), rtol=1e-5, atol=1e-5)
    partner = torch.randint(0, B, (B,), generator=torch.Generator().manual_seed(B))
    lam = R.mix_lambda(b, torch.ones(B))
    m = ops.ce(z, y, partner, lam)
    torch.testing.assert_close(m, R.mixed_ce(z, y, partner, lam), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# plan
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,K", SHAPES)
@pytest.mark.parametrize("weighting", ["threshold", "mentornet"])
def test_plan_matches_reference(B, K, dtype, weighting, net, folded):
    z, y, u, b = make_inputs(B, K, dtype, seed=B * 1000 + K + 7)
    w, mn = (net, folded) if weighting == "mentornet" else ("threshold", no_mentornet())
    pool = torch.cat([R.per_sample_ce(z, y), torch.rand(3 * B + 5) * 6])  # a pool larger than the batch
    for step in (STEP_BURN_IN, STEP_AFTER, 10**15, -3):
        for use_pool in (False, True):
            ma0 = torch.tensor(1.7)
            ma, state = ma0.clone(), rng(counter=5)
            loss, v, partner, lam = call_plan(z, y, ma, state, mn, step, pool if use_pool else None, u, b)
            assert (loss.dtype, v.dtype, partner.dtype, lam.dtype) == (torch.float32,) * 2 + (torch.int64, torch.float32)
            assert loss.shape == v.shape == partner.shape == lam.shape == (B,)
            torch.testing.assert_close(loss, R.per_sample_ce(z, y), rtol=1e-5, atol=1e-5)
            # stage by stage from the kernel's own losses / moving average / weights
            q = R.percentile_nearest(pool if use_pool else loss, P)
            torch.testing.assert_close(ma, R.update_moving_average(ma0, q, DECAY), rtol=0, atol=0)
            atol = MN_ATOL if weighting == "mentornet" else 0.0
            torch.testing.assert_close(v, ref_weights(w, loss, ma, step), rtol=0, atol=atol)
            if R.epoch_feature(step, TOTAL) < BURN_IN - 1:
                assert torch.equal(v, torch.ones(B))
            assert_partners_match(partner, R.sample_partners(v, u), v, u)
            torch.testing.assert_close(lam, R.mix_lambda(b, v), rtol=0, atol=0)
            assert torch.equal(state, rng(counter=5)), "explicit draws must not move the Philox counter"


def test_plan_without_mixing_and_state():
    z, y, u, b = make_inputs(33, 17, torch.float32, seed=1)
    ma, state = torch.tensor(0.25), rng(counter=9)
    loss, v, partner, lam = call_plan(z, y, ma, state, no_mentornet(), STEP_AFTER, alpha=0.0)
    assert torch.equal(partner, torch.arange(33)) and torch.equal(lam, torch.ones(33))
    assert torch.equal(state, rng(counter=9))
    torch.testing.assert_close(ma, R.update_moving_average(torch.tensor(0.25), R.percentile_nearest(loss, P), DECAY))
    # drawing advances the counter by one per call, in place
    for expected in (10, 11):
        call_plan(z, y, ma, state, no_mentornet(), STEP_AFTER)
        assert torch.equal(state, rng(counter=expected))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 11, 21, 101, 128, 129, 1000])
def test_percentile_rank_matches_python(n):
    pool = torch.randperm(n, generator=torch.Generator().manual_seed(n)).float()
    z, y, _, _ = make_inputs(2, 3, torch.float32, seed=0)
    for p in (0.0, 0.1, 0.125, 0.2, 0.25, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0):
        ma = torch.tensor(123.0)
        call_plan(z, y, ma, rng(), no_mentornet(), STEP_AFTER, pool=pool, alpha=0.0, p=p, decay=0.0)
        assert float(ma) == R.percentile_rank(n, p), (n, p)


def test_nonfinite_percentile_keeps_moving_average():
    z, y, _, _ = make_inputs(4, 3, torch.float32, seed=0)
    pool = torch.tensor([1.0, float("nan"), float("inf"), float("nan")])
    ma = torch.tensor(0.75)
    call_plan(z, y, ma, rng(), no_mentornet(), STEP_AFTER, pool=pool, alpha=0.0, p=1.0)  # rank 3: +inf (NaN)
    assert float(ma) == 0.75
    call_plan(z, y, ma, rng(), no_mentornet(), STEP_AFTER, pool=pool, alpha=0.0, p=0.0, decay=0.5)  # rank 0: 1.0
    assert float(ma) == 0.5 * 0.75 + 0.5 * 1.0


def test_epoch_from_step_and_burn_in(folded):
    z, y, _, _ = make_inputs(64, 10, torch.float32, seed=3)
    for step, total, burn_in, expect_burn_in in [(0, 1000, 10, True), (89, 1000, 10, True), (90, 1000, 10, False),
                                                 (2**62, 1000, 10, False), (-(2**62), 1000, 2, True),
                                                 (2**62, 2**40, 101, True), (7, 7, 100, False)]:
        ma = torch.tensor(2.0)
        loss, v, _, _ = call_plan(z, y, ma, rng(), folded, step, alpha=0.0, burn_in=burn_in, total=total)
        assert torch.equal(v, torch.ones(64)) == expect_burn_in, (step, total, burn_in)
    with pytest.raises(RuntimeError, match="total_steps"):
        call_plan(z, y, torch.tensor(0.0), rng(), folded, 3, total=0)
    # an int32 step works as well
    ma = torch.tensor(2.0)
    ops.plan(z, y, ma, rng(), folded, torch.tensor(500, dtype=torch.int32), None, None, None, TOTAL, P, DECAY,
             BURN_IN, 0.0)


# ------------------------------------------------------------------------------------------------
# draws
# ------------------------------------------------------------------------------------------------


def test_draws_reproducible_and_counter_dependent():
    z = torch.zeros(4096, 2)
    y = torch.zeros(4096, dtype=torch.int64)

    def draw(state):  # in burn-in (v = 1): lam = max(b, 1 - b)
        return call_plan(z, y, torch.zeros(()), state, no_mentornet(), STEP_BURN_IN)

    a, b = draw(rng(7, 3)), draw(rng(7, 3))
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])
    c, d = draw(rng(7, 4)), draw(rng(8, 3))
    for other in (c, d):
        assert not torch.equal(a[3], other[3]) and not torch.equal(a[2], other[2])
    assert len(set(a[3].tolist())) > 4000  # examples draw from different streams
    assert 0.55 < float(a[3].mean()) < 0.65  # E[max(b, 1 - b)], b ~ Beta(8, 8): ~0.598
    # thread count does not change the draws
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        e = draw(rng(7, 3))
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(a[2], e[2]) and torch.equal(a[3], e[3])


def folded_beta_moments(a: float, k_max: int = 4) -> list[float]:
    """E[lam^k], lam = max(b, 1 - b), b ~ Beta(a, a): 2 B(a + k, a) / B(a, a) I_{1/2}(a, a + k)."""
    from scipy.special import betainc, betaln

    return [2.0 * math.exp(betaln(a + k, a) - betaln(a, a)) * float(betainc(a, a + k, 0.5))
            for k in range(1, k_max + 1)]


@pytest.mark.parametrize("alpha", [1e-8, 0.01, 0.5, 8.0, 100.0])
def test_beta_draw_moments(alpha):
    pytest.importorskip("scipy")
    B = 20000
    z = torch.zeros(B, 2)
    y = torch.zeros(B, dtype=torch.int64)
    _, v, _, lam = call_plan(z, y, torch.zeros(()), rng(99, 0), no_mentornet(), STEP_BURN_IN, alpha=alpha)
    assert torch.equal(v, torch.ones(B))  # burn-in: lam = max(b, 1 - b)
    assert torch.isfinite(lam).all() and (lam >= 0.5).all() and (lam <= 1.0).all()
    lam = lam.double()
    m1, m2, m3, m4 = folded_beta_moments(alpha)
    var = m2 - m1 * m1
    if alpha == 1e-8:  # b is 0 or 1: lam is 1
        assert m1 == pytest.approx(1.0, abs=1e-7)
        assert float(lam.mean()) == 1.0
        return
    mean_hat, var_hat = float(lam.mean()), float(lam.var())
    assert abs(mean_hat - m1) < 5 * math.sqrt(var / B), (mean_hat, m1)
    mu4 = m4 - 4 * m3 * m1 + 6 * m2 * m1**2 - 3 * m1**4  # central 4th moment
    assert abs(var_hat - var) < 5 * math.sqrt(max(mu4 - var * var, 0.0) / B) + 1e-9, (var_hat, var)


def test_partner_frequencies_follow_softmax(folded):
    scipy_stats = pytest.importorskip("scipy.stats")
    B, calls = 64, 300
    g = torch.Generator().manual_seed(5)
    z = torch.randn(B, 10, generator=g) * torch.linspace(0.1, 4, B).unsqueeze(1)
    y = torch.randint(0, 10, (B,), generator=g)
    state = rng(3, 0)
    counts = torch.zeros(B, dtype=torch.float64)
    v0 = None
    for _ in range(calls):
        _, v, partner, _ = call_plan(z, y, torch.tensor(2.0), state, folded, STEP_AFTER)
        v0 = v if v0 is None else v0
        assert torch.equal(v, v0)
        counts += torch.bincount(partner, minlength=B).double()
    assert int(state[1]) == calls
    assert float(v0.max() - v0.min()) > 0.5  # the weights really vary
    expected = torch.softmax(v0.double(), 0) * B * calls
    result = scipy_stats.chisquare(counts.numpy(), expected.numpy())
    assert result.pvalue > 1e-4, result


# ------------------------------------------------------------------------------------------------
# mix
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1,), (5, 3), (16, 3, 5, 7), (64, 100), (3, 1025)])
def test_mix_matches_reference(shape, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g).to(dtype)
    B = shape[0]
    partner = torch.randint(0, B, (B,), generator=g)
    lam = torch.rand(B, generator=g)
    got, want = ops.mix(x, partner, lam), R.mix_inputs(x, partner, lam)
    assert got.dtype == dtype and got.shape == x.shape and got.is_contiguous()
    ulp = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=ulp, atol=ulp * 4)
    if x.dim() == 4:  # a channels-last input gives the same values
        cl = ops.mix(x.to(memory_format=torch.channels_last), partner, lam)
        torch.testing.assert_close(cl, got, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# mixed_loss and its backward
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,K", SHAPES)
@pytest.mark.parametrize("mode", ["plain", "given", "reweight-threshold", "reweight-mentornet"])
def test_mixed_loss_matches_reference(B, K, dtype, mode, net, folded):
    z, y, u, b = make_inputs(B, K, dtype, seed=B * 7 + K)
    partner = R.sample_partners(torch.rand(B, generator=torch.Generator().manual_seed(K)), u)
    lam = R.mix_lambda(b, torch.ones(B))
    second = mode.startswith("reweight")
    w, mn = (net, folded) if mode.endswith("mentornet") else ("threshold", no_mentornet())
    given = torch.rand(B, generator=torch.Generator().manual_seed(B)) if mode == "given" else None
    m_kernel = ops.ce(z, y, partner, lam)  # the same row code as mixed_loss
    torch.testing.assert_close(m_kernel, R.mixed_ce(z, y, partner, lam), rtol=1e-5, atol=1e-5)
    pools = (None, torch.cat([m_kernel, torch.rand(2 * B + 1) * 5])) if second else (None,)
    steps = (STEP_BURN_IN, STEP_AFTER) if second else (STEP_AFTER,)
    for pool in pools:
        for step in steps:
            ma2 = torch.tensor(2.0) if second else None
            nsteps = torch.tensor(-1)
            loss, lse, weights = call_mixed(z, y, partner, lam, mn, step, ma2=ma2, num_steps=nsteps, given=given,
                                            pool=pool, second=second)
            assert loss.shape == () and loss.dtype == torch.float32 and int(nsteps) == step + 1
            torch.testing.assert_close(lse, torch.logsumexp(z.float(), 1), rtol=1e-5, atol=1e-5)
            if second:
                q = R.percentile_nearest(m_kernel if pool is None else pool, P)
                torch.testing.assert_close(ma2, R.update_moving_average(torch.tensor(2.0), q, DECAY), rtol=0, atol=0)
                atol = MN_ATOL if mode.endswith("mentornet") else 0.0
                torch.testing.assert_close(weights, ref_weights(w, m_kernel, ma2, step), rtol=0, atol=atol)
            elif given is not None:
                assert torch.equal(weights, given) and weights.data_ptr() != given.data_ptr()
            else:
                assert weights.shape == (0,)
            want = R.weighted_mean(m_kernel, weights if weights.numel() else None)
            torch.testing.assert_close(loss, want, rtol=2e-6, atol=1e-6)
            # the backward: one read of the logits from the saved lse
            for g in (1.0, 2.5):
                grad = ops.mixed_loss_backward(torch.tensor(g), z, y, partner, lam, lse,
                                               weights if weights.numel() else None)
                assert grad.dtype == dtype and grad.shape == (B, K) and grad.is_contiguous()
                ref = R.mixed_loss_grad(z, y, partner, lam, weights if weights.numel() else None, g)
                # fp16 rounds gradients of small weights into its subnormals (spacing 2^-24)
                excess = (grad.float() - ref).abs() - GRAD_FLOOR[dtype]
                err = excess.max() / ref.abs().max().clamp_min(1e-30)
                assert err <= GRAD_RTOL[dtype], f"relative gradient error {float(err):.2e}"


def test_mixed_loss_state_and_checks(folded):
    z, y, u, b = make_inputs(33, 17, torch.float32, seed=11)
    partner, lam = torch.randint(0, 33, (33,)), torch.full((33,), 0.7)
    # num_steps may be the step tensor itself: read before written
    counter = torch.tensor(41)
    ops.mixed_loss(z, y, partner, lam, None, None, counter, folded, counter, None, TOTAL, P, DECAY, BURN_IN, False)
    assert int(counter) == 42
    # without second_reweight loss_ma_mixed stays
    ma2 = torch.tensor(3.0)
    call_mixed(z, y, partner, lam, folded, STEP_AFTER, ma2=ma2)
    assert float(ma2) == 3.0
    # num_steps is t + 1 with t unclamped
    n = torch.tensor(0)
    call_mixed(z, y, partner, lam, folded, 10**12, num_steps=n)
    assert int(n) == 10**12 + 1
    # argument checks name the argument and move no state
    ma2, n = torch.tensor(3.0), torch.tensor(5)
    with pytest.raises(RuntimeError, match="given_weights"):
        call_mixed(z, y, partner, lam, folded, 7, ma2=ma2, num_steps=n, given=torch.ones(33), second=True)
    with pytest.raises(RuntimeError, match="loss_ma_mixed"):
        call_mixed(z, y, partner, lam, folded, 7, num_steps=n, second=True)
    with pytest.raises(RuntimeError, match="loss_ma_mixed"):
        call_mixed(z, y, partner, lam, folded, 7, ma2=torch.tensor(3.0, dtype=torch.float64), num_steps=n,
                   second=True)
    with pytest.raises(RuntimeError, match="mentornet"):
        call_mixed(z, y, partner, lam, torch.zeros(2092), 7, ma2=ma2, num_steps=n, second=True)
    with pytest.raises(RuntimeError, match="pool"):
        call_mixed(z, y, partner, lam, folded, 7, ma2=ma2, num_steps=n, second=True, pool=torch.ones(3, 2))
    with pytest.raises(RuntimeError, match="num_steps"):
        call_mixed(z, y, partner, lam, folded, 7, ma2=ma2, num_steps=torch.tensor(1.0), second=True)
    assert float(ma2) == 3.0 and int(n) == 5


def test_plan_checks_move_no_state():
    z, y, u, b = make_inputs(8, 5, torch.float32, seed=2)
    ma, state = torch.tensor(1.0), rng(counter=3)
    cases = [
        (dict(u=u), "uniform and beta"),
        (dict(u=u.float(), b=b), "uniform"),
        (dict(pool=torch.ones(0)), "pool"),
        (dict(p=1.5), "percentile"),
        (dict(alpha=float("inf")), "alpha"),
    ]
    for kwargs, match in cases:
        with pytest.raises(RuntimeError, match=match):
            call_plan(z, y, ma, state, no_mentornet(), STEP_AFTER, **kwargs)
    with pytest.raises(RuntimeError, match="rng_state"):
        call_plan(z, y, ma, torch.tensor([1, 2, 3]), no_mentornet(), STEP_AFTER)
    with pytest.raises(RuntimeError, match="loss_ma"):
        call_plan(z, y, torch.tensor([1.0, 2.0]), state, no_mentornet(), STEP_AFTER)
    with pytest.raises(RuntimeError, match="step"):
        ops.plan(z, y, ma, state, no_mentornet(), torch.tensor(1.5), None, None, None, TOTAL, P, DECAY, BURN_IN, 1.0)
    with pytest.raises(RuntimeError, match="target"):
        call_plan(z, y.int(), ma, state, no_mentornet(), STEP_AFTER)
    assert float(ma) == 1.0 and torch.equal(state, rng(counter=3))


# ------------------------------------------------------------------------------------------------
# out-of-range indices, non-finite logits, strided logits
# ------------------------------------------------------------------------------------------------


def test_bad_partner_gives_nan_rows_not_errors():
    B, K = 6, 4
    z, y, u, b = make_inputs(B, K, torch.float32, seed=4)
    partner = torch.tensor([0, -1, 2, B, 10**6, 1])
    bad = torch.tensor([False, True, False, True, True, False])
    lam = torch.full((B,), 0.6)
    m = ops.ce(z, y, partner, lam)
    assert torch.isnan(m[bad]).all() and torch.isfinite(m[~bad]).all()
    torch.testing.assert_close(m[~bad], R.mixed_ce(z, y, partner.clamp(0, B - 1), lam)[~bad])
    for second in (False, True):
        ma2 = torch.tensor(1.0)
        loss, lse, w = call_mixed(z, y, partner, lam, no_mentornet(), STEP_AFTER, ma2=ma2 if second else None,
                                  second=second)
        assert torch.isnan(loss)  # the NaN rows reach the loss (0 * NaN), as in F.cross_entropy
        if second:
            assert torch.equal(w[bad], torch.zeros(3))  # a NaN mixed loss gets weight 0 after burn-in
            assert math.isfinite(float(ma2))
        grad = ops.mixed_loss_backward(torch.tensor(1.0), z, y, partner, lam, lse, w if second else None)
        assert torch.equal(grad[bad], torch.zeros(3, K)) and torch.isfinite(grad).all()
    x = torch.randn(B, 3, 2)
    out = ops.mix(x, partner, lam)
    assert torch.isnan(out[bad]).all() and torch.isfinite(out[~bad]).all()
    # a label outside [0, K) gives a NaN loss row too (also when it is the partner's label)
    y_bad = y.clone()
    y_bad[2] = K
    l = ops.ce(z, y_bad, None, None)
    assert torch.isnan(l[2]) and torch.isfinite(l[[0, 1, 3, 4, 5]]).all()
    m = ops.ce(z, y_bad, torch.tensor([2, 2, 0, 1, 3, 4]), lam)
    assert torch.isnan(m[:3]).all() and torch.isfinite(m[3:]).all()


def test_nonfinite_logits_policy(folded):
    B, K = 8, 5
    z, y, u, b = make_inputs(B, K, torch.float32, seed=8)
    y[:] = 0
    z[1, 2] = float("nan")
    z[2, 3] = float("inf")
    z[3, 1], z[3, 4] = float("nan"), float("inf")  # NaN beside +inf: NaN
    z[4, :] = float("-inf")
    z[5, 0] = float("inf")  # the label itself is +inf: inf - inf
    z[6, 1] = float("-inf")  # a finite row with one -inf logit
    loss = ops.ce(z, y, None, None)
    torch.testing.assert_close(loss, R.per_sample_ce(z, y), equal_nan=True)
    assert torch.isnan(loss[[1, 3, 4, 5]]).all() and math.isinf(float(loss[2])) and torch.isfinite(loss[[0, 6, 7]]).all()
    ma = torch.tensor(1.0)
    loss_k, v, partner, lam = call_plan(z, y, ma, rng(), folded, STEP_AFTER, u=u, b=b, p=0.2)
    torch.testing.assert_close(ma, R.update_moving_average(torch.tensor(1.0), R.percentile_nearest(loss_k, 0.2),
                                                           DECAY))
    assert math.isfinite(float(ma))
    assert torch.equal(v[[1, 2, 3, 4, 5]], torch.zeros(5))
    torch.testing.assert_close(v, ref_weights(mentornet_pd(), loss_k, ma, STEP_AFTER), rtol=0, atol=MN_ATOL)
    assert ((partner >= 0) & (partner < B)).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_row_strided_logits(dtype, folded):
    B, K = 33, 17
    wide = (torch.randn(B, K + 9) * 3).to(dtype)
    z = wide[:, 4:4 + K]
    assert z.stride() == (K + 9, 1)
    zc = z.contiguous()
    y = torch.randint(0, K, (B,))
    partner, lam = torch.randint(0, B, (B,)), torch.rand(B)
    assert torch.equal(ops.ce(z, y, None, None), ops.ce(zc, y, None, None))
    assert torch.equal(ops.ce(z, y, partner, lam), ops.ce(zc, y, partner, lam))
    outs = [call_plan(t, y, torch.tensor(1.0), rng(), folded, STEP_AFTER) for t in (z, zc)]
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    outs = [call_mixed(t, y, partner, lam, folded, STEP_AFTER, ma2=torch.tensor(1.0), second=True) for t in (z, zc)]
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    lse, w = outs[0][1], outs[0][2]
    g1 = ops.mixed_loss_backward(torch.tensor(1.0), z, y, partner, lam, lse, w)
    g2 = ops.mixed_loss_backward(torch.tensor(1.0), zc, y, partner, lam, lse, w)
    assert torch.equal(g1, g2) and g1.is_contiguous()
    # a column-strided (transposed) view is copied, not misread
    zt = zc.t().contiguous().t()
    assert torch.equal(ops.ce(zt, y, None, None), ops.ce(zc, y, None, None))


# ------------------------------------------------------------------------------------------------
# tracing: Meta kernels, torch.compile, opcheck
# ------------------------------------------------------------------------------------------------


def test_meta_kernels_shapes(folded):
    B, K = 5, 7
    z = torch.empty(B, K, device="meta", dtype=torch.bfloat16)
    y = torch.empty(B, dtype=torch.int64, device="meta")
    f32 = dict(device="meta", dtype=torch.float32)
    ma, state, step = torch.empty((), **f32), torch.empty(2, dtype=torch.int64, device="meta"), torch.tensor(3)
    loss, v, partner, lam = ops.plan(z, y, ma, state, folded.to("meta"), step, None, None, None, TOTAL, P, DECAY,
                                     BURN_IN, ALPHA)
    assert loss.shape == v.shape == partner.shape == lam.shape == (B,) and partner.dtype == torch.int64
    p = torch.empty(B, dtype=torch.int64, device="meta")
    lo, lse, w = ops.mixed_loss(z, y, p, lam, None, ma, None, folded.to("meta"), step, None, TOTAL, P, DECAY,
                                BURN_IN, True)
    assert lo.shape == () and lse.shape == (B,) and w.shape == (B,)
    _, _, w = ops.mixed_loss(z, y, p, lam, None, None, None, folded.to("meta"), step, None, TOTAL, P, DECAY,
                             BURN_IN, False)
    assert w.shape == (0,)
    g = ops.mixed_loss_backward(torch.empty((), **f32), z, y, p, lam, lse, None)
    assert g.shape == (B, K) and g.dtype == torch.bfloat16
    assert ops.ce(z, y, None, None).shape == (B,)
    assert ops.mix(torch.empty(B, 3, 4, device="meta"), p, lam).shape == (B, 3, 4)


def test_torch_compile_fullgraph_through_meta_kernels(folded):
    """plan (mutating loss_ma and rng_state) and mixed_loss (mutating loss_ma_mixed and num_steps)
    compile with fullgraph=True from the C++ Meta kernels alone (no Python fake functions) and
    update the states exactly as eager calls do."""
    import torch._dynamo

    torch._dynamo.reset()

    def step_fn(z, z2, y, ma, state, ma2, num_steps, step):
        loss, v, partner, lam = ops.plan(z, y, ma, state, folded, step, None, None, None, TOTAL, P, DECAY, BURN_IN,
                                         ALPHA)
        total, lse, w = ops.mixed_loss(z2, y, partner, lam, None, ma2, num_steps, folded, step, None, TOTAL, P,
                                       DECAY, BURN_IN, True)
        grad = ops.mixed_loss_backward(torch.ones(()), z2, y, partner, lam, lse, w)
        return total, grad, loss, v, partner, lam

    def fresh():
        return [torch.tensor(1.5), rng(11, 0), torch.tensor(2.0), torch.tensor(0)]

    compiled = torch.compile(step_fn, fullgraph=True)
    s_eager, s_comp = fresh(), fresh()
    for B in (16, 16, 24):  # the second call reuses the graph; a new batch size retraces
        g = torch.Generator().manual_seed(B)
        z, y = torch.randn(B, 10, generator=g) * 2, torch.randint(0, 10, (B,), generator=g)
        z2, step = torch.randn(B, 10, generator=g), torch.tensor(500)
        want = step_fn(z, z2, y, *s_eager, step)
        got = compiled(z, z2, y, *s_comp, step)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        for a, b in zip(s_comp, s_eager):
            assert torch.equal(a, b)
    assert int(s_comp[1][1]) == 3 and int(s_comp[3]) == 501


def _opcheck(op, args, utils):
    torch.library.opcheck(op, args, test_utils=utils)


OPCHECK_ALL = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def test_opcheck(folded):
    B, K = 9, 6
    z, y, u, b = make_inputs(B, K, torch.float32, seed=21)
    partner, lam = torch.randint(0, B, (B,)), torch.rand(B)
    step = torch.tensor(STEP_AFTER)
    _opcheck(ops.ce.default, (z, y, None, None), OPCHECK_ALL)
    _opcheck(ops.ce.default, (z.half(), y, partner, lam), OPCHECK_ALL)
    _opcheck(ops.mix.default, (torch.randn(B, 3, 2), partner, lam), OPCHECK_ALL)
    # explicit draws: deterministic, so the compiled run is compared with the eager one
    _opcheck(ops.plan.default, (z, y, torch.tensor(1.0), rng(), folded, step, torch.rand(2 * B), u, b, TOTAL, P,
                                DECAY, BURN_IN, ALPHA), OPCHECK_ALL)
    # kernel draws: the state moves on every run, so the runs differ; schema and fake tensors only
    _opcheck(ops.plan.default, (z, y, torch.tensor(1.0), rng(), no_mentornet(), step, None, None, None, TOTAL, P,
                                DECAY, BURN_IN, ALPHA), ("test_schema", "test_autograd_registration", "test_faketensor"))
    for args in [
        (z, y, partner, lam, None, torch.tensor(1.0), torch.tensor(0), folded, step, None, TOTAL, P, DECAY, BURN_IN,
         True),
        (z.bfloat16(), y, partner, lam, torch.rand(B), None, torch.tensor(0), no_mentornet(), step, None, TOTAL, P,
         DECAY, BURN_IN, False),
        (z, y, partner, lam, None, None, None, folded, step, torch.rand(3 * B), TOTAL, P, DECAY, BURN_IN, False),
    ]:
        _opcheck(ops.mixed_loss.default, args, OPCHECK_ALL)
    lse = torch.logsumexp(z, 1)
    for w in (None, torch.empty(0), torch.rand(B)):
        _opcheck(ops.mixed_loss_backward.default, (torch.tensor(1.5), z, y, partner, lam, lse, w), OPCHECK_ALL)
