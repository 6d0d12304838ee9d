// Weight of one example (SPEC §1.4) from the folded MentorNet (mentornet_layout.h), for host and
// device code (the CPU kernels use a vectorised copy of the same math, cpu/weights.cpp).
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#include "mentornet_layout.h"

namespace mentormix {

C10_HOST_DEVICE inline bool finite(float x) {
#ifdef __CUDA_ARCH__
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

C10_HOST_DEVICE inline float mn_sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// v = MentorNet(l, l - ma, epoch) for a finite loss l; epoch in [0, 99].
C10_HOST_DEVICE inline float mentornet_weight(const float* mn, int64_t epoch, float l, float ma) {
  const float* base = mn + kMnBase + epoch * kMnHidden;
  const float* k = mn + kMnLstm;
  const float d = l - ma;
  const float c_fw = mn_sigmoid(l * k[0] + d * k[1] + k[2]) * tanhf(l * k[3] + d * k[4] + k[5]);
  const float c_bw = mn_sigmoid(l * k[6] + d * k[7] + k[8]) * tanhf(l * k[9] + d * k[10] + k[11]);
  float logit = 0.f;
  for (int j = 0; j < kMnHidden; ++j) {
    logit += tanhf(base[j] + c_fw * mn[kMnCfw + j] + c_bw * mn[kMnCbw + j]) * mn[kMnOut + j];
  }
  return mn_sigmoid(logit);
}

// True while every weight is 1: epoch < burn_in_epoch - 1 (the release's off-by-one).
C10_HOST_DEVICE inline bool in_burn_in(int64_t epoch, int64_t burn_in_epoch) { return epoch + 1 < burn_in_epoch; }

// Step 4 for one example after burn-in: threshold (mn == nullptr) or MentorNet; a non-finite
// loss gets 0 (the threshold's `l < ma` is false for NaN; +inf is never below a finite ma, and
// the moving average is always finite).
C10_HOST_DEVICE inline float example_weight(const float* mn, int64_t epoch, int64_t burn_in_epoch, float l,
                                            float ma) {
  if (in_burn_in(epoch, burn_in_epoch)) return 1.f;
  if (mn == nullptr) return l < ma ? 1.f : 0.f;
  if (!finite(l)) return 0.f;
  return mentornet_weight(mn, epoch, l, ma);
}

}  // namespace mentormix
