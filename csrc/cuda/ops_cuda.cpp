// CUDA implementations of the mentormix_cpp ops (schemas in csrc/cpu/register.cpp): argument checks
// (metadata only: no value is read on the host, so no synchronisation), allocation, launches on the
// current stream. Random draws use the generator's Philox state (CUDA-graph safe).
//
// Values a check would need a sync for are handled on the device instead: a label or partner out
// of range gives a NaN loss / NaN mixed row and a zero gradient row, never an out-of-bounds access.
#include <c10/cuda/CUDAStream.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <mutex>
#include <optional>
#include <tuple>

#include "../common/mentornet_layout.h"
#include "batch.cuh"
#include "rows.cuh"

namespace mentormix::cuda {
namespace {

// Philox counter blocks reserved per example and call (each draw uses a few; rejection loops
// beyond this reuse counters of the next call, a negligible correlation).
constexpr uint64_t kPhiloxIncrement = 64;

void check_device(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.device() == like.device(), name, ": on ", t.device(), ", but the logits are on ", like.device());
}

void check_logits(const at::Tensor& z, const char* name) {
  TORCH_CHECK(z.is_cuda(), name, ": expected a CUDA tensor, got ", z.device());
  TORCH_CHECK(z.dim() == 2 && z.size(0) > 0 && z.size(1) > 0, name, ": expected a non-empty [B, K] tensor, got ",
              z.sizes());
  const auto t = z.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf, name,
              ": dtype must be float32, bfloat16 or float16, got ", t);
}

void check_vector(const at::Tensor& t, const at::Tensor& like, int64_t n, at::ScalarType dtype, const char* name) {
  check_device(t, like, name);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, name, ": expected shape [", n, "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ", t.scalar_type());
}

void check_scalar_on(const at::Tensor& t, const at::Tensor& like, at::ScalarType dtype, const char* name) {
  check_device(t, like, name);
  TORCH_CHECK(t.numel() == 1 && t.scalar_type() == dtype, name, ": expected one ", dtype, " element, got ",
              t.scalar_type(), " ", t.sizes());
}

at::Tensor unit_stride_rows(const at::Tensor& z) { return z.stride(1) == 1 ? z : z.contiguous(); }

// The epoch lives on the device (a step counter buffer) or on the host (a Python int).
BatchParams batch_params(const at::Tensor& mentornet, const at::Tensor& epoch, const at::Tensor& like, int64_t rank,
                         double decay, int64_t burn_in_epoch) {
  TORCH_CHECK(epoch.numel() == 1 && epoch.scalar_type() == at::kLong, "epoch: expected one int64 element");
  const bool use_mn = mentornet.numel() > 0;
  if (use_mn) check_vector(mentornet, like, kMnSize, at::kFloat, "mentornet");
  BatchParams p{};
  p.mentornet = use_mn ? mentornet.data_ptr<float>() : nullptr;
  if (epoch.is_cuda()) {
    check_device(epoch, like, "epoch");
    p.epoch_ptr = epoch.data_ptr<int64_t>();
  } else {
    p.epoch_value = epoch.item<int64_t>();  // a host tensor: no device synchronisation
  }
  TORCH_CHECK(rank >= 0 && rank < like.size(0), "rank: must be in [0, ", like.size(0), "), got ", rank);
  p.rank = rank;
  p.decay = static_cast<float>(decay);
  p.one_minus_decay = static_cast<float>(1.0 - decay);
  p.burn_in_epoch = burn_in_epoch;
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> weights_and_sample(
    const at::Tensor& logits_in, const at::Tensor& target_in, const at::Tensor& loss_ma, const at::Tensor& epoch,
    const at::Tensor& mentornet, const std::optional<at::Tensor>& uniform_in, const std::optional<at::Tensor>& beta_in,
    std::optional<at::Generator> generator, double alpha, int64_t rank, double decay, int64_t burn_in_epoch) {
  check_logits(logits_in, "logits");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const int64_t B = logits_in.size(0);
  check_vector(target_in, logits_in, B, at::kLong, "target");
  check_scalar_on(loss_ma, logits_in, at::kFloat, "loss_ma");
  const auto logits = unit_stride_rows(logits_in);
  const auto target = target_in.contiguous();
  const auto mn = mentornet.contiguous();
  const BatchParams p = batch_params(mn, epoch, logits, rank, decay, burn_in_epoch);

  at::Tensor uniform, beta;
  at::PhiloxCudaState philox;
  if (alpha > 0) {
    if (uniform_in.has_value() && beta_in.has_value()) {
      check_vector(*uniform_in, logits, B, at::kDouble, "uniform");
      check_vector(*beta_in, logits, B, at::kFloat, "beta");
      uniform = uniform_in->contiguous();
      beta = beta_in->contiguous();
    } else {
      TORCH_CHECK(!uniform_in.has_value() && !beta_in.has_value(), "uniform and beta: give both or neither");
      auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(generator,
                                                                       at::cuda::detail::getDefaultCUDAGenerator());
      std::lock_guard<std::mutex> lock(gen->mutex_);
      philox = gen->philox_cuda_state(kPhiloxIncrement);
    }
  }
  const auto f32 = logits.options().dtype(at::kFloat);
  auto loss = at::empty({B}, f32);
  auto v = at::empty({B}, f32);
  auto partner = at::empty({B}, f32.dtype(at::kLong));
  auto lam = at::empty({B}, f32);
  auto new_ma = at::empty({}, f32);
  auto cdf = at::empty({B}, f32);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  launch_ce_rows(logits, target, loss, stream);
  launch_weights_and_sample_batch(loss, loss_ma, p, static_cast<float>(alpha), uniform, beta, philox, v, partner, lam,
                                  new_ma, cdf, stream);
  return {loss, v, partner, lam, new_ma};
}

at::Tensor mix(const at::Tensor& x_in, const at::Tensor& partner_in, const at::Tensor& lam_in) {
  TORCH_CHECK(x_in.is_cuda(), "x: expected a CUDA tensor, got ", x_in.device());
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(0) > 0, "x: expected a non-empty [B, ...] tensor, got ", x_in.sizes());
  const auto t = x_in.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf,
              "x: dtype must be float32, bfloat16 or float16, got ", t);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t B = x_in.size(0);
  check_vector(partner_in, x_in, B, at::kLong, "partner");
  check_vector(lam_in, x_in, B, at::kFloat, "lam");
  const auto x = x_in.contiguous();
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  launch_mix(x, partner_in.contiguous(), lam_in.contiguous(), out, c10::cuda::getCurrentCUDAStream());
  return out;
}

struct Common {
  at::Tensor logits, target, partner, lam;
};

Common check_common(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& partner,
                    const at::Tensor& lam) {
  check_logits(logits, "logits");
  const int64_t B = logits.size(0);
  check_vector(target, logits, B, at::kLong, "target");
  check_vector(partner, logits, B, at::kLong, "partner");
  check_vector(lam, logits, B, at::kFloat, "lam");
  return {unit_stride_rows(logits), target.contiguous(), partner.contiguous(), lam.contiguous()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mixed_loss_forward(
    const at::Tensor& logits, const at::Tensor& target, const at::Tensor& partner, const at::Tensor& lam,
    const at::Tensor& loss_ma_mixed, const at::Tensor& epoch, const at::Tensor& mentornet, int64_t rank,
    double decay, int64_t burn_in_epoch, bool second_reweight, bool grad_in_forward) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const Common c = check_common(logits, target, partner, lam);
  check_scalar_on(loss_ma_mixed, logits, at::kFloat, "loss_ma_mixed");
  TORCH_CHECK(!(second_reweight && grad_in_forward), "grad_in_forward needs second_reweight = False");
  const int64_t B = c.logits.size(0), K = c.logits.size(1);
  const auto mn = mentornet.contiguous();
  const BatchParams p = second_reweight ? batch_params(mn, epoch, c.logits, rank, decay, burn_in_epoch)
                                        : BatchParams{};
  const auto f32 = c.logits.options().dtype(at::kFloat);
  auto lse = at::empty({B}, f32);
  auto m = at::empty({B}, f32);
  auto grad = at::empty({grad_in_forward ? B : 0, grad_in_forward ? K : 0}, c.logits.options());
  if (!grad_in_forward) grad = grad.reshape({0});
  auto w = at::empty({second_reweight ? B : 0}, f32);
  auto loss = at::empty({}, f32);
  auto new_ma = at::empty({}, f32);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  launch_mixed_rows(c.logits, c.target, c.partner, c.lam, lse, m, grad, stream);
  launch_mixed_loss_batch(m, loss_ma_mixed, p, second_reweight, w, loss, new_ma, stream);
  return {loss, new_ma, lse, w, grad};
}

at::Tensor mixed_loss_backward(const at::Tensor& grad_output, const at::Tensor& logits, const at::Tensor& target,
                               const at::Tensor& partner, const at::Tensor& lam, const at::Tensor& lse,
                               const at::Tensor& weights) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const Common c = check_common(logits, target, partner, lam);
  const int64_t B = c.logits.size(0);
  check_scalar_on(grad_output, logits, at::kFloat, "grad_output");
  check_vector(lse, logits, B, at::kFloat, "lse");
  if (weights.numel() > 0) check_vector(weights, logits, B, at::kFloat, "weights");
  auto grad = at::empty({B, c.logits.size(1)}, c.logits.options());
  launch_grad_rows(c.logits, c.target, c.partner, c.lam, lse.contiguous(), weights.contiguous(),
                   grad_output.contiguous(), grad, c10::cuda::getCurrentCUDAStream());
  return grad;
}

void scale_grad_(at::Tensor& grad, const at::Tensor& grad_output) {
  TORCH_CHECK(grad.is_cuda() && grad.is_contiguous(), "grad: expected a contiguous CUDA tensor");
  const c10::cuda::CUDAGuard guard(grad.device());
  check_scalar_on(grad_output, grad, at::kFloat, "grad_output");
  launch_scale(grad, grad_output.contiguous(), c10::cuda::getCurrentCUDAStream());
}

}  // namespace
}  // namespace mentormix::cuda

TORCH_LIBRARY_IMPL(mentormix_cpp, CUDA, m) {
  m.impl("weights_and_sample", &mentormix::cuda::weights_and_sample);
  m.impl("mix", &mentormix::cuda::mix);
  m.impl("mixed_loss_forward", &mentormix::cuda::mixed_loss_forward);
  m.impl("mixed_loss_backward", &mentormix::cuda::mixed_loss_backward);
  m.impl("scale_grad_", &mentormix::cuda::scale_grad_);
}
