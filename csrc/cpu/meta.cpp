// Meta kernels of the mentormix_cpp ops: output shapes and dtypes only (symbolic sizes allowed),
// so that FakeTensor / torch.compile(fullgraph=True) can trace the ops without Python fake
// functions. The metadata checks that decide an output's shape are repeated here; everything else
// is checked by the CPU/CUDA kernels.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace mentormix::meta {
namespace {

void check_logits(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2, "logits: expected a [B, K] tensor, got ", logits.dim(), " dimensions");
  const auto s = logits.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kBFloat16 || s == at::kHalf,
              "logits: dtype must be float32, bfloat16 or float16, got ", s);
}

at::Tensor rows_f32(const at::Tensor& logits) {
  return at::empty_symint({logits.sym_size(0)}, logits.options().dtype(at::kFloat));
}

at::Tensor ce(const at::Tensor& logits, const at::Tensor& /*target*/, const std::optional<at::Tensor>& partner,
              const std::optional<at::Tensor>& lam) {
  check_logits(logits);
  TORCH_CHECK(partner.has_value() == lam.has_value(), "partner and lam: give both or neither");
  return rows_f32(logits);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> plan(
    const at::Tensor& logits, const at::Tensor& /*target*/, at::Tensor& /*loss_ma*/, at::Tensor& /*rng_state*/,
    const at::Tensor& /*mentornet*/, const at::Tensor& /*step*/, const std::optional<at::Tensor>& /*pool*/,
    const std::optional<at::Tensor>& uniform, const std::optional<at::Tensor>& beta, int64_t /*total_steps*/,
    double /*percentile*/, double /*decay*/, int64_t /*burn_in_epoch*/, double /*alpha*/) {
  check_logits(logits);
  TORCH_CHECK(uniform.has_value() == beta.has_value(), "uniform and beta: give both or neither");
  const auto b = logits.sym_size(0);
  return {rows_f32(logits), rows_f32(logits), at::empty_symint({b}, logits.options().dtype(at::kLong)),
          rows_f32(logits)};
}

at::Tensor mix(const at::Tensor& x, const at::Tensor& /*partner*/, const at::Tensor& /*lam*/) {
  TORCH_CHECK(x.dim() >= 1, "x: expected a [B, ...] tensor, got a 0-d tensor");
  return at::empty_like(x, at::MemoryFormat::Contiguous);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mixed_loss(
    const at::Tensor& logits, const at::Tensor& /*target*/, const at::Tensor& /*partner*/,
    const at::Tensor& /*lam*/, const std::optional<at::Tensor>& given_weights,
    const std::optional<at::Tensor>& loss_ma_mixed, const std::optional<at::Tensor>& /*num_steps*/,
    const at::Tensor& /*mentornet*/, const at::Tensor& /*step*/, const std::optional<at::Tensor>& /*pool*/,
    int64_t /*total_steps*/, double /*percentile*/, double /*decay*/, int64_t /*burn_in_epoch*/,
    bool second_reweight) {
  check_logits(logits);
  if (second_reweight) {
    TORCH_CHECK(!given_weights.has_value(), "given_weights: must be None with second_reweight");
    TORCH_CHECK(loss_ma_mixed.has_value(), "loss_ma_mixed: required with second_reweight");
  }
  const auto f32 = logits.options().dtype(at::kFloat);
  auto weights = second_reweight ? rows_f32(logits) : at::empty({0}, f32);
  return {at::empty({}, f32), rows_f32(logits), weights};
}

at::Tensor mixed_loss_backward(const at::Tensor& /*grad_loss*/, const at::Tensor& logits,
                               const at::Tensor& /*target*/, const at::Tensor& /*partner*/,
                               const at::Tensor& /*lam*/, const at::Tensor& /*lse*/,
                               const std::optional<at::Tensor>& /*weights*/) {
  check_logits(logits);
  return at::empty_symint({logits.sym_size(0), logits.sym_size(1)},
                          logits.options().memory_format(at::MemoryFormat::Contiguous));
}

}  // namespace
}  // namespace mentormix::meta

TORCH_LIBRARY_IMPL(mentormix_cpp, Meta, m) {
  m.impl("ce", &mentormix::meta::ce);
  m.impl("plan", &mentormix::meta::plan);
  m.impl("mix", &mentormix::meta::mix);
  m.impl("mixed_loss", &mentormix::meta::mixed_loss);
  m.impl("mixed_loss_backward", &mentormix::meta::mixed_loss_backward);
}
