// Argument checks of the C++ ops: every bad input is a c10::Error (a Python RuntimeError), never
// an out-of-bounds access.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>

// The logits dtypes the CPU kernels take (float64 stays with the reference).
#define MENTORMIX_DISPATCH_LOGITS(TYPE, NAME, ...)                                      \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)              \
                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

namespace mentormix::cpu {

inline void check_logits(const at::Tensor& z, const char* name) {
  TORCH_CHECK(z.device().is_cpu(), name, ": expected a CPU tensor, got ", z.device());
  TORCH_CHECK(z.dim() == 2 && z.size(0) > 0 && z.size(1) > 0, name, ": expected a non-empty [B, K] tensor, got ",
              z.sizes());
  const auto t = z.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf, name,
              ": dtype must be float32, bfloat16 or float16, got ", t);
}

inline void check_vector(const at::Tensor& t, int64_t B, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, ": expected a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == B, name, ": expected shape [", B, "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ", t.scalar_type());
}

inline void check_scalar(const at::Tensor& t, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, ": expected a CPU tensor, got ", t.device());
  TORCH_CHECK(t.numel() == 1, name, ": expected one element, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ", t.scalar_type());
}

// partner indices index the batch: out-of-range values are an error (not a NaN row).
inline void check_partner(const int64_t* partner, int64_t B) {
  for (int64_t i = 0; i < B; ++i) {
    TORCH_CHECK(partner[i] >= 0 && partner[i] < B, "partner: index ", partner[i], " at position ", i,
                " is out of range for a batch of ", B);
  }
}

// The logits may be row-strided (a slice) but need unit stride along K.
inline at::Tensor unit_stride_rows(const at::Tensor& z) { return z.stride(1) == 1 ? z : z.contiguous(); }

}  // namespace mentormix::cpu
