#include "draws.h"

#include <ATen/Parallel.h>
#include <ATen/core/PhiloxRNGEngine.h>

#include <cmath>

namespace mentormix::cpu {
namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;

// U[0, 1) with 53 random bits.
inline double uniform01(at::Philox4_32& e) {
  const uint64_t hi = e(), lo = e();
  return static_cast<double>(((hi << 21) ^ lo) & ((uint64_t{1} << 53) - 1)) * 0x1.0p-53;
}

// U(0, 1]: safe under log().
inline double uniform_open0(at::Philox4_32& e) { return 1.0 - uniform01(e); }

// N(0, 1) by Box-Muller (one of the pair is used: keeps the stream position simple).
inline double normal(at::Philox4_32& e) {
  const double r = std::sqrt(-2.0 * std::log(uniform_open0(e)));
  return r * std::cos(kTwoPi * uniform01(e));
}

// Gamma(alpha, 1), alpha > 0 (Marsaglia & Tsang 2000).
double gamma(at::Philox4_32& e, double alpha) {
  double boost = 1.0;
  if (alpha < 1.0) {
    boost = std::pow(uniform_open0(e), 1.0 / alpha);
    alpha += 1.0;
  }
  const double d = alpha - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {
    double x, v;
    do {
      x = normal(e);
      v = 1.0 + c * x;
    } while (v <= 0.0);
    v = v * v * v;
    const double u = uniform_open0(e);
    const double x2 = x * x;
    if (u < 1.0 - 0.0331 * x2 * x2 || std::log(u) < 0.5 * x2 + d * (1.0 - v + std::log(v))) return d * v * boost;
  }
}

}  // namespace

void draw_uniform_beta(uint64_t key, double alpha, int64_t B, double* uniform, float* beta) {
  at::parallel_for(0, B, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      at::Philox4_32 e(key, static_cast<uint64_t>(i), 0);
      uniform[i] = uniform01(e);
      const double g1 = gamma(e, alpha), g2 = gamma(e, alpha);
      const double total = g1 + g2;
      beta[i] = total > 0.0 ? static_cast<float>(g1 / total) : (g1 >= g2 ? 1.f : 0.f);
    }
  });
}

}  // namespace mentormix::cpu
