"""In-kernel random draws of a step (SPEC §4.2) from the Philox state ``rng`` = (key, step counter).

The Philox counter of a draw is (step counter in the high 32-bit word, a draw number in the low
word), the draw number a fixed function of the global example index, so the draws do not depend
on how the batch is split over programs. Per example: ``b ~ Beta(alpha, alpha)`` from two
Marsaglia-Tsang gamma draws of ``GAMMA_ROUNDS`` rounds each (draw numbers ``[0, 2 ROUNDS + 2) n``),
then ``u ~ U[0, 1)`` for the partner (draw number ``(2 ROUNDS + 2) n + i``).
"""

from __future__ import annotations

import triton
import triton.language as tl

# Marsaglia-Tsang rejection rounds per gamma draw. The acceptance rate is >= 0.95 for shape >= 1
# (alpha < 1 is boosted to alpha + 1), so all rounds fail with probability < 0.05^8 ~ 4e-11; the
# fallback is then G = d (the centre of the proposal).
GAMMA_ROUNDS = 8
# The low counter word numbers a step's draws: (2 GAMMA_ROUNDS + 3) per example, in int32.
MAX_DRAW_BATCH = (2**31 - 1) // (2 * GAMMA_ROUNDS + 3)


@triton.jit
def step_counter_word(rng_ptr):
    """The high Philox counter word of this step's draws: the low 32 bits of ``rng[1]``, shifted."""
    return (tl.load(rng_ptr + 1) & 0xFFFFFFFF) << 32


@triton.jit
def _log_gamma(seed, offs, step_hi, n, stream, alpha, BOOST: tl.constexpr, ROUNDS: tl.constexpr):
    """``log G``, G ~ Gamma(alpha), per lane. Marsaglia-Tsang with shape ``s = alpha (+ 1 when
    BOOST)``, ``d = s - 1/3``, ``c = 1 / sqrt(9 d)``; for alpha < 1, ``G(a) = G(a + 1) U^(1/a)``
    added in log space, so tiny alpha never underflows."""
    shape = alpha + 1.0 if BOOST else alpha
    d = shape - 1.0 / 3.0
    c = 1.0 / tl.sqrt(9.0 * d)
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
        log_g = log_g + tl.log(1.0 - tl.rand(seed, step_hi + (offs + (2 * ROUNDS + stream) * n))) / alpha
    return log_g


@triton.jit
def beta_draw(rng_ptr, offs, n, alpha, BOOST: tl.constexpr, ROUNDS: tl.constexpr):
    """``b ~ Beta(alpha, alpha) = sigmoid(log G1 - log G2)`` per lane, fp32."""
    seed = tl.load(rng_ptr)
    step_hi = step_counter_word(rng_ptr)
    lg1 = _log_gamma(seed, offs, step_hi, n, 0, alpha, BOOST, ROUNDS)
    lg2 = _log_gamma(seed, offs, step_hi, n, 1, alpha, BOOST, ROUNDS)
    return 1.0 / (1.0 + tl.exp(lg2 - lg1))


@triton.jit
def uniform_draw(rng_ptr, offs, n, ROUNDS: tl.constexpr):
    """``u ~ U[0, 1)`` per lane (fp32), after the Beta draws' counters."""
    return tl.rand(tl.load(rng_ptr), step_counter_word(rng_ptr) + (offs + (2 * ROUNDS + 2) * n))


def boost(alpha: float) -> bool:
    """Whether the gamma draws of Beta(alpha, alpha) use the alpha < 1 boost."""
    return alpha < 1.0

