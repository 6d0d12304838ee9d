"""Step-4 weights (SPEC §1.4) from the step, and the step's epoch (SPEC §1.1).

The MentorNet comes folded (SPEC §5, ``mentormix_fast.mentornet.fold_mentornet``): fp32 [2072] =
LSTM gate terms [12], ``W1[7]``, ``W1[8]``, ``W2[:, 0] + b2`` (3 x [20]), then the per-epoch base
vectors [100, 20]. ``mn_ptr`` None means the threshold weighting.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def step_and_epoch(step_ptr, step, total_steps):
    """``(c, e)``: the step t (read from ``step_ptr`` when given, else the value ``step``) clamped to
    [0, T], and its epoch ``min(floor(100 c / T), 99)`` (int64 scalars)."""
    if step_ptr is not None:
        t = tl.load(step_ptr).to(tl.int64)
    else:
        t = step.to(tl.int64)
    clamped = tl.minimum(tl.maximum(t, 0), total_steps)
    return clamped, tl.minimum(clamped * 100 // total_steps, 99)


@triton.jit
def _tanh(x):
    """tanh without libdevice (so it also runs in the interpreter). |x| < 0.4: Taylor series to
    x^13 (next term < 2e-9); else ``(1 - e) / (1 + e)``, e = exp(-2|x|), where 1 - e > 0.55 has
    no cancellation. Accurate to a few ulp of fp32 wherever ``exp`` is; on sm_90 ``tl.exp`` is
    ``ex2.approx``, so about 1e-7."""
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
def row_weights(loss, ma, mn_ptr, epoch, burn_in_epoch):
    """Weights of a block of losses against the moving average ``ma`` at ``epoch``.

    Threshold (``mn_ptr`` None): ``v = 1[l < ma]``. MentorNet: ``c = sigmoid(a_i) tanh(a_j)`` per
    LSTM direction, ``h = tanh(base[e] + c_fw W1[7] + c_bw W1[8])`` [20], ``v = sigmoid(h . (W2 + b2))``,
    a non-finite loss gets 0. Burn-in (``e < burn_in_epoch - 1``) makes every weight 1.
    """
    if mn_ptr is None:
        v = (loss < ma).to(tl.float32)
    else:
        finite = tl.abs(loss) < float("inf")  # False for NaN and +-inf
        ls = tl.where(finite, loss, 0.0)
        d = ls - ma
        c_fw = _sigmoid(ls * tl.load(mn_ptr + 0) + d * tl.load(mn_ptr + 1) + tl.load(mn_ptr + 2)) * \
            _tanh(ls * tl.load(mn_ptr + 3) + d * tl.load(mn_ptr + 4) + tl.load(mn_ptr + 5))
        c_bw = _sigmoid(ls * tl.load(mn_ptr + 6) + d * tl.load(mn_ptr + 7) + tl.load(mn_ptr + 8)) * \
            _tanh(ls * tl.load(mn_ptr + 9) + d * tl.load(mn_ptr + 10) + tl.load(mn_ptr + 11))
        base_ptr = mn_ptr + 72 + epoch * 20
        # The 20 hidden units one at a time on [BLOCK] vectors: no [BLOCK, 20] tile in registers.
        logit = tl.zeros_like(ls)
        for j in tl.static_range(20):
            h = _tanh(tl.load(base_ptr + j) + c_fw * tl.load(mn_ptr + 12 + j) + c_bw * tl.load(mn_ptr + 32 + j))
            logit += h * tl.load(mn_ptr + 52 + j)
        v = tl.where(finite, _sigmoid(logit), 0.0)
    return tl.where(epoch < burn_in_epoch - 1, 1.0, v)
