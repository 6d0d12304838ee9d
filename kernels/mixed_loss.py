"""Steps 8-9 (SPEC §1): mixed soft-label CE, optional second reweighting, loss; and its gradient.

Forward: ``m_i = lse(z_i) - lam_i z_i[y_i] - (1 - lam_i) z_i[y_{j_i}]``; without second
reweighting ``L = mean(m)``; with it ``ma2' = d ma2 + (1 - d) pct(m)``, ``v2 = weights(m, ma2')``
and ``L = sum(v2 m) / B``. Backward: ``dL/dz_i = g w_i / B (softmax(z_i) - y~_i)`` with
``y~_i = lam_i onehot(y_i) + (1 - lam_i) onehot(y_{j_i})``, ``w = v2`` or 1.

Passes over the B*K logits (the dominant traffic): forward ONE read, backward ONE read and ONE
write -- two reads and one write in all, and this is the minimum here:

* with second reweighting, a row's gradient needs ``v2_i``, which depends on the percentile of all
  B mixed losses, so no row can be finished until every row has been read once; holding the rows
  on chip across the whole grid is not possible for general B*K, so the backward reads z again
  (the flash-attention pattern: the forward saves ``lse_i`` [B], the backward recomputes
  ``softmax(z_i) = exp(z_i - lse_i)`` in one pass);
* without it, writing the gradient inside the forward (Liger-Kernel's trick) would still need the
  upstream gradient ``g``, which is only known in the backward; scaling a stored gradient by ``g``
  costs another read and write of B*K (or a host sync to test ``g == 1``), which is more traffic
  than recomputing. So both cases use the same 2-read/1-write schedule.

The O(B) middle (percentile by radix select, moving average, v2, the weighted sum) is one
single-program launch for B <= ``SMALL_B_MAX`` (which also does the mixed-CE pass when
B * K <= ``FUSE_CE_MAX``: the whole forward in one launch); larger batches use the many-program radix passes
and per-block partial sums added by one more program. Sums run in a fixed order (deterministic).
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


@triton.jit
def _reduce_kernel(m_ptr, ma_ptr, params_ptr, hist_ptr, w_ptr, ma_out_ptr, part_ptr, loss_ptr, n, k, decay, span,
                   clock_ptr, clock_mul, clock_div, steps_out_ptr, step_next, z_ptr, stride_z, target_ptr,
                   partner_ptr, lam_ptr, lse_ptr, num_classes, MODE: tl.constexpr, REWEIGHT: tl.constexpr,
                   PRESELECTED: tl.constexpr, SINGLE: tl.constexpr, EPOCH: tl.constexpr, STEP_OUT: tl.constexpr,
                   FUSE_CE: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK: tl.constexpr):
    """Program p sums ``w_i m_i`` over [p * span, (p + 1) * span) (w = v2 or 1); SINGLE (one
    program): writes the loss, otherwise the partial sum ``part[p]`` for :func:`_sum_kernel`.
    ``EPOCH``: ``params`` is the [100, 93] table and the clock selects the row (``params_row``).
    ``FUSE_CE`` (one program, small B * K): first the mixed CE of the logits ``z`` into ``m`` and
    ``lse``. REWEIGHT: ``ma2'`` to ``ma_out`` (may be ``ma`` itself in one program). ``STEP_OUT``
    (one program): the module's step counter ``steps_out`` becomes ``step_next`` (1) or
    ``clock + 1`` (2); it may be the clock itself."""
    pid = tl.program_id(0)
    ma = tl.load(ma_ptr)  # the old state, read before any store (see store_state)
    if STEP_OUT == 2:
        step_next = tl.load(clock_ptr).to(tl.int64) + 1
    params_ptr = params_row(params_ptr, clock_ptr, clock_mul, clock_div, EPOCH)
    if FUSE_CE:
        ce_all_rows(z_ptr, stride_z, target_ptr, partner_ptr, lam_ptr, m_ptr, lse_ptr, n, num_classes, True, ROWS,
                    BLOCK_K)
    lo = pid * span
    hi = tl.minimum(lo + span, n)
    acc = tl.zeros([BLOCK], tl.float32)
    if REWEIGHT:
        ma_new = selected_moving_average(m_ptr, n, k, hist_ptr, ma, decay, PRESELECTED, BLOCK)
        for start in range(lo, hi, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            inb = offs < hi
            m = tl.load(m_ptr + offs, mask=inb, other=0.0)
            w = row_weights(m, ma_new, params_ptr, MODE)
            tl.store(w_ptr + offs, w, mask=inb)
            acc += tl.where(inb, w * m, 0.0)
    else:
        ma_new = ma
        for start in range(lo, hi, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            acc += tl.load(m_ptr + offs, mask=offs < hi, other=0.0)
    total = tl.sum(acc, 0)
    if SINGLE:
        tl.store(loss_ptr, total / n)
    else:
        tl.store(part_ptr + pid, total)
    store_state(ma_out_ptr, ma_new, REWEIGHT, steps_out_ptr, step_next, STEP_OUT != 0)


@triton.jit
def _sum_kernel(part_ptr, loss_ptr, g, n, BLOCK: tl.constexpr):
    """``loss = sum(part[0:g]) / n`` in a fixed order (deterministic)."""
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, g, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(part_ptr + offs, mask=offs < g, other=0.0)
    tl.store(loss_ptr, tl.sum(acc, 0) / n)


@triton.jit
def _grad_kernel(z_ptr, stride_z, lse_ptr, target_ptr, partner_ptr, lam_ptr, w_ptr, g_ptr, grad_ptr, stride_g,
                 B, K, div, HAS_W: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """``grad_i = g w_i / div (softmax(z_i) - y~_i)``: one read of z, one write in z's dtype; fp32
    arithmetic. ``div`` = B for the loss; 1 for the per-row mixed CE (w = its upstream gradient)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    ya = tl.load(target_ptr + rows64, mask=row_ok, other=0)
    yb = tl.load(target_ptr + tl.load(partner_ptr + rows64, mask=row_ok, other=0), mask=row_ok, other=0)
    lam = tl.load(lam_ptr + rows64, mask=row_ok, other=1.0).to(tl.float32)
    lse = tl.load(lse_ptr + rows64, mask=row_ok, other=0.0)
    scale = tl.load(g_ptr).to(tl.float32) / div
    if HAS_W:
        scale = scale * tl.load(w_ptr + rows64, mask=row_ok, other=0.0)
    else:
        scale = scale + tl.zeros([ROWS], tl.float32)
    # Rows with a label outside [0, K) have a constant NaN loss: no gradient (as the reference).
    ok = (ya >= 0) & (ya < K) & (yb >= 0) & (yb < K)
    scale = tl.where(ok, scale, 0.0)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = row_ok[:, None] & (cols < K)[None, :]
        z = tl.load(z_ptr + rows64[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        y = tl.where(cols[None, :] == ya[:, None], lam[:, None], 0.0) + \
            tl.where(cols[None, :] == yb[:, None], 1.0 - lam[:, None], 0.0)
        grad = (tl.exp(z - lse[:, None]) - y) * scale[:, None]
        tl.store(grad_ptr + rows64[:, None] * stride_g + cols[None, :], grad.to(grad_ptr.dtype.element_ty),
                 mask=mask)


def mixed_loss_forward(logits, target, partner, lam, loss_ma_mixed, params, *, rank: int, decay: float, mode: int,
                       second_reweight: bool, clock=None, clock_mul: int = 1, clock_div: int = 1, steps_out=None,
                       step_next: int = 0):
    """Returns ``(loss [] f32, lse [B] f32, w [B] f32 or [0])``, one read of the logits; with
    ``second_reweight`` writes ``ma2'`` into ``loss_ma_mixed`` (fp32, 0-d) in place.

    ``clock`` (integer tensor of one element): ``params`` is the [100, 93] table, row
    ``clamp(clock * clock_mul // clock_div, 0, 99)`` read in the kernel. ``steps_out`` (int64, 0-d):
    set to ``clock + 1`` when a clock is given, else to ``step_next`` (the module's step counter,
    which may be the clock itself)."""
    batch, num_classes = logits.shape
    device = logits.device
    fuse = batch <= _shared.SMALL_B_MAX and batch * num_classes <= _shared.FUSE_CE_MAX
    if fuse:  # one launch for the forward: the reduce program computes the mixed CE first
        if logits.stride(1) != 1:
            logits = logits.contiguous()
        m = torch.empty(batch, dtype=torch.float32, device=device)
        lse = torch.empty(batch, dtype=torch.float32, device=device)
        rows, block_k, _ = row_tiling(num_classes)
    else:
        m, lse = mixed_ce(logits, target, partner, lam)
        rows = block_k = 1
    w = torch.empty(batch if second_reweight else 0, dtype=torch.float32, device=device)
    loss = torch.empty((), dtype=torch.float32, device=device)
    if batch <= _shared.SMALL_B_MAX:
        span, grid, hist, block = batch, 1, m, reduce_block()
    else:
        span = block = _shared.LARGE_BLOCK
        grid = triton.cdiv(batch, span)
        hist = _shared.radix_histograms(m, rank) if second_reweight else m
    single = grid == 1
    # One program updates the state in place; many programs all read it, so they write a copy.
    ma_out = loss_ma_mixed if single else torch.empty((), dtype=torch.float32, device=device)
    step_out = 0 if steps_out is None or not single else (2 if clock is not None else 1)
    part = torch.empty(grid, dtype=torch.float32, device=device)
    _reduce_kernel[(grid,)](m, loss_ma_mixed, params, hist, w if second_reweight else m, ma_out, part, loss, batch,
                            rank, decay, span, m if clock is None else clock, clock_mul, clock_div,
                            m if step_out == 0 else steps_out, step_next, logits if fuse else m,
                            logits.stride(0) if fuse else 1, target if fuse else m, partner if fuse else m,
                            lam if fuse else m, lse if fuse else m, num_classes if fuse else 1, MODE=mode,
                            REWEIGHT=second_reweight, PRESELECTED=grid > 1, SINGLE=single, EPOCH=clock is not None,
                            STEP_OUT=step_out, FUSE_CE=fuse, ROWS=rows, BLOCK_K=block_k, BLOCK=block, num_warps=8)
    if not single:
        _sum_kernel[(1,)](part, loss, grid, batch, BLOCK=1024)
        if second_reweight:
            loss_ma_mixed.copy_(ma_out)
        if steps_out is not None:
            if clock is not None:
                torch.add(clock.reshape(()).to(torch.int64), 1, out=steps_out)
            else:
                steps_out.fill_(step_next)
    return loss, lse, w


def mixed_ce(logits, target, partner, lam):
    """Per-row mixed CE ``m`` [B] f32 and ``lse`` [B] f32 (one read of the logits)."""
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    batch, num_classes = logits.shape
    m = torch.empty(batch, dtype=torch.float32, device=logits.device)
    lse = torch.empty(batch, dtype=torch.float32, device=logits.device)
    rows, block_k, warps = row_tiling(num_classes)
    ce_rows_kernel[(triton.cdiv(batch, rows),)](
        logits, logits.stride(0), target, partner, lam, m, lse, batch, num_classes,
        MIXED=True, ROWS=rows, BLOCK_K=block_k, num_warps=warps)
    return m, lse


def mixed_loss_backward(grad_output, logits, target, partner, lam, lse, w, per_row: bool = False):
    """``dL/dz`` [B, K] in the logits' dtype; ``grad_output`` a 0-d tensor (read on the device).

    ``per_row``: the gradient of the per-row mixed CE instead, ``w`` [B] its upstream gradient."""
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    batch, num_classes = logits.shape
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
    rows, block_k, warps = row_tiling(num_classes)
    has_w = w.numel() > 0
    _grad_kernel[(triton.cdiv(batch, rows),)](
        logits, logits.stride(0), lse, target, partner, lam, w if has_w else lse, grad_output.reshape(()).float(),
        grad, grad.stride(0), batch, num_classes, 1.0 if per_row else float(batch),
        HAS_W=has_w, ROWS=rows, BLOCK_K=block_k, num_warps=warps)
    return grad
