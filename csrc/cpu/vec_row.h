// Vectorised row primitives over one row of logits z[0..K) of dtype T (float, BFloat16, Half),
// computed in float. A row is read in blocks of 2 float vectors (one T vector for the 16-bit
// types); the tail is one masked block, so small K (10, 17, ...) is vectorised too.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
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
  static inline void load_partial(const T* p, int64_t count, fVec& a, fVec& b) {
    auto both = at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p, count));
    a = std::get<0>(both);
    b = std::get<1>(both);
  }
  static inline void store_partial(T* p, int64_t count, const fVec& a, const fVec& b) {
    at::vec::convert_from_float<T>(a, b).store(p, count);
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
  static inline void load_partial(const float* p, int64_t count, fVec& a, fVec& b) {
    constexpr int64_t n = fVec::size();
    a = fVec::loadu(p, std::min(count, n));
    b = count > n ? fVec::loadu(p + n, count - n) : fVec(0.f);
  }
  static inline void store_partial(float* p, int64_t count, const fVec& a, const fVec& b) {
    constexpr int64_t n = fVec::size();
    a.store(p, std::min(count, n));
    if (count > n) b.store(p + n, count - n);
  }
};

// Lanes [0, count) of a block of two float vectors: masks (all-ones where valid) for a and b.
inline void tail_masks(int64_t count, fVec& ma, fVec& mb) {
  const fVec iota = fVec::arange(0.f, 1.f), c(static_cast<float>(count));
  ma = iota < c;
  mb = (iota + fVec(static_cast<float>(fVec::size()))) < c;
}

// NaN-propagating (as torch.max): the row max is NaN if any element is.
template <typename T>
inline float row_max(const T* z, int64_t K) {
  int64_t k = 0;
  const fVec ninf(-std::numeric_limits<float>::infinity());
  fVec ma = ninf, mb = ninf, a, b;
  for (; k + Block<T>::kSize <= K; k += Block<T>::kSize) {
    Block<T>::load(z + k, a, b);
    ma = at::vec::maximum(ma, a);
    mb = at::vec::maximum(mb, b);
  }
  if (k < K) {
    fVec va, vb;
    Block<T>::load_partial(z + k, K - k, a, b);
    tail_masks(K - k, va, vb);
    ma = at::vec::maximum(ma, fVec::blendv(ninf, a, va));
    mb = at::vec::maximum(mb, fVec::blendv(ninf, b, vb));
  }
  return at::vec::vec_reduce_all<float>([](fVec& x, fVec& y) { return at::vec::maximum(x, y); },
                                        at::vec::maximum(ma, mb));
}

// sum_k exp(z_k - shift) for a finite shift.
template <typename T>
inline float row_sum_exp(const T* z, int64_t K, float shift) {
  int64_t k = 0;
  const fVec vs(shift), zero(0.f);
  fVec sa(0.f), sb(0.f), a, b;
  for (; k + Block<T>::kSize <= K; k += Block<T>::kSize) {
    Block<T>::load(z + k, a, b);
    sa += (a - vs).exp();
    sb += (b - vs).exp();
  }
  if (k < K) {
    fVec va, vb;
    Block<T>::load_partial(z + k, K - k, a, b);
    tail_masks(K - k, va, vb);
    sa += fVec::blendv(zero, (a - vs).exp(), va);
    if (K - k > fVec::size()) sb += fVec::blendv(zero, (b - vs).exp(), vb);
  }
  return at::vec::vec_reduce_all<float>([](fVec& x, fVec& y) { return x + y; }, sa + sb);
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
  if (k < K) {
    Block<T>::load_partial(z + k, K - k, a, b);
    Block<T>::store_partial(out + k, K - k, (a - vl).exp() * vsc,
                            K - k > fVec::size() ? (b - vl).exp() * vsc : fVec(0.f));
  }
}

}  // namespace mentormix::cpu
