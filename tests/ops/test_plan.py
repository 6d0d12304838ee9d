"""The ``plan`` op (and ``ce``, its first stage) on every backend against the reference functions.

Stage by stage, each stage fed the backend's own output of the stage before: the per-example CE
to fp32 rounding; the moving average exactly from the backend's losses; the weights from the
backend's losses and moving average (MentorNet-PD is nearly a step near l = ma, so 1-ulp loss
differences would otherwise move v by ~1e-4); partners equal except within rounding of a CDF
step; lambda exactly from the given Beta draws.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mentormix_fast as mf
from mentormix_fast import reference as ref
from tests.ops.cases import (
    DTYPES,
    GPU_SHAPES,
    HAS_CUDA,
    SHAPES,
    Config,
    batch,
    check_partners,
    epoch_of,
    nan_equal,
    run_plan,
)


def check_plan(case, b, k, dtype, weighting, step, config=None, seed=0, nan_rows=(), bad_label_rows=(), pool=None,
               ma=0.8):
    config = config or Config()
    z, y, u, beta = batch(b, k, dtype, case.device, seed)
    for r in nan_rows:
        z[r % b, 0] = math.nan
    for r in bad_label_rows:
        y[r % b] = k + 3
    loss, v, partner, lam, loss_ma, rng = run_plan(case, z, y, weighting, step, config, u, beta, ma=ma, pool=pool)
    epoch = epoch_of(step, config)
    torch.testing.assert_close(loss, ref.per_sample_ce(z, y), rtol=1e-5, atol=1e-5, equal_nan=True)
    q = ref.percentile_nearest(loss if pool is None else pool, config.percentile)
    want_ma = ref.update_moving_average(torch.tensor(ma, device=case.device), q, config.decay)
    torch.testing.assert_close(loss_ma, want_ma, rtol=1e-6, atol=0)
    assert torch.isfinite(loss_ma)
    net = weighting if isinstance(weighting, str) else weighting.to(case.device)
    w_ref = ref.sample_weights(net, loss, loss_ma, epoch, config.burn_in_epoch)
    torch.testing.assert_close(v, w_ref, rtol=0, atol=case.weights_atol(not isinstance(weighting, str)))
    assert loss.dtype == v.dtype == lam.dtype == torch.float32 and partner.dtype == torch.int64
    if config.alpha > 0:
        torch.testing.assert_close(lam, ref.mix_lambda(beta.float(), v), rtol=0, atol=0)
        check_partners(partner, v, u, ref.sample_partners(v, u))
    else:
        assert torch.equal(partner, torch.arange(b, device=case.device)) and torch.all(lam == 1)
    assert rng.tolist() == [5, 0]  # explicit draws: the Philox counter stays
    return loss, v, partner, lam


def _shapes(case):
    return GPU_SHAPES + SHAPES if case.device == "cuda" else SHAPES


# ------------------------------------------------------------------------------------------------
# ce and plan against the reference
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ce_plain_and_mixed(case, dtype):
    for b, k in _shapes(case):
        z, y, _, _ = batch(b, k, dtype, case.device, seed=b + k)
        partner = torch.randint(0, b, (b,), generator=torch.Generator().manual_seed(k)).to(case.device)
        lam = torch.rand(b, generator=torch.Generator().manual_seed(b)).to(case.device)
        torch.testing.assert_close(case.ops.ce(z, y, None, None), ref.per_sample_ce(z, y), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(case.ops.ce(z, y, partner, lam), ref.mixed_ce(z, y, partner, lam), rtol=1e-5,
                                   atol=1e-5)


def test_ce_large_k_strided_and_transposed_logits(case):
    z, y, _, _ = batch(2, 70001, torch.bfloat16, case.device)
    torch.testing.assert_close(case.ops.ce(z, y, None, None), ref.per_sample_ce(z, y), rtol=1e-5, atol=1e-4)
    wide = torch.randn(50, 40, device=case.device)
    zs = wide[:, 3:20]  # a column slice: row stride 40, read in place
    ys = torch.randint(0, 17, (50,), device=case.device)
    torch.testing.assert_close(case.ops.ce(zs, ys, None, None), ref.per_sample_ce(zs, ys), rtol=1e-5, atol=1e-5)
    zt = torch.randn(9, 6, device=case.device).t()  # column stride != 1: copied
    yt = torch.arange(6, device=case.device) % 9
    torch.testing.assert_close(case.ops.ce(zt, yt, None, None), ref.per_sample_ce(zt, yt), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weighting", ["threshold", "mentornet"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_plan_matches_reference(case, dtype, weighting):
    w = "threshold" if weighting == "threshold" else mf.mentornet_pd()
    for b, k in _shapes(case):
        check_plan(case, b, k, dtype, w, step=60, seed=b * 1000 + k)


@pytest.mark.parametrize("step", [0, 8, 9, 55, 99, 100, 150, "device", "cpu-tensor", "int32", "huge", "negative"])
def test_plan_epoch_from_the_step(case, step):
    """The epoch ``min(100 clamp(t, 0, T) // T, 99)`` is derived in the op from a step on the
    logits' device or a CPU scalar; burn-in while ``e < burn_in_epoch - 1``."""
    device = case.device
    given = {"device": torch.tensor(42, device=device), "cpu-tensor": torch.tensor(42),
             "int32": torch.tensor(97, dtype=torch.int32, device=device), "huge": torch.tensor(10**12, device=device),
             "negative": torch.tensor(-5, device=device)}.get(step, step)
    _, v, _, _ = check_plan(case, 96, 13, torch.float32, mf.mentornet_pd(), given)
    if ref.epoch_feature(int(given), 100) < 9:
        assert torch.equal(v, torch.ones_like(v))


def test_plan_random_mentornet_no_mixing_and_percentiles(case):
    net = mf.MentorNet(generator=torch.Generator().manual_seed(5))
    check_plan(case, 64, 7, torch.float32, net, 30, Config(percentile=0.2))
    check_plan(case, 64, 7, torch.float32, "threshold", 30, Config(alpha=0.0))
    for p in (0.0, 0.5, 1.0):
        check_plan(case, 50, 5, torch.float32, "threshold", 70, Config(percentile=p, decay=0.3))


@pytest.mark.parametrize("weighting", ["threshold", "mentornet"])
def test_non_finite_rows_and_bad_labels(case, weighting):
    w = "threshold" if weighting == "threshold" else mf.mentornet_pd()
    loss, v, _, _ = check_plan(case, 40, 9, torch.float32, w, 60, Config(percentile=0.9), nan_rows=(0, 3, 5, 7),
                               bad_label_rows=(11,))
    assert torch.isnan(loss[[0, 3, 5, 7, 11]]).all()
    assert (v[[0, 3, 5, 7, 11]] == 0).all()


def test_all_nan_batch_keeps_the_moving_average(case):
    z = torch.full((8, 4), math.nan, device=case.device)
    y = torch.zeros(8, dtype=torch.int64, device=case.device)
    u, beta = torch.rand(8, dtype=torch.float64, device=case.device), torch.rand(8, device=case.device)
    _, v, partner, _, loss_ma, _ = run_plan(case, z, y, "threshold", 50, Config(), u, beta, ma=1.25)
    assert loss_ma.item() == 1.25 and (v == 0).all()
    assert ((partner >= 0) & (partner < 8)).all()


def test_masked_minus_inf_logits(case):
    """-inf logits (masked classes) contribute nothing; a row whose label is masked has loss +inf."""
    z, y, u, beta = batch(24, 6, torch.float32, case.device)
    z[:, 5] = -math.inf
    y = y % 5
    y[0] = 5
    loss, v, _, _, _, _ = run_plan(case, z, y, "threshold", 50, Config(), u, beta)
    torch.testing.assert_close(loss, ref.per_sample_ce(z, y))
    assert loss[0].item() == math.inf and v[0].item() == 0.0


def test_nan_and_inf_in_one_row_is_nan(case):
    z, y, _, _ = batch(4, 6, torch.float32, case.device)
    z[1, 2], z[1, 4] = math.nan, math.inf
    z[2, 3] = math.inf
    got, want = case.ops.ce(z, y, None, None), ref.per_sample_ce(z, y)
    assert math.isnan(got[1].item()) and math.isnan(want[1].item())
    assert nan_equal(got[2].item(), want[2].item())


def test_pool_takes_the_percentile_over_other_values(case):
    """``pool``: the percentile of e.g. the all-gathered losses of a distributed batch."""
    z, y, _, _ = batch(50, 7, torch.float32, case.device)
    local = ref.per_sample_ce(z, y)
    for pool in (torch.cat([local, local * 0.5 + 1.0, local.flip(0) * 2.0]), torch.rand(5000, device=case.device)):
        check_plan(case, 50, 7, torch.float32, mf.mentornet_pd(), 60, pool=pool.float().contiguous())


def test_many_programs(case, many_programs):
    if case.name != "triton":
        pytest.skip("the many-program path is the Triton kernels'")
    for weighting in ("threshold", mf.mentornet_pd()):
        for b in (17, 300):
            check_plan(case, b, 11, torch.float32, weighting, 60, nan_rows=(1, 8))
    check_plan(case, 40, 7, torch.float32, "threshold", 60, pool=torch.rand(40, device=case.device) * 3)


# ------------------------------------------------------------------------------------------------
# State in place and in-kernel draws
# ------------------------------------------------------------------------------------------------


def test_in_kernel_draws_advance_the_counter_and_repeat(fast_case):
    """Draws from ``rng_state`` = (key, counter): the counter moves by one per drawing plan; the
    same state draws the same, another key or counter draws otherwise; no draws, no move."""
    case = fast_case
    z, y, _, _ = batch(64, 10, torch.float32, case.device)
    a = run_plan(case, z, y, "threshold", 50, Config(), rng=(3, 7))
    b = run_plan(case, z, y, "threshold", 50, Config(), rng=(3, 7))
    c = run_plan(case, z, y, "threshold", 50, Config(), rng=(4, 7))
    d = run_plan(case, z, y, "threshold", 50, Config(), rng=(3, 8))
    assert a[5].tolist() == [3, 8]
    assert torch.equal(a[3], b[3]) and torch.equal(a[2], b[2])
    assert not torch.equal(a[3], c[3]) and not torch.equal(a[3], d[3])
    none = run_plan(case, z, y, "threshold", 50, Config(alpha=0.0), rng=(3, 7))
    assert none[5].tolist() == [3, 7]


def test_draws_do_not_depend_on_the_program_layout(fast_case, monkeypatch):
    case = fast_case
    if case.name != "triton":
        pytest.skip("one program or many: the Triton kernels' layouts")
    from mentormix_fast.kernels import _select, plan

    z, y, _, _ = batch(200, 5, torch.float32, case.device)
    one = run_plan(case, z, y, "threshold", 50, Config(), rng=(3, 1))
    monkeypatch.setattr(plan, "SMALL_B_MAX", 16)
    monkeypatch.setattr(plan, "LARGE_BLOCK", 256)
    monkeypatch.setattr(_select, "LARGE_BLOCK", 256)
    many = run_plan(case, z, y, "threshold", 50, Config(), rng=(3, 1))
    torch.testing.assert_close(one[3], many[3], rtol=0, atol=0)
    assert (one[2] == many[2]).float().mean() > 0.98  # partners (the CDF sums in another order)
    assert one[5].tolist() == many[5].tolist() == [3, 2]
    assert torch.equal(one[4], many[4])


def test_partner_frequencies_follow_softmax_of_weights(fast_case, b=256):
    stats = pytest.importorskip("scipy.stats")
    case = fast_case
    z, y, _, _ = batch(b, 5, torch.float32, case.device)
    counts = torch.zeros(b, dtype=torch.float64)
    rounds = 16
    for r in range(rounds):
        out = run_plan(case, z, y, "threshold", 50, Config(percentile=0.5), ma=0.0, rng=(11, r))
        counts += torch.bincount(out[2].cpu(), minlength=b).double()
    probs = torch.softmax(out[1].double().cpu(), 0)
    assert 0.1 < out[1].mean().item() < 0.9  # both weight levels present
    assert stats.chisquare(counts.numpy(), (probs * b * rounds).numpy()).pvalue > 1e-3


def _lam_sample(case, alpha, b=20000, seed=0):
    """lam = max(b, 1 - b) of ``b`` draws (burn-in: every weight 1, so lam is never flipped)."""
    z = torch.zeros(b, 2, device=case.device)
    y = torch.zeros(b, dtype=torch.int64, device=case.device)
    config = Config(alpha=alpha, burn_in_epoch=100)
    u = beta = None
    if case.backend.reference:
        g = torch.Generator(device=case.device).manual_seed(seed)
        u, beta = ref.draw_uniform(b, g, case.device), ref.draw_beta(alpha, b, g, case.device)
    out = run_plan(case, z, y, "threshold", 0, config, u, beta, rng=(seed, 0))
    return out[3].double().cpu().numpy()


@pytest.mark.parametrize("alpha", [1e-8, 0.01, 0.1, 0.5, 2.0, 8.0, 100.0])
def test_beta_draws_follow_the_beta_distribution(case, alpha):
    """lam = max(b, 1 - b), b ~ Beta(alpha, alpha), on every backend: its mean, variance, and mass
    near 1 and near 1/2 against the distribution (computed with scipy)."""
    stats = pytest.importorskip("scipy.stats")
    b = 4000 if case.interpreted else 20000
    lam = _lam_sample(case, alpha, b)
    assert np.isfinite(lam).all() and (lam >= 0.5).all() and (lam <= 1).all()
    # max(b, 1 - b) has CDF 2 I_x(a, a) - 1 on [1/2, 1].
    beta = stats.beta(alpha, alpha)
    xs = np.linspace(0.5, 1.0, 20001)
    pdf = np.diff(2 * beta.cdf(xs) - 1)
    mid = (xs[1:] + xs[:-1]) / 2
    mean = float((pdf * mid).sum())
    var = float((pdf * mid**2).sum()) - mean**2
    se = math.sqrt(max(var, 1e-12) / len(lam))
    assert abs(lam.mean() - mean) < 6 * se + 1e-4, (lam.mean(), mean)
    assert abs(lam.var() - var) < 0.1 * var + 2e-4, (lam.var(), var)
    for edge in (0.99, 0.999):  # mass near 1 (b near 0 or 1)
        p = 1 - (2 * beta.cdf(edge) - 1)
        assert abs((lam > edge).mean() - p) < 6 * math.sqrt(p * (1 - p) / len(lam)) + 2e-3, (edge, p)
    p = 2 * beta.cdf(0.55) - 1  # mass near 1/2
    assert abs((lam < 0.55).mean() - p) < 6 * math.sqrt(p * (1 - p) / len(lam)) + 2e-3


def test_beta_draws_agree_across_backends():
    """Every backend's lam for alpha = 0.3 and 8 has the same mean (within sampling error)."""
    from tests.ops.cases import cases

    available = [p.values[0] for p in cases() if not p.marks]
    for alpha in (0.3, 8.0):
        means = {str(c): _lam_sample(c, alpha, 4000 if c.interpreted else 20000).mean() for c in available}
        spread = max(means.values()) - min(means.values())
        assert spread < 0.01, means


# ------------------------------------------------------------------------------------------------
# torch.library, bad arguments, random configurations
# ------------------------------------------------------------------------------------------------


def test_opcheck(fast_case):
    case = fast_case
    z, y, u, beta = batch(16, 7, torch.float32, case.device)
    ma = torch.tensor(0.3, device=case.device)
    rng = torch.tensor([3, 5], dtype=torch.int64, device=case.device)
    step = torch.tensor(40, device=case.device)
    mn = case.mentornet(mf.mentornet_pd())
    op = case.ops.plan.default
    torch.library.opcheck(op, (z, y, ma, rng, mn, step, None, u, beta, 100, 0.7, 0.5, 10, 8.0))
    torch.library.opcheck(op, (z, y, ma, rng, mn, step, None, None, None, 100, 0.7, 0.5, 10, 0.3))
    torch.library.opcheck(op, (z, y, ma, rng, mn[:0], step, torch.rand(40, device=case.device), None, None, 100,
                               0.7, 0.5, 10, 0.0))
    torch.library.opcheck(case.ops.ce.default, (z, y, None, None))


def test_bad_arguments_name_the_argument(fast_case):
    case = fast_case
    ops, dev = case.ops, case.device
    z, y, u, beta = batch(4, 3, torch.float32, dev)
    ma, rng, step = torch.tensor(0.0, device=dev), torch.tensor([1, 0], device=dev), torch.tensor(5)
    mn = case.mentornet(mf.mentornet_pd())
    calls = [
        (lambda: ops.plan(z, y[:2], ma, rng, mn, step, None, u, beta, 100, 0.7, 0.5, 10, 8.0), "target"),
        (lambda: ops.plan(z, y.float(), ma, rng, mn, step, None, u, beta, 100, 0.7, 0.5, 10, 8.0), "target"),
        (lambda: ops.plan(z, y, ma, rng, mn[:5], step, None, u, beta, 100, 0.7, 0.5, 10, 8.0), "mentornet"),
        (lambda: ops.plan(z, y, ma, rng, mn, step, None, u.float(), beta, 100, 0.7, 0.5, 10, 8.0), "uniform"),
        (lambda: ops.plan(z, y, ma, rng, mn, step, None, u, None, 100, 0.7, 0.5, 10, 8.0), "uniform"),
        (lambda: ops.plan(z, y, ma, rng[:1], mn, step, None, u, beta, 100, 0.7, 0.5, 10, 8.0), "rng_state"),
        (lambda: ops.plan(z[:, :0], y, ma, rng, mn, step, None, u, beta, 100, 0.7, 0.5, 10, 8.0), "logits"),
        (lambda: ops.plan(z.double(), y, ma, rng, mn, step, None, u, beta, 100, 0.7, 0.5, 10, 8.0), "logits"),
        (lambda: ops.plan(z, y, ma, rng, mn, step.float(), None, u, beta, 100, 0.7, 0.5, 10, 8.0), "step"),
        (lambda: ops.plan(z, y, ma, rng, mn, step, None, u, beta, 0, 0.7, 0.5, 10, 8.0), "total_steps"),
        (lambda: ops.ce(z, y, torch.zeros(3, dtype=torch.int64, device=dev), None), "partner"),
    ]
    for call, name in calls:
        with pytest.raises((RuntimeError, ValueError, TypeError), match=name):
            call()


def test_random_configurations(case):
    """Random (B, K, dtype, weighting, p, decay, burn-in, step): every stage against the reference."""
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies

    @hyp.settings(max_examples=15 if case.interpreted else 30, deadline=None, derandomize=True, database=None)
    @hyp.given(b=st.integers(1, 300), k=st.integers(2, 300), dtype=st.sampled_from(DTYPES), mentornet=st.booleans(),
               p=st.floats(0.0, 1.0), decay=st.floats(0.0, 1.0), burn_in=st.integers(0, 12), step=st.integers(0, 120))
    def run(b, k, dtype, mentornet, p, decay, burn_in, step):
        w = mf.mentornet_pd() if mentornet else "threshold"
        config = Config(percentile=p, decay=decay, burn_in_epoch=burn_in, alpha=4.0)
        check_plan(case, b, k, dtype, w, step, config, seed=b * 1000 + k, ma=float(step % 7))

    run()


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_plan_on_another_gpu_than_the_current_one(fast_case):
    """The ops launch on the logits' GPU, whatever the current device."""
    case = fast_case
    if torch.cuda.device_count() < 2 or case.device != "cuda":
        pytest.skip("needs two GPUs")
    z, y, u, beta = batch(64, 10, torch.float32, "cuda:1")
    out = run_plan(case, z, y, "threshold", 50, Config(), u, beta)
    torch.testing.assert_close(out[0], ref.per_sample_ce(z, y), rtol=1e-5, atol=1e-5)


def test_a_call_that_raises_moves_no_state(fast_case):
    case = fast_case
    z, y, u, beta = batch(8, 3, torch.float32, case.device)
    ma, rng = torch.tensor(0.5, device=case.device), torch.tensor([1, 4], device=case.device)
    mn = case.mentornet(mf.mentornet_pd())
    for bad in (dict(y=y[:3]), dict(mn=mn[:7]), dict(u=u.float())):
        with pytest.raises((RuntimeError, ValueError, TypeError)):
            case.ops.plan(z, bad.get("y", y), ma, rng, bad.get("mn", mn), torch.tensor(50), None, bad.get("u", u),
                          beta, 100, 0.7, 0.5, 10, 8.0)
        assert float(ma) == 0.5 and rng.tolist() == [1, 4]


def test_cpu_draws_do_not_depend_on_the_thread_count(case):
    if case.name != "cpu":
        pytest.skip("the C++ CPU kernels' threads")
    z, y, _, _ = batch(5000, 2, torch.float32, "cpu")
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(run_plan(case, z, y, "threshold", 50, Config(alpha=0.5), rng=(9, 3)))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)
