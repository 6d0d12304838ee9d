"""The C++ CPU backend ("cpu", mentormix_fast._C) against the reference, on the same random draws.

Tolerances fit the dtype: the kernels compute in fp32 from the same (rounded) inputs, so losses
agree to fp32 rounding; MentorNet weights to 1e-4 (vectorised tanh/sigmoid, folded fc1); partner
indices exactly except where a draw falls within rounding of a CDF boundary; gradients and mixed
inputs to one or two units in the last place of the output dtype.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mentormix_fast as mf
from mentormix_fast import reference as R
from mentormix_fast.backends import backends, get_backend
from mentormix_fast.config import MentorMixConfig

CPU = torch.device("cpu")
AVAILABLE = backends().get("cpu") == "available"
needs_cpp = pytest.mark.skipif(not AVAILABLE, reason=f"cpu backend: {backends().get('cpu')}")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (B, K): B = 1, K = 2, odd and non-power-of-two K, K below and above one vector block.
SHAPES = [(1, 2), (2, 2), (7, 3), (33, 17), (128, 10), (100, 31), (257, 100), (64, 1000), (5, 1001)]
# gradient tolerance, relative to the largest gradient entry
GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def config(second_reweight=False, alpha=8.0, percentile=0.7, burn_in=10):
    return MentorMixConfig(percentile=percentile, mixup_alpha=alpha, second_reweight=second_reweight,
                           burn_in_epoch=burn_in, total_steps=1000, loss_ma_decay=0.5)


@pytest.fixture(scope="module")
def backends_pair():
    return get_backend("cpu", CPU), get_backend("reference", CPU)


@pytest.fixture(scope="module")
def mentornet():
    return mf.mentornet_pd()


def make_inputs(B, K, dtype, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(B, K, generator=g) * scale).to(dtype)
    y = torch.randint(0, K, (B,), generator=g)
    u = torch.rand(B, generator=g, dtype=torch.float64)
    beta = R.draw_beta(8.0, B, g, CPU)
    return z, y, u, beta


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


def assert_weights_and_sample_match(a, r, uniform, mentornet_used):
    torch.testing.assert_close(a.loss, r.loss, rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(a.loss_ma, r.loss_ma, rtol=1e-5, atol=1e-5)
    # MentorNet: the fp32 reference itself is off by up to ~5e-5 from an fp64 evaluation at large
    # losses (the kernel is closer), so 1e-4.
    tol = 1e-4 if mentornet_used else 0.0
    torch.testing.assert_close(a.weights, r.weights, rtol=0, atol=tol)
    assert_partners_match(a.partner, r.partner, r.weights, uniform)
    clear = (r.weights - 0.5).abs() > 1e-4  # lam flips at v = 0.5
    torch.testing.assert_close(a.lam[clear], r.lam[clear], rtol=0, atol=0)


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,K", SHAPES)
@pytest.mark.parametrize("weighting", ["threshold", "mentornet"])
def test_weights_and_sample_matches_reference(backends_pair, mentornet, B, K, dtype, weighting):
    cpu, ref = backends_pair
    w = mentornet if weighting == "mentornet" else "threshold"
    z, y, u, beta = make_inputs(B, K, dtype, seed=B * 1000 + K)
    for epoch in (torch.tensor(3), torch.tensor(60), 99):  # in burn-in, after it, a Python int
        ma = torch.tensor(1.7)
        a = cpu.weights_and_sample(z, y, ma, epoch, config(), w, None, u, beta)
        r = ref.weights_and_sample(z, y, ma, epoch, config(), w, None, u, beta)
        assert a.loss.dtype == torch.float32 and a.partner.dtype == torch.int64 and a.lam.dtype == torch.float32
        assert_weights_and_sample_match(a, r, u, weighting == "mentornet" and int(epoch) >= 9)


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,K", SHAPES)
@pytest.mark.parametrize("second_reweight", [False, True])
@pytest.mark.parametrize("weighting", ["threshold", "mentornet"])
def test_mixed_loss_and_grad_match_reference(backends_pair, mentornet, B, K, dtype, second_reweight, weighting):
    cpu, ref = backends_pair
    w = mentornet if weighting == "mentornet" else "threshold"
    cfg = config(second_reweight)
    z, y, u, beta = make_inputs(B, K, dtype, seed=B * 7 + K)
    plan = ref.weights_and_sample(z, y, torch.tensor(0.5), 50, cfg, w, None, u, beta)
    ma2 = torch.tensor(2.0)
    for upstream in (1.0, 2.5):  # a non-unit upstream gradient rescales the fused gradient
        za, zr = z.clone().requires_grad_(), z.clone().requires_grad_()
        la, ma_a = cpu.mixed_loss(za, y, plan.partner, plan.lam, ma2, torch.tensor(50), cfg, w)
        lr, ma_r = ref.mixed_loss(zr, y, plan.partner, plan.lam, ma2, torch.tensor(50), cfg, w)
        assert la.dtype == torch.float32 and la.dim() == 0
        torch.testing.assert_close(la, lr.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ma_a, ma_r, rtol=1e-6, atol=1e-6)
        (la * upstream).backward()
        (lr * upstream).backward()
        assert za.grad.dtype == dtype and za.grad.shape == z.shape
        scale = zr.grad.float().abs().max().clamp_min(1e-30)
        err = (za.grad.float() - zr.grad.float()).abs().max() / scale
        assert err <= GRAD_RTOL[dtype], f"relative gradient error {float(err):.2e}"


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1,), (5, 3), (16, 3, 5, 7), (64, 100), (3, 1025)])
def test_mix_matches_reference(backends_pair, shape, dtype):
    cpu, ref = backends_pair
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g).to(dtype)
    B = shape[0]
    partner = torch.randint(0, B, (B,), generator=g)
    lam = torch.rand(B, generator=g)
    got, want = cpu.mix(x, partner, lam), ref.mix(x, partner, lam)
    assert got.dtype == dtype and got.shape == x.shape
    ulp = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=ulp, atol=ulp * 4)
    # a non-contiguous x (channels-last view) gives the same result
    if x.dim() == 4:
        xc = x.to(memory_format=torch.channels_last)
        torch.testing.assert_close(cpu.mix(xc, partner, lam), got)


@needs_cpp
def test_no_mixing_and_noncontiguous_logits(backends_pair):
    cpu, ref = backends_pair
    wide = torch.randn(50, 40)
    z = wide[:, 3:20]  # row-strided view: read in place
    y = torch.randint(0, 17, (50,))
    a = cpu.weights_and_sample(z, y, torch.tensor(0.0), 40, config(alpha=0.0), "threshold", None)
    r = ref.weights_and_sample(z, y, torch.tensor(0.0), 40, config(alpha=0.0), "threshold", None)
    assert torch.equal(a.partner, torch.arange(50)) and torch.equal(a.lam, torch.ones(50))
    torch.testing.assert_close(a.loss, r.loss)
    zt = torch.randn(17, 50).t()  # column-major: copied to rows
    a = cpu.weights_and_sample(zt, y, torch.tensor(0.0), 40, config(alpha=0.0), "threshold", None)
    torch.testing.assert_close(a.loss, R.per_sample_ce(zt, y))


@needs_cpp
@pytest.mark.parametrize("weighting", ["threshold", "mentornet"])
def test_non_finite_policy_matches_reference(backends_pair, mentornet, weighting):
    cpu, ref = backends_pair
    w = mentornet if weighting == "mentornet" else "threshold"
    z, y, u, beta = make_inputs(40, 9, torch.float32, seed=3)
    z[0, 2] = math.nan
    z[1, 4] = math.inf
    z[2, :] = -math.inf
    z[3, 5] = -math.inf  # a finite row with one -inf entry
    y[4] = 9   # out-of-range labels: NaN losses, never a crash
    y[5] = -1
    for second_reweight in (False, True):
        cfg = config(second_reweight)
        a = cpu.weights_and_sample(z, y, torch.tensor(1.0), 50, cfg, w, None, u, beta)
        r = ref.weights_and_sample(z, y, torch.tensor(1.0), 50, cfg, w, None, u, beta)
        assert_weights_and_sample_match(a, r, u, weighting == "mentornet")
        assert torch.isfinite(a.loss_ma) and (a.weights[:6][~torch.isfinite(r.loss[:6])] == 0).all()
        za = z.clone().requires_grad_()
        la, ma2 = cpu.mixed_loss(za, y, r.partner, r.lam, torch.tensor(1.0), 50, cfg, w)
        lr, ma2r = ref.mixed_loss(z, y, r.partner, r.lam, torch.tensor(1.0), 50, cfg, w)
        assert torch.isnan(la) and torch.isnan(lr)  # a diverged network is reported, not hidden
        assert torch.isfinite(ma2)
        torch.testing.assert_close(ma2, ma2r)
        la.backward()
        assert za.grad.shape == z.shape


@needs_cpp
def test_all_losses_non_finite_keeps_moving_average(backends_pair):
    cpu, _ = backends_pair
    z = torch.full((8, 4), math.nan)
    y = torch.zeros(8, dtype=torch.int64)
    a = cpu.weights_and_sample(z, y, torch.tensor(0.25), 50, config(), "threshold", None)
    assert float(a.loss_ma) == 0.25 and (a.weights == 0).all()
    assert ((a.partner >= 0) & (a.partner < 8)).all()


@needs_cpp
def test_bad_input_raises_not_crashes():
    ops = torch.ops.mentormix_cpp
    z = torch.randn(4, 3)
    y = torch.zeros(4, dtype=torch.int64)
    lam = torch.ones(4)
    ma, ep, none = torch.tensor(0.0), torch.tensor(5), torch.empty(0)
    u, b = torch.rand(4, dtype=torch.float64), torch.rand(4)
    bad_calls = [
        lambda: ops.mix(z, torch.tensor([0, 1, 2, 4]), lam),  # partner out of range
        lambda: ops.mix(z, torch.tensor([0, 1, -1, 2]), lam),
        lambda: ops.mix(z, torch.zeros(3, dtype=torch.int64), lam),  # wrong length
        lambda: ops.mix(z.double(), torch.zeros(4, dtype=torch.int64), lam),  # unsupported dtype
        lambda: ops.mixed_loss_forward(z, y, torch.tensor([0, 9, 0, 0]), lam, ma, ep, none, 1, 0.5, 1, False, False),
        lambda: ops.mixed_loss_forward(z, y.float(), y, lam, ma, ep, none, 1, 0.5, 1, False, False),
        lambda: ops.mixed_loss_forward(z, y, y, lam, ma, ep, none, 7, 0.5, 1, True, False),  # rank >= B
        lambda: ops.weights_and_sample(z, y, ma, ep, torch.ones(5), u, b, None, 8.0, 1, 0.5, 1),  # mentornet size
        lambda: ops.weights_and_sample(z, y, ma, ep, none, u.float(), b, None, 8.0, 1, 0.5, 1),  # uniform dtype
        lambda: ops.weights_and_sample(z, y, ma, ep, none, u, None, None, 8.0, 1, 0.5, 1),  # one draw only
        lambda: ops.weights_and_sample(z, y, ma, ep, none, None, None, torch.Generator(), 8.0, 9, 0.5, 1),  # rank
        lambda: ops.weights_and_sample(z[:, :0], y, ma, ep, none, u, b, None, 8.0, 1, 0.5, 1),  # K = 0
        lambda: ops.weights_and_sample(z, y[:2], ma, ep, none, u, b, None, 8.0, 1, 0.5, 1),
        lambda: ops.mixed_loss_backward(torch.tensor(1.0), z, y, y, lam, torch.zeros(3), none),
    ]
    for i, call in enumerate(bad_calls):
        with pytest.raises(RuntimeError):
            call()
        assert i >= 0


@needs_cpp
def test_fused_gradient_second_backward_is_an_error(backends_pair):
    cpu, _ = backends_pair
    z = torch.randn(6, 5, requires_grad=True)
    y = torch.randint(0, 5, (6,))
    loss, _ = cpu.mixed_loss(z, y, torch.arange(6), torch.ones(6), torch.tensor(0.0), 50, config(), "threshold")
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()


def run_module_steps(backend, second_reweight, alpha, seed=1, steps=5):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    m = mf.MentorMix(total_steps=20, backend=backend, second_reweight=second_reweight, burn_in_epoch=2,
                     mixup_alpha=alpha, generator=torch.Generator().manual_seed(seed))
    losses = []
    data = torch.Generator().manual_seed(2)
    for _ in range(steps):
        x = torch.randn(64, 12, generator=data)
        y = torch.randint(0, 10, (64,), generator=data)
        loss = m(model, x, y)
        model.zero_grad()
        loss.backward()
        losses.append(loss.detach())
    return torch.stack(losses), model[0].weight.grad.clone(), m.state_dict()


@needs_cpp
@pytest.mark.parametrize("second_reweight", [False, True])
def test_module_steps_match_reference(second_reweight):
    """Whole MentorMix steps without mixing (no draws): same losses, gradients and state."""
    (la, ga, sa), (lr, gr, sr) = (run_module_steps(b, second_reweight, alpha=0.0) for b in ("cpu", "reference"))
    torch.testing.assert_close(la, lr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ga, gr, rtol=1e-4, atol=1e-6)
    for key in sr:
        torch.testing.assert_close(sa[key], sr[key], rtol=1e-5, atol=1e-6)


@needs_cpp
def test_module_steps_reproducible_with_draws():
    """With mixing the kernel draws from the generator: the same seed gives the same steps."""
    (la, ga, sa), (lb, gb, sb) = (run_module_steps("cpu", True, alpha=8.0) for _ in range(2))
    assert torch.equal(la, lb) and torch.equal(ga, gb)
    lc, _, _ = run_module_steps("cpu", True, alpha=8.0, seed=5)
    assert not torch.equal(la, lc)
    assert torch.isfinite(la).all()


@needs_cpp
@pytest.mark.parametrize("alpha", [0.05, 0.5, 8.0])
def test_kernel_draws_distribution_and_threads(backends_pair, alpha):
    """Kernel draws: lam = max(b, 1 - b) of Beta(alpha, alpha) in distribution, partners uniform
    under equal weights, and the same draws whatever the number of threads."""
    cpu, _ = backends_pair
    B = 20000
    z, y = torch.zeros(B, 2), torch.zeros(B, dtype=torch.int64)
    out = cpu.weights_and_sample(z, y, torch.tensor(0.0), 0, config(alpha=alpha), "threshold",
                                 torch.Generator().manual_seed(0))
    b = torch.distributions.Beta(alpha, alpha).sample((200000,))
    want = torch.maximum(b, 1 - b)
    assert abs(float(out.lam.mean() - want.mean())) < 0.01
    assert abs(float(out.lam.std() - want.std())) < 0.01
    assert abs(float(out.partner.double().mean()) / B - 0.5) < 0.02
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        again = cpu.weights_and_sample(z, y, torch.tensor(0.0), 0, config(alpha=alpha), "threshold",
                                       torch.Generator().manual_seed(0))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out.lam, again.lam) and torch.equal(out.partner, again.partner)


def test_backend_is_reported():
    """The compiled CPU backend must be built by `pip install` (CI); its status names the reason."""
    status = backends()
    assert "cpu" in status and "cuda" in status
    assert status["cpu"] == "available", status["cpu"]


@needs_cpp
def test_auto_picks_cpp_for_cpu_tensors():
    assert get_backend("auto", CPU).name in ("cpu",)


@needs_cpp
def test_module_step_compiles_fullgraph_and_matches_eager():
    """The ops have fake implementations: torch.compile(fullgraph=True) traces a step on them."""
    z = torch.randn(32, 10, generator=torch.Generator().manual_seed(0))
    zm = torch.randn(32, 10, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(2))

    def step(mm, z, zm, y, t):
        plan = mm.plan(z, y, t)
        return mm.mixed_loss(zm, y, plan, t), plan.partner

    def make():  # generator=None: the kernel keys its draws from torch's global generator
        return mf.MentorMix(total_steps=100, backend="cpu", burn_in_epoch=0, generator=None)

    eager_mm, compiled_mm = make(), make()
    a, b = zm.clone().requires_grad_(), zm.clone().requires_grad_()
    torch.manual_seed(0)
    la, pa = step(eager_mm, z, a, y, torch.tensor(50))
    torch.manual_seed(0)
    lb, pb = torch.compile(step, fullgraph=True)(compiled_mm, z, b, y, torch.tensor(50))
    la.backward()
    lb.backward()
    assert torch.equal(pa, pb)
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(a.grad, b.grad)
    torch.testing.assert_close(eager_mm.loss_ma_mixed, compiled_mm.loss_ma_mixed)


def test_import_without_extension_reports_reason():
    """Without mentormix_fast._C (not built), the package imports and says why "cpu" is missing."""
    import subprocess
    import sys

    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name in ('mentormix_fast._C', 'mentormix_fast._C_cuda'):\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import mentormix_fast as m\n"
        "s = m.backends()\n"
        "assert s['reference'] == 'available' and 'not built' in s['cpu'] and s['cuda'] != 'available', s\n"
        "from mentormix_fast.backends import get_backend\n"
        "import torch\n"
        "assert get_backend('auto', torch.device('cpu')).name != 'cpu'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@needs_cpp
@settings(max_examples=40, deadline=None, derandomize=True)
@given(B=st.integers(1, 300), K=st.integers(2, 300), dtype=st.sampled_from(DTYPES),
       percentile=st.floats(0.0, 1.0), decay=st.floats(0.0, 1.0), burn_in=st.integers(0, 12),
       epoch=st.integers(0, 99), second_reweight=st.booleans(), mentornet_weights=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_random_configurations_match_reference(B, K, dtype, percentile, decay, burn_in, epoch, second_reweight,
                                               mentornet_weights, seed):
    cpu, ref = get_backend("cpu", CPU), get_backend("reference", CPU)
    w = mf.mentornet_pd() if mentornet_weights else "threshold"
    cfg = MentorMixConfig(percentile=percentile, mixup_alpha=4.0, second_reweight=second_reweight,
                          burn_in_epoch=burn_in, total_steps=1000, loss_ma_decay=decay)
    z, y, u, beta = make_inputs(B, K, dtype, seed)
    ma = torch.tensor(float(seed % 7))
    a = cpu.weights_and_sample(z, y, ma, epoch, cfg, w, None, u, beta)
    r = ref.weights_and_sample(z, y, ma, epoch, cfg, w, None, u, beta)
    assert_weights_and_sample_match(a, r, u, mentornet_weights and epoch >= burn_in - 1)
    za, zr = z.clone().requires_grad_(), z.clone().requires_grad_()
    la, ma_a = cpu.mixed_loss(za, y, r.partner, r.lam, ma, epoch, cfg, w)
    lr, ma_r = ref.mixed_loss(zr, y, r.partner, r.lam, ma, epoch, cfg, w)
    torch.testing.assert_close(la, lr.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ma_a, ma_r, rtol=1e-5, atol=1e-5)
    la.backward()
    lr.backward()
    err = (za.grad.float() - zr.grad.float()).abs().max() / zr.grad.float().abs().max().clamp_min(1e-30)
    assert err <= GRAD_RTOL[dtype]
