#include "batch.cuh"

#include <c10/cuda/CUDAException.h>

#include "../common/mentornet_eval.h"
#include "../common/schedule.h"
#include "device_utils.cuh"

namespace mentormix::cuda {
namespace {

// One block of kBatchThreads threads. __launch_bounds__(1024, 1) gives ptxas 64 registers per
// thread; the Philox, gamma and MentorNet code fits them without spills or local memory (check
// with -Xptxas -v after changing it: about 60 registers for plan_kernel on sm_80/sm_90).
constexpr int kBatchThreads = 1024;

__device__ __forceinline__ int64_t read_step(const StepArg& s) {
  if (s.ptr == nullptr) return s.value;
  return s.is_int32 ? static_cast<int64_t>(*static_cast<const int32_t*>(s.ptr)) : *static_cast<const int64_t*>(s.ptr);
}

// ma' = d ma + (1 - d) q, each product and the sum rounded as the fp32 tensor arithmetic of the
// reference (no FMA contraction); ma when q is not finite.
__device__ __forceinline__ float moving_average(float ma, float q, const BatchParams& p) {
  return isfinite(q) ? __fadd_rn(__fmul_rn(p.decay, ma), __fmul_rn(p.one_minus_decay, q)) : ma;
}

__global__ void __launch_bounds__(kBatchThreads, 1)
    plan_kernel(const float* loss, int64_t B, float* loss_ma, BatchParams p, PlanDraws d, float* v,
                int64_t* partner, float* lam, float* cdf) {
  __shared__ unsigned int hist[256];
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  __shared__ double carry;
  // The states and the step are read here, before any thread can write them (one thread writes
  // at the end, after a barrier).
  const float ma_old = *loss_ma;
  const int64_t epoch = epoch_of_step(read_step(p.step), p.total_steps);
  const bool draw = d.mixing && d.uniform == nullptr;
  const uint64_t key = draw ? static_cast<uint64_t>(d.rng[0]) : 0;
  const uint64_t counter = draw ? static_cast<uint64_t>(d.rng[d.rng_stride]) : 0;

  const float q = block_select(p.pool != nullptr ? p.pool : loss, p.pool != nullptr ? p.n_pool : B, p.rank, hist);
  const float ma = moving_average(ma_old, q, p);
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
    v[i] = example_weight(p.mentornet, epoch, p.burn_in_epoch, loss[i], ma);
  }
  if (!d.mixing) {
    for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
      partner[i] = i;
      lam[i] = 1.f;
    }
  } else {
    __syncthreads();
    // P = softmax(v); cdf accumulated in double, stored in float (as the CPU kernels).
    float vmax = -INFINITY;
    for (int64_t i = threadIdx.x; i < B; i += blockDim.x) vmax = nan_max(vmax, v[i]);
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
    for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
      double u;
      float b;
      if (draw) {
        DrawStream stream(key, counter, static_cast<uint64_t>(i));
        u = stream.uniform53();
        b = stream.beta(d.gamma);
      } else {
        u = d.uniform[i];
        b = d.beta[i];
      }
      const float target = static_cast<float>(u) * total;
      int64_t lo = 0, hi = B;  // first j with cdf[j] > target
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (cdf[mid] > target) hi = mid; else lo = mid + 1;
      }
      partner[i] = lo < B - 1 ? lo : B - 1;
      const float l = fmaxf(b, 1.f - b);
      lam[i] = v[i] >= 0.5f ? l : 1.f - l;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    *loss_ma = ma;
    if (draw) d.rng[d.rng_stride] = static_cast<int64_t>(counter + 1u);
  }
}

__global__ void __launch_bounds__(kBatchThreads, 1)
    mixed_loss_kernel(const float* m, int64_t B, float* loss_ma_mixed, int64_t* num_steps, BatchParams p,
                      bool reweight, const float* given_weights, float* weights, float* loss_out) {
  __shared__ unsigned int hist[256];
  __shared__ double dscratch[32];
  // Read before any write (num_steps may be the step tensor itself, loss_ma_mixed is rewritten).
  const int64_t t = read_step(p.step);
  double acc = 0.0;
  float ma = 0.f;
  if (reweight) {
    const float ma_old = *loss_ma_mixed;
    const int64_t epoch = epoch_of_step(t, p.total_steps);
    const float q = block_select(p.pool != nullptr ? p.pool : m, p.pool != nullptr ? p.n_pool : B, p.rank, hist);
    ma = moving_average(ma_old, q, p);
    for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
      const float wi = example_weight(p.mentornet, epoch, p.burn_in_epoch, m[i], ma);
      weights[i] = wi;
      acc += static_cast<double>(wi * m[i]);
    }
  } else if (given_weights != nullptr) {
    for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
      acc += static_cast<double>(given_weights[i] * m[i]);
    }
  } else {
    for (int64_t i = threadIdx.x; i < B; i += blockDim.x) acc += static_cast<double>(m[i]);
  }
  const double total = block_sum(acc, dscratch);  // ends with a barrier: every thread has read the states
  if (threadIdx.x == 0) {
    *loss_out = static_cast<float>(total / static_cast<double>(B));
    if (reweight) *loss_ma_mixed = ma;
    if (num_steps != nullptr) *num_steps = steps_done(t, p.total_steps);
  }
}

}  // namespace

void launch_plan_batch(const float* loss, int64_t B, float* loss_ma, const BatchParams& p, const PlanDraws& d,
                       float* v, int64_t* partner, float* lam, float* cdf, cudaStream_t stream) {
  plan_kernel<<<1, kBatchThreads, 0, stream>>>(loss, B, loss_ma, p, d, v, partner, lam, cdf);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_mixed_loss_batch(const float* m, int64_t B, float* loss_ma_mixed, int64_t* num_steps,
                             const BatchParams& p, bool second_reweight, const float* given_weights, float* weights,
                             float* loss, cudaStream_t stream) {
  mixed_loss_kernel<<<1, kBatchThreads, 0, stream>>>(m, B, loss_ma_mixed, num_steps, p, second_reweight,
                                                       given_weights, weights, loss);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace mentormix::cuda
