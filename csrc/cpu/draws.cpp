#include "draws.h"

#include <ATen/Parallel.h>
#include <ATen/core/PhiloxRNGEngine.h>

#include <cmath>

namespace mentormix::cpu {
namespace {

constexpr float kTwoPi = 6.2831853071795865f;

// U[0, 1) with 53 random bits (the partner draw resolves small probabilities, as the reference's
// float64 uniform).
inline double uniform53(at::Philox4_32& e) {
  const uint64_t hi = e(), lo = e();
  return static_cast<double>(((hi << 21) ^ lo) & ((uint64_t{1} << 53) - 1)) * 0x1.0p-53;
}

// The stream of one example for the gamma draws, in float (as the reference's float32 gammas).
struct Stream {
  at::Philox4_32 e;
  float spare = 0.f;
  bool has_spare = false;

  Stream(uint64_t key, uint64_t index) : e(key, index, 0) {}

  // U(0, 1]: safe under log().
  float uniform() { return (static_cast<float>(e() >> 8) + 1.f) * 0x1.0p-24f; }

  // N(0, 1) by Box-Muller, both values of a pair used.
  float normal() {
    if (has_spare) {
      has_spare = false;
      return spare;
    }
    const float r = std::sqrt(-2.f * std::log(uniform()));
    const float t = kTwoPi * uniform();
    spare = r * std::sin(t);
    has_spare = true;
    return r * std::cos(t);
  }

  // Gamma(alpha, 1), alpha > 0 (Marsaglia & Tsang 2000), with the squeeze test first.
  float gamma(float alpha) {
    float boost = 1.f;
    if (alpha < 1.f) {
      boost = std::pow(uniform(), 1.f / alpha);
      alpha += 1.f;
    }
    const float d = alpha - 1.f / 3.f, c = 1.f / std::sqrt(9.f * d);
    for (;;) {
      float x, v;
      do {
        x = normal();
        v = 1.f + c * x;
      } while (v <= 0.f);
      v = v * v * v;
      const float u = uniform();
      const float x2 = x * x;
      if (u < 1.f - 0.0331f * x2 * x2 || std::log(u) < 0.5f * x2 + d * (1.f - v + std::log(v))) return d * v * boost;
    }
  }
};

}  // namespace

void draw_uniform_beta(uint64_t key, double alpha, int64_t B, double* uniform, float* beta) {
  at::parallel_for(0, B, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Stream s(key, static_cast<uint64_t>(i));
      uniform[i] = uniform53(s.e);
      const float g1 = s.gamma(static_cast<float>(alpha)), g2 = s.gamma(static_cast<float>(alpha));
      const float total = g1 + g2;
      beta[i] = total > 0.f ? g1 / total : (g1 >= g2 ? 1.f : 0.f);
    }
  });
}

}  // namespace mentormix::cpu
