"""Triton backend vs the reference on identical draws (CPU: Triton's interpreter, see conftest.py).

Each check is a function of the device so that tests/test_triton_gpu.py runs the same comparisons
compiled for a real GPU. Both backends compute in fp32 from the same (fp16/bf16/fp32) logits, so
tolerances are fp32-level for losses and weights; gradients are compared after rounding to the
logits' dtype with that dtype's tolerance.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

import mentormix_fast as mf
from mentormix_fast import reference as ref
from mentormix_fast.backends import get_backend
from mentormix_fast.config import MentorMixConfig

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

if "triton" not in mf.backends() or mf.backends()["triton"] != "available":
    pytest.skip(f"triton backend unavailable: {mf.backends().get('triton')}", allow_module_level=True)
if not torch.cuda.is_available():
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not 1", allow_module_level=True)

from mentormix_fast.kernels._shared import radix_select, radix_selected  # noqa: E402  (after the interpreter switch)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
GRAD_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-6), torch.bfloat16: dict(rtol=2e-2, atol=1e-4),
            torch.float16: dict(rtol=2e-3, atol=1e-6)}
# The mix backward accumulates the partner scatter in another order than autograd's index_put.
MIX_GRAD_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
                torch.float16: dict(rtol=2e-3, atol=2e-3), torch.float64: dict(rtol=1e-12, atol=1e-12)}
SHAPES = [(1, 2), (2, 2), (7, 3), (33, 17), (128, 10), (300, 101), (3, 5003)]


def cfg(**kw):
    base = dict(percentile=0.7, mixup_alpha=8.0, second_reweight=True, burn_in_epoch=10, total_steps=100,
                loss_ma_decay=0.5)
    return MentorMixConfig(**(base | kw))


def backends_on(device):
    return get_backend("triton", torch.device(device)), get_backend("reference", torch.device(device))


def batch(b, k, dtype, device, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(b, k, generator=g) * scale).to(dtype)
    y = torch.randint(0, k, (b,), generator=g)
    u = torch.rand(b, generator=g, dtype=torch.float64)
    beta = ref.draw_beta(4.0, b, g, "cpu")
    return z.to(device), y.to(device), u.to(device), beta.to(device)


def weightings():
    return ["threshold", mf.mentornet_pd()]


# ------------------------------------------------------------------------------------------------
# Checks (shared with the GPU suite)
# ------------------------------------------------------------------------------------------------


def check_partners(got, v, uniform, want):
    """Partners equal the reference except where ``u * total`` sits within rounding of a CDF step."""
    diff = got != want
    if not diff.any():
        return
    cdf = torch.cumsum(torch.softmax(v.double(), 0), 0)
    t = uniform.double() * cdf[-1]
    near = (cdf[want[diff]] - t[diff]).abs().minimum((cdf[got[diff]] - t[diff]).abs())
    assert (near < 1e-5).all(), f"partners differ away from CDF boundaries: {near.max().item()}"


def check_weights_and_sample(device, b, k, dtype, weighting, epoch, config, seed=0, nan_rows=(), bad_label_rows=()):
    tri, rb = backends_on(device)
    z, y, u, beta = batch(b, k, dtype, device, seed)
    for r in nan_rows:
        z[r % b, 0] = math.nan
    for r in bad_label_rows:
        y[r % b] = k + 3
    ma = torch.tensor(0.8, device=device)
    got = tri.weights_and_sample(z, y, ma, epoch, config, weighting, None, u, beta)
    want = rb.weights_and_sample(z, y, ma, epoch, config, weighting, None, u, beta)
    # Stage by stage, each from the kernel's own inputs to it (CE rounding differs at ~1e-7, and
    # the trained MentorNet amplifies input differences ~100x, so end-to-end weights are looser).
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-5, equal_nan=True)
    q = ref.percentile_nearest(got.loss, config.percentile)
    torch.testing.assert_close(got.loss_ma, ref.update_moving_average(ma, q, config.loss_ma_decay), rtol=0, atol=0)
    torch.testing.assert_close(got.loss_ma, want.loss_ma, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(got.loss_ma)
    w_ref = ref.sample_weights(weighting, got.loss, got.loss_ma, epoch, config.burn_in_epoch)
    torch.testing.assert_close(got.weights, w_ref, rtol=0, atol=3e-6)
    assert got.partner.dtype == torch.int64 and got.lam.dtype == torch.float32
    if config.mixup_alpha > 0:
        torch.testing.assert_close(got.lam, ref.mix_lambda(beta.float(), got.weights), rtol=0, atol=0)
        check_partners(got.partner, got.weights, u, ref.sample_partners(got.weights, u))
        agree = (got.weights >= 0.5) == (want.weights >= 0.5)
        torch.testing.assert_close(got.lam[agree], want.lam[agree], rtol=0, atol=0)
        assert (got.partner == want.partner).float().mean() > 0.9
    else:
        assert torch.equal(got.partner, torch.arange(b, device=device))
        assert torch.all(got.lam == 1)
    return got, want


def check_mixed_loss(device, b, k, dtype, weighting, epoch, config, seed=1, upstream=0.37):
    tri, rb = backends_on(device)
    z, y, u, beta = batch(b, k, dtype, device, seed)
    plan = rb.weights_and_sample(z, y, torch.tensor(0.5, device=device), epoch, config, weighting, None, u, beta)
    ma2 = torch.tensor(0.9, device=device)
    zt = z.clone().requires_grad_(True)
    zr = z.clone().requires_grad_(True)
    lt, mt = tri.mixed_loss(zt, y, plan.partner, plan.lam, ma2, epoch, config, weighting)
    lr, mr = rb.mixed_loss(zr, y, plan.partner, plan.lam, ma2, epoch, config, weighting)
    assert lt.dtype == torch.float32 and lt.dim() == 0
    torch.testing.assert_close(lt, lr.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mt, mr, rtol=1e-5, atol=1e-6)
    (lt * upstream).backward()
    (lr * upstream).backward()
    assert zt.grad.dtype == dtype
    torch.testing.assert_close(zt.grad.float(), zr.grad.float(), **GRAD_TOL[dtype])


def check_mix(device, shape, dtype, seed=2):
    tri, rb = backends_on(device)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype).to(device)
    b = shape[0]
    partner = torch.randint(0, b, (b,), generator=g).to(device)
    lam = torch.rand(b, generator=g).to(device)
    xt = x.clone().requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    out_t, out_r = tri.mix(xt, partner, lam), rb.mix(xr, partner, lam)
    assert out_t.dtype == dtype and out_t.shape == x.shape
    if dtype == torch.float32:
        tol = dict(rtol=1e-6, atol=1e-6)
    elif dtype == torch.float64:
        tol = dict(rtol=1e-15, atol=1e-15)
    elif dtype == torch.bfloat16 and device == "cpu":
        tol = dict(rtol=2e-2, atol=2e-2)  # the interpreter rounds fp32 -> bf16 toward zero (GPUs: to nearest)
    else:
        tol = dict(rtol=0, atol=0)  # same per-operation rounding as the eager reference
    torch.testing.assert_close(out_t, out_r, **tol)
    gy = torch.randn(shape, generator=g).to(dtype).to(device)
    out_t.backward(gy)
    out_r.backward(gy)
    torch.testing.assert_close(xt.grad.float(), xr.grad.float(), **MIX_GRAD_TOL[dtype])


# ------------------------------------------------------------------------------------------------
# Tests on the interpreter (or whatever device this run has)
# ------------------------------------------------------------------------------------------------

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_per_sample_ce(shape, dtype):
    from mentormix_fast.kernels.weights_and_sample import per_sample_ce

    z, y, _, _ = batch(*shape, dtype, DEVICE)
    torch.testing.assert_close(per_sample_ce(z, y), ref.per_sample_ce(z, y), rtol=1e-5, atol=1e-5)


def test_per_sample_ce_large_k_and_non_contiguous():
    from mentormix_fast.kernels.weights_and_sample import per_sample_ce

    z, y, _, _ = batch(2, 70001, torch.bfloat16, DEVICE)
    torch.testing.assert_close(per_sample_ce(z, y), ref.per_sample_ce(z, y), rtol=1e-5, atol=1e-4)
    zt = torch.randn(9, 6, device=DEVICE).t()  # [6, 9], column stride != 1
    yt = torch.arange(6, device=DEVICE) % 9
    torch.testing.assert_close(per_sample_ce(zt, yt), ref.per_sample_ce(zt, yt), rtol=1e-5, atol=1e-5)


def _select(values: torch.Tensor, k: int, block: int) -> torch.Tensor:
    out = torch.empty((), dtype=torch.float32, device=values.device)
    _select_launch[(1,)](values, out, values.numel(), k, BLOCK=block)
    return out


@triton.jit
def _select_launch(x_ptr, out_ptr, n, k, BLOCK: tl.constexpr):
    tl.store(out_ptr, radix_select(x_ptr, n, k, BLOCK))


@pytest.mark.parametrize("case", ["ties", "signed", "nonfinite", "tiny", "multichunk"])
def test_radix_select_is_exact(case):
    g = torch.Generator().manual_seed(3)
    n = {"ties": 200, "signed": 129, "nonfinite": 64, "tiny": 1, "multichunk": 700}[case]
    if case == "ties":
        x = torch.randint(0, 5, (n,), generator=g).float()
    elif case == "signed":
        x = torch.randn(n, generator=g) * 1e3
        x[:5] = torch.tensor([0.0, -0.0, 1e-40, -1e-40, -math.inf])
    elif case == "nonfinite":
        x = torch.rand(n, generator=g)
        x[::7] = math.nan
        x[3] = math.inf
    else:
        x = torch.randn(n, generator=g)
    x = x.to(DEVICE)
    block = 256 if case == "multichunk" else 1024
    for p in (0.0, 0.1, 0.3, 0.5, 0.7, 0.8, 1.0):
        k = ref.percentile_rank(n, p)
        got = _select(x, k, block)
        want = ref.percentile_nearest(x, p)
        assert got.item() == want.item() or (math.isnan(got.item()) and math.isnan(want.item())), (p, got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 2), (2, 3), (37, 17), (128, 10), (257, 1000)], ids=str)
def test_weights_and_sample_threshold(shape, dtype):
    check_weights_and_sample(DEVICE, *shape, dtype, "threshold", 50, cfg())


@pytest.mark.parametrize("epoch", [0, 8, 9, 55, 99, "tensor"])
def test_weights_and_sample_mentornet_epochs(epoch):
    e = torch.tensor(42, device=DEVICE) if epoch == "tensor" else epoch
    check_weights_and_sample(DEVICE, 96, 13, torch.float32, mf.mentornet_pd(), e, cfg())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_weights_and_sample_mentornet_low_precision(dtype):
    check_weights_and_sample(DEVICE, 128, 100, dtype, mf.mentornet_pd(), 95, cfg(percentile=0.5))


def test_weights_and_sample_random_mentornet_and_alpha_zero():
    net = mf.MentorNet(generator=torch.Generator().manual_seed(5))
    check_weights_and_sample(DEVICE, 64, 7, torch.float32, net, 30, cfg(percentile=0.2))
    check_weights_and_sample(DEVICE, 64, 7, torch.float32, "threshold", 30, cfg(mixup_alpha=0.0))


@pytest.mark.parametrize("weighting", ["threshold", "mentornet"])
def test_weights_and_sample_non_finite_rows(weighting):
    w = "threshold" if weighting == "threshold" else mf.mentornet_pd()
    got, _ = check_weights_and_sample(DEVICE, 40, 9, torch.float32, w, 60, cfg(percentile=0.9),
                                      nan_rows=(0, 3, 5, 7), bad_label_rows=(11,))
    assert torch.isnan(got.loss[[0, 3, 5, 7, 11]]).all()
    assert (got.weights[[0, 3, 5, 7, 11]] == 0).all()


def test_all_nan_batch_keeps_moving_average():
    tri, _ = backends_on(DEVICE)
    z = torch.full((8, 4), math.nan, device=DEVICE)
    y = torch.zeros(8, dtype=torch.int64, device=DEVICE)
    out = tri.weights_and_sample(z, y, torch.tensor(1.25, device=DEVICE), 50, cfg(), "threshold", None,
                                 torch.rand(8, dtype=torch.float64, device=DEVICE), torch.rand(8, device=DEVICE))
    assert out.loss_ma.item() == 1.25 and (out.weights == 0).all()
    assert ((out.partner >= 0) & (out.partner < 8)).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 2), (2, 2), (33, 17), (128, 10), (100, 300), (3, 5003)], ids=str)
@pytest.mark.parametrize("second_reweight", [True, False])
def test_mixed_loss_and_gradient(shape, dtype, second_reweight):
    check_mixed_loss(DEVICE, *shape, dtype, "threshold", 50, cfg(second_reweight=second_reweight))


@pytest.mark.parametrize("epoch", [3, 70, 95])
def test_mixed_loss_mentornet(epoch):
    check_mixed_loss(DEVICE, 64, 10, torch.float32, mf.mentornet_pd(), epoch, cfg(percentile=0.3))


def test_mixed_loss_nan_row_propagates():
    tri, rb = backends_on(DEVICE)
    z, y, _, _ = batch(16, 5, torch.float32, DEVICE)
    z[4, 2] = math.nan
    partner = torch.arange(16, device=DEVICE).flip(0)
    lam = torch.full((16,), 0.7, device=DEVICE)
    lt, mt = tri.mixed_loss(z, y, partner, lam, torch.tensor(0.0, device=DEVICE), 50, cfg(), "threshold")
    lr, mr = rb.mixed_loss(z, y, partner, lam, torch.tensor(0.0, device=DEVICE), 50, cfg(), "threshold")
    assert torch.isnan(lt) and torch.isnan(lr)
    torch.testing.assert_close(mt, mr)
    assert torch.isfinite(mt)


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(1,), (1, 1), (5, 3, 7, 7), (64, 33), (3, 2000)], ids=str)
def test_mix(shape, dtype):
    check_mix(DEVICE, shape, dtype)


# ------------------------------------------------------------------------------------------------
# The draws themselves (statistics) and the module end to end
# ------------------------------------------------------------------------------------------------


def test_partner_frequencies_follow_softmax_of_weights(b=256):
    stats = pytest.importorskip("scipy.stats")
    tri, _ = backends_on(DEVICE)
    k, rounds = 5, 16
    gen = torch.Generator(device=DEVICE).manual_seed(11)
    z, y, _, _ = batch(b, k, torch.float32, DEVICE)
    counts = torch.zeros(b, dtype=torch.float64)
    for _ in range(rounds):
        out = tri.weights_and_sample(z, y, torch.tensor(0.0, device=DEVICE), 50, cfg(percentile=0.5), "threshold",
                                     gen)
        counts += torch.bincount(out.partner.cpu(), minlength=b).double()
    probs = torch.softmax(out.weights.double().cpu(), 0)
    assert 0.1 < out.weights.mean().item() < 0.9  # both weight levels present
    p_value = stats.chisquare(counts.numpy(), (probs * b * rounds).numpy()).pvalue
    assert p_value > 1e-3, p_value


def test_lambda_follows_folded_beta():
    stats = pytest.importorskip("scipy.stats")
    tri, _ = backends_on(DEVICE)
    b, alpha = 2048, 2.0
    gen = torch.Generator(device=DEVICE).manual_seed(12)
    z, y, _, _ = batch(b, 3, torch.float32, DEVICE)
    out = tri.weights_and_sample(z, y, torch.tensor(0.0, device=DEVICE), 50, cfg(mixup_alpha=alpha, percentile=0.5),
                                 "threshold", gen)
    lam, v = out.lam.cpu().double().numpy(), out.weights.cpu().numpy()
    hi, lo = lam[v >= 0.5], lam[v < 0.5]
    assert (hi >= 0.5).all() and (lo <= 0.5).all() and len(hi) > 100 and len(lo) > 100
    # max(b, 1 - b) for b ~ Beta(a, a) has CDF 2 I_x(a, a) - 1 on [1/2, 1].
    folded = lambda x: 2 * stats.beta.cdf(x, alpha, alpha) - 1
    assert stats.kstest(hi, folded).pvalue > 1e-3
    assert stats.kstest(1 - lo, folded).pvalue > 1e-3


def test_lambda_follows_folded_beta_small_alpha():
    """alpha < 1: the in-kernel gamma draws use the boost G(a) = G(a + 1) U^(1/a) (in log space)."""
    stats = pytest.importorskip("scipy.stats")
    tri, _ = backends_on(DEVICE)
    b = 2048
    z, y, _, _ = batch(b, 3, torch.float32, DEVICE)
    for alpha in (0.4, 0.05):
        gen = torch.Generator(device=DEVICE).manual_seed(13)
        out = tri.weights_and_sample(z, y, torch.tensor(0.0, device=DEVICE), 50,
                                     cfg(mixup_alpha=alpha, percentile=0.5), "threshold", gen)
        lam, v = out.lam.cpu().double().numpy(), out.weights.cpu().numpy()
        assert math.isfinite(lam.sum()) and (lam >= 0).all() and (lam <= 1).all()
        sample = np.concatenate([lam[v >= 0.5], 1 - lam[v < 0.5]])
        # E[(2 b - 1)^2] = 4 Var(b) = 1 / (2 alpha + 1) (also for the folded max(b, 1 - b)).
        assert abs(np.mean((2 * sample - 1) ** 2) - 1 / (2 * alpha + 1)) < 0.03
        if alpha >= 0.1:  # tinier alpha: fp32 rounds much of the mass to exactly 0 or 1 (atoms; no KS)
            folded = lambda x, a=alpha: 2 * stats.beta.cdf(x, a, a) - 1
            assert stats.kstest(sample, folded).pvalue > 1e-3


def test_same_seed_same_draws():
    """In-kernel draws: same generator seed, same partners and lam (whatever the program layout);
    another seed, other draws; the generator advances from step to step."""
    tri, _ = backends_on(DEVICE)
    z, y, _, _ = batch(64, 10, torch.float32, DEVICE)
    ma = torch.tensor(0.0, device=DEVICE)

    def run(seed, steps=1):
        gen = torch.Generator(device=DEVICE).manual_seed(seed)
        return [tri.weights_and_sample(z, y, ma, 50, cfg(), "threshold", gen) for _ in range(steps)]

    a, b = run(4), run(4)
    assert torch.equal(a[0].lam, b[0].lam) and torch.equal(a[0].partner, b[0].partner)
    c = run(5)[0]
    assert not torch.equal(a[0].lam, c.lam)
    s1, s2 = run(4, 2)
    assert torch.equal(s1.lam, a[0].lam) and not torch.equal(s1.lam, s2.lam)


def test_same_draws_many_programs(monkeypatch):
    """The Philox counters are the example indices: one program or many give the same draws."""
    from mentormix_fast.kernels import _shared

    tri, _ = backends_on(DEVICE)
    z, y, _, _ = batch(200, 5, torch.float32, DEVICE)
    ma = torch.tensor(0.0, device=DEVICE)
    one = tri.weights_and_sample(z, y, ma, 50, cfg(), "threshold", torch.Generator(device=DEVICE).manual_seed(3))
    monkeypatch.setattr(_shared, "SMALL_B_MAX", 16)
    monkeypatch.setattr(_shared, "LARGE_BLOCK", 256)
    many = tri.weights_and_sample(z, y, ma, 50, cfg(), "threshold", torch.Generator(device=DEVICE).manual_seed(3))
    torch.testing.assert_close(one.lam, many.lam, rtol=0, atol=0)
    assert (one.partner == many.partner).float().mean() > 0.98


@contextlib.contextmanager
def reference_draws():
    """The Triton backend given the reference backend's draws (explicit ``uniform``/``beta`` from
    the module's generator, in the reference's order, instead of its Philox state): the module end
    to end on identical draws, through the same in-place state updates as without the patch."""
    from mentormix_fast.triton_backend import TritonBackend

    orig_plan, orig_functional = TritonBackend._plan, TritonBackend.weights_and_sample

    def draws(logits, generator, config):
        batch = logits.shape[0]
        return (ref.draw_uniform(batch, generator, logits.device),
                ref.draw_beta(config.mixup_alpha, batch, generator, logits.device))

    def plan(self, logits, target, loss_ma, rng, epoch, clock_mul, clock_div, config, weighting, generator, uniform,
             beta, gather):
        if config.mixup_alpha > 0 and uniform is None and beta is None:
            (uniform, beta), rng = draws(logits, generator, config), None
        return orig_plan(self, logits, target, loss_ma, rng, epoch, clock_mul, clock_div, config, weighting,
                         generator, uniform, beta, gather)

    def functional(self, logits, target, loss_ma, epoch, config, weighting, generator, uniform=None, beta=None, **kw):
        if config.mixup_alpha > 0 and uniform is None and beta is None:
            uniform, beta = draws(logits, generator, config)
        return orig_functional(self, logits, target, loss_ma, epoch, config, weighting, generator, uniform, beta, **kw)

    TritonBackend._plan, TritonBackend.weights_and_sample = plan, functional
    try:
        yield
    finally:
        TritonBackend._plan, TritonBackend.weights_and_sample = orig_plan, orig_functional


def _train(backend, steps, device, second_reweight=True, dtype=torch.float32):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5)).to(device)
    mm = mf.MentorMix(total_steps=steps, backend=backend, generator=torch.Generator(device=device).manual_seed(1),
                      burn_in_epoch=2, second_reweight=second_reweight, mixup_alpha=2.0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(steps, 32, 8, generator=g).to(device)
    y = torch.randint(0, 5, (steps, 32), generator=g).to(device)
    losses = []
    for t in range(steps):
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            loss = mm(net, x[t], y[t])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses), mm


def test_module_with_triton_backend_tracks_reference():
    with reference_draws():
        lt, mt = _train("triton", 12, DEVICE)
    lr, mr = _train("reference", 12, DEVICE)
    torch.testing.assert_close(lt, lr, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mt.loss_ma, mr.loss_ma, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mt.loss_ma_mixed, mr.loss_ma_mixed, rtol=1e-4, atol=1e-5)


def test_module_with_triton_backend_same_seed_same_steps():
    """In-kernel draws: the module's generator seed fixes the whole run."""
    la, ma = _train("triton", 4, DEVICE)
    lb, mb = _train("triton", 4, DEVICE)
    assert torch.equal(la, lb) and torch.equal(ma.loss_ma_mixed, mb.loss_ma_mixed)
    assert torch.isfinite(la).all()


def test_auto_never_picks_the_interpreter():
    from mentormix_fast.backends import get_backend as gb

    assert gb("auto", torch.device("cpu")).name != "triton"
    assert get_backend("triton", torch.device(DEVICE)).supports(torch.device(DEVICE))


# ------------------------------------------------------------------------------------------------
# The many-program O(B) path (large B), forced on small batches
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def many_programs(monkeypatch):
    from mentormix_fast.kernels import _shared

    monkeypatch.setattr(_shared, "SMALL_B_MAX", 16)
    monkeypatch.setattr(_shared, "LARGE_BLOCK", 256)  # >= the 256 histogram bins (GPU lowering)


@pytest.mark.parametrize("b", [17, 200, 1000])
def test_radix_histograms_many_programs(many_programs, b):
    from mentormix_fast.kernels import _shared

    g = torch.Generator().manual_seed(b)
    x = torch.randint(0, 9, (b,), generator=g).float() * torch.rand(1, generator=g)
    x[::13] = math.nan
    x[5] = -2.0
    x = x.to(DEVICE)
    for p in (0.0, 0.2, 0.5, 0.7, 1.0):
        k = ref.percentile_rank(b, p)
        hist = _shared.radix_histograms(x, k)
        out = torch.empty((), device=DEVICE)
        _selected_launch[(1,)](hist, k, out)
        want = ref.percentile_nearest(x, p)
        assert out.item() == want.item() or (math.isnan(out.item()) and math.isnan(want.item())), (p, out, want)


@triton.jit
def _selected_launch(hist_ptr, k, out_ptr):
    from_hist = radix_selected(hist_ptr, k)
    tl.store(out_ptr, from_hist)


@pytest.mark.parametrize("weighting", ["threshold", "mentornet"])
@pytest.mark.parametrize("b", [17, 300])
def test_weights_and_sample_many_programs(many_programs, weighting, b):
    w = "threshold" if weighting == "threshold" else mf.mentornet_pd()
    check_weights_and_sample(DEVICE, b, 11, torch.float32, w, 60, cfg(), nan_rows=(1, 8))


@pytest.mark.parametrize("second_reweight", [True, False])
def test_mixed_loss_many_programs(many_programs, second_reweight):
    check_mixed_loss(DEVICE, 300, 9, torch.bfloat16, mf.mentornet_pd(), 92, cfg(second_reweight=second_reweight))


def test_partner_frequencies_many_programs(many_programs):
    test_partner_frequencies_follow_softmax_of_weights(b=600)  # 3 blocks: the block-scan CDF


# ------------------------------------------------------------------------------------------------
# percentile_gather: the percentile over other values (e.g. an all-gathered distributed batch)
# ------------------------------------------------------------------------------------------------


def _fake_gather(values):
    """Stands in for an all-gather over 3 ranks: the local values and two shifted copies."""
    return torch.cat([values, values * 0.5 + 1.0, values.flip(0) * 2.0])


@pytest.mark.parametrize("weighting", ["threshold", "mentornet"])
def test_percentile_gather_matches_reference(weighting):
    w = "threshold" if weighting == "threshold" else mf.mentornet_pd()
    tri, rb = backends_on(DEVICE)
    z, y, u, beta = batch(50, 7, torch.float32, DEVICE)
    ma = torch.tensor(0.4, device=DEVICE)
    got = tri.weights_and_sample(z, y, ma, 60, cfg(), w, None, u, beta, percentile_gather=_fake_gather)
    want = rb.weights_and_sample(z, y, ma, 60, cfg(), w, None, u, beta, percentile_gather=_fake_gather)
    q = ref.percentile_nearest(_fake_gather(got.loss), 0.7)
    assert got.loss_ma.item() == ref.update_moving_average(ma, q, 0.5).item()
    torch.testing.assert_close(got.loss_ma, want.loss_ma, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.weights, ref.sample_weights(w, got.loss, got.loss_ma, 60, 10), rtol=0, atol=3e-6)
    check_partners(got.partner, got.weights, u, ref.sample_partners(got.weights, u))
    zt = z.clone().requires_grad_(True)
    zr = z.clone().requires_grad_(True)
    lt, mt = tri.mixed_loss(zt, y, want.partner, want.lam, ma, 60, cfg(), w, percentile_gather=_fake_gather)
    lr, mr = rb.mixed_loss(zr, y, want.partner, want.lam, ma, 60, cfg(), w, percentile_gather=_fake_gather)
    torch.testing.assert_close(lt, lr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mt, mr, rtol=1e-5, atol=1e-6)
    (lt * 1.7).backward()
    (lr * 1.7).backward()
    torch.testing.assert_close(zt.grad, zr.grad, rtol=1e-4, atol=1e-6)


def test_module_percentile_gather_with_triton():
    mm = mf.MentorMix(total_steps=10, backend="triton", percentile_gather=_fake_gather,
                      generator=torch.Generator(device=DEVICE).manual_seed(0))
    net = torch.nn.Linear(4, 3).to(DEVICE)
    x, y = torch.randn(20, 4, device=DEVICE), torch.randint(0, 3, (20,), device=DEVICE)
    loss = mm(net, x, y, step=5)
    loss.backward()
    assert torch.isfinite(loss) and net.weight.grad is not None


def test_percentile_gather_many_programs(many_programs):
    test_percentile_gather_matches_reference("mentornet")


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_loss_function_triton_path_matches_plain(monkeypatch, weighted, dtype):
    """MentorMixLossFunction dispatches to the Triton ops on CUDA; forced here on this device."""
    from mentormix_fast import autograd

    z, y, _, _ = batch(33, 11, dtype, DEVICE)
    partner = torch.randperm(33, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    lam = torch.rand(33, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    w = torch.rand(33, device=DEVICE) if weighted else None
    results = []
    for use_triton in (True, False):
        monkeypatch.setattr(autograd, "_triton_ops", lambda logits, t=use_triton: torch.ops.mentormix_fast if t
                            else None)
        zz = z.clone().requires_grad_(True)
        loss = mf.MentorMixLossFunction.apply(zz, y, partner, lam, w)
        (loss * 0.6).backward()
        results.append((loss.detach(), zz.grad))
    (lt, gt), (lr, gr) = results
    torch.testing.assert_close(lt, lr, rtol=1e-5, atol=1e-6)
    assert gt.dtype == dtype
    torch.testing.assert_close(gt.float(), gr.float(), **GRAD_TOL[dtype])


def test_masked_minus_inf_logits_match_reference():
    """-inf logits (masked classes) contribute nothing; a row whose label is masked has loss +inf."""
    tri, rb = backends_on(DEVICE)
    z, y, u, beta = batch(24, 6, torch.float32, DEVICE)
    z[:, 5] = -math.inf
    y = y % 5
    check = tri.weights_and_sample(z, y, torch.tensor(0.3, device=DEVICE), 50, cfg(), "threshold", None, u, beta)
    want = rb.weights_and_sample(z, y, torch.tensor(0.3, device=DEVICE), 50, cfg(), "threshold", None, u, beta)
    torch.testing.assert_close(check.loss, want.loss)
    zt, zr = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    lt, _ = tri.mixed_loss(zt, y, want.partner, want.lam, torch.tensor(0.5, device=DEVICE), 50, cfg(), "threshold")
    lr, _ = rb.mixed_loss(zr, y, want.partner, want.lam, torch.tensor(0.5, device=DEVICE), 50, cfg(), "threshold")
    torch.testing.assert_close(lt, lr, rtol=1e-5, atol=1e-6)
    lt.backward()
    lr.backward()
    torch.testing.assert_close(zt.grad, zr.grad, rtol=1e-4, atol=1e-7)
    y2 = y.clone()
    y2[0] = 5
    out = tri.weights_and_sample(z, y2, torch.tensor(0.3, device=DEVICE), 50, cfg(), "threshold", None, u, beta)
    assert out.loss[0].item() == math.inf and out.weights[0].item() == 0.0


def test_float64_falls_back_to_the_reference():
    tri, rb = backends_on(DEVICE)
    z, y, u, beta = batch(16, 4, torch.float64, DEVICE)
    got = tri.weights_and_sample(z, y, torch.tensor(0.0, device=DEVICE), 50, cfg(), "threshold", None, u, beta)
    want = rb.weights_and_sample(z, y, torch.tensor(0.0, device=DEVICE), 50, cfg(), "threshold", None, u, beta)
    assert got.loss.dtype == torch.float64
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    x = torch.randn(16, 3, 2, dtype=torch.float64, device=DEVICE)
    torch.testing.assert_close(tri.mix(x, want.partner, want.lam), rb.mix(x, want.partner, want.lam), rtol=1e-15,
                               atol=1e-15)


def test_folded_mentornet_table_follows_parameter_updates():
    from mentormix_fast.triton_backend import fold_weighting

    net = mf.MentorNet(generator=torch.Generator().manual_seed(8)).to(DEVICE)
    a, _ = fold_weighting(net, 40, 10, DEVICE)
    b, _ = fold_weighting(net, torch.tensor(40, device=DEVICE), 10, DEVICE)
    assert torch.equal(a, b) and a[0].item() == 0.0
    assert fold_weighting(net, 3, 10, DEVICE)[0][0].item() == 1.0  # burn-in flag
    before = a.clone()
    with torch.no_grad():
        net.fc2_bias.add_(0.25)  # an in-place update (e.g. MentorNet being trained) refreshes the table
    after, _ = fold_weighting(net, 40, 10, DEVICE)
    assert not torch.equal(before, after)
    check_weights_and_sample(DEVICE, 32, 5, torch.float32, net, 40, cfg())


def test_random_shapes_and_dtypes():
    """Random (B, K, dtype, weighting, p, second_reweight): every stage against the reference."""
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies

    @hyp.settings(max_examples=12, deadline=None, derandomize=True, database=None)
    @hyp.given(b=st.integers(1, 300), k=st.integers(2, 700), dtype=st.sampled_from(DTYPES),
               mentornet=st.booleans(), p=st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.8]), second=st.booleans(),
               epoch=st.integers(0, 99))
    def run(b, k, dtype, mentornet, p, second, epoch):
        w = mf.mentornet_pd() if mentornet else "threshold"
        config = cfg(percentile=p, second_reweight=second)
        check_weights_and_sample(DEVICE, b, k, dtype, w, epoch, config, seed=b * 1000 + k)
        check_mixed_loss(DEVICE, b, k, dtype, w, epoch, config, seed=b + k)

    run()
