// The random draws of one step on the CPU (SPEC §1.5-1.6, §4.2), see common/draws.h: example i
// draws from Philox with key `key` and subsequence (counter << 32) | i.
#pragma once

#include <cstdint>

namespace mentormix::cpu {

// uniform [B] in [0, 1) (53-bit), beta [B] ~ Beta(alpha, alpha) (float), alpha > 0.
void draw_uniform_beta(uint64_t key, uint64_t counter, double alpha, int64_t B, double* uniform, float* beta);

}  // namespace mentormix::cpu
