"""Exact percentile selection (SPEC §1.3): the value of ascending rank k among n fp32 values.

A 4-pass radix select over 8-bit digits of an order-preserving uint32 key (NaN keyed as +inf):
each pass histograms the digit of the keys that share the prefix found so far, picks the bin
that holds rank k and subtracts the counts below it; the final prefix is the key of the answer.
Exact with ties. One program (:func:`radix_select`) or, for large n, one launch per pass over
many programs adding their histograms atomically into a [4, 256] int32 buffer
(:func:`radix_histograms`), from which any program reads the answer (:func:`radix_selected`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Values per program of the many-program passes.
LARGE_BLOCK = 1024


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
    """The value of ascending rank ``k`` (0-based) among ``x[0:n]``, in one program."""
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
    """The selected value once the four global histograms of :func:`radix_histograms` are full."""
    prefix, _ = _radix_state(hist_ptr, k, 4)
    return tl.sum(_key_to_float(prefix), 0)


@triton.jit
def _radix_hist_kernel(x_ptr, n, k, hist_ptr, PASS: tl.constexpr, BLOCK: tl.constexpr):
    """Pass ``PASS``: every program re-derives the prefix from the earlier passes' histograms (256
    ints each), histograms its block and adds it atomically."""
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


def radix_histograms(wrap, values: torch.Tensor, rank: int) -> torch.Tensor:
    """Launch the four passes over ``values`` [n] fp32 (``wrap``: the launcher's ``wrap_triton``);
    returns the [4, 256] int32 histograms for :func:`radix_selected`."""
    hist = torch.zeros(4, 256, dtype=torch.int32, device=values.device)
    grid = (triton.cdiv(values.numel(), LARGE_BLOCK),)
    for p in range(4):
        wrap(_radix_hist_kernel)[grid](values, values.numel(), rank, hist, PASS=p, BLOCK=LARGE_BLOCK)
    return hist


@triton.jit
def select_percentile(own_ptr, n, pool_ptr, n_pool, hist_ptr, rank, BLOCK: tl.constexpr):
    """The value of ascending rank ``rank``: of the pool from its full histograms (``hist_ptr``
    given), else of ``pool`` [n_pool] (given), else of the batch's own values [n]; one program."""
    if hist_ptr is not None:
        q = radix_selected(hist_ptr, rank)
    elif pool_ptr is not None:
        q = radix_select(pool_ptr, n_pool, rank, BLOCK)
    else:
        q = radix_select(own_ptr, n, rank, BLOCK)
    return q


@triton.jit
def moving_average(ma, q, decay):
    """``d ma + (1 - d) q``, or ``ma`` when ``q`` is not finite (SPEC §1.3, §4.1)."""
    return tl.where(tl.abs(q) < float("inf"), decay * ma + (1.0 - decay) * q, ma)
