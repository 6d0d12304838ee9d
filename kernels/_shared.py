"""Triton building blocks shared by the fused operations (SPEC §1.2-4 and §5).

* :func:`ce_rows_kernel`: per-row cross-entropy (plain or mixed) with an online logsumexp, many rows
  per program, the logits read once.
* :func:`radix_select`: the exact k-th smallest of n fp32 values (NaN ranks as +inf), by a 4-pass
  radix select over 8-bit digits of an order-preserving uint32 key (histogram + cumsum per pass).
* :func:`row_weights`: step-4 weights (threshold or the folded MentorNet) plus burn-in.

The folded MentorNet parameters come in one fp32 vector (see ``mentormix_fast.triton_backend``):
``P[0]`` burn-in flag (1.0 while ``e < burn_in_epoch - 1``); ``P[1:7]`` the forward LSTM's gate
terms ``(k[0,i], k[1,i], b[i], k[0,j], k[1,j], b[j])`` (kernel row 0 multiplies l, row 1 l - ma);
``P[7:13]`` the same for the backward LSTM; then four [20] vectors:
``base = E_l[0] W1[0:2] + E_e[e] W1[2:7] + b1``, ``W1[7]``, ``W1[8]``, ``W2[:, 0] + b2``.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

NUM_FC = 20
PARAMS_SIZE = 13 + 4 * NUM_FC
MODE_THRESHOLD = 0
MODE_MENTORNET = 1


def interpreting() -> bool:
    """True when Triton runs kernels in its Python interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def row_tiling(num_classes: int) -> tuple[int, int, int]:
    """(ROWS, BLOCK_K, num_warps) for a row-wise pass over [B, K].

    Small K packs many rows in one program (K = 10 -> 64 rows x 16 columns); large K loops over
    column blocks of one row (up to 4096 wide). On the GPU a multi-row tile stays at 1024 elements
    over 8 warps: ptxas (sm_90) then keeps the mixed-CE and gradient kernels at <= 80 registers with
    no spills, where 4096-element multi-row tiles hit 255 registers and spill (measured with
    ``python -m mentormix_fast.kernels.aot_check``). The interpreter prefers fewer, larger programs.
    """
    block_k = min(triton.next_power_of_2(num_classes), 4096)
    if interpreting():
        return max(1, min(16384 // block_k, 256)), block_k, 4
    rows = max(1, 1024 // block_k)
    num_warps = 4 if rows == 1 and block_k <= 1024 else 8
    return rows, block_k, num_warps


def reduce_block() -> int:
    """Chunk length of the single-program O(B) kernels."""
    return 4096 if interpreting() else 2048


# Batches up to SMALL_B_MAX run the O(B) work (select, weights, scan) in ONE program and launch;
# larger ones spread it over programs of LARGE_BLOCK examples (radix passes with atomic histograms,
# per-block scans). Module variables so tests can force the many-program path on small batches.
SMALL_B_MAX = 4096
LARGE_BLOCK = 1024
# Small batches with B * K <= FUSE_CE_MAX also do the CE pass over the logits in that one program
# (one launch less for the first pass and one for the mixed loss): at B = 128 a tile walk of
# <= 64K logits in one program costs less than a launch.
FUSE_CE_MAX = 65536


@triton.jit
def _tanh(x):
    """tanh to ~1e-8 absolute (no libdevice, so it also runs in the interpreter).

    |x| < 0.4: Taylor series to x^13 (next term < 2e-9); else ``(1 - e) / (1 + e)``, e = exp(-2|x|),
    where 1 - e > 0.55 has no cancellation. The MentorNet multiplies tanh outputs by weights of
    size ~40, so the cheap ``1 - 2 / (exp(2x) + 1)`` (error ~1e-7 near 0) is not good enough.
    """
    a = tl.abs(x)
    x2 = x * x
    poly = -1382.0 / 155925.0 + x2 * (21844.0 / 6081075.0)
    poly = 62.0 / 2835.0 + x2 * poly
    poly = -17.0 / 315.0 + x2 * poly
    poly = 2.0 / 15.0 + x2 * poly
    poly = -1.0 / 3.0 + x2 * poly
    small = x + x * (x2 * poly)
    e = tl.exp(-2.0 * a)
    large = (1.0 - e) / (1.0 + e)
    large = tl.where(x < 0, -large, large)
    return tl.where(a < 0.4, small, large)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def ce_rows_kernel(z_ptr, stride_z, target_ptr, partner_ptr, lam_ptr, loss_ptr, lse_ptr, B, K,
                   MIXED: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per-row loss over a [ROWS, BLOCK_K] tile walk of the logits, read once.

    Online logsumexp: ``m <- max(m, max_k z)``, ``s <- s * exp(m_old - m) + sum_k exp(z - m)``,
    ``lse = m + log(s)``. ``MIXED = False``: ``loss = lse - z[y]``; ``MIXED = True``:
    ``loss = lse - lam z[y] - (1 - lam) z[y[partner]]`` and ``lse`` is stored for the backward.
    A label outside [0, K) gives a NaN loss; a NaN logit a NaN loss; a +inf logit an inf/NaN loss.
    """
    ce_rows(z_ptr, stride_z, target_ptr, partner_ptr, lam_ptr, loss_ptr, lse_ptr, B, K, tl.program_id(0) * ROWS,
            MIXED, ROWS, BLOCK_K)


@triton.jit
def ce_all_rows(z_ptr, stride_z, target_ptr, partner_ptr, lam_ptr, loss_ptr, lse_ptr, B, K, MIXED: tl.constexpr,
                ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """:func:`ce_rows` over all B rows in one program (the fused small-batch paths), then a barrier
    so the stored losses are visible to every thread of the program."""
    for r0 in range(0, B, ROWS):
        ce_rows(z_ptr, stride_z, target_ptr, partner_ptr, lam_ptr, loss_ptr, lse_ptr, B, K, r0, MIXED, ROWS, BLOCK_K)
    tl.debug_barrier()


@triton.jit
def ce_rows(z_ptr, stride_z, target_ptr, partner_ptr, lam_ptr, loss_ptr, lse_ptr, B, K, row0, MIXED: tl.constexpr,
            ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """The body of :func:`ce_rows_kernel` for rows [row0, row0 + ROWS) (also called in a loop by
    the single-program kernels that fuse the CE pass at small B * K)."""
    rows = row0 + tl.arange(0, ROWS)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    ya = tl.load(target_ptr + rows64, mask=row_ok, other=0)
    if MIXED:
        partner = tl.load(partner_ptr + rows64, mask=row_ok, other=0)
        yb = tl.load(target_ptr + partner, mask=row_ok, other=0)
    m = tl.full([ROWS], float("-inf"), tl.float32)
    s = tl.zeros([ROWS], tl.float32)
    pa = tl.zeros([ROWS], tl.float32)
    pb = tl.zeros([ROWS], tl.float32)
    row_base = z_ptr + rows64[:, None] * stride_z
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = row_ok[:, None] & (cols < K)[None, :]
        z = tl.load(row_base + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, 1))
        # A row that is all -inf so far shifts by 0 (avoids -inf - -inf).
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(z - shift[:, None]), 1)
        m = m_new
        pa += tl.sum(tl.where(cols[None, :] == ya[:, None], z, 0.0), 1)
        if MIXED:
            pb += tl.sum(tl.where(cols[None, :] == yb[:, None], z, 0.0), 1)
    lse = tl.where(m == float("inf"), float("inf"), m + tl.log(s))
    ok = (ya >= 0) & (ya < K)
    if MIXED:
        lam = tl.load(lam_ptr + rows64, mask=row_ok, other=1.0).to(tl.float32)
        loss = lse - lam * pa - (1.0 - lam) * pb
        ok = ok & (yb >= 0) & (yb < K)
        tl.store(lse_ptr + rows64, lse, mask=row_ok)
    else:
        loss = lse - pa
    loss = tl.where(ok, loss, float("nan"))
    tl.store(loss_ptr + rows64, loss, mask=row_ok)


@triton.jit
def _float_key(x):
    """fp32 -> uint32 key with the same order (NaN -> the key of +inf)."""
    x = tl.where(x != x, float("inf"), x)
    bits = x.to(tl.int32, bitcast=True)
    flip = (bits >> 31) | -2147483648  # negative: flip all bits; positive: flip the sign bit
    return (bits ^ flip).to(tl.uint32, bitcast=True)


@triton.jit
def _key_to_float(key):
    bits = key.to(tl.int32, bitcast=True)
    flip = tl.where(bits < 0, -2147483648, -1)
    return (bits ^ flip).to(tl.float32, bitcast=True)


@triton.jit
def _pick_digit(hist, prefix, rank):
    """Append the digit whose bin holds ``rank`` to ``prefix``; ``rank`` becomes the rank within it."""
    bins = tl.arange(0, 256)
    cum = tl.cumsum(hist, 0)
    d = tl.sum((cum <= rank).to(tl.int32), 0)
    rank = rank - tl.sum(tl.where(bins < d, hist, 0), 0)
    return (prefix << 8) | d.to(tl.uint32), rank


@triton.jit
def radix_select(x_ptr, n, k, BLOCK: tl.constexpr):
    """The value of ascending rank ``k`` (0-based) among ``x[0:n]`` (fp32), exact with ties; one program.

    Four passes over x, one per 8-bit digit from the most significant: histogram the digit of the
    keys that share the prefix found so far, pick the bin holding rank ``k``, subtract the counts
    below it. The key is order preserving, so the final prefix is the key of the answer.
    """
    prefix = tl.zeros([1], tl.uint32)
    rank = tl.full([1], 0, tl.int32) + k
    for p in tl.static_range(4):
        # Digit p covers bits [24 - 8p, 32 - 8p) (the shift is written inline: a constexpr name
        # cannot be re-bound across the unrolled iterations).
        hist = tl.zeros([256], tl.int32)
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            inb = offs < n
            key = _float_key(tl.load(x_ptr + offs, mask=inb, other=0.0))
            if p == 0:
                match = inb
            else:
                match = inb & ((key >> (32 - 8 * p)) == prefix)
            digit = ((key >> (24 - 8 * p)) & 255).to(tl.int32)
            hist += tl.histogram(digit, 256, mask=match)
        prefix, rank = _pick_digit(hist, prefix, rank)
    return tl.sum(_key_to_float(prefix), 0)


@triton.jit
def _radix_state(hist_ptr, k, PASSES: tl.constexpr):
    """(prefix, rank) after the first ``PASSES`` digits, read from the global histograms [4, 256]."""
    prefix = tl.zeros([1], tl.uint32)
    rank = tl.full([1], 0, tl.int32) + k
    for p in tl.static_range(PASSES):
        prefix, rank = _pick_digit(tl.load(hist_ptr + p * 256 + tl.arange(0, 256)), prefix, rank)
    return prefix, rank


@triton.jit
def radix_selected(hist_ptr, k):
    """The selected value once the four global histograms of :func:`radix_hist_kernel` are full."""
    prefix, _ = _radix_state(hist_ptr, k, 4)
    return tl.sum(_key_to_float(prefix), 0)


@triton.jit
def selected_moving_average(x_ptr, n, k, hist_ptr, ma, decay, PRESELECTED: tl.constexpr, BLOCK: tl.constexpr):
    """The updated moving average ``d * ma + (1 - d) * q`` (``ma`` kept when q is not finite), q the
    value of ascending rank ``k`` of ``x`` [n] (read from the full histograms when PRESELECTED).
    ``ma`` is the old value, loaded by the caller at the start of its kernel: the state is written
    in place by :func:`store_state` at the end, after a barrier."""
    if PRESELECTED:
        q = radix_selected(hist_ptr, k)
    else:
        q = radix_select(x_ptr, n, k, BLOCK)
    return tl.where(tl.abs(q) < float("inf"), decay * ma + (1.0 - decay) * q, ma)


@triton.jit
def store_state(ma_out_ptr, ma_new, STORE_MA: tl.constexpr, counter_ptr, counter_new, STORE_COUNTER: tl.constexpr):
    """Program 0 writes the step's state: the moving average and an int64 counter (the Philox step
    counter or the module's step). The outputs may be the very tensors the kernel read its old state
    from (the module's buffers, updated in place): every thread of a single-program kernel loaded
    them at its start, and the barrier keeps those loads before these stores. A many-program kernel
    must write to other tensors (the launcher copies)."""
    tl.debug_barrier()
    if tl.program_id(0) == 0:
        if STORE_MA:
            tl.store(ma_out_ptr, ma_new)
        if STORE_COUNTER:
            tl.store(counter_ptr, counter_new)


@triton.jit
def radix_hist_kernel(x_ptr, n, k, hist_ptr, PASS: tl.constexpr, BLOCK: tl.constexpr):
    """Pass ``PASS`` of the many-program radix select: every program re-derives the prefix from the
    earlier passes' histograms (256 ints each), histograms its block and adds it atomically."""
    prefix, _ = _radix_state(hist_ptr, k, PASS)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    key = _float_key(tl.load(x_ptr + offs, mask=inb, other=0.0))
    shift: tl.constexpr = 24 - 8 * PASS
    if PASS == 0:
        match = inb
    else:
        match = inb & ((key >> (shift + 8)) == prefix)
    hist = tl.histogram(((key >> shift) & 255).to(tl.int32), 256, mask=match)
    tl.atomic_add(hist_ptr + PASS * 256 + tl.arange(0, 256), hist, mask=hist > 0)


def radix_histograms(values, rank: int):
    """Launch the four passes over ``values`` [n] fp32; returns the [4, 256] int32 histograms from
    which :func:`radix_selected` reads the value of ascending rank ``rank`` (exact, ties included)."""
    import torch

    hist = torch.zeros(4, 256, dtype=torch.int32, device=values.device)
    block = LARGE_BLOCK
    grid = (triton.cdiv(values.numel(), block),)
    for p in range(4):
        radix_hist_kernel[grid](values, values.numel(), rank, hist, PASS=p, BLOCK=block)
    return hist


@triton.jit
def params_row(params_ptr, clock_ptr, clock_mul, clock_div, EPOCH: tl.constexpr):
    """The step's parameter vector: ``params_ptr`` itself, or with ``EPOCH`` row
    ``e = clamp(clock * clock_mul // clock_div, 0, 99)`` of the [100, PARAMS_SIZE] table, ``clock``
    read on the device (no torch launches): an epoch tensor (mul = div = 1) or the step t
    (mul = 100, div = T, SPEC §1.1)."""
    if EPOCH:
        t = tl.load(clock_ptr).to(tl.int64)
        e = tl.maximum(t, 0) * clock_mul // clock_div  # clamped first: floor and truncation agree
        e = tl.minimum(e, 99)
        params_ptr = params_ptr + e * 93  # PARAMS_SIZE (asserted below)
    return params_ptr


assert PARAMS_SIZE == 93


@triton.jit
def row_weights(loss, ma, params_ptr, MODE: tl.constexpr):
    """Step-4 weights of a block of losses against the moving average ``ma`` (then burn-in).

    Threshold: ``v = 1[l < ma]``. MentorNet: ``c = sigmoid(a_i) tanh(a_j)`` per LSTM direction,
    ``h = tanh(base + c_fw W1[7] + c_bw W1[8])`` [20], ``v = sigmoid(h . (W2 + b2))``;
    a non-finite loss gets 0. Burn-in (``P[0] != 0``) makes every weight 1.
    """
    finite = tl.abs(loss) < float("inf")  # False for NaN and +-inf
    if MODE == 0:
        v = (loss < ma).to(tl.float32)
    else:
        ls = tl.where(finite, loss, 0.0)
        d = ls - ma
        c_fw = _sigmoid(ls * tl.load(params_ptr + 1) + d * tl.load(params_ptr + 2) + tl.load(params_ptr + 3)) * \
            _tanh(ls * tl.load(params_ptr + 4) + d * tl.load(params_ptr + 5) + tl.load(params_ptr + 6))
        c_bw = _sigmoid(ls * tl.load(params_ptr + 7) + d * tl.load(params_ptr + 8) + tl.load(params_ptr + 9)) * \
            _tanh(ls * tl.load(params_ptr + 10) + d * tl.load(params_ptr + 11) + tl.load(params_ptr + 12))
        # The 20 hidden units one at a time on [BLOCK] vectors: no [BLOCK, 20] tile in registers.
        logit = tl.zeros_like(ls)
        for j in tl.static_range(20):
            h = _tanh(tl.load(params_ptr + 13 + j) + c_fw * tl.load(params_ptr + 33 + j)
                      + c_bw * tl.load(params_ptr + 53 + j))
            logit += h * tl.load(params_ptr + 73 + j)
        v = _sigmoid(logit)
        v = tl.where(finite, v, 0.0)
    burn = tl.load(params_ptr)
    return tl.where(burn != 0.0, 1.0, v)
