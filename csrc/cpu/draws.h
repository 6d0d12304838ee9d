// The random draws of one step on the CPU (SPEC §1.5-6): u_i ~ U[0, 1) for the partner and
// b_i ~ Beta(alpha, alpha) for the mixing factor.
//
// One 64-bit key is taken from the caller's torch CPU Generator per call (under its lock); example i
// then draws from subsequence i of the counter-based Philox4x32-10 stream of that key. The result
// is reproducible from the generator's seed and independent of the number of threads.
#pragma once

#include <cstdint>

namespace mentormix::cpu {

// uniform [B] in [0, 1) (53-bit), beta [B]: G1 / (G1 + G2) with G ~ Gamma(alpha) in float by
// Marsaglia-Tsang (alpha < 1 boosted as Gamma(alpha + 1) * U^(1 / alpha)); when both gammas
// underflow to 0 (tiny alpha) the draw is 1 if G1 >= G2, as the reference's fallback.
void draw_uniform_beta(uint64_t key, double alpha, int64_t B, double* uniform, float* beta);

}  // namespace mentormix::cpu
