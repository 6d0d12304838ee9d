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

// torch.logsumexp conventions: NaN anywhere -> NaN; an infinite max is not subtracted.
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

__device__ __forceinline__ int64_t row_index() {
  return static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarp;
}

template <typename T>
__global__ void ce_rows_kernel(const T* z, int64_t row_stride, int64_t B, int64_t K, const int64_t* y, float* loss) {
  const int64_t i = row_index();
  if (i >= B) return;
  const int lane = threadIdx.x % kWarp;
  const T* row = z + i * row_stride;
  const float lse = warp_row_logsumexp(row, K, lane);
  if (lane == 0) {
    const int64_t yi = y[i];
    loss[i] = (yi >= 0 && yi < K) ? lse - static_cast<float>(row[yi]) : NAN;
  }
}

template <typename T>
__global__ void mixed_rows_kernel(const T* z, int64_t row_stride, int64_t B, int64_t K, const int64_t* y,
                                  const int64_t* partner, const float* lam, float* lse_out, float* m_out, T* grad) {
  const int64_t i = row_index();
  if (i >= B) return;
  const int lane = threadIdx.x % kWarp;
  const T* row = z + i * row_stride;
  const int64_t p = partner[i];
  const int64_t yi = y[i], yp = (p >= 0 && p < B) ? y[p] : -1;
  const float l = lam[i];
  const float lse = warp_row_logsumexp(row, K, lane);
  if (lane == 0) {
    const bool ok = yi >= 0 && yi < K && yp >= 0 && yp < K;
    lse_out[i] = lse;
    m_out[i] = ok ? lse - l * static_cast<float>(row[yi]) - (1.f - l) * static_cast<float>(row[yp]) : NAN;
  }
  if (grad != nullptr) warp_write_grad(row, grad + i * K, K, lse, 1.f / static_cast<float>(B), yi, yp, l, lane);
}

template <typename T>
__global__ void grad_rows_kernel(const T* z, int64_t row_stride, int64_t B, int64_t K, const int64_t* y,
                                 const int64_t* partner, const float* lam, const float* lse, const float* weights,
                                 const float* grad_output, T* grad) {
  const int64_t i = row_index();
  if (i >= B) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t p = partner[i];
  const int64_t yi = y[i], yp = (p >= 0 && p < B) ? y[p] : -1;
  float scale = *grad_output / static_cast<float>(B);
  if (weights != nullptr) scale *= weights[i];
  warp_write_grad(z + i * row_stride, grad + i * K, K, lse[i], scale, yi, yp, lam[i], lane);
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

template <typename T>
__global__ void scale_kernel(T* grad, int64_t n, const float* grad_output) {
  const float g = *grad_output;
  if (g == 1.f) return;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    grad[idx] = static_cast<T>(static_cast<float>(grad[idx]) * g);
  }
}

}  // namespace

#define MENTORMIX_DISPATCH_CUDA(TYPE, NAME, ...)                                         \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)              \
                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

namespace {
unsigned row_blocks(int64_t B) { return static_cast<unsigned>((B + kRowWarps - 1) / kRowWarps); }
unsigned element_blocks(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kElementThreads - 1) / kElementThreads, 65535 * 8));
}
}  // namespace

void launch_ce_rows(const at::Tensor& z, const at::Tensor& y, at::Tensor& loss, cudaStream_t stream) {
  const int64_t B = z.size(0), K = z.size(1);
  MENTORMIX_DISPATCH_CUDA(z.scalar_type(), "mentormix_ce_rows", [&] {
    ce_rows_kernel<scalar_t><<<row_blocks(B), kRowThreads, 0, stream>>>(
        z.data_ptr<scalar_t>(), z.stride(0), B, K, y.data_ptr<int64_t>(), loss.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_mixed_rows(const at::Tensor& z, const at::Tensor& y, const at::Tensor& partner, const at::Tensor& lam,
                       at::Tensor& lse, at::Tensor& m, at::Tensor& grad, cudaStream_t stream) {
  const int64_t B = z.size(0), K = z.size(1);
  const bool with_grad = grad.numel() > 0;
  MENTORMIX_DISPATCH_CUDA(z.scalar_type(), "mentormix_mixed_rows", [&] {
    mixed_rows_kernel<scalar_t><<<row_blocks(B), kRowThreads, 0, stream>>>(
        z.data_ptr<scalar_t>(), z.stride(0), B, K, y.data_ptr<int64_t>(), partner.data_ptr<int64_t>(),
        lam.data_ptr<float>(), lse.data_ptr<float>(), m.data_ptr<float>(),
        with_grad ? grad.data_ptr<scalar_t>() : nullptr);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_grad_rows(const at::Tensor& z, const at::Tensor& y, const at::Tensor& partner, const at::Tensor& lam,
                      const at::Tensor& lse, const at::Tensor& weights, const at::Tensor& grad_output,
                      at::Tensor& grad, cudaStream_t stream) {
  const int64_t B = z.size(0), K = z.size(1);
  const bool weighted = weights.defined() && weights.numel() > 0;
  MENTORMIX_DISPATCH_CUDA(z.scalar_type(), "mentormix_grad_rows", [&] {
    grad_rows_kernel<scalar_t><<<row_blocks(B), kRowThreads, 0, stream>>>(
        z.data_ptr<scalar_t>(), z.stride(0), B, K, y.data_ptr<int64_t>(), partner.data_ptr<int64_t>(),
        lam.data_ptr<float>(), lse.data_ptr<float>(), weighted ? weights.data_ptr<float>() : nullptr,
        grad_output.data_ptr<float>(), grad.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_mix(const at::Tensor& x, const at::Tensor& partner, const at::Tensor& lam, at::Tensor& out,
                cudaStream_t stream) {
  const int64_t B = x.size(0), D = x.numel() / B;
  if (x.numel() == 0) return;
  MENTORMIX_DISPATCH_CUDA(x.scalar_type(), "mentormix_mix", [&] {
    mix_kernel<scalar_t><<<element_blocks(x.numel()), kElementThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), partner.data_ptr<int64_t>(), lam.data_ptr<float>(), B, D, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_scale(at::Tensor& grad, const at::Tensor& grad_output, cudaStream_t stream) {
  if (grad.numel() == 0) return;
  MENTORMIX_DISPATCH_CUDA(grad.scalar_type(), "mentormix_scale", [&] {
    scale_kernel<scalar_t><<<element_blocks(grad.numel()), kElementThreads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), grad.numel(), grad_output.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace mentormix::cuda
