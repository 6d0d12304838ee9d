#include "draws.h"

#include <ATen/Parallel.h>

#include "../common/draws.h"

namespace mentormix::cpu {

void draw_uniform_beta(uint64_t key, uint64_t counter, double alpha, int64_t B, double* uniform, float* beta) {
  const GammaParams g = gamma_params(alpha);
  at::parallel_for(0, B, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      DrawStream s(key, counter, static_cast<uint64_t>(i));
      uniform[i] = s.uniform53();
      beta[i] = s.beta(g);
    }
  });
}

}  // namespace mentormix::cpu
