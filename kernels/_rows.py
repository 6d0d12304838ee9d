"""Row passes over the logits: the per-row cross-entropy (plain or mixed) with an online
logsumexp, the logits read once (SPEC §1.2, §1.8).

A label outside [0, K) or a partner outside [0, B) gives the row a NaN loss (never a read outside
the tensors); a NaN logit gives NaN, a +inf logit an inf/NaN loss.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._library import interpreting


def row_tiling(num_classes: int) -> tuple[int, int, int]:
    """(ROWS, BLOCK_K, num_warps) for a row-wise pass over [B, K].

    Small K packs many rows in one program (K = 10 -> 64 rows x 16 columns); large K loops over
    column blocks of one row (up to 4096 wide). On the GPU a multi-row tile stays at 1024 elements
    over 8 warps: ptxas (sm_90) then keeps the mixed-CE and gradient kernels at <= 80 registers with
    no spills, where 4096-element multi-row tiles spill. The interpreter prefers fewer, larger
    programs.
    """
    block_k = min(triton.next_power_of_2(num_classes), 4096)
    if interpreting():
        return max(1, min(16384 // block_k, 256)), block_k, 4
    rows = max(1, 1024 // block_k)
    num_warps = 4 if rows == 1 and block_k <= 1024 else 8
    return rows, block_k, num_warps


@triton.jit
def partner_labels(target_ptr, partner_ptr, rows64, row_ok, B):
    """``(y_{j_i}, partner in range)`` for the given rows; an out-of-range partner reads row 0."""
    partner = tl.load(partner_ptr + rows64, mask=row_ok, other=0)
    partner_ok = (partner >= 0) & (partner < B)
    yb = tl.load(target_ptr + tl.where(partner_ok, partner, 0), mask=row_ok, other=0)
    return yb, partner_ok


@triton.jit
def ce_rows(z_ptr, stride_z, target_ptr, partner_ptr, lam_ptr, loss_ptr, lse_ptr, B, K, row0,
            ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """Rows [row0, row0 + ROWS): ``loss = lse - z[y]``, or with a partner (``partner_ptr`` not None)
    ``loss = lse - lam z[y] - (1 - lam) z[y_partner]``; ``lse`` stored when ``lse_ptr`` is given.

    Online logsumexp over column blocks: ``m <- max(m, max_k z)``,
    ``s <- s exp(m_old - m) + sum_k exp(z - m)``, ``lse = m + log(s)``.
    """
    rows = row0 + tl.arange(0, ROWS)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    ya = tl.load(target_ptr + rows64, mask=row_ok, other=0)
    if partner_ptr is not None:
        yb, partner_ok = partner_labels(target_ptr, partner_ptr, rows64, row_ok, B)
    m = tl.full([ROWS], float("-inf"), tl.float32)
    s = tl.zeros([ROWS], tl.float32)
    nans = tl.zeros([ROWS], tl.int32)
    pa = tl.zeros([ROWS], tl.float32)
    pb = tl.zeros([ROWS], tl.float32)
    row_base = z_ptr + rows64[:, None] * stride_z
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = row_ok[:, None] & (cols < K)[None, :]
        z = tl.load(row_base + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, 1))
        nans += tl.sum((z != z).to(tl.int32), 1)  # the hardware's max drops NaN; torch's propagates it
        # A row that is all -inf so far shifts by 0 (avoids -inf - -inf).
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(z - shift[:, None]), 1)
        m = m_new
        pa += tl.sum(tl.where(cols[None, :] == ya[:, None], z, 0.0), 1)
        if partner_ptr is not None:
            pb += tl.sum(tl.where(cols[None, :] == yb[:, None], z, 0.0), 1)
    lse = tl.where(m == float("inf"), float("inf"), m + tl.log(s))
    lse = tl.where(nans > 0, float("nan"), lse)
    ok = (ya >= 0) & (ya < K)
    if partner_ptr is not None:
        lam = tl.load(lam_ptr + rows64, mask=row_ok, other=1.0).to(tl.float32)
        loss = lse - lam * pa - (1.0 - lam) * pb
        ok = ok & partner_ok & (yb >= 0) & (yb < K)
    else:
        loss = lse - pa
    if lse_ptr is not None:
        tl.store(lse_ptr + rows64, lse, mask=row_ok)
    tl.store(loss_ptr + rows64, tl.where(ok, loss, float("nan")), mask=row_ok)


@triton.jit
def ce_rows_kernel(z_ptr, stride_z, target_ptr, partner_ptr, lam_ptr, loss_ptr, lse_ptr, B, K,
                   ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """:func:`ce_rows` over a grid of row tiles (the many-program passes)."""
    ce_rows(z_ptr, stride_z, target_ptr, partner_ptr, lam_ptr, loss_ptr, lse_ptr, B, K, tl.program_id(0) * ROWS,
            ROWS, BLOCK_K)


@triton.jit
def ce_all_rows(z_ptr, stride_z, target_ptr, partner_ptr, lam_ptr, loss_ptr, lse_ptr, B, K,
                ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """:func:`ce_rows` over all B rows in one program (the fused small-batch kernels), then a barrier
    so that the stored losses are visible to every thread of the program."""
    for r0 in range(0, B, ROWS):
        ce_rows(z_ptr, stride_z, target_ptr, partner_ptr, lam_ptr, loss_ptr, lse_ptr, B, K, r0, ROWS, BLOCK_K)
    tl.debug_barrier()


def launch_ce_rows(wrap, logits, target, partner, lam, loss, lse):
    """Launch :func:`ce_rows_kernel` over ``logits`` (unit stride along K) with ``wrap`` (the
    launcher's ``wrap_triton``)."""
    batch, num_classes = logits.shape
    rows, block_k, warps = row_tiling(num_classes)
    wrap(ce_rows_kernel)[(triton.cdiv(batch, rows),)](
        logits, logits.stride(0), target, partner, lam, loss, lse, batch, num_classes, ROWS=rows, BLOCK_K=block_k,
        num_warps=warps)
