// The per-row passes over the logits z [B, K] (row stride `rs`, unit stride along K), ATen
// parallel_for over rows, vectorised within a row (vec_row.h), computed in float:
//   ce_rows:    l_i = lse_i - z_i[y_i]                                           (plan, ce)
//   mixed_rows: lse_i and m_i = lse_i - lam_i z_i[y_i] - (1 - lam_i) z_i[y_{j_i}] (mixed_loss, ce)
//   grad_rows:  g_i = s_i (softmax(z_i) - y~_i), s_i = g w_i / B                  (backward)
// A label outside [0, K) or a partner outside [0, B) gives a NaN loss and a zero gradient row.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "vec_row.h"

namespace mentormix::cpu {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

inline int64_t row_grain(int64_t K) { return std::max<int64_t>(1, 32768 / K); }

// y_{j_i}, or -1 (an out-of-range label) when the partner is outside [0, B).
inline int64_t partner_label(const int64_t* y, const int64_t* partner, int64_t i, int64_t B) {
  const int64_t p = partner[i];
  return (p >= 0 && p < B) ? y[p] : -1;
}

template <typename T>
void ce_rows(const T* z, int64_t rs, int64_t B, int64_t K, const int64_t* y, float* loss) {
  at::parallel_for(0, B, row_grain(K), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* row = z + i * rs;
      const int64_t yi = y[i];
      const float lse = row_logsumexp(row, K);
      loss[i] = (yi >= 0 && yi < K) ? lse - static_cast<float>(row[yi]) : kNaN;
    }
  });
}

// lse_out may be null (the ce op keeps only m).
template <typename T>
void mixed_rows(const T* z, int64_t rs, int64_t B, int64_t K, const int64_t* y, const int64_t* partner,
                const float* lam, float* lse_out, float* m_out) {
  at::parallel_for(0, B, row_grain(K), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* row = z + i * rs;
      const int64_t yi = y[i], yp = partner_label(y, partner, i, B);
      const float lse = row_logsumexp(row, K);
      if (lse_out != nullptr) lse_out[i] = lse;
      const bool ok = yi >= 0 && yi < K && yp >= 0 && yp < K;
      m_out[i] = ok ? lse - lam[i] * static_cast<float>(row[yi]) - (1.f - lam[i]) * static_cast<float>(row[yp]) : kNaN;
    }
  });
}

// grad row = scale (softmax(z) - lam e_y - (1 - lam) e_yp); the two label entries are computed
// from z directly so that they are rounded to T once. Out-of-range label or partner: a zero row.
template <typename T>
inline void write_grad_row(const T* z, T* g, int64_t K, float lse, float scale, int64_t y, int64_t yp, float lam) {
  if (!(y >= 0 && y < K && yp >= 0 && yp < K)) {
    std::fill(g, g + K, static_cast<T>(0.f));
    return;
  }
  row_scaled_softmax(z, g, K, lse, scale);
  const float py = std::exp(static_cast<float>(z[y]) - lse);
  if (y == yp) {
    g[y] = static_cast<T>((py - 1.f) * scale);
  } else {
    const float pp = std::exp(static_cast<float>(z[yp]) - lse);
    g[y] = static_cast<T>((py - lam) * scale);
    g[yp] = static_cast<T>((pp - (1.f - lam)) * scale);
  }
}

// w may be null (all weights 1); grad is contiguous [B, K].
template <typename T>
void grad_rows(const T* z, int64_t rs, int64_t B, int64_t K, const int64_t* y, const int64_t* partner,
               const float* lam, const float* lse, const float* w, float g, T* grad) {
  const float scale = g / static_cast<float>(B);
  at::parallel_for(0, B, row_grain(K), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float s = w == nullptr ? scale : scale * w[i];
      write_grad_row(z + i * rs, grad + i * K, K, lse[i], s, y[i], partner_label(y, partner, i, B), lam[i]);
    }
  });
}

}  // namespace mentormix::cpu
