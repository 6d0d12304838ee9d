// Scalars of a step shared by the CPU and CUDA kernels: the epoch feature from the step (SPEC
// §1.1) and the rank of the nearest percentile (SPEC §1.3).
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace mentormix {

// Largest total_steps for which 100 * t cannot overflow (t is clamped to [0, total_steps]).
constexpr int64_t kMaxTotalSteps = INT64_MAX / 100;

// e = min(floor(100 t / T), 99) with t clamped to [0, T] first; T in [1, kMaxTotalSteps].
C10_HOST_DEVICE inline int64_t epoch_of_step(int64_t t, int64_t total_steps) {
  const int64_t c = t < 0 ? 0 : (t > total_steps ? total_steps : t);
  const int64_t e = c * 100 / total_steps;
  return e > 99 ? 99 : e;
}

// The step count after step t: clamp(t, 0, T) + 1 (the clamp of epoch_of_step, so any int64 t is safe).
C10_HOST_DEVICE inline int64_t steps_done(int64_t t, int64_t total_steps) {
  return (t < 0 ? 0 : (t > total_steps ? total_steps : t)) + 1;
}

// t + 1 without signed overflow (wraps as the int64 tensor arithmetic does).
C10_HOST_DEVICE inline int64_t add_one_wrapping(int64_t t) {
  return static_cast<int64_t>(static_cast<uint64_t>(t) + 1u);
}

// Ascending rank of TF's "nearest" percentile of n values at fraction p, exactly as Python's
// reference.percentile_rank: n - 1 - round_half_even((n - 1) * (1 - p)) in float64 (nearbyint in
// the default rounding mode is round-half-even). n >= 1, p in [0, 1].
inline int64_t percentile_rank(int64_t n, double p) {
  const double descending = std::nearbyint(static_cast<double>(n - 1) * (1.0 - p));
  return n - 1 - static_cast<int64_t>(descending);
}

}  // namespace mentormix
