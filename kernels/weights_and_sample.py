"""Fused steps 2-6 (SPEC §1): per-example CE, percentile, moving average, weights, partners, lambda.

Three launches, no host synchronisation, the [B, K] logits read once:

1. :func:`ce_rows_kernel` (grid over row tiles): ``l_i = lse(z_i) - z_i[y_i]`` in fp32.
2. :func:`_plan_kernel` (one program, O(B)): ``q`` = the exact nearest percentile of l (radix
   select, rank ``percentile_rank(B, p)``), ``ma' = d ma + (1 - d) q`` (unchanged when q is not
   finite), weights v (threshold or MentorNet, burn-in), ``lam`` from the Beta draws, and the
   running sum ``c_i = sum_{j <= i} exp(v_j)`` (the unnormalised CDF of softmax(v): v is in
   [0, 1], so no max shift is needed).
3. :func:`_partner_kernel` (grid over B): ``j_i`` = the first index with ``c_j > u_i c_{B-1}``
   (binary search), i.e. ``searchsorted(cdf, u * total, right=True)`` as in the reference.

The draws ``u`` (fp64 uniform) and ``b`` (Beta(alpha, alpha)) come in as tensors; the caller
draws them from the MentorMix generator with torch (so they are seedable, graph-safe and the same
draws the reference backend would make).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._shared import ce_rows_kernel, radix_select, reduce_block, row_tiling, row_weights


@triton.jit
def _plan_kernel(loss_ptr, ma_ptr, params_ptr, beta_ptr, v_ptr, lam_ptr, cdf_ptr, ma_out_ptr, n, k, decay,
                 MODE: tl.constexpr, MIX: tl.constexpr, BLOCK: tl.constexpr):
    q = radix_select(loss_ptr, n, k, BLOCK)
    ma = tl.load(ma_ptr)
    ma_new = tl.where(tl.abs(q) < float("inf"), decay * ma + (1.0 - decay) * q, ma)
    tl.store(ma_out_ptr, ma_new)
    carry = 0.0
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inb = offs < n
        loss = tl.load(loss_ptr + offs, mask=inb, other=0.0)
        v = row_weights(loss, ma_new, params_ptr, MODE)
        tl.store(v_ptr + offs, v, mask=inb)
        if MIX:
            b = tl.load(beta_ptr + offs, mask=inb, other=0.5).to(tl.float32)
            lam = tl.maximum(b, 1.0 - b)
            tl.store(lam_ptr + offs, tl.where(v >= 0.5, lam, 1.0 - lam), mask=inb)
            e = tl.where(inb, tl.exp(v), 0.0)
            c = tl.cumsum(e, 0) + carry
            tl.store(cdf_ptr + offs, c, mask=inb)
            carry = carry + tl.sum(e, 0)


@triton.jit
def _partner_kernel(cdf_ptr, uniform_ptr, partner_ptr, n, n_iter, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    total = tl.load(cdf_ptr + n - 1)
    t = tl.load(uniform_ptr + offs, mask=inb, other=0.0).to(tl.float32) * total
    lo = tl.zeros([BLOCK], tl.int64)
    hi = tl.zeros([BLOCK], tl.int64) + n
    for _ in range(n_iter):
        active = lo < hi
        mid = (lo + hi) // 2
        c = tl.load(cdf_ptr + mid, mask=active & inb, other=0.0)
        right = c <= t
        lo = tl.where(active & right, mid + 1, lo)
        hi = tl.where(active & (~right), mid, hi)
    tl.store(partner_ptr + offs, tl.minimum(lo, n - 1), mask=inb)


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


def weights_and_sample(logits, target, loss_ma, params, uniform, beta, *, rank: int, decay: float, mode: int,
                       mix: bool):
    """Steps 2-6. Returns ``(loss [B] f32, v [B] f32, partner [B] i64, lam [B] f32, ma' [] f32)``.

    ``rank``: the ascending rank of the percentile (``reference.percentile_rank(B, p)``);
    ``params``: the folded weighting parameters (see ``_shared``); ``mode``: 0 threshold, 1
    MentorNet; ``mix``: False when alpha <= 0 (then ``partner = arange(B)``, ``lam = 1``).
    """
    batch = logits.shape[0]
    device = logits.device
    loss = per_sample_ce(logits, target)
    v = torch.empty(batch, dtype=torch.float32, device=device)
    ma_new = torch.empty((), dtype=torch.float32, device=device)
    block = reduce_block()
    if mix:
        lam = torch.empty(batch, dtype=torch.float32, device=device)
        cdf = torch.empty(batch, dtype=torch.float32, device=device)
        _plan_kernel[(1,)](loss, loss_ma, params, beta, v, lam, cdf, ma_new, batch, rank, decay,
                           MODE=mode, MIX=True, BLOCK=block, num_warps=8)
        partner = torch.empty(batch, dtype=torch.int64, device=device)
        search_block = 1024
        _partner_kernel[(triton.cdiv(batch, search_block),)](cdf, uniform, partner, batch, batch.bit_length(),
                                                             BLOCK=search_block)
    else:
        _plan_kernel[(1,)](loss, loss_ma, params, v, v, v, v, ma_new, batch, rank, decay,
                           MODE=mode, MIX=False, BLOCK=block, num_warps=8)
        partner = torch.arange(batch, device=device)
        lam = torch.ones(batch, dtype=torch.float32, device=device)
    return loss, v, partner, lam, ma_new
