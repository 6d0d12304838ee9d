// Per-example random draws shared by the CPU and CUDA kernels (SPEC §1.5-6): u ~ U[0, 1) for the
// partner, Gamma(alpha) pairs for b ~ Beta(alpha, alpha) = G1 / (G1 + G2).
//
// Example i draws from subsequence i of a counter-based Philox4x32-10 stream (ATen's engine,
// usable on host and device). The key comes from the caller's generator once per call: the CPU
// takes a random64() (under the generator's lock), CUDA its Philox (seed, offset) state, which is
// CUDA-graph safe. So draws are reproducible from the seed and independent of the thread layout.
#pragma once

#include <ATen/core/PhiloxRNGEngine.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace mentormix {

struct DrawStream {
  at::Philox4_32 e;
  float spare = 0.f;
  bool has_spare = false;

  C10_HOST_DEVICE DrawStream(uint64_t key, uint64_t index, uint64_t offset) : e(key, index, offset) {}

  // U[0, 1) with 53 random bits (float64, as the reference's partner draw).
  C10_HOST_DEVICE double uniform53() {
    const uint64_t hi = e(), lo = e();
    return static_cast<double>(((hi << 21) ^ lo) & ((uint64_t{1} << 53) - 1)) * 0x1.0p-53;
  }

  // U(0, 1]: safe under log().
  C10_HOST_DEVICE float uniform() { return (static_cast<float>(e() >> 8) + 1.f) * 0x1.0p-24f; }

  // N(0, 1) by Box-Muller, both values of a pair used.
  C10_HOST_DEVICE float normal() {
    if (has_spare) {
      has_spare = false;
      return spare;
    }
    const float r = sqrtf(-2.f * logf(uniform()));
    const float t = 6.2831853071795865f * uniform();
    spare = r * sinf(t);
    has_spare = true;
    return r * cosf(t);
  }

  // Gamma(alpha, 1), alpha > 0 (Marsaglia & Tsang 2000), squeeze test first; alpha < 1 is
  // boosted as Gamma(alpha + 1) * U^(1 / alpha).
  C10_HOST_DEVICE float gamma(float alpha) {
    float boost = 1.f;
    if (alpha < 1.f) {
      boost = powf(uniform(), 1.f / alpha);
      alpha += 1.f;
    }
    const float d = alpha - 1.f / 3.f, c = 1.f / sqrtf(9.f * d);
    for (;;) {
      float x, v;
      do {
        x = normal();
        v = 1.f + c * x;
      } while (v <= 0.f);
      v = v * v * v;
      const float u = uniform();
      const float x2 = x * x;
      if (u < 1.f - 0.0331f * x2 * x2 || logf(u) < 0.5f * x2 + d * (1.f - v + logf(v))) return d * v * boost;
    }
  }

  // b ~ Beta(alpha, alpha); both gammas underflowing (tiny alpha) gives 1 if G1 >= G2, as the
  // reference's fallback.
  C10_HOST_DEVICE float beta(float alpha) {
    const float g1 = gamma(alpha), g2 = gamma(alpha);
    const float total = g1 + g2;
    return total > 0.f ? g1 / total : (g1 >= g2 ? 1.f : 0.f);
  }
};

}  // namespace mentormix
