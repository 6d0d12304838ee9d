#include "batch.cuh"

#include <ATen/cuda/PhiloxUtils.cuh>
#include <c10/cuda/CUDAException.h>

#include "../common/draws.h"
#include "../common/mentornet_eval.h"
#include "device_utils.cuh"

namespace mentormix::cuda {
namespace {

constexpr int kBatchThreads = 1024;

// Percentile and moving average: every thread returns the updated moving average.
__device__ float updated_moving_average(const float* values, int64_t B, float ma, const BatchParams& p,
                                        unsigned int* hist) {
  const float q = block_select(values, B, p.rank, hist);
  return isfinite(q) ? p.decay * ma + p.one_minus_decay * q : ma;
}

__device__ __forceinline__ int64_t epoch_of(const BatchParams& p) {
  return p.epoch_ptr != nullptr ? *p.epoch_ptr : p.epoch_value;
}

__global__ void __launch_bounds__(kBatchThreads)
    weights_and_sample_kernel(const float* loss, int64_t B, const float* ma_in, BatchParams p, float alpha,
                              const double* uniform, const float* beta, at::PhiloxCudaState philox, float* v,
                              int64_t* partner, float* lam, float* ma_out, float* cdf) {
  __shared__ unsigned int hist[256];
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  __shared__ double carry;
  const int64_t epoch = epoch_of(p);
  const float ma = updated_moving_average(loss, B, *ma_in, p, hist);
  if (threadIdx.x == 0) *ma_out = ma;
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
    v[i] = example_weight(p.mentornet, epoch, p.burn_in_epoch, loss[i], ma);
  }
  if (alpha <= 0.f) {
    for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
      partner[i] = i;
      lam[i] = 1.f;
    }
    return;
  }
  __syncthreads();
  // P = softmax(v); cdf accumulated in double, stored in float (as the CPU kernels).
  float vmax = -INFINITY;
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) vmax = fmaxf(vmax, v[i]);
  vmax = block_max(vmax, fscratch);
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) s += expf(v[i] - vmax);
  const float inv = 1.f / block_sum(s, fscratch);
  if (threadIdx.x == 0) carry = 0.0;
  for (int64_t base = 0; base < B; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const double pi = i < B ? static_cast<double>(expf(v[i] - vmax) * inv) : 0.0;
    __syncthreads();
    const double c = carry;
    const double incl = block_inclusive_scan(pi, dscratch);
    if (i < B) cdf[i] = static_cast<float>(c + incl);
    __syncthreads();
    if (threadIdx.x == blockDim.x - 1) carry = c + incl;
  }
  __syncthreads();
  const float total = cdf[B - 1];
  const bool draw = uniform == nullptr;
  uint64_t seed = 0, offset = 0;
  if (draw) {
    const auto so = at::cuda::philox::unpack(philox);
    seed = std::get<0>(so);
    offset = std::get<1>(so);
  }
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
    DrawStream stream(seed, static_cast<uint64_t>(i), offset);
    const double u = draw ? stream.uniform53() : uniform[i];
    const float target = static_cast<float>(u) * total;
    int64_t lo = 0, hi = B;  // first j with cdf[j] > target
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (cdf[mid] > target) hi = mid; else lo = mid + 1;
    }
    partner[i] = lo < B - 1 ? lo : B - 1;
    const float b = draw ? stream.beta(alpha) : beta[i];
    const float l = fmaxf(b, 1.f - b);
    lam[i] = v[i] >= 0.5f ? l : 1.f - l;
  }
}

__global__ void __launch_bounds__(kBatchThreads)
    mixed_loss_kernel(const float* m, int64_t B, const float* ma_in, BatchParams p, bool reweight, float* w,
                      float* loss_out, float* ma_out) {
  __shared__ unsigned int hist[256];
  __shared__ double dscratch[32];
  double acc = 0.0;
  if (reweight) {
    const int64_t epoch = epoch_of(p);
    const float ma = updated_moving_average(m, B, *ma_in, p, hist);
    if (threadIdx.x == 0) *ma_out = ma;
    for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
      const float wi = example_weight(p.mentornet, epoch, p.burn_in_epoch, m[i], ma);
      w[i] = wi;
      acc += static_cast<double>(wi * m[i]);
    }
  } else {
    if (threadIdx.x == 0) *ma_out = *ma_in;
    for (int64_t i = threadIdx.x; i < B; i += blockDim.x) acc += static_cast<double>(m[i]);
  }
  const double total = block_sum(acc, dscratch);
  if (threadIdx.x == 0) *loss_out = static_cast<float>(total / static_cast<double>(B));
}

}  // namespace

void launch_weights_and_sample_batch(const at::Tensor& loss, const at::Tensor& loss_ma, const BatchParams& p,
                                     float alpha, const at::Tensor& uniform, const at::Tensor& beta,
                                     at::PhiloxCudaState philox, at::Tensor& v, at::Tensor& partner, at::Tensor& lam,
                                     at::Tensor& new_ma, at::Tensor& cdf, cudaStream_t stream) {
  const bool given = uniform.defined();
  weights_and_sample_kernel<<<1, kBatchThreads, 0, stream>>>(
      loss.data_ptr<float>(), loss.size(0), loss_ma.data_ptr<float>(), p, alpha,
      given ? uniform.data_ptr<double>() : nullptr, given ? beta.data_ptr<float>() : nullptr, philox,
      v.data_ptr<float>(), partner.data_ptr<int64_t>(), lam.data_ptr<float>(), new_ma.data_ptr<float>(),
      cdf.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_mixed_loss_batch(const at::Tensor& m, const at::Tensor& loss_ma_mixed, const BatchParams& p,
                             bool second_reweight, at::Tensor& weights, at::Tensor& loss, at::Tensor& new_ma,
                             cudaStream_t stream) {
  mixed_loss_kernel<<<1, kBatchThreads, 0, stream>>>(
      m.data_ptr<float>(), m.size(0), loss_ma_mixed.data_ptr<float>(), p, second_reweight,
      second_reweight ? weights.data_ptr<float>() : nullptr, loss.data_ptr<float>(), new_ma.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace mentormix::cuda
