// Vectorised row primitives over one row of logits z[0..K) of dtype T (float, BFloat16, Half),
// computed in float. A row is read in blocks of 2 float vectors (one T vector for the 16-bit
// types), the tail element by element.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace mentormix::cpu {

using fVec = at::vec::Vectorized<float>;

template <typename T>
struct Block {
  static constexpr int64_t kSize = 2 * fVec::size();
  static inline void load(const T* p, fVec& a, fVec& b) {
    auto both = at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p));
    a = std::get<0>(both);
    b = std::get<1>(both);
  }
  static inline void store(T* p, const fVec& a, const fVec& b) {
    at::vec::convert_from_float<T>(a, b).store(p);
  }
};

template <>
struct Block<float> {
  static constexpr int64_t kSize = 2 * fVec::size();
  static inline void load(const float* p, fVec& a, fVec& b) {
    a = fVec::loadu(p);
    b = fVec::loadu(p + fVec::size());
  }
  static inline void store(float* p, const fVec& a, const fVec& b) {
    a.store(p);
    b.store(p + fVec::size());
  }
};

// NaN-propagating max (as torch.max): the row max is NaN if any element is.
inline float nan_max(float a, float b) { return (std::isnan(a) || a > b) ? a : b; }

template <typename T>
inline float row_max(const T* z, int64_t K) {
  int64_t k = 0;
  float m = -std::numeric_limits<float>::infinity();
  if (K >= Block<T>::kSize) {
    fVec ma(m), mb(m), a, b;
    for (; k + Block<T>::kSize <= K; k += Block<T>::kSize) {
      Block<T>::load(z + k, a, b);
      ma = at::vec::maximum(ma, a);
      mb = at::vec::maximum(mb, b);
    }
    m = at::vec::vec_reduce_all<float>([](fVec& x, fVec& y) { return at::vec::maximum(x, y); },
                                       at::vec::maximum(ma, mb));
  }
  for (; k < K; ++k) m = nan_max(m, static_cast<float>(z[k]));
  return m;
}

// sum_k exp(z_k - shift) for a finite shift.
template <typename T>
inline float row_sum_exp(const T* z, int64_t K, float shift) {
  int64_t k = 0;
  float s = 0.f;
  if (K >= Block<T>::kSize) {
    const fVec vs(shift);
    fVec sa(0.f), sb(0.f), a, b;
    for (; k + Block<T>::kSize <= K; k += Block<T>::kSize) {
      Block<T>::load(z + k, a, b);
      sa += (a - vs).exp();
      sb += (b - vs).exp();
    }
    s = at::vec::vec_reduce_all<float>([](fVec& x, fVec& y) { return x + y; }, sa + sb);
  }
  for (; k < K; ++k) s += std::exp(static_cast<float>(z[k]) - shift);
  return s;
}

// logsumexp of a row with torch.logsumexp's conventions: an infinite max is not subtracted
// (+inf row -> +inf, all -inf row -> -inf), and a NaN anywhere gives NaN.
template <typename T>
inline float row_logsumexp(const T* z, int64_t K) {
  const float m = row_max(z, K);
  if (std::isnan(m)) return m;
  const float shift = std::isinf(m) ? 0.f : m;
  if (std::isinf(m)) {  // rare: scalar path, exact torch semantics
    float s = 0.f;
    for (int64_t k = 0; k < K; ++k) s += std::exp(static_cast<float>(z[k]));
    return std::log(s);
  }
  return std::log(row_sum_exp(z, K, shift)) + shift;
}

// out_k = scale * exp(z_k - lse) for the whole row, in T. The two target entries are fixed up
// by the caller (they need the soft label subtracted before the single rounding to T).
template <typename T>
inline void row_scaled_softmax(const T* z, T* out, int64_t K, float lse, float scale) {
  int64_t k = 0;
  const fVec vl(lse), vsc(scale);
  fVec a, b;
  for (; k + Block<T>::kSize <= K; k += Block<T>::kSize) {
    Block<T>::load(z + k, a, b);
    Block<T>::store(out + k, (a - vl).exp() * vsc, (b - vl).exp() * vsc);
  }
  for (; k < K; ++k) out[k] = static_cast<T>(std::exp(static_cast<float>(z[k]) - lse) * scale);
}

}  // namespace mentormix::cpu
