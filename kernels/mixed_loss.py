"""The ``mixed_loss`` and ``mixed_loss_backward`` ops (SPEC §1.8-1.9, contract in SPEC §5).

Forward: ``m_i = lse(z_i) - lam_i z_i[y_i] - (1 - lam_i) z_i[y_{j_i}]``; ``L = sum_i w_i m_i / B``
with ``w`` the given weights or 1, or with second reweighting ``ma2' = d ma2 + (1 - d) pct(m)``,
``w = v2 = weights(m, ma2')``. Backward: ``dL/dz_i = g w_i / B (softmax(z_i) - y~_i)`` with
``y~_i = lam_i onehot(y_i) + (1 - lam_i) onehot(y_{j_i})``. The autograd formula that joins them
is ``mentormix_fast.autograd.MentorMixLossFunction``, shared by every backend (torch.library takes
no autograd formula for an op that updates its arguments in place, as this one updates the state).

Passes over the B*K logits: forward ONE read, backward ONE read and ONE write, the minimum here:

* with second reweighting a row's gradient needs ``v2_i``, which depends on the percentile of all
  B mixed losses, so no row can be finished before every row was read once; rows cannot stay on
  chip across the whole grid for general B*K, so the backward reads z again (the forward saves
  ``lse_i`` [B] and the backward recomputes ``softmax(z_i) = exp(z_i - lse_i)`` in one pass);
* without it, writing the gradient in the forward would still need the upstream gradient ``g``,
  known only in the backward; scaling a stored gradient by ``g`` costs another read and write
  (or a host sync to test ``g == 1``), more than recomputing.

The O(B) middle is one program for B <= ``SMALL_B_MAX`` (which also does the mixed-CE pass when
B * K <= ``FUSE_CE_MAX``: the whole forward in ONE launch), reading the old ``ma2`` and step at
its start and storing the new state at its end; larger batches use the many-program radix passes,
per-block partial sums and one program that adds them and stores the state. Sums run in a fixed
order (deterministic).
"""

import torch
import triton
import triton.language as tl

from mentormix_fast.reference import percentile_rank

from ._checks import check_logits, check_mentornet, check_pool, check_step, check_tensor
from ._library import device_of, host_or_device_step, library_op, wrap_triton
from ._rows import ce_all_rows, launch_ce_rows, partner_labels, row_tiling
from ._select import LARGE_BLOCK, moving_average, radix_histograms, radix_selected, select_percentile
from ._weights import row_weights, step_and_epoch
from .plan import FUSE_CE_MAX, SMALL_B_MAX, reduce_block


@triton.jit
def _weighted_sum(m_ptr, lo, hi, given_w_ptr, ma_new, mn_ptr, epoch, burn_in_epoch, w_ptr, REWEIGHT: tl.constexpr,
                  BLOCK: tl.constexpr):
    """``sum_{i in [lo, hi)} w_i m_i`` with ``w = v2`` (stored, REWEIGHT), the given weights, or 1."""
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inb = offs < hi
        m = tl.load(m_ptr + offs, mask=inb, other=0.0)
        if REWEIGHT:
            w = row_weights(m, ma_new, mn_ptr, epoch, burn_in_epoch)
            tl.store(w_ptr + offs, w, mask=inb)
            acc += tl.where(inb, w * m, 0.0)
        elif given_w_ptr is not None:
            acc += tl.where(inb, tl.load(given_w_ptr + offs, mask=inb, other=0.0) * m, 0.0)
        else:
            acc += m
    return tl.sum(acc, 0)


@triton.jit(do_not_specialize=["step"])
def _mixed_loss_one_program(z_ptr, stride_z, target_ptr, partner_ptr, lam_ptr, K, m_ptr, lse_ptr, B, given_w_ptr,
                            pool_ptr, n_pool, rank, hist_ptr, ma_ptr, decay, mn_ptr, step_ptr, step, total_steps,
                            burn_in_epoch, steps_out_ptr, w_ptr, loss_ptr, REWEIGHT: tl.constexpr,
                            ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK: tl.constexpr):
    """The whole forward in one program. ``z_ptr`` None: ``m`` and ``lse`` are already computed;
    ``hist_ptr`` given: the percentile of the pool from its full radix histograms; ``steps_out``
    (may be the step tensor itself) becomes ``clamp(t, 0, T) + 1``."""
    t, epoch = step_and_epoch(step_ptr, step, total_steps)  # read before the stores at the end
    if REWEIGHT:
        ma = tl.load(ma_ptr)
    if z_ptr is not None:
        ce_all_rows(z_ptr, stride_z, target_ptr, partner_ptr, lam_ptr, m_ptr, lse_ptr, B, K, ROWS, BLOCK_K)
    ma_new = 0.0
    if REWEIGHT:
        ma_new = moving_average(ma, select_percentile(m_ptr, B, pool_ptr, n_pool, hist_ptr, rank, BLOCK), decay)
    total = _weighted_sum(m_ptr, 0, B, given_w_ptr, ma_new, mn_ptr, epoch, burn_in_epoch, w_ptr, REWEIGHT, BLOCK)
    tl.store(loss_ptr, total / B)
    tl.debug_barrier()  # every load of the old state happened before these stores
    if REWEIGHT:
        tl.store(ma_ptr, ma_new)
    if steps_out_ptr is not None:
        tl.store(steps_out_ptr, t + 1)


@triton.jit(do_not_specialize=["step"])
def _mixed_loss_blocks(m_ptr, B, given_w_ptr, rank, hist_ptr, ma_ptr, decay, mn_ptr, step_ptr, step, total_steps,
                       burn_in_epoch, w_ptr, part_ptr, REWEIGHT: tl.constexpr, BLOCK: tl.constexpr):
    """Program p: the partial sum of ``w_i m_i`` over [p BLOCK, (p + 1) BLOCK)."""
    _, epoch = step_and_epoch(step_ptr, step, total_steps)
    ma_new = 0.0
    if REWEIGHT:
        ma_new = moving_average(tl.load(ma_ptr), radix_selected(hist_ptr, rank), decay)
    lo = tl.program_id(0) * BLOCK
    total = _weighted_sum(m_ptr, lo, tl.minimum(lo + BLOCK, B), given_w_ptr, ma_new, mn_ptr, epoch, burn_in_epoch,
                          w_ptr, REWEIGHT, BLOCK)
    tl.store(part_ptr + tl.program_id(0), total)


@triton.jit(do_not_specialize=["step"])
def _sum_and_commit(part_ptr, G, B, loss_ptr, hist_ptr, rank, ma_ptr, decay, step_ptr, step, total_steps,
                    steps_out_ptr, REWEIGHT: tl.constexpr, BLOCK: tl.constexpr):
    """``L = sum(part[0:G]) / B`` in a fixed order, then the state (one program, after the others)."""
    t, _ = step_and_epoch(step_ptr, step, total_steps)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, G, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(part_ptr + offs, mask=offs < G, other=0.0)
    tl.store(loss_ptr, tl.sum(acc, 0) / B)
    if REWEIGHT:
        ma_new = moving_average(tl.load(ma_ptr), radix_selected(hist_ptr, rank), decay)
    tl.debug_barrier()
    if REWEIGHT:
        tl.store(ma_ptr, ma_new)
    if steps_out_ptr is not None:
        tl.store(steps_out_ptr, t + 1)


@triton.jit
def _grad_kernel(z_ptr, stride_z, lse_ptr, target_ptr, partner_ptr, lam_ptr, w_ptr, g_ptr, grad_ptr, stride_g, B, K,
                 ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """``grad_i = g w_i / B (softmax(z_i) - y~_i)``: one read of z, one write in z's dtype, fp32
    arithmetic. Rows whose label or partner is out of range (a constant NaN loss) get zeros."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    ya = tl.load(target_ptr + rows64, mask=row_ok, other=0)
    yb, partner_ok = partner_labels(target_ptr, partner_ptr, rows64, row_ok, B)
    lam = tl.load(lam_ptr + rows64, mask=row_ok, other=1.0).to(tl.float32)
    lse = tl.load(lse_ptr + rows64, mask=row_ok, other=0.0)
    scale = tl.load(g_ptr).to(tl.float32) / B + tl.zeros([ROWS], tl.float32)
    if w_ptr is not None:
        scale = scale * tl.load(w_ptr + rows64, mask=row_ok, other=0.0)
    ok = (ya >= 0) & (ya < K) & partner_ok & (yb >= 0) & (yb < K)
    scale = tl.where(ok, scale, 0.0)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = row_ok[:, None] & (cols < K)[None, :]
        z = tl.load(z_ptr + rows64[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        y = tl.where(cols[None, :] == ya[:, None], lam[:, None], 0.0) + \
            tl.where(cols[None, :] == yb[:, None], 1.0 - lam[:, None], 0.0)
        grad = (tl.exp(z - lse[:, None]) - y) * scale[:, None]
        tl.store(grad_ptr + rows64[:, None] * stride_g + cols[None, :], grad.to(grad_ptr.dtype.element_ty), mask=mask)


def _check_rows(logits, target, partner, lam):
    check_logits(logits)
    batch, device = logits.shape[0], logits.device
    check_tensor(target, "target", (batch,), torch.int64, device)
    check_tensor(partner, "partner", (batch,), torch.int64, device)
    check_tensor(lam, "lam", (batch,), torch.float32, device)


@library_op("mixed_loss", mutates_args=("loss_ma_mixed", "num_steps"))
def mixed_loss(logits: torch.Tensor, target: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor,
               given_weights: torch.Tensor | None, loss_ma_mixed: torch.Tensor | None,
               num_steps: torch.Tensor | None, mentornet: torch.Tensor, step: torch.Tensor,
               pool: torch.Tensor | None, total_steps: int, percentile: float, decay: float, burn_in_epoch: int,
               second_reweight: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPEC §5 ``mixed_loss``: ``(loss [] f32, lse [B] f32, v2 [B] f32 or [0])``."""
    _check_rows(logits, target, partner, lam)
    batch, num_classes = logits.shape
    device = logits.device
    check_tensor(given_weights, "given_weights", (batch,), torch.float32, device)
    check_tensor(loss_ma_mixed, "loss_ma_mixed", (), torch.float32, device)
    check_tensor(num_steps, "num_steps", (), torch.int64, device)
    check_mentornet(mentornet, device)
    check_step(step, device, total_steps)
    check_pool(pool, device)
    if second_reweight and (given_weights is not None or loss_ma_mixed is None):
        raise ValueError("second_reweight: computes its own weights; needs loss_ma_mixed and no given_weights")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    f32 = dict(dtype=torch.float32, device=device)
    m, lse, loss = torch.empty(batch, **f32), torch.empty(batch, **f32), torch.empty((), **f32)
    w = torch.empty(batch if second_reweight else 0, **f32)
    values = m if pool is None else pool
    rank = percentile_rank(values.shape[0], percentile)
    mn = mentornet if mentornet.numel() else None
    step_ptr, step_value = host_or_device_step(step, logits)
    ma = loss_ma_mixed if second_reweight else None
    w_out = w if second_reweight else None
    with device_of(logits):
        if batch <= SMALL_B_MAX:
            fuse = batch * num_classes <= FUSE_CE_MAX
            if not fuse:
                launch_ce_rows(wrap_triton, logits, target, partner, lam, m, lse)
            large_pool = second_reweight and pool is not None and pool.shape[0] > SMALL_B_MAX
            hist = radix_histograms(wrap_triton, pool, rank) if large_pool else None
            rows, block_k, _ = row_tiling(num_classes)
            wrap_triton(_mixed_loss_one_program)[(1,)](
                logits if fuse else None, logits.stride(0), target, partner, lam, num_classes, m, lse, batch,
                given_weights, pool, values.shape[0], rank, hist, ma, decay, mn, step_ptr, step_value, total_steps,
                burn_in_epoch, num_steps, w_out, loss, REWEIGHT=second_reweight, ROWS=rows, BLOCK_K=block_k,
                BLOCK=reduce_block(), num_warps=8)
            return loss, lse, w
        launch_ce_rows(wrap_triton, logits, target, partner, lam, m, lse)
        hist = radix_histograms(wrap_triton, values, rank) if second_reweight else None
        grid = triton.cdiv(batch, LARGE_BLOCK)
        part = torch.empty(grid, **f32)
        wrap_triton(_mixed_loss_blocks)[(grid,)](
            m, batch, given_weights, rank, hist, ma, decay, mn, step_ptr, step_value, total_steps, burn_in_epoch,
            w_out, part, REWEIGHT=second_reweight, BLOCK=LARGE_BLOCK, num_warps=8)
        wrap_triton(_sum_and_commit)[(1,)](part, grid, batch, loss, hist, rank, ma, decay, step_ptr, step_value,
                                           total_steps, num_steps, REWEIGHT=second_reweight, BLOCK=1024)
    return loss, lse, w


@library_op("mixed_loss_backward")
def mixed_loss_backward(grad_loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, partner: torch.Tensor,
                        lam: torch.Tensor, lse: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """SPEC §5 ``mixed_loss_backward``: ``dL/dz`` [B, K] in the logits' dtype, contiguous;
    ``grad_loss`` a 0-d fp32 tensor read on the device; ``weights`` None or [0] means 1."""
    _check_rows(logits, target, partner, lam)
    batch, num_classes = logits.shape
    check_tensor(grad_loss, "grad_loss", (), torch.float32, logits.device)
    check_tensor(lse, "lse", (batch,), torch.float32, logits.device)
    if weights is not None and weights.numel() == 0:
        weights = None
    check_tensor(weights, "weights", (batch,), torch.float32, logits.device)
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
    rows, block_k, warps = row_tiling(num_classes)
    with device_of(logits):
        wrap_triton(_grad_kernel)[(triton.cdiv(batch, rows),)](
            logits, logits.stride(0), lse, target, partner, lam, weights, grad_loss, grad, grad.stride(0), batch,
            num_classes, ROWS=rows, BLOCK_K=block_k, num_warps=warps)
    return grad
