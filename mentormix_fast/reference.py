"""Plain-PyTorch reference of every MentorMix step (docs/SPEC.md §1).

These functions define the semantics that every backend must reproduce. They are pure (no state,
no randomness): random draws come in as arguments (``uniform`` for partner sampling, ``beta`` for
the mixing factor), so a kernel can be compared with the reference on exactly the same draws.

Shapes: ``B`` examples, ``K`` classes; logits ``[B, K]``, labels ``[B]`` (int64), per-example
vectors ``[B]``. Per-example losses are returned in float32 for fp16/bf16/fp32 logits and in
float64 for float64 logits (so gradcheck can run on the reference).

Non-finite values and bad indices (SPEC §4.1):
  * a row with NaN/inf logits, a label outside ``[0, K)`` or a partner outside ``[0, B)`` gets a
    NaN (or +inf) loss, and ``mix_inputs`` a NaN row (never a wrapped-around index);
  * for the percentile, non-finite losses rank as +inf (the largest, most suspect losses);
  * a moving average skips a step whose percentile is non-finite, so it never becomes NaN/inf;
  * a non-finite loss gets weight 0 (MentorNet and threshold alike);
  * the mixed loss of such a row stays NaN/inf and reaches the returned loss, as in
    ``F.cross_entropy``: a diverged network is reported, not hidden.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

# ----------------------------------------------------------------------------------------------
# Step 1: the epoch feature
# ----------------------------------------------------------------------------------------------


def epoch_feature(step, total_steps: int):
    """``e = min(floor(100 * step / total_steps), 99)``: the percentage of the step budget.

    ``step`` may be a Python int (exact integer arithmetic) or an integer tensor (computed on its
    device without a host synchronisation), clamped to ``[0, total_steps]`` first (SPEC §1.1).
    Returns the same kind.
    """
    if isinstance(step, torch.Tensor):
        t = step.to(torch.int64).clamp(0, total_steps)
        return torch.div(t * 100, total_steps, rounding_mode="floor").clamp_max(99)
    return min((100 * min(max(int(step), 0), int(total_steps))) // int(total_steps), 99)


# ----------------------------------------------------------------------------------------------
# Step 2: per-example cross-entropy
# ----------------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _safe_gather(z: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``z[i, index[i]]`` with out-of-range indices clamped; returns (values, in_range mask)."""
    num_classes = z.shape[1]
    in_range = (index >= 0) & (index < num_classes)
    picked = z.gather(1, index.clamp(0, num_classes - 1).unsqueeze(1)).squeeze(1)
    return picked, in_range


def partner_labels(target: torch.Tensor, partner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y_{j_i}, partner in range)``: partners outside ``[0, B)`` read row 0 and are flagged
    (Python's negative indexing must not pick a wrong row)."""
    batch = target.shape[0]
    ok = (partner >= 0) & (partner < batch)
    return target[torch.where(ok, partner, torch.zeros_like(partner))], ok


def rows_in_range(target: torch.Tensor, partner: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows whose label, partner and partner's label are all in range: [B] bool."""
    yb, ok = partner_labels(target, partner)
    return ok & (target >= 0) & (target < num_classes) & (yb >= 0) & (yb < num_classes)


def per_sample_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``l_i = logsumexp(z_i) - z_i[y_i]``, [B, K] x [B] -> [B] in fp32 (fp64 for fp64 logits).

    Labels outside ``[0, K)`` give NaN (the checked API rejects them before this point).
    """
    z = logits.to(_compute_dtype(logits.dtype))
    picked, in_range = _safe_gather(z, target)
    loss = torch.logsumexp(z, dim=1) - picked
    return torch.where(in_range, loss, torch.full_like(loss, math.nan))


# ----------------------------------------------------------------------------------------------
# Step 3: the nearest percentile and the moving average
# ----------------------------------------------------------------------------------------------


def percentile_rank(n: int, p: float) -> int:
    """0-based ascending rank of TF's "nearest" percentile of ``n`` values at fraction ``p``.

    TF sorts descending and takes index ``round_half_even((n - 1) * (1 - p))``; the ascending rank
    is ``n - 1`` minus that. Computed in float64 (Python floats). n = 128: p = 0.5 -> 63, 0.7 -> 89.
    """
    if n < 1:
        raise ValueError(f"percentile_rank: n must be >= 1, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"percentile_rank: p must be in [0, 1], got {p}")
    descending_index = round((n - 1) * (1.0 - p))  # Python's round() is round-half-even
    return n - 1 - int(descending_index)


def rank_key(values: torch.Tensor) -> torch.Tensor:
    """Values as ranked for the percentile: NaN becomes +inf (non-finite = largest loss)."""
    return torch.where(torch.isnan(values), torch.full_like(values, math.inf), values)


def percentile_nearest(values: torch.Tensor, p: float) -> torch.Tensor:
    """TF/TFP ``percentile(values, 100 * p, interpolation="nearest")`` of a 1-d tensor, as a 0-d tensor.

    Selects the order statistic of rank :func:`percentile_rank` (ties need no special care: every
    tied value is the same number). NaN ranks as +inf, so the result is +inf when the selected rank
    falls among non-finite losses.
    """
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(f"percentile_nearest: values must be a non-empty 1-d tensor, got shape {tuple(values.shape)}")
    k = percentile_rank(values.numel(), p)
    return torch.kthvalue(rank_key(values), k + 1).values


def update_moving_average(ma: torch.Tensor, q: torch.Tensor, decay: float) -> torch.Tensor:
    """``ma' = decay * ma + (1 - decay) * q``, or ``ma`` unchanged when ``q`` is not finite."""
    updated = decay * ma + (1.0 - decay) * q.to(ma.dtype)
    return torch.where(torch.isfinite(q), updated, ma)


# ----------------------------------------------------------------------------------------------
# Step 4: weights
# ----------------------------------------------------------------------------------------------


def threshold_weights(loss: torch.Tensor, ma: torch.Tensor) -> torch.Tensor:
    """The "simplest MentorNet": ``v_i = 1 if l_i < ma else 0`` (NaN loss -> 0)."""
    return (loss < ma).to(loss.dtype)


def mentornet_weights(mentornet, loss: torch.Tensor, ma: torch.Tensor, epoch) -> torch.Tensor:
    """MentorNet weights ``v = mentornet(l, l - ma, e)`` in (0, 1); a non-finite loss gets 0."""
    finite = torch.isfinite(loss)
    safe_loss = torch.where(finite, loss, torch.zeros_like(loss))
    v = mentornet(safe_loss, safe_loss - ma.to(loss.dtype), epoch).to(loss.dtype)
    return torch.where(finite, v, torch.zeros_like(v))


def apply_burn_in(v: torch.Tensor, epoch, burn_in_epoch: int) -> torch.Tensor:
    """``v = 1`` everywhere while ``epoch < burn_in_epoch - 1`` (the release's off-by-one)."""
    in_burn_in = torch.as_tensor(epoch, device=v.device) < (burn_in_epoch - 1)
    return torch.where(in_burn_in, torch.ones_like(v), v)


def sample_weights(weighting, loss, ma, epoch, burn_in_epoch: int) -> torch.Tensor:
    """Step 4 whole: MentorNet (a module) or ``"threshold"``, then burn-in. Returns v, a constant."""
    with torch.no_grad():
        if isinstance(weighting, str):
            if weighting != "threshold":
                raise ValueError(f"weighting: expected 'threshold' or a MentorNet, got {weighting!r}")
            v = threshold_weights(loss, ma)
        else:
            v = mentornet_weights(weighting, loss, ma, epoch)
        return apply_burn_in(v, epoch, burn_in_epoch)


# ----------------------------------------------------------------------------------------------
# Steps 5-7: partner sampling, mixing factors, input mix
# ----------------------------------------------------------------------------------------------


def partner_probabilities(v: torch.Tensor) -> torch.Tensor:
    """``P = softmax(v)`` over the batch (all-zero weights give the uniform distribution)."""
    return torch.softmax(v.to(_compute_dtype(v.dtype)), dim=0)


def sample_partners(v: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Partner ``j_i ~ Categorical(softmax(v))`` by inverse CDF of the uniform draw ``u_i`` in [0, 1).

    ``j_i`` is the first index whose cumulative probability exceeds ``u_i * total``; [B] -> [B] int64.
    """
    cdf = torch.cumsum(partner_probabilities(v), dim=0)
    u = uniform.to(cdf.dtype) * cdf[-1]
    idx = torch.searchsorted(cdf, u.contiguous(), right=True)
    return idx.clamp_max(v.numel() - 1)


def mix_lambda(beta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``lam = max(b, 1 - b)``, then ``1 - lam`` where ``v < 0.5``; b ~ Beta(alpha, alpha), [B]."""
    lam = torch.maximum(beta, 1.0 - beta)
    return torch.where(v.to(lam.dtype) >= 0.5, lam, 1.0 - lam)


def mix_inputs(x: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``x~_i = lam_i * x_i + (1 - lam_i) * x_{j_i}`` for x of shape [B, ...], in x's dtype; a
    partner outside ``[0, B)`` gives a NaN row."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    lam_b = lam.to(x.dtype).reshape(shape)
    ok = (partner >= 0) & (partner < x.shape[0])
    mixed = lam_b * x + (1.0 - lam_b) * x[torch.where(ok, partner, torch.zeros_like(partner))]
    return torch.where(ok.reshape(shape), mixed, torch.full_like(mixed, math.nan))


# ----------------------------------------------------------------------------------------------
# Steps 8-9: mixed loss and the second reweighting
# ----------------------------------------------------------------------------------------------


def mixed_ce(logits: torch.Tensor, target: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``m_i = logsumexp(z_i) - lam_i * z_i[y_i] - (1 - lam_i) * z_i[y_{j_i}]``; [B] (differentiable)."""
    z = logits.to(_compute_dtype(logits.dtype))
    lam = lam.to(z.dtype)
    yb, partner_ok = partner_labels(target, partner)
    picked_a, ok_a = _safe_gather(z, target)
    picked_b, ok_b = _safe_gather(z, yb)
    m = torch.logsumexp(z, dim=1) - lam * picked_a - (1.0 - lam) * picked_b
    return torch.where(ok_a & ok_b & partner_ok, m, torch.full_like(m, math.nan))


def soft_targets(target: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``y~_i = lam_i * onehot(y_i) + (1 - lam_i) * onehot(y_{j_i})``; [B, K] (a row with an index
    out of range is 0)."""
    lam = lam.unsqueeze(1)
    yb, _ = partner_labels(target, partner)
    ok = rows_in_range(target, partner, num_classes).unsqueeze(1)
    a = torch.nn.functional.one_hot(target.clamp(0, num_classes - 1), num_classes).to(lam.dtype)
    b = torch.nn.functional.one_hot(yb.clamp(0, num_classes - 1), num_classes).to(lam.dtype)
    return torch.where(ok, lam * a + (1.0 - lam) * b, torch.zeros_like(a))


def weighted_mean(m: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``L = sum_i(w_i * m_i) / B`` (divided by B, not by sum(w)); ``w = 1`` when None."""
    if weights is None:
        return m.mean()
    return (weights.to(m.dtype) * m).sum() / m.numel()


def mixed_loss_grad(logits, target, partner, lam, weights, grad_output=1.0) -> torch.Tensor:
    """Closed form ``dL/dz_i = g * w_i / B * (softmax(z_i) - y~_i)`` in the compute dtype; [B, K].
    Rows whose label or partner is out of range (a constant NaN loss) get 0."""
    z = logits.to(_compute_dtype(logits.dtype))
    y = soft_targets(target, partner, lam.to(z.dtype), z.shape[1])
    w = torch.ones(z.shape[0], dtype=z.dtype, device=z.device) if weights is None else weights.to(z.dtype)
    w = torch.where(rows_in_range(target, partner, z.shape[1]), w, torch.zeros_like(w))
    return (torch.softmax(z, dim=1) - y) * (w / z.shape[0]).unsqueeze(1) * grad_output


# ----------------------------------------------------------------------------------------------
# Draws (kept apart from the math above)
# ----------------------------------------------------------------------------------------------


def draw_uniform(batch: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """``u ~ U[0, 1)``, [B] float64 (float64 so that the inverse CDF resolves small probabilities)."""
    return torch.rand(batch, device=device, dtype=torch.float64, **_generator_kwargs(generator))


def _generator_kwargs(generator: torch.Generator | None) -> dict:
    # Without a generator the plain overload: torch.compile traces it with a symbolic batch size.
    return {} if generator is None else {"generator": generator}


def draw_beta(alpha: float, batch: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """``b ~ Beta(alpha, alpha)``, [B] float32, as ``sigmoid(log G1 - log G2)`` with ``G ~ Gamma(alpha)``
    drawn in log space (SPEC §4.2): for alpha < 1, ``log G(a) = log G(a + 1) + log(U) / a``, so
    tiny alpha gives b near 0 or 1 with equal probability instead of underflowing gamma draws."""
    boost = alpha < 1.0
    conc = torch.full((2, batch), float(alpha) + (1.0 if boost else 0.0), dtype=torch.float64, device=device)
    log_g = torch.log(torch._standard_gamma(conc, **_generator_kwargs(generator)))
    if boost:
        u = torch.rand((2, batch), dtype=torch.float64, device=device, **_generator_kwargs(generator))
        log_g = log_g + torch.log1p(-u) / float(alpha)
    return torch.sigmoid(log_g[0] - log_g[1]).to(torch.float32)


# ----------------------------------------------------------------------------------------------
# Whole steps, composed from the functions above
# ----------------------------------------------------------------------------------------------


class WeightsAndSample(NamedTuple):
    """Outputs of steps 2-6: per-example loss, weights v, partner indices, lam, updated ``ma``."""

    loss: torch.Tensor
    weights: torch.Tensor
    partner: torch.Tensor
    lam: torch.Tensor
    loss_ma: torch.Tensor


def weights_and_sample(
    logits, target, loss_ma, epoch, *, percentile, decay, weighting, burn_in_epoch, alpha, uniform, beta, pool=None
) -> WeightsAndSample:
    """Steps 2-6 on given draws (``uniform`` [B] in [0, 1), ``beta`` [B] Beta(alpha, alpha) samples).

    ``alpha <= 0`` means no mixing: ``partner = arange(B)`` and ``lam = 1`` (draws unused).
    ``pool`` (optional): the values the percentile is taken over, e.g. the all-gathered [B * world]
    losses of a distributed batch; None: the batch's losses.
    """
    with torch.no_grad():
        loss = per_sample_ce(logits, target)
        q = percentile_nearest(loss if pool is None else pool.to(loss.dtype), percentile)
        new_ma = update_moving_average(loss_ma, q, decay)
        v = sample_weights(weighting, loss, new_ma, epoch, burn_in_epoch)
        if alpha > 0:
            partner = sample_partners(v, uniform)
            lam = mix_lambda(beta.to(torch.float32), v)
        else:
            partner = torch.arange(loss.numel(), device=loss.device)
            lam = torch.ones(loss.numel(), dtype=torch.float32, device=loss.device)
    return WeightsAndSample(loss, v, partner, lam, new_ma)


class MixedLossStep(NamedTuple):
    """Outputs of steps 8-9: scalar loss (differentiable), per-example m, weights v2, updated ``ma2``."""

    loss: torch.Tensor
    mixed: torch.Tensor
    weights: torch.Tensor | None
    loss_ma_mixed: torch.Tensor


def mixed_loss_step(
    logits_mixed, target, partner, lam, loss_ma_mixed, epoch, *, second_reweight, percentile, decay, weighting,
    burn_in_epoch, pool=None
) -> MixedLossStep:
    """Steps 8-9: ``L = mean(m)``, or with ``second_reweight`` ``L = sum(v2 * m) / B`` where v2 are
    the step-4 weights of ``m`` against its own moving average ``ma2`` (a constant).
    ``pool``: as in :func:`weights_and_sample`, the values the percentile of ``m`` is taken over."""
    m = mixed_ce(logits_mixed, target, partner, lam)
    if not second_reweight:
        return MixedLossStep(m.mean(), m, None, loss_ma_mixed)
    with torch.no_grad():
        md = m.detach()
        values = md if pool is None else pool.to(md.dtype)
        new_ma2 = update_moving_average(loss_ma_mixed, percentile_nearest(values, percentile), decay)
        v2 = sample_weights(weighting, md, new_ma2, epoch, burn_in_epoch)
    return MixedLossStep(weighted_mean(m, v2), m, v2, new_ma2)
