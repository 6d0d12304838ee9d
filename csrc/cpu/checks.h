// Argument checks of the CPU ops: metadata only (shape, dtype, device), every failure a c10::Error
// (a Python RuntimeError) whose message names the argument. Values are never checked: an
// out-of-range label or partner gives a NaN row (SPEC §4.1), never an out-of-bounds access.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <optional>

#include "../common/mentornet_layout.h"
#include "../common/schedule.h"

// The logits dtypes the CPU kernels take (float64 stays with the reference).
#define MENTORMIX_DISPATCH_LOGITS(TYPE, NAME, ...)                                      \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)              \
                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

namespace mentormix::cpu {

inline void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, ": expected a CPU tensor, got one on ", t.device());
}

inline void check_float_dtype(const at::Tensor& t, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kBFloat16 || s == at::kHalf, name,
              ": dtype must be float32, bfloat16 or float16, got ", s);
}

inline void check_logits(const at::Tensor& z, const char* name) {
  check_cpu(z, name);
  TORCH_CHECK(z.dim() == 2 && z.size(0) > 0 && z.size(1) > 0, name, ": expected a non-empty [B, K] tensor, got ",
              z.sizes());
  check_float_dtype(z, name);
}

inline void check_vector(const at::Tensor& t, int64_t n, at::ScalarType dtype, const char* name) {
  check_cpu(t, name);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, name, ": expected shape [", n, "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ", t.scalar_type());
}

inline void check_scalar(const at::Tensor& t, at::ScalarType dtype, const char* name) {
  check_cpu(t, name);
  TORCH_CHECK(t.numel() == 1, name, ": expected a tensor of one element, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ", t.scalar_type());
}

// The step t: a one-element integer CPU tensor, read on the host.
inline int64_t read_step(const at::Tensor& step) {
  check_cpu(step, "step");
  TORCH_CHECK(step.numel() == 1, "step: expected a tensor of one element, got shape ", step.sizes());
  TORCH_CHECK(at::isIntegralType(step.scalar_type(), /*includeBool=*/false), "step: expected an integer dtype, got ",
              step.scalar_type());
  return step.item<int64_t>();
}

inline void check_total_steps(int64_t total_steps) {
  TORCH_CHECK(total_steps >= 1 && total_steps <= kMaxTotalSteps, "total_steps: must be in [1, ", kMaxTotalSteps,
              "], got ", total_steps);
}

inline void check_percentile(double p, double decay) {
  TORCH_CHECK(p >= 0.0 && p <= 1.0, "percentile: must be in [0, 1], got ", p);
  TORCH_CHECK(std::isfinite(decay), "decay: must be finite, got ", decay);
}

// mentornet: the folded fp32 [kMnSize] network, or an empty tensor (threshold weighting).
// Returns a pointer to its contiguous data (kept alive by `keep`), or nullptr.
inline const float* mentornet_data(const at::Tensor& mentornet, at::Tensor& keep) {
  if (mentornet.numel() == 0) {
    check_cpu(mentornet, "mentornet");
    return nullptr;
  }
  check_vector(mentornet, kMnSize, at::kFloat, "mentornet");
  keep = mentornet.contiguous();
  return keep.data_ptr<float>();
}

// pool: optional fp32 [N], N >= 1, the values the percentile is taken over.
inline void check_pool(const std::optional<at::Tensor>& pool) {
  if (!pool.has_value()) return;
  check_cpu(*pool, "pool");
  TORCH_CHECK(pool->dim() == 1 && pool->size(0) > 0, "pool: expected a non-empty 1-d tensor, got shape ",
              pool->sizes());
  TORCH_CHECK(pool->scalar_type() == at::kFloat, "pool: expected dtype float32, got ", pool->scalar_type());
}

// The logits may be row-strided (a column slice) but need unit stride along K.
inline at::Tensor unit_stride_rows(const at::Tensor& z) {
  return (z.stride(1) == 1 && z.stride(0) >= 0) ? z : z.contiguous();
}

}  // namespace mentormix::cpu
