#include "weights.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/mentornet_eval.h"
#include "../common/mentornet_layout.h"

namespace mentormix::cpu {
namespace {

using fVec = at::vec::Vectorized<float>;

// Inline exp (exp_u20, ~20 ulp) keeps the 20-unit hidden layer cheap; MentorNet weights need
// ~1e-6, not correct rounding.
inline fVec vsigmoid(const fVec& x) { return fVec(1.f) / (fVec(1.f) + x.neg().exp_u20()); }
inline fVec vtanh(const fVec& x) { return fVec(1.f) - fVec(2.f) / ((x + x).exp_u20() + fVec(1.f)); }

// MentorNet on one vector of examples: the math of common/mentornet_eval.h.
inline fVec mentornet_vec(const float* mn, const float* base, fVec l, fVec ma) {
  const float* k = mn + kMnLstm;
  const fVec d = l - ma;
  const fVec c_fw = vsigmoid(l * fVec(k[0]) + d * fVec(k[1]) + fVec(k[2])) *
                    vtanh(l * fVec(k[3]) + d * fVec(k[4]) + fVec(k[5]));
  const fVec c_bw = vsigmoid(l * fVec(k[6]) + d * fVec(k[7]) + fVec(k[8])) *
                    vtanh(l * fVec(k[9]) + d * fVec(k[10]) + fVec(k[11]));
  fVec logit(0.f);
  for (int j = 0; j < kMnHidden; ++j) {
    const fVec h = vtanh(fVec(base[j]) + c_fw * fVec(mn[kMnCfw + j]) + c_bw * fVec(mn[kMnCbw + j]));
    logit = logit + h * fVec(mn[kMnOut + j]);
  }
  return vsigmoid(logit);
}

void mentornet_range(const float* loss, int64_t begin, int64_t end, float ma, const WeightParams& p, float* v) {
  const float* base = p.mentornet + kMnBase + p.epoch * kMnHidden;
  const fVec vma(ma), zero(0.f);
  constexpr int64_t n = fVec::size();
  for (int64_t i = begin; i < end; i += n) {
    const int64_t count = std::min(n, end - i);
    const fVec l = fVec::loadu(loss + i, count);
    // Non-finite losses are evaluated as 0 and then get weight 0 (the reference's policy).
    const fVec finite = (l - l) == zero;  // inf - inf and NaN - NaN are NaN
    const fVec safe = fVec::blendv(zero, l, finite);
    const fVec out = fVec::blendv(zero, mentornet_vec(p.mentornet, base, safe, vma), finite);
    out.store(v + i, count);
  }
}

}  // namespace

float select_rank(const float* values, int64_t n, int64_t rank) {
  std::vector<float> keys(values, values + n);
  for (auto& x : keys) {
    if (std::isnan(x)) x = std::numeric_limits<float>::infinity();
  }
  std::nth_element(keys.begin(), keys.begin() + rank, keys.end());
  return keys[rank];
}

float moving_average(float ma, float q, double decay) {
  if (!std::isfinite(q)) return ma;
  return static_cast<float>(decay) * ma + static_cast<float>(1.0 - decay) * q;
}

void compute_weights(const float* loss, int64_t B, float ma, const WeightParams& p, float* v) {
  if (in_burn_in(p.epoch, p.burn_in_epoch)) {
    std::fill(v, v + B, 1.f);
    return;
  }
  if (p.mentornet == nullptr) {
    for (int64_t i = 0; i < B; ++i) v[i] = loss[i] < ma ? 1.f : 0.f;  // NaN -> 0
    return;
  }
  at::parallel_for(0, B, 1024, [&](int64_t begin, int64_t end) { mentornet_range(loss, begin, end, ma, p, v); });
}

}  // namespace mentormix::cpu
