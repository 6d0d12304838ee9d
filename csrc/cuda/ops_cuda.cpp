// CUDA implementations of the mentormix_cpp ops (the op contract of docs/SPEC.md §5, schemas in
// csrc/cpu/register.cpp): argument checks (metadata only: no device value is read on the host, so
// no synchronisation), allocation, launches on the current stream of the logits' device.
//
// Values a check would need a synchronisation for are handled on the device instead: a label or
// partner out of range gives a NaN loss / NaN mixed row and a zero gradient row, never an
// out-of-bounds access. The states (loss_ma, loss_ma_mixed, rng_state, num_steps) and a device
// step are read and written by the kernels, so a step is CUDA-graph capturable.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "../common/draws.h"
#include "../common/mentornet_layout.h"
#include "../common/schedule.h"
#include "batch.cuh"
#include "rows.cuh"

namespace mentormix::cuda {
namespace {

void check_device(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.device() == like.device(), name, ": expected a tensor on ", like.device(), " (the logits' device), got ",
              t.device());
}

void check_float_dtype(const at::Tensor& t, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kBFloat16 || s == at::kHalf, name,
              ": dtype must be float32, bfloat16 or float16, got ", s);
}

void check_logits(const at::Tensor& z, const char* name) {
  TORCH_CHECK(z.is_cuda(), name, ": expected a CUDA tensor, got one on ", z.device());
  TORCH_CHECK(z.dim() == 2 && z.size(0) > 0 && z.size(1) > 0, name, ": expected a non-empty [B, K] tensor, got ",
              z.sizes());
  check_float_dtype(z, name);
}

void check_vector(const at::Tensor& t, const at::Tensor& like, int64_t n, at::ScalarType dtype, const char* name) {
  check_device(t, like, name);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, name, ": expected shape [", n, "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ", t.scalar_type());
}

void check_scalar(const at::Tensor& t, const at::Tensor& like, at::ScalarType dtype, const char* name) {
  check_device(t, like, name);
  TORCH_CHECK(t.numel() == 1, name, ": expected a tensor of one element, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ", t.scalar_type());
}

at::Tensor unit_stride_rows(const at::Tensor& z) {
  return (z.stride(1) == 1 && z.stride(0) >= 0) ? z : z.contiguous();
}

// The step: a CPU tensor is read on the host (no synchronisation), a device tensor by the kernel.
StepArg step_arg(const at::Tensor& step, const at::Tensor& like) {
  TORCH_CHECK(step.numel() == 1, "step: expected a tensor of one element, got shape ", step.sizes());
  TORCH_CHECK(at::isIntegralType(step.scalar_type(), /*includeBool=*/false), "step: expected an integer dtype, got ",
              step.scalar_type());
  StepArg s;
  if (step.device().is_cpu()) {
    s.value = step.item<int64_t>();
    return s;
  }
  check_device(step, like, "step");
  TORCH_CHECK(step.scalar_type() == at::kLong || step.scalar_type() == at::kInt,
              "step: a step on the GPU must be int64 or int32, got ", step.scalar_type());
  s.ptr = step.const_data_ptr();
  s.is_int32 = step.scalar_type() == at::kInt;
  return s;
}

// Everything of BatchParams but the pool's values; `keep` holds the contiguous copies alive.
BatchParams batch_params(const at::Tensor& mentornet, const at::Tensor& step, const std::optional<at::Tensor>& pool,
                         const at::Tensor& like, int64_t total_steps, double percentile, double decay,
                         int64_t burn_in_epoch, at::Tensor& mn_keep, at::Tensor& pool_keep) {
  BatchParams p;
  if (mentornet.numel() > 0) {
    check_vector(mentornet, like, kMnSize, at::kFloat, "mentornet");
    mn_keep = mentornet.contiguous();
    p.mentornet = mn_keep.const_data_ptr<float>();
  }
  p.step = step_arg(step, like);
  TORCH_CHECK(total_steps >= 1 && total_steps <= kMaxTotalSteps, "total_steps: must be in [1, ", kMaxTotalSteps,
              "], got ", total_steps);
  p.total_steps = total_steps;
  p.burn_in_epoch = burn_in_epoch;
  TORCH_CHECK(percentile >= 0.0 && percentile <= 1.0, "percentile: must be in [0, 1], got ", percentile);
  TORCH_CHECK(std::isfinite(decay), "decay: must be finite, got ", decay);
  p.decay = static_cast<float>(decay);
  p.one_minus_decay = static_cast<float>(1.0 - decay);
  if (pool.has_value()) {
    check_device(*pool, like, "pool");
    TORCH_CHECK(pool->dim() == 1 && pool->size(0) > 0, "pool: expected a non-empty 1-d tensor, got shape ",
                pool->sizes());
    TORCH_CHECK(pool->scalar_type() == at::kFloat, "pool: expected dtype float32, got ", pool->scalar_type());
    pool_keep = pool->contiguous();
    p.pool = pool_keep.const_data_ptr<float>();
    p.n_pool = pool_keep.size(0);
  } else {
    p.n_pool = like.size(0);
  }
  TORCH_CHECK(p.n_pool < (int64_t{1} << 32), "pool: the percentile takes at most 2^32 - 1 values, got ", p.n_pool);
  p.rank = percentile_rank(p.n_pool, percentile);
  return p;
}

at::Tensor ce(const at::Tensor& logits_in, const at::Tensor& target_in, const std::optional<at::Tensor>& partner_in,
              const std::optional<at::Tensor>& lam_in) {
  check_logits(logits_in, "logits");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const int64_t B = logits_in.size(0);
  check_vector(target_in, logits_in, B, at::kLong, "target");
  TORCH_CHECK(partner_in.has_value() == lam_in.has_value(), "partner and lam: give both or neither (got ",
              partner_in.has_value() ? "partner" : "lam", " only)");
  at::Tensor partner, lam;
  if (partner_in.has_value()) {
    check_vector(*partner_in, logits_in, B, at::kLong, "partner");
    check_vector(*lam_in, logits_in, B, at::kFloat, "lam");
    partner = partner_in->contiguous();
    lam = lam_in->contiguous();
  }
  const auto logits = unit_stride_rows(logits_in);
  auto loss = at::empty({B}, logits.options().dtype(at::kFloat));
  at::Tensor no_lse;
  launch_loss_rows(logits, target_in.contiguous(), partner, lam, loss, no_lse, c10::cuda::getCurrentCUDAStream());
  return loss;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> plan(
    const at::Tensor& logits_in, const at::Tensor& target_in, at::Tensor& loss_ma, at::Tensor& rng_state,
    const at::Tensor& mentornet, const at::Tensor& step, const std::optional<at::Tensor>& pool,
    const std::optional<at::Tensor>& uniform_in, const std::optional<at::Tensor>& beta_in, int64_t total_steps,
    double percentile, double decay, int64_t burn_in_epoch, double alpha) {
  // Every check before any launch (a call that raises moves no state).
  check_logits(logits_in, "logits");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const int64_t B = logits_in.size(0);
  check_vector(target_in, logits_in, B, at::kLong, "target");
  check_scalar(loss_ma, logits_in, at::kFloat, "loss_ma");
  check_vector(rng_state, logits_in, 2, at::kLong, "rng_state");
  at::Tensor mn_keep, pool_keep;
  const BatchParams p = batch_params(mentornet, step, pool, logits_in, total_steps, percentile, decay, burn_in_epoch,
                                     mn_keep, pool_keep);
  TORCH_CHECK(uniform_in.has_value() == beta_in.has_value(), "uniform and beta: give both or neither (got ",
              uniform_in.has_value() ? "uniform" : "beta", " only)");
  at::Tensor uniform, beta;
  if (uniform_in.has_value()) {
    check_vector(*uniform_in, logits_in, B, at::kDouble, "uniform");
    check_vector(*beta_in, logits_in, B, at::kFloat, "beta");
    uniform = uniform_in->contiguous();
    beta = beta_in->contiguous();
  }
  TORCH_CHECK(std::isfinite(alpha), "alpha: must be finite, got ", alpha);
  PlanDraws d;
  d.mixing = alpha > 0;
  if (d.mixing) {
    if (uniform.defined()) {
      d.uniform = uniform.const_data_ptr<double>();
      d.beta = beta.const_data_ptr<float>();
    } else {
      TORCH_CHECK(B <= (int64_t{1} << 32), "logits: drawing in the kernel needs a batch of at most 2^32 examples, got ",
                  B);
      d.rng = rng_state.data_ptr<int64_t>();
      d.rng_stride = rng_state.stride(0);
      d.gamma = gamma_params(alpha);
    }
  }

  const auto logits = unit_stride_rows(logits_in);
  const auto f32 = logits.options().dtype(at::kFloat);
  auto loss = at::empty({B}, f32);
  auto v = at::empty({B}, f32);
  auto partner = at::empty({B}, f32.dtype(at::kLong));
  auto lam = at::empty({B}, f32);
  auto cdf = at::empty({d.mixing ? B : 0}, f32);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor none;
  launch_loss_rows(logits, target_in.contiguous(), none, none, loss, none, stream);
  launch_plan_batch(loss.const_data_ptr<float>(), B, loss_ma.data_ptr<float>(), p, d, v.data_ptr<float>(),
                    partner.data_ptr<int64_t>(), lam.data_ptr<float>(), d.mixing ? cdf.data_ptr<float>() : nullptr,
                    stream);
  return {loss, v, partner, lam};
}

at::Tensor mix(const at::Tensor& x_in, const at::Tensor& partner_in, const at::Tensor& lam_in) {
  TORCH_CHECK(x_in.is_cuda(), "x: expected a CUDA tensor, got one on ", x_in.device());
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(0) > 0, "x: expected a non-empty [B, ...] tensor, got ", x_in.sizes());
  check_float_dtype(x_in, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t B = x_in.size(0);
  check_vector(partner_in, x_in, B, at::kLong, "partner");
  check_vector(lam_in, x_in, B, at::kFloat, "lam");
  const auto x = x_in.contiguous();
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  launch_mix(x, partner_in.contiguous(), lam_in.contiguous(), out, c10::cuda::getCurrentCUDAStream());
  return out;
}

struct Rows {
  at::Tensor logits, target, partner, lam;
};

Rows check_rows(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& partner, const at::Tensor& lam) {
  check_logits(logits, "logits");
  const int64_t B = logits.size(0);
  check_vector(target, logits, B, at::kLong, "target");
  check_vector(partner, logits, B, at::kLong, "partner");
  check_vector(lam, logits, B, at::kFloat, "lam");
  return {unit_stride_rows(logits), target.contiguous(), partner.contiguous(), lam.contiguous()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mixed_loss(
    const at::Tensor& logits, const at::Tensor& target, const at::Tensor& partner, const at::Tensor& lam,
    const std::optional<at::Tensor>& given_weights, const std::optional<at::Tensor>& loss_ma_mixed,
    const std::optional<at::Tensor>& num_steps, const at::Tensor& mentornet, const at::Tensor& step,
    const std::optional<at::Tensor>& pool, int64_t total_steps, double percentile, double decay,
    int64_t burn_in_epoch, bool second_reweight) {
  // Every check before any launch (a call that raises moves no state).
  TORCH_CHECK(logits.is_cuda(), "logits: expected a CUDA tensor, got one on ", logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  const Rows c = check_rows(logits, target, partner, lam);
  const int64_t B = c.logits.size(0);
  if (second_reweight) {
    TORCH_CHECK(!given_weights.has_value(), "given_weights: must be None with second_reweight (the weights are then "
                "v2, computed in the op)");
    TORCH_CHECK(loss_ma_mixed.has_value(), "loss_ma_mixed: required with second_reweight (the moving average of the "
                "mixed loss)");
  }
  at::Tensor given;
  if (given_weights.has_value()) {
    check_vector(*given_weights, logits, B, at::kFloat, "given_weights");
    given = given_weights->contiguous();
  }
  if (loss_ma_mixed.has_value()) check_scalar(*loss_ma_mixed, logits, at::kFloat, "loss_ma_mixed");
  if (num_steps.has_value()) check_scalar(*num_steps, logits, at::kLong, "num_steps");
  at::Tensor mn_keep, pool_keep;
  const BatchParams p = batch_params(mentornet, step, pool, logits, total_steps, percentile, decay, burn_in_epoch,
                                     mn_keep, pool_keep);

  const auto f32 = c.logits.options().dtype(at::kFloat);
  auto lse = at::empty({B}, f32);
  auto m = at::empty({B}, f32);
  auto weights = at::empty({second_reweight ? B : 0}, f32);
  auto loss = at::empty({}, f32);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  launch_loss_rows(c.logits, c.target, c.partner, c.lam, m, lse, stream);
  launch_mixed_loss_batch(m.const_data_ptr<float>(), B,
                          second_reweight ? loss_ma_mixed->data_ptr<float>() : nullptr,
                          num_steps.has_value() ? num_steps->data_ptr<int64_t>() : nullptr, p, second_reweight,
                          given.defined() ? given.const_data_ptr<float>() : nullptr,
                          weights.numel() > 0 ? weights.data_ptr<float>() : nullptr, loss.data_ptr<float>(), stream);
  return {loss, lse, weights};
}

at::Tensor mixed_loss_backward(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
                               const at::Tensor& partner, const at::Tensor& lam, const at::Tensor& lse,
                               const std::optional<at::Tensor>& weights_in) {
  TORCH_CHECK(logits.is_cuda(), "logits: expected a CUDA tensor, got one on ", logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  const Rows c = check_rows(logits, target, partner, lam);
  const int64_t B = c.logits.size(0);
  check_scalar(grad_loss, logits, at::kFloat, "grad_loss");
  check_vector(lse, logits, B, at::kFloat, "lse");
  at::Tensor weights;
  if (weights_in.has_value() && weights_in->numel() > 0) {
    check_vector(*weights_in, logits, B, at::kFloat, "weights");
    weights = weights_in->contiguous();
  } else if (weights_in.has_value()) {
    check_device(*weights_in, logits, "weights");
  }
  auto grad = at::empty({B, c.logits.size(1)}, c.logits.options().memory_format(at::MemoryFormat::Contiguous));
  launch_grad_rows(c.logits, c.target, c.partner, c.lam, lse.contiguous(), weights, grad_loss, grad,
                   c10::cuda::getCurrentCUDAStream());
  return grad;
}

}  // namespace
}  // namespace mentormix::cuda

TORCH_LIBRARY_IMPL(mentormix_cpp, CUDA, m) {
  m.impl("ce", &mentormix::cuda::ce);
  m.impl("plan", &mentormix::cuda::plan);
  m.impl("mix", &mentormix::cuda::mix);
  m.impl("mixed_loss", &mentormix::cuda::mixed_loss);
  m.impl("mixed_loss_backward", &mentormix::cuda::mixed_loss_backward);
}
