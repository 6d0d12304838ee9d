"""The ``plan`` op (SPEC §1.2-1.6, contract in SPEC §5): per-example CE, percentile, moving average,
weights, Beta draws, lambda and partners, with ``loss_ma`` and the Philox counter updated in place.

The [B, K] logits are read once; the rest is O(B) and has no host synchronisation.

* B <= ``SMALL_B_MAX``: ONE program does it all (:func:`_plan_one_program`): the CE pass over the
  logits when B * K <= ``FUSE_CE_MAX`` (else one :func:`ce_rows_kernel` launch first), the radix
  select, the weights, ``lam``, the CDF ``c_i = sum_{j <= i} exp(v_j)`` (v in [0, 1]: no max
  shift), then after a barrier the partner search ``searchsorted(c, u c_{B-1}, right=True)``, and
  last the state: the old ``ma`` and Philox counter are read at the start and the new ones stored
  at the end, after a barrier, into the very buffers they were read from. So a step's plan is one
  launch.
* Larger B: the CE pass, four radix passes, :func:`_plan_blocks` over blocks of ``BLOCK`` examples
  (block-local CDFs and their totals), :func:`_block_scan` of the totals, :func:`_partner_kernel`,
  and :func:`_commit` (one program) writes the state once every other program has read it.

The percentile is taken over ``pool`` when given (e.g. the all-gathered losses of a distributed
batch), else over the batch's losses; a pool larger than ``SMALL_B_MAX`` is histogrammed by the
many-program radix passes first.
"""

import torch
import triton
import triton.language as tl

from mentormix_fast.reference import percentile_rank

from ._checks import check_logits, check_mentornet, check_pool, check_step, check_tensor
from ._draws import GAMMA_ROUNDS, MAX_DRAW_BATCH, beta_draw, boost, uniform_draw
from ._library import device_of, host_or_device_step, interpreting, library_op, wrap_triton
from ._rows import ce_all_rows, launch_ce_rows, row_tiling
from ._select import LARGE_BLOCK, moving_average, radix_histograms, radix_selected, select_percentile
from ._weights import row_weights, step_and_epoch

# Batches up to SMALL_B_MAX run the O(B) work in one program; larger ones over programs of
# LARGE_BLOCK examples. Module variables so that tests can force the many-program path.
SMALL_B_MAX = 4096
# One-program batches with B * K <= FUSE_CE_MAX also do the CE pass in that program: at B = 128 a
# walk over <= 64K logits in one program costs less than a launch.
FUSE_CE_MAX = 65536


def reduce_block() -> int:
    """Chunk length of the single-program O(B) loops."""
    return 4096 if interpreting() else 2048


@triton.jit
def _weigh_span(loss_ptr, lo, hi, ma, mn_ptr, epoch, burn_in_epoch, rng_ptr, beta_ptr, alpha, B, v_ptr, lam_ptr,
                cdf_ptr, partner_ptr, MIX: tl.constexpr, BOOST: tl.constexpr, ROUNDS: tl.constexpr,
                BLOCK: tl.constexpr):
    """Weights of examples [lo, hi), and with MIX their ``lam`` and the span-local CDF of
    ``exp(v)`` (returns its total); without MIX ``lam = 1`` and ``partner = i``."""
    carry = 0.0
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inb = offs < hi
        v = row_weights(tl.load(loss_ptr + offs, mask=inb, other=0.0), ma, mn_ptr, epoch, burn_in_epoch)
        tl.store(v_ptr + offs, v, mask=inb)
        if MIX:
            if beta_ptr is not None:
                b = tl.load(beta_ptr + offs, mask=inb, other=0.5).to(tl.float32)
            else:
                b = beta_draw(rng_ptr, offs, B, alpha, BOOST, ROUNDS)
            lam = tl.maximum(b, 1.0 - b)
            tl.store(lam_ptr + offs, tl.where(v >= 0.5, lam, 1.0 - lam), mask=inb)
            e = tl.where(inb, tl.exp(v), 0.0)
            tl.store(cdf_ptr + offs, tl.cumsum(e, 0) + carry, mask=inb)
            carry = carry + tl.sum(e, 0)
        else:
            tl.store(lam_ptr + offs, tl.full([BLOCK], 1.0, tl.float32), mask=inb)
            tl.store(partner_ptr + offs, offs.to(tl.int64), mask=inb)
    return carry


@triton.jit
def _uniform(uniform_ptr, rng_ptr, offs, inb, B, ROUNDS: tl.constexpr):
    """``u_i``: loaded from ``uniform`` (fp64 -> fp32) when given, else drawn (Philox)."""
    if uniform_ptr is not None:
        u = tl.load(uniform_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    else:
        u = uniform_draw(rng_ptr, offs, B, ROUNDS)
    return u


@triton.jit
def _search(cdf_ptr, block_prefix_ptr, offs, inb, t, B, span, n_iter):
    """The first index i whose ``CDF(i) = cdf[i] (+ block_prefix[i // span - 1])`` exceeds ``t``
    (binary search, ``n_iter`` = bit length of B), clamped to B - 1."""
    lo = tl.zeros(offs.shape, tl.int64)
    hi = tl.zeros(offs.shape, tl.int64) + B
    for _ in range(n_iter):
        active = (lo < hi) & inb
        mid = (lo + hi) // 2
        c = tl.load(cdf_ptr + mid, mask=active, other=0.0)
        if block_prefix_ptr is not None:
            blk = mid // span
            c += tl.load(block_prefix_ptr + blk - 1, mask=active & (blk > 0), other=0.0)
        right = c <= t
        lo = tl.where(active & right, mid + 1, lo)
        hi = tl.where(active & (~right), mid, hi)
    return tl.minimum(lo, B - 1)


@triton.jit(do_not_specialize=["step"])
def _plan_one_program(z_ptr, stride_z, target_ptr, K, loss_ptr, B, pool_ptr, n_pool, rank, hist_ptr, ma_ptr, decay,
                      mn_ptr, step_ptr, step, total_steps, burn_in_epoch, rng_ptr, uniform_ptr, beta_ptr, alpha,
                      v_ptr, lam_ptr, cdf_ptr, partner_ptr, n_iter, MIX: tl.constexpr, BOOST: tl.constexpr,
                      ROUNDS: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK: tl.constexpr):
    """The whole plan in one program. ``z_ptr`` None: the losses are already in ``loss``;
    ``pool_ptr`` None: the percentile is of the losses; ``hist_ptr`` given: of the pool, read from
    its full radix histograms; ``mn_ptr`` None: threshold weights; ``beta_ptr``/``uniform_ptr``
    None: draw from ``rng`` (and advance its counter)."""
    ma = tl.load(ma_ptr)  # the old state, read before the stores at the end
    _, epoch = step_and_epoch(step_ptr, step, total_steps)
    if rng_ptr is not None:
        counter = tl.load(rng_ptr + 1)
    if z_ptr is not None:
        ce_all_rows(z_ptr, stride_z, target_ptr, None, None, loss_ptr, None, B, K, ROWS, BLOCK_K)
    ma_new = moving_average(ma, select_percentile(loss_ptr, B, pool_ptr, n_pool, hist_ptr, rank, BLOCK), decay)
    total = _weigh_span(loss_ptr, 0, B, ma_new, mn_ptr, epoch, burn_in_epoch, rng_ptr, beta_ptr, alpha, B, v_ptr,
                        lam_ptr, cdf_ptr, partner_ptr, MIX, BOOST, ROUNDS, BLOCK)
    if MIX:
        tl.debug_barrier()  # the CDF stores above are visible to every thread of the program
        for start in range(0, B, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            inb = offs < B
            t = _uniform(uniform_ptr, rng_ptr, offs, inb, B, ROUNDS) * total
            tl.store(partner_ptr + offs, _search(cdf_ptr, None, offs, inb, t, B, B, n_iter), mask=inb)
    tl.debug_barrier()  # every load of the old state happened before these stores
    tl.store(ma_ptr, ma_new)
    if rng_ptr is not None:
        tl.store(rng_ptr + 1, counter + 1)


@triton.jit(do_not_specialize=["step"])
def _plan_blocks(loss_ptr, B, rank, hist_ptr, ma_ptr, decay, mn_ptr, step_ptr, step, total_steps, burn_in_epoch,
                 rng_ptr, beta_ptr, alpha, v_ptr, lam_ptr, cdf_ptr, block_total_ptr, partner_ptr,
                 MIX: tl.constexpr, BOOST: tl.constexpr, ROUNDS: tl.constexpr, BLOCK: tl.constexpr):
    """Program p weighs examples [p BLOCK, (p + 1) BLOCK) against the moving average updated with
    the percentile read from the full histograms, and stores its block's CDF total."""
    _, epoch = step_and_epoch(step_ptr, step, total_steps)
    ma_new = moving_average(tl.load(ma_ptr), radix_selected(hist_ptr, rank), decay)
    lo = tl.program_id(0) * BLOCK
    total = _weigh_span(loss_ptr, lo, tl.minimum(lo + BLOCK, B), ma_new, mn_ptr, epoch, burn_in_epoch, rng_ptr,
                        beta_ptr, alpha, B, v_ptr, lam_ptr, cdf_ptr, partner_ptr, MIX, BOOST, ROUNDS, BLOCK)
    if MIX:
        tl.store(block_total_ptr + tl.program_id(0), total)


@triton.jit
def _block_scan(block_total_ptr, G, BLOCK: tl.constexpr):
    """In-place inclusive scan of the ``G`` block totals (one program)."""
    carry = 0.0
    for start in range(0, G, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(block_total_ptr + offs, mask=offs < G, other=0.0)
        tl.store(block_total_ptr + offs, tl.cumsum(x, 0) + carry, mask=offs < G)
        carry = carry + tl.sum(x, 0)


@triton.jit
def _partner_kernel(cdf_ptr, block_prefix_ptr, uniform_ptr, rng_ptr, partner_ptr, B, G, span, n_iter,
                    ROUNDS: tl.constexpr, BLOCK: tl.constexpr):
    """Binary search of ``u_i * total`` in ``CDF(i) = cdf[i] + block_prefix[i // span - 1]``."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < B
    t = _uniform(uniform_ptr, rng_ptr, offs, inb, B, ROUNDS) * tl.load(block_prefix_ptr + G - 1)
    tl.store(partner_ptr + offs, _search(cdf_ptr, block_prefix_ptr, offs, inb, t, B, span, n_iter), mask=inb)


@triton.jit
def _commit(hist_ptr, rank, ma_ptr, decay, rng_ptr):
    """The many-program path's state update, once every program has read the old state."""
    tl.store(ma_ptr, moving_average(tl.load(ma_ptr), radix_selected(hist_ptr, rank), decay))
    if rng_ptr is not None:
        tl.store(rng_ptr + 1, tl.load(rng_ptr + 1) + 1)


@library_op("plan", mutates_args=("loss_ma", "rng_state"))
def plan(logits: torch.Tensor, target: torch.Tensor, loss_ma: torch.Tensor, rng_state: torch.Tensor,
         mentornet: torch.Tensor, step: torch.Tensor, pool: torch.Tensor | None, uniform: torch.Tensor | None,
         beta: torch.Tensor | None, total_steps: int, percentile: float, decay: float, burn_in_epoch: int,
         alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPEC §5 ``plan``: returns ``(loss [B] f32, weights [B] f32, partner [B] i64, lam [B] f32)``."""
    check_logits(logits)
    batch, num_classes = logits.shape
    device = logits.device
    check_tensor(target, "target", (batch,), torch.int64, device)
    check_tensor(loss_ma, "loss_ma", (), torch.float32, device)
    check_tensor(rng_state, "rng_state", (2,), torch.int64, device)
    check_mentornet(mentornet, device)
    check_step(step, device, total_steps)
    check_pool(pool, device)
    check_tensor(uniform, "uniform", (batch,), torch.float64, device)
    check_tensor(beta, "beta", (batch,), torch.float32, device)
    if (uniform is None) != (beta is None):
        raise ValueError("uniform and beta: give both explicit draws or neither")
    mix = alpha > 0
    draw = mix and uniform is None
    if draw and batch > MAX_DRAW_BATCH:
        raise ValueError(f"logits: in-kernel draws take B <= {MAX_DRAW_BATCH}, got B = {batch}")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    f32 = dict(dtype=torch.float32, device=device)
    loss, v, lam = torch.empty(batch, **f32), torch.empty(batch, **f32), torch.empty(batch, **f32)
    partner = torch.empty(batch, dtype=torch.int64, device=device)
    cdf = torch.empty(batch if mix else 0, **f32)
    values = loss if pool is None else pool
    rank = percentile_rank(values.shape[0], percentile)
    mn = mentornet if mentornet.numel() else None
    step_ptr, step_value = host_or_device_step(step, logits)
    rng = rng_state if draw else None
    explicit = dict(uniform=uniform if mix else None, beta=beta if mix else None)
    common = dict(MIX=mix, BOOST=boost(alpha) if draw else False, ROUNDS=GAMMA_ROUNDS)
    with device_of(logits):
        if batch <= SMALL_B_MAX:
            fuse = batch * num_classes <= FUSE_CE_MAX
            if not fuse:
                launch_ce_rows(wrap_triton, logits, target, None, None, loss, None)
            hist = radix_histograms(wrap_triton, pool, rank) if pool is not None and pool.shape[0] > SMALL_B_MAX \
                else None
            rows, block_k, _ = row_tiling(num_classes)
            wrap_triton(_plan_one_program)[(1,)](
                logits if fuse else None, logits.stride(0), target, num_classes, loss, batch, pool, values.shape[0],
                rank, hist, loss_ma, decay, mn, step_ptr, step_value, total_steps, burn_in_epoch, rng,
                explicit["uniform"], explicit["beta"], alpha, v, lam, cdf if mix else None, partner,
                batch.bit_length(), ROWS=rows, BLOCK_K=block_k, BLOCK=reduce_block(), num_warps=8, **common)
            return loss, v, partner, lam
        launch_ce_rows(wrap_triton, logits, target, None, None, loss, None)
        hist = radix_histograms(wrap_triton, values, rank)
        grid = triton.cdiv(batch, LARGE_BLOCK)
        block_total = torch.empty(grid if mix else 0, **f32)
        wrap_triton(_plan_blocks)[(grid,)](
            loss, batch, rank, hist, loss_ma, decay, mn, step_ptr, step_value, total_steps, burn_in_epoch, rng,
            explicit["beta"], alpha, v, lam, cdf if mix else None, block_total if mix else None, partner,
            BLOCK=LARGE_BLOCK, num_warps=8, **common)
        if mix:
            wrap_triton(_block_scan)[(1,)](block_total, grid, BLOCK=1024)
            search_block = 1024
            wrap_triton(_partner_kernel)[(triton.cdiv(batch, search_block),)](
                cdf, block_total, explicit["uniform"], rng, partner, batch, grid, LARGE_BLOCK, batch.bit_length(),
                ROUNDS=GAMMA_ROUNDS, BLOCK=search_block)
        wrap_triton(_commit)[(1,)](hist, rank, loss_ma, decay, rng)
    return loss, v, partner, lam
