// Per-example random draws shared by the CPU and CUDA kernels (SPEC §1.5-1.6, §4.2): u ~ U[0, 1)
// (53 bits) for the partner, b ~ Beta(alpha, alpha) = sigmoid(log G1 - log G2) for the mixing
// factor, G ~ Gamma(alpha) in log space for alpha < 1, so that any alpha in [1e-8, 100+] gives
// sensible draws.
//
// Philox counters: the op's rng_state is (key, step counter c). Example i of the step draws from
// ATen's Philox4x32-10 (the stream of at::Philox4_32) with key rng_state[0], subsequence
// (c << 32) | i (the high 64 bits of the 128-bit counter) and offset 0 (its low 64 bits, advanced
// by the draws of that example). So a draw is a fixed function of (key, c, i, draw number):
// independent of the thread layout, and no two (step, example) pairs share a counter while
// c < 2^32 (the counter's low 32 bits are used) and batches have at most 2^32 examples.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace mentormix {

// Constants of the Marsaglia-Tsang sampler of Gamma(alpha), alpha > 0, computed once per call on
// the host: shape s = alpha (alpha >= 1) or alpha + 1 (alpha < 1, boosted), d = s - 1/3,
// c = 1 / sqrt(9 d).
struct GammaParams {
  float d = 1.f, c = 1.f, inv_alpha = 1.f;
  bool boost = false;
};

inline GammaParams gamma_params(double alpha) {
  GammaParams g;
  g.boost = alpha < 1.0;
  const double shape = g.boost ? alpha + 1.0 : alpha;
  const double d = shape - 1.0 / 3.0;
  g.d = static_cast<float>(d);
  g.c = static_cast<float>(1.0 / std::sqrt(9.0 * d));
  g.inv_alpha = static_cast<float>(1.0 / alpha);
  return g;
}

C10_HOST_DEVICE inline uint64_t philox_subsequence(uint64_t counter, uint64_t index) {
  return (counter << 32) | (index & 0xffffffffull);
}

// The stream of at::Philox4_32(key, subsequence, 0)'s operator(), value for value (Philox4x32-10,
// the same constants and counter layout), with the four outputs of a counter block kept in named
// registers instead of the engine's indexed array, which the GPU would keep in local memory.
class PhiloxStream {
 public:
  C10_HOST_DEVICE PhiloxStream(uint64_t key, uint64_t subsequence)
      : k0_(static_cast<uint32_t>(key)), k1_(static_cast<uint32_t>(key >> 32)), c0_(0), c1_(0),
        c2_(static_cast<uint32_t>(subsequence)), c3_(static_cast<uint32_t>(subsequence >> 32)) {}

  C10_HOST_DEVICE uint32_t operator()() {
    if (left_ == 0) {
      block();
      left_ = 4;
      if (++c0_ == 0 && ++c1_ == 0 && ++c2_ == 0) ++c3_;  // the engine's incr()
    }
    const uint32_t r = b0_;
    b0_ = b1_;
    b1_ = b2_;
    b2_ = b3_;
    --left_;
    return r;
  }

 private:
  static constexpr uint32_t kW0 = 0x9E3779B9, kW1 = 0xBB67AE85, kM0 = 0xD2511F53, kM1 = 0xCD9E8D57;

  C10_HOST_DEVICE static uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
#ifdef __CUDA_ARCH__
    *hi = __umulhi(a, b);
    return a * b;
#else
    const uint64_t p = static_cast<uint64_t>(a) * b;
    *hi = static_cast<uint32_t>(p >> 32);
    return static_cast<uint32_t>(p);
#endif
  }

  // Philox4x32 with 10 rounds of the counter (c0..c3) under the key (k0, k1) into b0..b3.
  C10_HOST_DEVICE void block() {
    uint32_t x0 = c0_, x1 = c1_, x2 = c2_, x3 = c3_, k0 = k0_, k1 = k1_;
#ifdef __CUDACC__
#pragma unroll
#endif
    for (int round = 0; round < 10; ++round) {
      if (round > 0) {
        k0 += kW0;
        k1 += kW1;
      }
      uint32_t hi0, hi1;
      const uint32_t lo0 = mulhilo(kM0, x0, &hi0);
      const uint32_t lo1 = mulhilo(kM1, x2, &hi1);
      const uint32_t y0 = hi1 ^ x1 ^ k0, y2 = hi0 ^ x3 ^ k1;
      x0 = y0;
      x1 = lo1;
      x2 = y2;
      x3 = lo0;
    }
    b0_ = x0;
    b1_ = x1;
    b2_ = x2;
    b3_ = x3;
  }

  uint32_t k0_, k1_, c0_, c1_, c2_, c3_;
  uint32_t b0_ = 0, b1_ = 0, b2_ = 0, b3_ = 0;
  int left_ = 0;
};

struct DrawStream {
  PhiloxStream e;
  float spare = 0.f;
  bool has_spare = false;

  C10_HOST_DEVICE DrawStream(uint64_t key, uint64_t counter, uint64_t index)
      : e(key, philox_subsequence(counter, index)) {}

  // U[0, 1) with 53 random bits (float64, as the reference's partner draw).
  C10_HOST_DEVICE double uniform53() {
    const uint64_t hi = e(), lo = e();
    return static_cast<double>((hi << 21) | (lo >> 11)) * 0x1.0p-53;
  }

  // U(0, 1] with 24 random bits: safe under log().
  C10_HOST_DEVICE float uniform() { return static_cast<float>((e() >> 8) + 1u) * 0x1.0p-24f; }

  // N(0, 1) by Box-Muller, both values of a pair used.
  C10_HOST_DEVICE float normal() {
    if (has_spare) {
      has_spare = false;
      return spare;
    }
    const float r = sqrtf(-2.f * logf(uniform()));
    const float t = 2.f * uniform();  // the angle is pi * t
    float s, c;
#ifdef __CUDA_ARCH__
    sincospif(t, &s, &c);  // no large-argument reduction (no local memory)
#else
    s = std::sin(3.14159265358979323846f * t);
    c = std::cos(3.14159265358979323846f * t);
#endif
    spare = r * s;
    has_spare = true;
    return r * c;
  }

  // Marsaglia-Tsang for the shape s >= 1 part (squeeze test first): returns w with G(s) = d w.
  C10_HOST_DEVICE float gamma_unit(const GammaParams& g) {
    for (;;) {
      float x, w;
      do {
        x = normal();
        w = 1.f + g.c * x;
      } while (w <= 0.f);
      w = w * w * w;
      const float u = uniform();
      const float x2 = x * x;
      if (u < 1.f - 0.0331f * x2 * x2 || logf(u) < 0.5f * x2 + g.d * (1.f - w + logf(w))) return w;
    }
  }

  // b ~ Beta(alpha, alpha) = G1 / (G1 + G2) = sigmoid(log G1 - log G2), never NaN. For alpha < 1,
  // log G(alpha) = log G(alpha + 1) + log(U) / alpha, in log space: G itself underflows for tiny
  // alpha, the difference of the logs does not (b is then exactly 0 or 1, each with probability
  // 1/2). For alpha >= 1, G = d w never underflows and the common factor d cancels, so the ratio
  // w1 / (w1 + w2) is the same draw without the logarithms.
  C10_HOST_DEVICE float beta(const GammaParams& g) {
    if (!g.boost) {
      const float w1 = gamma_unit(g);
      const float w2 = gamma_unit(g);
      return w1 / (w1 + w2);
    }
    const float lg1 = logf(gamma_unit(g)) + logf(uniform()) * g.inv_alpha;
    const float lg2 = logf(gamma_unit(g)) + logf(uniform()) * g.inv_alpha;
    return 1.f / (1.f + expf(lg2 - lg1));
  }
};

}  // namespace mentormix
