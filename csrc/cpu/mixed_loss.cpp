// mixed_loss and mixed_loss_backward (SPEC §1.8-1.9, §5): the mixed soft-label CE, its optional
// second reweighting, and the gradient.
//
//   m_i = lse_i - lam_i z_i[y_i] - (1 - lam_i) z_i[y_{j_i}]   (NaN for a label/partner out of range)
//   L   = sum_i w_i m_i / B,  w = v2 (second_reweight), given_weights, or 1
//   dL/dz_i = g w_i / B (softmax(z_i) - y~_i)                   (zero row for a label/partner out of range)
//
// Passes over z [B, K]: the forward reads z once and keeps lse [B]; the backward reads z once
// more and writes the gradient (the weights v2 need the whole batch's percentile first).
#include <ATen/ops/empty.h>

#include <cmath>

#include "checks.h"
#include "ops.h"
#include "rows.h"
#include "weights.h"

namespace mentormix::cpu {
namespace {

// sum_i w_i m_i / B with a double accumulator (w = 1 when null).
float weighted_mean(const float* m, const float* w, int64_t B) {
  double acc = 0.0;
  for (int64_t i = 0; i < B; ++i) acc += static_cast<double>(w == nullptr ? m[i] : w[i] * m[i]);
  return static_cast<float>(acc / static_cast<double>(B));
}

struct Rows {
  at::Tensor logits, target, partner, lam;
  int64_t B, K;
};

Rows check_rows(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& partner,
                const at::Tensor& lam) {
  check_logits(logits, "logits");
  const int64_t B = logits.size(0), K = logits.size(1);
  check_vector(target, B, at::kLong, "target");
  check_vector(partner, B, at::kLong, "partner");
  check_vector(lam, B, at::kFloat, "lam");
  return {unit_stride_rows(logits), target.contiguous(), partner.contiguous(), lam.contiguous(), B, K};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> mixed_loss(
    const at::Tensor& logits, const at::Tensor& target, const at::Tensor& partner, const at::Tensor& lam,
    const std::optional<at::Tensor>& given_weights, const std::optional<at::Tensor>& loss_ma_mixed,
    const std::optional<at::Tensor>& num_steps, const at::Tensor& mentornet, const at::Tensor& step,
    const std::optional<at::Tensor>& pool_in, int64_t total_steps, double percentile, double decay,
    int64_t burn_in_epoch, bool second_reweight) {
  // Every check before any state moves.
  const Rows c = check_rows(logits, target, partner, lam);
  const int64_t B = c.B;
  if (second_reweight) {
    TORCH_CHECK(!given_weights.has_value(), "given_weights: must be None with second_reweight (the weights are then "
                "v2, computed in the op)");
    TORCH_CHECK(loss_ma_mixed.has_value(), "loss_ma_mixed: required with second_reweight (the moving average of the "
                "mixed loss)");
  }
  if (given_weights.has_value()) check_vector(*given_weights, B, at::kFloat, "given_weights");
  if (loss_ma_mixed.has_value()) check_scalar(*loss_ma_mixed, at::kFloat, "loss_ma_mixed");
  if (num_steps.has_value()) check_scalar(*num_steps, at::kLong, "num_steps");
  at::Tensor mn_keep;
  const float* mn = mentornet_data(mentornet, mn_keep);
  const int64_t t = read_step(step);
  check_pool(pool_in);
  check_total_steps(total_steps);
  check_percentile(percentile, decay);

  const auto f32 = c.logits.options().dtype(at::kFloat);
  auto lse = at::empty({B}, f32);
  auto m = at::empty({B}, f32);
  const float* m_ptr = m.const_data_ptr<float>();
  MENTORMIX_DISPATCH_LOGITS(c.logits.scalar_type(), "mentormix_mixed_loss", [&] {
    mixed_rows(c.logits.const_data_ptr<scalar_t>(), c.logits.stride(0), B, c.K, c.target.const_data_ptr<int64_t>(),
               c.partner.const_data_ptr<int64_t>(), c.lam.const_data_ptr<float>(), lse.data_ptr<float>(),
               m.data_ptr<float>());
  });

  auto loss = at::empty({}, f32);
  at::Tensor weights;
  if (second_reweight) {
    at::Tensor pool = pool_in.has_value() ? pool_in->contiguous() : m;
    const int64_t n = pool.size(0);
    const float q = select_rank(pool.const_data_ptr<float>(), n, percentile_rank(n, percentile));
    float* ma_ptr = loss_ma_mixed->data_ptr<float>();
    const float ma = moving_average(*ma_ptr, q, decay);
    *ma_ptr = ma;
    weights = at::empty({B}, f32);
    const WeightParams p{mn, epoch_of_step(t, total_steps), burn_in_epoch};
    compute_weights(m_ptr, B, ma, p, weights.data_ptr<float>());
    *loss.data_ptr<float>() = weighted_mean(m_ptr, weights.const_data_ptr<float>(), B);
  } else if (given_weights.has_value()) {
    weights = at::empty({0}, f32);
    const auto given = given_weights->contiguous();
    *loss.data_ptr<float>() = weighted_mean(m_ptr, given.const_data_ptr<float>(), B);
  } else {
    weights = at::empty({0}, f32);
    *loss.data_ptr<float>() = weighted_mean(m_ptr, nullptr, B);
  }
  if (num_steps.has_value()) *num_steps->data_ptr<int64_t>() = steps_done(t, total_steps);
  return {loss, lse, weights};
}

at::Tensor mixed_loss_backward(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
                               const at::Tensor& partner, const at::Tensor& lam, const at::Tensor& lse_in,
                               const std::optional<at::Tensor>& weights_in) {
  const Rows c = check_rows(logits, target, partner, lam);
  check_scalar(grad_loss, at::kFloat, "grad_loss");
  check_vector(lse_in, c.B, at::kFloat, "lse");
  const bool weighted = weights_in.has_value() && weights_in->numel() > 0;
  if (weighted) {
    check_vector(*weights_in, c.B, at::kFloat, "weights");
  } else if (weights_in.has_value()) {
    check_cpu(*weights_in, "weights");
  }
  const auto lse = lse_in.contiguous();
  const auto w = weighted ? weights_in->contiguous() : at::Tensor();
  const float g = grad_loss.item<float>();
  auto grad = at::empty({c.B, c.K}, c.logits.options().memory_format(at::MemoryFormat::Contiguous));
  MENTORMIX_DISPATCH_LOGITS(c.logits.scalar_type(), "mentormix_mixed_loss_backward", [&] {
    grad_rows(c.logits.const_data_ptr<scalar_t>(), c.logits.stride(0), c.B, c.K, c.target.const_data_ptr<int64_t>(),
              c.partner.const_data_ptr<int64_t>(), c.lam.const_data_ptr<float>(), lse.const_data_ptr<float>(),
              weighted ? w.const_data_ptr<float>() : nullptr, g, grad.data_ptr<scalar_t>());
  });
  return grad;
}

}  // namespace mentormix::cpu
