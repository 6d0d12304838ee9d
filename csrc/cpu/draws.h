// The random draws of one step on the CPU (SPEC §1.5-6), see common/draws.h: one 64-bit key from
// the caller's torch CPU Generator per call, then subsequence i of its Philox stream for example i.
#pragma once

#include <cstdint>

namespace mentormix::cpu {

// uniform [B] in [0, 1) (53-bit), beta [B] ~ Beta(alpha, alpha) (float).
void draw_uniform_beta(uint64_t key, double alpha, int64_t B, double* uniform, float* beta);

}  // namespace mentormix::cpu
