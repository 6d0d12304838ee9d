// mix (SPEC §1.7, §5): x~_i = lam_i x_i + (1 - lam_i) x_{j_i}, one gather-and-lerp pass over
// x [B, D]. As the reference, lam is first rounded to x's dtype and (1 - lam) computed from the
// rounded value; the lerp itself runs in float with one rounding to x's dtype. A partner outside
// [0, B) gives a NaN row.
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <limits>

#include "checks.h"
#include "ops.h"
#include "vec_row.h"

namespace mentormix::cpu {
namespace {

template <typename T>
void mix_rows(const T* x, const int64_t* partner, const float* lam, int64_t B, int64_t D, T* out) {
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(D, 1));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float a = static_cast<float>(static_cast<T>(lam[i]));
      const float b = static_cast<float>(static_cast<T>(1.f - a));
      const T* xi = x + i * D;
      T* oi = out + i * D;
      const int64_t j = partner[i];
      if (j < 0 || j >= B) {
        std::fill(oi, oi + D, static_cast<T>(std::numeric_limits<float>::quiet_NaN()));
        continue;
      }
      const T* xj = x + j * D;
      const fVec va(a), vb(b);
      fVec x0, x1, p0, p1;
      int64_t k = 0;
      for (; k + Block<T>::kSize <= D; k += Block<T>::kSize) {
        Block<T>::load(xi + k, x0, x1);
        Block<T>::load(xj + k, p0, p1);
        Block<T>::store(oi + k, va * x0 + vb * p0, va * x1 + vb * p1);
      }
      for (; k < D; ++k) oi[k] = static_cast<T>(a * static_cast<float>(xi[k]) + b * static_cast<float>(xj[k]));
    }
  });
}

}  // namespace

at::Tensor mix(const at::Tensor& x_in, const at::Tensor& partner_in, const at::Tensor& lam_in) {
  check_cpu(x_in, "x");
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(0) > 0, "x: expected a non-empty [B, ...] tensor, got ", x_in.sizes());
  check_float_dtype(x_in, "x");
  const auto t = x_in.scalar_type();
  const int64_t B = x_in.size(0);
  check_vector(partner_in, B, at::kLong, "partner");
  check_vector(lam_in, B, at::kFloat, "lam");
  const auto x = x_in.contiguous();
  const auto partner = partner_in.contiguous();
  const auto lam = lam_in.contiguous();
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t D = x.numel() / B;
  MENTORMIX_DISPATCH_LOGITS(t, "mentormix_mix", [&] {
    mix_rows(x.const_data_ptr<scalar_t>(), partner.const_data_ptr<int64_t>(), lam.const_data_ptr<float>(), B, D,
             out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace mentormix::cpu
