// ce (SPEC §5): the per-row loss [B] fp32, l (SPEC §1.2) without a partner, else the mixed CE m
// (SPEC §1.8). No state, no autograd (e.g. the losses to all-gather for the percentile pool).
#include <ATen/ops/empty.h>

#include "checks.h"
#include "ops.h"
#include "rows.h"

namespace mentormix::cpu {

at::Tensor ce(const at::Tensor& logits_in, const at::Tensor& target_in, const std::optional<at::Tensor>& partner_in,
              const std::optional<at::Tensor>& lam_in) {
  check_logits(logits_in, "logits");
  const int64_t B = logits_in.size(0), K = logits_in.size(1);
  check_vector(target_in, B, at::kLong, "target");
  TORCH_CHECK(partner_in.has_value() == lam_in.has_value(), "partner and lam: give both or neither (got ",
              partner_in.has_value() ? "partner" : "lam", " only)");
  if (partner_in.has_value()) {
    check_vector(*partner_in, B, at::kLong, "partner");
    check_vector(*lam_in, B, at::kFloat, "lam");
  }
  const auto logits = unit_stride_rows(logits_in);
  const auto target = target_in.contiguous();
  auto loss = at::empty({B}, logits.options().dtype(at::kFloat));
  MENTORMIX_DISPATCH_LOGITS(logits.scalar_type(), "mentormix_ce", [&] {
    const scalar_t* z = logits.const_data_ptr<scalar_t>();
    if (!partner_in.has_value()) {
      ce_rows(z, logits.stride(0), B, K, target.const_data_ptr<int64_t>(), loss.data_ptr<float>());
    } else {
      const auto partner = partner_in->contiguous();
      const auto lam = lam_in->contiguous();
      mixed_rows(z, logits.stride(0), B, K, target.const_data_ptr<int64_t>(), partner.const_data_ptr<int64_t>(),
                 lam.const_data_ptr<float>(), nullptr, loss.data_ptr<float>());
    }
  });
  return loss;
}

}  // namespace mentormix::cpu
