// The O(B) middle of a MentorMix step on the CPU (SPEC §1.3-1.4): nearest percentile, moving
// average, weights. Shared by plan (loss l and ma) and mixed_loss with second_reweight (mixed
// loss m and ma2).
#pragma once

#include <cstdint>

namespace mentormix::cpu {

struct WeightParams {
  const float* mentornet;  // folded MentorNet (common/mentornet_layout.h), nullptr for "threshold"
  int64_t epoch;           // the epoch feature e in [0, 99] (common/schedule.h)
  int64_t burn_in_epoch;   // v = 1 while epoch < burn_in_epoch - 1
};

// The rank-th smallest of values[0..n) (NaN ranks as +inf), rank in [0, n).
float select_rank(const float* values, int64_t n, int64_t rank);

// ma' = d ma + (1 - d) q as torch computes it on fp32 tensors (the Python scalars become floats);
// ma unchanged when q is not finite.
float moving_average(float ma, float q, double decay);

// v[i] for every example against the updated moving average `ma` (burn-in, threshold or
// MentorNet; a non-finite loss gets 0 from MentorNet). Multi-threaded over the batch.
void compute_weights(const float* loss, int64_t B, float ma, const WeightParams& p, float* v);

}  // namespace mentormix::cpu
