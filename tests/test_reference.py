"""Hand-computed and brute-force checks of mentormix_fast.reference (SPEC §1)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mentormix_fast import reference as ref


def tf_percentile_bruteforce(values, p):
    """TF's nearest percentile written out literally: sort descending, round-half-even index."""
    desc = sorted(values, reverse=True)
    return desc[round((len(desc) - 1) * (1 - p))]


@pytest.mark.parametrize("p, rank", [(0.1, 13), (0.2, 25), (0.3, 38), (0.5, 63), (0.6, 76), (0.7, 89), (0.8, 102)])
def test_percentile_rank_table_n128(p, rank):
    assert ref.percentile_rank(128, p) == rank
    values = torch.randperm(128).double()  # values == their ascending rank
    assert ref.percentile_nearest(values, p).item() == rank


def test_percentile_parity_trap_differs_from_torch_quantile():
    values = torch.arange(128, dtype=torch.float64)
    ours = ref.percentile_nearest(values, 0.5).item()
    theirs = torch.quantile(values, 0.5, interpolation="nearest").item()
    assert ours == 63.0 and theirs == 64.0


def test_percentile_edges():
    v = torch.tensor([3.0, 1.0, 2.0])
    assert ref.percentile_nearest(v, 0.0).item() == 1.0
    assert ref.percentile_nearest(v, 1.0).item() == 3.0
    assert ref.percentile_nearest(torch.tensor([5.0]), 0.37).item() == 5.0
    with pytest.raises(ValueError, match="p must be in"):
        ref.percentile_rank(3, 1.5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=64), st.floats(0.0, 1.0))
def test_percentile_matches_bruteforce_with_ties(ints, p):
    values = torch.tensor(ints, dtype=torch.float32) / 2  # many ties
    assert ref.percentile_nearest(values, p).item() == tf_percentile_bruteforce(values.tolist(), p)


def test_percentile_nan_ranks_as_largest():
    v = torch.tensor([1.0, float("nan"), 2.0, 3.0])
    assert ref.percentile_nearest(v, 0.0).item() == 1.0
    assert ref.percentile_nearest(v, 0.5).item() == 2.0  # rank round(3 * 0.5) = 2 (half-even) -> desc[2]
    assert ref.percentile_nearest(v, 1.0).item() == math.inf


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_per_sample_ce_matches_cross_entropy(dtype):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(37, 13, generator=g).to(dtype)
    y = torch.randint(0, 13, (37,), generator=g)
    got = ref.per_sample_ce(z, y)
    want = torch.nn.functional.cross_entropy(z.double(), y, reduction="none")
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


def test_per_sample_ce_out_of_range_label_is_nan():
    z = torch.zeros(3, 4)
    loss = ref.per_sample_ce(z, torch.tensor([0, 4, -1]))
    assert loss[0].item() == pytest.approx(math.log(4))
    assert torch.isnan(loss[1:]).all()


def test_moving_average_update_and_skip():
    ma = torch.tensor(2.0)
    assert ref.update_moving_average(ma, torch.tensor(4.0), 0.5).item() == 3.0
    assert ref.update_moving_average(ma, torch.tensor(4.0), 0.9).item() == pytest.approx(2.2)
    for bad in (math.inf, math.nan):
        assert ref.update_moving_average(ma, torch.tensor(bad), 0.5).item() == 2.0


def test_epoch_feature():
    assert ref.epoch_feature(0, 200_000) == 0
    assert ref.epoch_feature(1999, 200_000) == 0
    assert ref.epoch_feature(2000, 200_000) == 1
    assert ref.epoch_feature(199_999, 200_000) == 99
    assert ref.epoch_feature(200_000, 200_000) == 99
    assert ref.epoch_feature(7, 10) == 70
    for t in (0, 3, 1999, 2000, 150_001, 200_000):
        assert ref.epoch_feature(torch.tensor(t), 200_000).item() == ref.epoch_feature(t, 200_000)


def test_threshold_weights():
    loss = torch.tensor([0.5, 1.0, 1.5, float("nan")])
    assert ref.threshold_weights(loss, torch.tensor(1.0)).tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("burn_in, epoch, forced", [(10, 8, True), (10, 9, False), (10, 0, True), (1, 0, False),
                                                     (0, 0, False), (20, 18, True), (20, 19, False)])
def test_burn_in_boundary(burn_in, epoch, forced):
    v = torch.tensor([0.0, 0.25, 1.0])
    got = ref.apply_burn_in(v, epoch, burn_in)
    assert got.tolist() == ([1.0, 1.0, 1.0] if forced else v.tolist())
    assert ref.apply_burn_in(v, torch.tensor(epoch), burn_in).tolist() == got.tolist()


@pytest.mark.parametrize("beta, v, lam", [(0.3, 0.7, 0.7), (0.3, 0.2, 0.3), (0.8, 0.5, 0.8), (0.8, 0.49, 0.2),
                                          (0.5, 0.0, 0.5), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)])
def test_lambda_rule(beta, v, lam):
    got = ref.mix_lambda(torch.tensor([beta]), torch.tensor([v]))
    assert got.item() == pytest.approx(lam)


def test_sample_partners_inverse_cdf_hand_case():
    v = torch.tensor([0.0, math.log(3.0)])  # softmax = [0.25, 0.75]
    u = torch.tensor([0.0, 0.2499, 0.25, 0.9999], dtype=torch.float64)
    assert ref.sample_partners(v, u).tolist() == [0, 0, 1, 1]


def test_sample_partners_frequencies_match_softmax():
    g = torch.Generator().manual_seed(1234)
    v = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0, 1.0, 0.0, 0.3])
    n = 200_000
    u = ref.draw_uniform(n, g, "cpu")
    partner = ref.sample_partners(v, u)  # one batch's weights, many draws
    counts = torch.bincount(partner, minlength=8).double()
    expected = ref.partner_probabilities(v).double() * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 24.3  # chi-square 7 dof, p = 0.001


def test_all_zero_weights_sample_uniformly():
    g = torch.Generator().manual_seed(7)
    v = torch.zeros(5)
    u = ref.draw_uniform(50_000, g, "cpu")
    counts = torch.bincount(ref.sample_partners(v, u), minlength=5).double()
    assert torch.allclose(counts / 50_000, torch.full((5,), 0.2, dtype=torch.float64), atol=0.01)


@pytest.mark.parametrize("alpha", [0.5, 2.0, 8.0])
def test_beta_draws_match_beta_distribution(alpha):
    g = torch.Generator().manual_seed(int(alpha * 10))
    n = 40_000
    b = ref.draw_beta(alpha, n, g, "cpu").double()
    assert b.min() >= 0 and b.max() <= 1
    assert b.mean().item() == pytest.approx(0.5, abs=0.01)
    assert b.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)
    # two-sample Kolmogorov-Smirnov against torch.distributions.Beta, alpha = 0.001 critical value
    torch.manual_seed(99)
    other = torch.distributions.Beta(alpha, alpha).sample((n,)).double()
    grid = torch.linspace(0, 1, 2001, dtype=torch.float64)
    cdf = lambda s: torch.searchsorted(s.sort().values, grid, right=True).double() / n
    ks = (cdf(b) - cdf(other)).abs().max().item()
    assert ks < 1.95 * math.sqrt(2 / n)


@pytest.mark.parametrize("alpha", [1e-8, 1e-3, 0.01])
def test_tiny_alpha_gives_extreme_draws_evenly(alpha):
    """Gamma draws of tiny shape underflow (torch clamps them to the smallest normal float), so the
    draws are made in log space: b is near 0 or 1, each half of the time, never stuck at 1/2."""
    b = ref.draw_beta(alpha, 20_000, torch.Generator().manual_seed(1), "cpu").double()
    lam = torch.maximum(b, 1 - b)
    assert (b < 0.5).double().mean().item() == pytest.approx(0.5, abs=0.02)
    assert (lam == 0.5).double().mean().item() == 0.0
    if alpha <= 1e-3:
        assert lam.mean().item() > 0.99
    assert b.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)


def test_draws_are_reproducible_for_a_seed():
    a = ref.draw_beta(2.0, 16, torch.Generator().manual_seed(3), "cpu")
    b = ref.draw_beta(2.0, 16, torch.Generator().manual_seed(3), "cpu")
    assert torch.equal(a, b)


def test_mix_inputs_hand_case():
    x = torch.tensor([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]])
    out = ref.mix_inputs(x, torch.tensor([2, 0, 2]), torch.tensor([0.75, 0.5, 1.0]))
    torch.testing.assert_close(out, torch.tensor([[25.75, 51.5], [5.5, 11.0], [100.0, 200.0]]))


def test_mixed_ce_equals_soft_label_cross_entropy():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(9, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 7, (9,), generator=g)
    partner = torch.randint(0, 9, (9,), generator=g)
    lam = torch.rand(9, generator=g, dtype=torch.float64)
    soft = ref.soft_targets(y, partner, lam, 7)
    want = -(soft * torch.log_softmax(z, 1)).sum(1)
    torch.testing.assert_close(ref.mixed_ce(z, y, partner, lam), want)


def _step_inputs(seed, b=11, k=6):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, k, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (b,), generator=g)
    partner = torch.randint(0, b, (b,), generator=g)
    lam = torch.rand(b, generator=g, dtype=torch.float64)
    return z, y, partner, lam


@pytest.mark.parametrize("second_reweight", [False, True])
def test_mixed_loss_step_gradcheck_float64(second_reweight):
    z, y, partner, lam = _step_inputs(3)
    ma2 = torch.tensor(1.2, dtype=torch.float64)

    def f(logits):
        return ref.mixed_loss_step(logits, y, partner, lam, ma2, 50, second_reweight=second_reweight,
                                   percentile=0.5, decay=0.5, weighting="threshold", burn_in_epoch=0).loss

    assert torch.autograd.gradcheck(f, (z.requires_grad_(),))
    # and the closed form of SPEC §1.9
    z.grad = None
    out = ref.mixed_loss_step(z, y, partner, lam, ma2, 50, second_reweight=second_reweight, percentile=0.5,
                              decay=0.5, weighting="threshold", burn_in_epoch=0)
    (2.5 * out.loss).backward()
    torch.testing.assert_close(z.grad, ref.mixed_loss_grad(z.detach(), y, partner, lam, out.weights, 2.5))


def test_second_reweight_divides_by_batch_not_weight_sum():
    z, y, partner, lam = _step_inputs(4)
    out = ref.mixed_loss_step(z, y, partner, lam, torch.tensor(0.0, dtype=torch.float64), 50, second_reweight=True,
                              percentile=0.5, decay=0.5, weighting="threshold", burn_in_epoch=0)
    q = ref.percentile_nearest(out.mixed.detach(), 0.5)
    assert out.loss_ma_mixed.item() == pytest.approx(0.5 * q.item())
    v2 = (out.mixed.detach() < out.loss_ma_mixed).double()
    assert torch.equal(out.weights, v2)
    assert out.loss.item() == pytest.approx((v2 * out.mixed.detach()).sum().item() / 11)


def test_all_zero_second_weights_give_zero_loss_and_gradient():
    z, y, partner, lam = _step_inputs(5)
    z.requires_grad_()
    # ma2 far below every loss and p = 0 keeps it there: every v2 = 0
    out = ref.mixed_loss_step(z, y, partner, lam, torch.tensor(-100.0, dtype=torch.float64), 50,
                              second_reweight=True, percentile=0.0, decay=1.0, weighting="threshold", burn_in_epoch=0)
    out.loss.backward()
    assert out.loss.item() == 0.0 and torch.count_nonzero(z.grad) == 0


def test_weights_and_sample_no_mixing_when_alpha_zero():
    z, y, _, _ = _step_inputs(6)
    out = ref.weights_and_sample(z, y, torch.tensor(0.0), 50, percentile=0.5, decay=0.5, weighting="threshold",
                                 burn_in_epoch=0, alpha=0.0, uniform=None, beta=None)
    assert torch.equal(out.partner, torch.arange(11)) and torch.equal(out.lam, torch.ones(11))


def test_weights_and_sample_composes_the_steps():
    z, y, _, _ = _step_inputs(8)
    g = torch.Generator().manual_seed(0)
    u, b = ref.draw_uniform(11, g, "cpu"), ref.draw_beta(2.0, 11, g, "cpu")
    ma = torch.tensor(0.7)
    out = ref.weights_and_sample(z, y, ma, 50, percentile=0.7, decay=0.5, weighting="threshold", burn_in_epoch=0,
                                 alpha=2.0, uniform=u, beta=b)
    loss = torch.nn.functional.cross_entropy(z, y, reduction="none")
    new_ma = 0.5 * 0.7 + 0.5 * tf_percentile_bruteforce(loss.tolist(), 0.7)
    assert out.loss_ma.item() == pytest.approx(new_ma, rel=1e-6)
    v = (loss < new_ma).double()
    assert torch.equal(out.weights, v)
    assert torch.equal(out.partner, ref.sample_partners(v, u))
    torch.testing.assert_close(out.lam, ref.mix_lambda(b, v))
