// The O(B) middle of a MentorMix step on the CPU (SPEC §1.3-4): nearest percentile, moving
// average, weights. Shared by the weights-and-sample op (first pass, loss l and ma) and the
// mixed loss with second_reweight (mixed loss m and ma2).
#pragma once

#include <cstdint>

namespace mentormix::cpu {

struct WeightParams {
  const float* mentornet;  // folded MentorNet (common/mentornet_layout.h), nullptr for "threshold"
  int64_t rank;            // ascending rank of the percentile, percentile_rank(B, p) from Python
  double decay;            // d of ma' = d * ma + (1 - d) * q
  int64_t burn_in_epoch;   // v = 1 while epoch < burn_in_epoch - 1
  int64_t epoch;           // the epoch feature e (clamped to 0..99 for the embedding)
};

// q = the rank-th smallest of `loss` (NaN ranks as +inf); returns ma' (= ma when q is not finite).
float update_moving_average(const float* loss, int64_t B, float ma, const WeightParams& p);

// v[i] for every example against the updated moving average `ma` (burn-in, threshold or
// MentorNet; a non-finite loss gets 0). Multi-threaded over the batch.
void compute_weights(const float* loss, int64_t B, float ma, const WeightParams& p, float* v);

}  // namespace mentormix::cpu
