"""Fused steps 2-6 (SPEC §1): per-example CE, percentile, moving average, weights, partners, lambda.

No host synchronisation; the [B, K] logits are read once, the rest is O(B):

1. :func:`ce_rows_kernel` (grid over row tiles): ``l_i = lse(z_i) - z_i[y_i]`` in fp32; at small
   B * K (``FUSE_CE_MAX``) the single :func:`_plan_kernel` program does this pass itself, so
   steps 2-6 are ONE launch.
2. ``q`` = the exact nearest percentile of l (rank ``percentile_rank(B, p)``) by radix select;
   ``ma' = d ma + (1 - d) q`` (unchanged when q is not finite); weights v (threshold or MentorNet,
   burn-in); ``lam`` from the Beta draws; ``c_i = sum_{j <= i} exp(v_j)``, the unnormalised CDF of
   softmax(v) (v is in [0, 1], so no max shift is needed).
   Small B (<= ``SMALL_B_MAX``): all of it in ONE program (:func:`_plan_kernel`, grid 1). Large B:
   four radix passes over programs of ``LARGE_BLOCK`` (atomic global histograms), then
   :func:`_plan_kernel` over the same blocks (each program derives q from the histograms, scans
   its block) and :func:`_block_scan_kernel` (inclusive scan of the block sums).
3. ``j_i`` = the first index with ``c_j > u_i c_{B-1}`` by binary search, i.e.
   ``searchsorted(cdf, u * total, right=True)`` as in the reference: small B in the same single
   program after a barrier (steps 3-6 in ONE launch); large B in :func:`_partner_kernel` (grid over B).

Randomness: by default the kernels draw (``DRAW``) from a Philox state ``rng`` = int64 [2] on the
device: key ``rng[0]``, step counter ``rng[1]``. :func:`_plan_kernel` draws ``b ~ Beta(alpha,
alpha)`` per example (:func:`beta_draw`) and the partner search draws ``u ~ U[0, 1)`` (``tl.rand``);
the Philox counter is (step counter, draw number), where the draw number is a fixed function of the
global example index, so the draws do not depend on the program layout (small or large B give the
same values). The step ends by advancing ``rng[1]`` in place -- in the single program itself at small
B, so no launch and no host sync: the module keeps ``rng`` as a buffer (seeded once from its
generator), which makes the draws CUDA-graph safe (every replay advances the counter) and exactly
resumable from a ``state_dict``. Explicit draws still work: with ``DRAW`` off, ``u`` (fp64 uniform)
and ``b`` come in as tensors (tests compare with the reference on identical draws).

State: the moving average is written in place into the ``loss_ma`` tensor the kernel read it from
(one program: loads first, stores last, a barrier between; many programs: a copy, see
``_shared.store_state``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _shared
from ._shared import (
    ce_all_rows,
    ce_rows_kernel,
    params_row,
    reduce_block,
    row_tiling,
    row_weights,
    selected_moving_average,
    store_state,
)

# Marsaglia-Tsang rejection rounds per gamma draw. The acceptance rate is >= 0.95 for shape >= 1
# (alpha < 1 is boosted to alpha + 1), so all rounds fail with probability < 0.05^8 ~ 4e-11; the
# fallback is then G = d (the centre of the proposal, v = 1).
GAMMA_ROUNDS = 8


def gamma_constants(alpha: float) -> tuple[float, float, float, bool]:
    """``(d, c, 1 / alpha, boost)`` of the Marsaglia-Tsang sampler of Gamma(alpha):
    shape ``s = alpha + 1`` when ``boost`` (alpha < 1) else alpha; ``d = s - 1/3``, ``c = 1 / sqrt(9 d)``."""
    boost = alpha < 1.0
    shape = alpha + 1.0 if boost else alpha
    d = shape - 1.0 / 3.0
    return d, 1.0 / (9.0 * d) ** 0.5, 1.0 / alpha, boost


@triton.jit
def _log_gamma(seed, offs, step_hi, n, stream, d, c, inv_alpha, BOOST: tl.constexpr, ROUNDS: tl.constexpr):
    """``log G``, G ~ Gamma(alpha), per lane (Marsaglia-Tsang, ``ROUNDS`` fixed rounds; Philox
    counter ``(stream * ROUNDS + r) * n + offs`` in the low word, the step counter in the high word
    ``step_hi``). Boost for alpha < 1: ``G(a) = G(a + 1) U^(1/a)``, added in log space (no
    underflow for tiny alpha)."""
    log_d = tl.log(tl.zeros(offs.shape, tl.float32) + d)
    log_g = log_d  # fallback: G = d
    done = offs < 0
    for r in range(ROUNDS):
        u0, u1, u2, _ = tl.rand4x(seed, step_hi + (offs + (stream * ROUNDS + r) * n))
        x = tl.sqrt(-2.0 * tl.log(1.0 - u0)) * tl.cos(6.283185307179586 * u1)  # Box-Muller, 1 - u0 in (0, 1]
        t = 1.0 + c * x
        v = t * t * t
        log_v = tl.log(tl.where(v > 0.0, v, 1.0))
        accept = (v > 0.0) & (tl.log(1.0 - u2) < 0.5 * x * x + d - d * v + d * log_v) & (~done)
        log_g = tl.where(accept, log_d + log_v, log_g)
        done = done | accept
    if BOOST:
        log_g = log_g + tl.log(1.0 - tl.rand(seed, step_hi + (offs + (2 * ROUNDS + stream) * n))) * inv_alpha
    return log_g


@triton.jit
def beta_draw(seed, offs, step_hi, n, d, c, inv_alpha, BOOST: tl.constexpr, ROUNDS: tl.constexpr):
    """``b ~ Beta(alpha, alpha) = G1 / (G1 + G2) = sigmoid(log G1 - log G2)`` per lane, fp32."""
    lg1 = _log_gamma(seed, offs, step_hi, n, 0, d, c, inv_alpha, BOOST, ROUNDS)
    lg2 = _log_gamma(seed, offs, step_hi, n, 1, d, c, inv_alpha, BOOST, ROUNDS)
    return 1.0 / (1.0 + tl.exp(lg2 - lg1))


@triton.jit
def _step_hi(rng_ptr):
    """The high Philox counter word of this step's draws: the low 32 bits of the step counter
    ``rng[1]``, shifted (the low word numbers the draws within the step)."""
    return (tl.load(rng_ptr + 1) & 0xFFFFFFFF) << 32


@triton.jit
def _plan_kernel(loss_ptr, pool_ptr, ma_ptr, params_ptr, beta_ptr, uniform_ptr, rng_ptr, hist_ptr, v_ptr, lam_ptr,
                 cdf_ptr, bsum_ptr, partner_ptr, ma_out_ptr, n, n_pool, k, decay, span, n_iter, gamma_d, gamma_c,
                 inv_alpha, clock_ptr, clock_mul, clock_div, z_ptr, stride_z, target_ptr, num_classes,
                 MODE: tl.constexpr, MIX: tl.constexpr, PRESELECTED: tl.constexpr, DRAW: tl.constexpr,
                 BOOST: tl.constexpr, ROUNDS: tl.constexpr, SEARCH: tl.constexpr, EPOCH: tl.constexpr,
                 FUSE_CE: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK: tl.constexpr):
    """Program p handles examples [p * span, (p + 1) * span); its CDF is local to that span and
    its total goes to ``bsum[p]``. The percentile is of ``pool`` [n_pool] (the losses themselves,
    or e.g. the all-gathered losses of a distributed batch). ``DRAW``: the Beta factors are drawn
    here with Philox key ``rng[0]`` and step counter ``rng[1]`` instead of read from ``beta``.
    ``SEARCH`` (one program holds the whole batch): the partner search too, after a barrier (no
    :func:`_partner_kernel`), and with ``DRAW`` the step counter is advanced in place.
    ``EPOCH``: ``params`` is the [100, 93] table and the clock selects the row
    (:func:`params_row`). ``FUSE_CE`` (one program, small B * K): first the per-example CE of the
    logits ``z`` into ``loss`` (= ``pool``). ``ma_out`` may be ``ma`` itself in one program."""
    pid = tl.program_id(0)
    ma = tl.load(ma_ptr)  # the old state, read before any store (see store_state)
    params_ptr = params_row(params_ptr, clock_ptr, clock_mul, clock_div, EPOCH)
    if DRAW:
        seed = tl.load(rng_ptr)
        step_hi = _step_hi(rng_ptr)
    if FUSE_CE:
        ce_all_rows(z_ptr, stride_z, target_ptr, target_ptr, loss_ptr, loss_ptr, loss_ptr, n, num_classes, False,
                    ROWS, BLOCK_K)
    ma_new = selected_moving_average(pool_ptr, n_pool, k, hist_ptr, ma, decay, PRESELECTED, BLOCK)
    carry = 0.0
    lo = pid * span
    hi = tl.minimum(lo + span, n)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inb = offs < hi
        loss = tl.load(loss_ptr + offs, mask=inb, other=0.0)
        v = row_weights(loss, ma_new, params_ptr, MODE)
        tl.store(v_ptr + offs, v, mask=inb)
        if MIX:
            if DRAW:
                b = beta_draw(seed, offs, step_hi, n, gamma_d, gamma_c, inv_alpha, BOOST, ROUNDS)
            else:
                b = tl.load(beta_ptr + offs, mask=inb, other=0.5).to(tl.float32)
            lam = tl.maximum(b, 1.0 - b)
            tl.store(lam_ptr + offs, tl.where(v >= 0.5, lam, 1.0 - lam), mask=inb)
            e = tl.where(inb, tl.exp(v), 0.0)
            tl.store(cdf_ptr + offs, tl.cumsum(e, 0) + carry, mask=inb)
            carry = carry + tl.sum(e, 0)
    if MIX:
        tl.store(bsum_ptr + pid, carry)
    if SEARCH:
        tl.debug_barrier()  # the CDF stores above are visible to every thread of the program
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            inb = offs < n
            t = _uniform(uniform_ptr, rng_ptr, offs, inb, n, DRAW, ROUNDS) * carry
            part = _search(cdf_ptr, bsum_ptr, offs, inb, t, n, span, n_iter, False)
            tl.store(partner_ptr + offs, part, mask=inb)
    if DRAW and SEARCH:  # one program: it advances the step counter itself
        store_state(ma_out_ptr, ma_new, True, rng_ptr + 1, tl.load(rng_ptr + 1) + 1, True)
    else:
        store_state(ma_out_ptr, ma_new, True, ma_out_ptr, ma_new, False)


@triton.jit
def _uniform(uniform_ptr, rng_ptr, offs, inb, n, DRAW: tl.constexpr, ROUNDS: tl.constexpr):
    """``u_i``: Philox with key ``rng[0]`` and counter ``(2 ROUNDS + 2) n + i`` (after the Beta
    draws' counters) in the step's high word (DRAW), or loaded from ``uniform`` (fp64 -> fp32)."""
    if DRAW:
        u = tl.rand(tl.load(rng_ptr), _step_hi(rng_ptr) + (offs + (2 * ROUNDS + 2) * n))
    else:
        u = tl.load(uniform_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    return u


@triton.jit
def _search(cdf_ptr, bincl_ptr, offs, inb, t, n, span, n_iter, BLOCKS: tl.constexpr):
    """The first index whose ``CDF(i) = cdf_local[i] (+ bincl[i // span - 1] when BLOCKS)`` exceeds
    ``t`` (binary search, ``n_iter`` = bit length of n), clamped to n - 1."""
    lo = tl.zeros(offs.shape, tl.int64)
    hi = tl.zeros(offs.shape, tl.int64) + n
    for _ in range(n_iter):
        active = (lo < hi) & inb
        mid = (lo + hi) // 2
        c = tl.load(cdf_ptr + mid, mask=active, other=0.0)
        if BLOCKS:
            blk = mid // span
            c += tl.load(bincl_ptr + blk - 1, mask=active & (blk > 0), other=0.0)
        right = c <= t
        lo = tl.where(active & right, mid + 1, lo)
        hi = tl.where(active & (~right), mid, hi)
    return tl.minimum(lo, n - 1)


@triton.jit
def _block_scan_kernel(bsum_ptr, g, BLOCK: tl.constexpr):
    """In-place inclusive scan of the ``g`` block sums (one program)."""
    carry = 0.0
    for start in range(0, g, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(bsum_ptr + offs, mask=offs < g, other=0.0)
        tl.store(bsum_ptr + offs, tl.cumsum(x, 0) + carry, mask=offs < g)
        carry = carry + tl.sum(x, 0)


@triton.jit
def _partner_kernel(cdf_ptr, bincl_ptr, uniform_ptr, rng_ptr, partner_ptr, n, g, span, n_iter,
                    DRAW: tl.constexpr, ROUNDS: tl.constexpr, BLOCK: tl.constexpr):
    """``CDF(i) = cdf_local[i] + bincl[i // span - 1]`` (0 in the first span); binary search of
    ``u * total`` for the first index whose CDF exceeds it. ``DRAW``: ``u_i`` from Philox
    (:func:`_uniform`) instead of a load from ``uniform``."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    t = _uniform(uniform_ptr, rng_ptr, offs, inb, n, DRAW, ROUNDS) * tl.load(bincl_ptr + g - 1)
    tl.store(partner_ptr + offs, _search(cdf_ptr, bincl_ptr, offs, inb, t, n, span, n_iter, True), mask=inb)


def per_sample_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``l_i = lse(z_i) - z_i[y_i]``, [B, K] (fp16/bf16/fp32) x [B] int64 -> [B] fp32."""
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    batch, num_classes = logits.shape
    loss = torch.empty(batch, dtype=torch.float32, device=logits.device)
    rows, block_k, warps = row_tiling(num_classes)
    ce_rows_kernel[(triton.cdiv(batch, rows),)](
        logits, logits.stride(0), target, target, loss, loss, loss, batch, num_classes,
        MIXED=False, ROWS=rows, BLOCK_K=block_k, num_warps=warps)
    return loss


# The low Philox counter word numbers a step's draws: (2 GAMMA_ROUNDS + 3) per example, in int32.
MAX_DRAW_BATCH = (2**31 - 1) // (2 * GAMMA_ROUNDS + 3)


def plan(values, pool, loss_ma, params, uniform, beta, *, rank: int, decay: float, mode: int, mix: bool,
         rng=None, alpha: float = 0.0, clock=None, clock_mul: int = 1, clock_div: int = 1, logits=None,
         target=None):
    """Steps 3-6 on per-example losses ``values`` [B] f32, the percentile (ascending ``rank``) taken
    over ``pool`` [N] f32 (``pool is values`` normally). Returns ``(v, partner, lam)`` and writes
    ``ma'`` into ``loss_ma`` (fp32, 0-d) in place.

    ``rng`` (int64 [2]: Philox key, step counter; with ``alpha``): draw ``b ~ Beta(alpha, alpha)``
    and ``u`` in the kernels (``uniform``/``beta`` are then ignored) and advance ``rng[1]`` by one
    in place; None: use ``uniform`` and ``beta``. ``clock`` (an integer tensor of one element):
    ``params`` is the [100, 93] table, row ``clamp(clock * clock_mul // clock_div, 0, 99)`` read
    in the kernel. ``logits``/``target`` (single program only; ``pool is values``): the kernel first
    computes the per-example CE into ``values``."""
    draw = mix and rng is not None
    gamma_d, gamma_c, inv_alpha, boost = gamma_constants(alpha) if draw else (1.0, 1.0, 1.0, False)
    batch = values.shape[0]
    if draw and batch > MAX_DRAW_BATCH:
        raise ValueError(f"logits: in-kernel draws take B <= {MAX_DRAW_BATCH}, got B = {batch}; "
                         f"pass explicit uniform/beta draws")
    device = values.device
    f32 = dict(dtype=torch.float32, device=device)
    v = torch.empty(batch, **f32)
    lam = torch.empty(batch, **f32) if mix else torch.ones(batch, **f32)
    cdf = torch.empty(batch if mix else 0, **f32)
    if batch <= _shared.SMALL_B_MAX:
        span, grid, block = batch, 1, reduce_block()
    else:
        span = block = _shared.LARGE_BLOCK
        grid = triton.cdiv(batch, span)
    # One program updates the state in place; many programs all read it, so they write a copy.
    ma_out = loss_ma if grid == 1 else torch.empty((), **f32)
    preselected = grid > 1 or pool.numel() > _shared.SMALL_B_MAX
    fuse = logits is not None
    if fuse:
        assert grid == 1 and not preselected and pool is values
        rows, block_k, _ = row_tiling(logits.shape[1])
    else:
        rows, block_k = 1, 1
    hist = _shared.radix_histograms(pool, rank) if preselected else values
    bsum = torch.empty(grid if mix else 0, **f32)
    partner = torch.empty(batch if mix else 0, dtype=torch.int64, device=device)
    search = mix and grid == 1  # one program: it also searches the partners (no third launch)
    explicit = mix and not draw
    _plan_kernel[(grid,)](values, pool, loss_ma, params, beta if explicit else v, uniform if explicit else v,
                          rng if draw else v, hist, v, lam, cdf if mix else v, bsum if mix else v,
                          partner if mix else v, ma_out, batch, pool.numel(), rank, decay, span, batch.bit_length(),
                          gamma_d, gamma_c, inv_alpha, v if clock is None else clock, clock_mul, clock_div,
                          logits if fuse else v, logits.stride(0) if fuse else 1, target if fuse else v,
                          logits.shape[1] if fuse else 1, MODE=mode, MIX=mix, PRESELECTED=preselected,
                          DRAW=draw, BOOST=boost, ROUNDS=GAMMA_ROUNDS, SEARCH=search, EPOCH=clock is not None,
                          FUSE_CE=fuse, ROWS=rows, BLOCK_K=block_k, BLOCK=block, num_warps=8)
    if grid > 1:
        loss_ma.copy_(ma_out)
    if not mix:
        return v, torch.arange(batch, device=device), lam
    if search:
        return v, partner, lam
    if grid > 1:
        _block_scan_kernel[(1,)](bsum, grid, BLOCK=1024)
    search_block = 1024
    _partner_kernel[(triton.cdiv(batch, search_block),)](cdf, bsum, bsum if draw else uniform, rng if draw else bsum,
                                                         partner, batch, grid, span, batch.bit_length(), DRAW=draw,
                                                         ROUNDS=GAMMA_ROUNDS, BLOCK=search_block)
    if draw:
        rng[1:].add_(1)  # many programs read the counter: advanced after the last of them
    return v, partner, lam


def weights_and_sample(logits, target, loss_ma, params, uniform, beta, *, rank: int, decay: float, mode: int,
                       mix: bool, rng=None, alpha: float = 0.0, clock=None, clock_mul: int = 1, clock_div: int = 1):
    """Steps 2-6. Returns ``(loss [B] f32, v [B] f32, partner [B] i64, lam [B] f32)`` and writes
    ``ma'`` into ``loss_ma`` in place.

    ``rank``: the ascending rank of the percentile (``reference.percentile_rank(B, p)``);
    ``params``: the folded weighting parameters (see ``_shared``); ``mode``: 0 threshold, 1
    MentorNet; ``mix``: False when alpha <= 0 (then ``partner = arange(B)``, ``lam = 1``);
    ``rng``/``alpha``: in-kernel draws, ``clock``: the table row (see :func:`plan`).
    """
    batch, num_classes = logits.shape
    kw = dict(rank=rank, decay=decay, mode=mode, mix=mix, rng=rng, alpha=alpha, clock=clock, clock_mul=clock_mul,
              clock_div=clock_div)
    if batch <= _shared.SMALL_B_MAX and batch * num_classes <= _shared.FUSE_CE_MAX:
        # One launch for steps 2-6: the plan program computes the CE first.
        if logits.stride(1) != 1:
            logits = logits.contiguous()
        loss = torch.empty(batch, dtype=torch.float32, device=logits.device)
        return (loss,) + plan(loss, loss, loss_ma, params, uniform, beta, logits=logits, target=target, **kw)
    loss = per_sample_ce(logits, target)
    return (loss,) + plan(loss, loss, loss_ma, params, uniform, beta, **kw)
