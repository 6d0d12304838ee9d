#include "rows.cuh"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>

#include "device_utils.cuh"

namespace mentormix::cuda {
namespace {

constexpr int kRowWarps = 8;  // rows per block of the row kernels
constexpr int kRowThreads = kRowWarps * kWarp;
constexpr int kElementThreads = 256;
constexpr int64_t kMaxBlocks = 65535 * 8;

// torch.logsumexp conventions: NaN anywhere -> NaN (also beside +inf); an infinite max is not
// subtracted (+inf row -> +inf, all -inf row -> -inf).
template <typename T>
__device__ float warp_row_logsumexp(const T* row, int64_t K, int lane) {
  float m = -INFINITY;
  for (int64_t k = lane; k < K; k += kWarp) m = nan_max(m, static_cast<float>(row[k]));
  m = warp_max(m);
  if (m != m) return m;
  const float shift = isinf(m) ? 0.f : m;
  float s = 0.f;
  for (int64_t k = lane; k < K; k += kWarp) s += __expf(static_cast<float>(row[k]) - shift);
  s = warp_sum(s);
  return logf(s) + shift;
}

template <typename T>
__device__ void warp_write_grad(const T* row, T* g, int64_t K, float lse, float scale, int64_t yi, int64_t yp,
                                float lam, int lane) {
  const bool ok = yi >= 0 && yi < K && yp >= 0 && yp < K;
  for (int64_t k = lane; k < K; k += kWarp) {
    float v = 0.f;
    if (ok) {
      const float target = (k == yi ? lam : 0.f) + (k == yp ? 1.f - lam : 0.f);
      v = (__expf(static_cast<float>(row[k]) - lse) - target) * scale;
    }
    g[k] = static_cast<T>(v);
  }
}

// Rows i = first_row(), first_row() + row_step(), ... (a grid-stride loop over warps).
__device__ __forceinline__ int64_t first_row() {
  return static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarp;
}
__device__ __forceinline__ int64_t row_step() { return static_cast<int64_t>(gridDim.x) * kRowWarps; }

// y_{j_i}, or -1 (an out-of-range label) for a partner outside [0, B).
__device__ __forceinline__ int64_t partner_label(const int64_t* y, const int64_t* partner, int64_t i, int64_t B) {
  const int64_t p = partner[i];
  return (p >= 0 && p < B) ? y[p] : -1;
}

// l_i (partner == nullptr) or m_i (and lse_i when lse_out != nullptr).
template <typename T>
__global__ void loss_rows_kernel(const T* z, int64_t row_stride, int64_t B, int64_t K, const int64_t* y,
                                 const int64_t* partner, const float* lam, float* loss, float* lse_out) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t i = first_row(); i < B; i += row_step()) {
    const T* row = z + i * row_stride;
    const float lse = warp_row_logsumexp(row, K, lane);
    if (lane == 0) {
      const int64_t yi = y[i];
      if (partner == nullptr) {
        loss[i] = (yi >= 0 && yi < K) ? lse - static_cast<float>(row[yi]) : NAN;
      } else {
        const int64_t yp = partner_label(y, partner, i, B);
        const float l = lam[i];
        const bool ok = yi >= 0 && yi < K && yp >= 0 && yp < K;
        loss[i] = ok ? lse - l * static_cast<float>(row[yi]) - (1.f - l) * static_cast<float>(row[yp]) : NAN;
        if (lse_out != nullptr) lse_out[i] = lse;
      }
    }
  }
}

template <typename T>
__global__ void grad_rows_kernel(const T* z, int64_t row_stride, int64_t B, int64_t K, const int64_t* y,
                                 const int64_t* partner, const float* lam, const float* lse, const float* weights,
                                 const float* grad_loss, T* grad) {
  const int lane = threadIdx.x % kWarp;
  const float g = *grad_loss / static_cast<float>(B);
  for (int64_t i = first_row(); i < B; i += row_step()) {
    const float scale = weights != nullptr ? g * weights[i] : g;
    warp_write_grad(z + i * row_stride, grad + i * K, K, lse[i], scale, y[i], partner_label(y, partner, i, B), lam[i],
                    lane);
  }
}

template <typename T>
__global__ void mix_kernel(const T* x, const int64_t* partner, const float* lam, int64_t B, int64_t D, T* out) {
  const int64_t n = B * D;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / D, k = idx - i * D;
    const int64_t j = partner[i];
    // As the reference: lam rounded to x's dtype, 1 - lam from the rounded value.
    const float a = static_cast<float>(static_cast<T>(lam[i]));
    const float b = static_cast<float>(static_cast<T>(1.f - a));
    out[idx] = (j >= 0 && j < B) ? static_cast<T>(a * static_cast<float>(x[idx]) + b * static_cast<float>(x[j * D + k]))
                                 : static_cast<T>(NAN);
  }
}

}  // namespace

#define MENTORMIX_DISPATCH_CUDA(TYPE, NAME, ...)                                         \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)              \
                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

namespace {
unsigned row_blocks(int64_t B) { return static_cast<unsigned>(std::min<int64_t>((B + kRowWarps - 1) / kRowWarps, kMaxBlocks)); }
unsigned element_blocks(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kElementThreads - 1) / kElementThreads, kMaxBlocks));
}
}  // namespace

void launch_loss_rows(const at::Tensor& z, const at::Tensor& y, const at::Tensor& partner, const at::Tensor& lam,
                      at::Tensor& loss, at::Tensor& lse, cudaStream_t stream) {
  const int64_t B = z.size(0), K = z.size(1);
  const bool mixed = partner.defined();
  MENTORMIX_DISPATCH_CUDA(z.scalar_type(), "mentormix_loss_rows", [&] {
    loss_rows_kernel<scalar_t><<<row_blocks(B), kRowThreads, 0, stream>>>(
        z.const_data_ptr<scalar_t>(), z.stride(0), B, K, y.const_data_ptr<int64_t>(),
        mixed ? partner.const_data_ptr<int64_t>() : nullptr, mixed ? lam.const_data_ptr<float>() : nullptr,
        loss.data_ptr<float>(), lse.defined() ? lse.data_ptr<float>() : nullptr);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_grad_rows(const at::Tensor& z, const at::Tensor& y, const at::Tensor& partner, const at::Tensor& lam,
                      const at::Tensor& lse, const at::Tensor& weights, const at::Tensor& grad_loss,
                      at::Tensor& grad, cudaStream_t stream) {
  const int64_t B = z.size(0), K = z.size(1);
  MENTORMIX_DISPATCH_CUDA(z.scalar_type(), "mentormix_grad_rows", [&] {
    grad_rows_kernel<scalar_t><<<row_blocks(B), kRowThreads, 0, stream>>>(
        z.const_data_ptr<scalar_t>(), z.stride(0), B, K, y.const_data_ptr<int64_t>(),
        partner.const_data_ptr<int64_t>(), lam.const_data_ptr<float>(), lse.const_data_ptr<float>(),
        weights.defined() ? weights.const_data_ptr<float>() : nullptr, grad_loss.const_data_ptr<float>(),
        grad.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_mix(const at::Tensor& x, const at::Tensor& partner, const at::Tensor& lam, at::Tensor& out,
                cudaStream_t stream) {
  if (x.numel() == 0) return;
  const int64_t B = x.size(0), D = x.numel() / B;
  MENTORMIX_DISPATCH_CUDA(x.scalar_type(), "mentormix_mix", [&] {
    mix_kernel<scalar_t><<<element_blocks(x.numel()), kElementThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), partner.const_data_ptr<int64_t>(), lam.const_data_ptr<float>(), B, D,
        out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace mentormix::cuda
