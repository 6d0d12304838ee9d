// The O(B) middle of a step on the GPU, in one thread block (no host synchronisation, CUDA-graph
// capturable): exact percentile select, moving average, weights, and either the draws, the softmax
// partner sampling and the mixing factors (plan) or the (re)weighted mean of the mixed losses
// (mixed_loss). The states are read at the kernel's start and written by one thread at its end.
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/draws.h"

namespace mentormix::cuda {

// The step t: a value read by the launcher on the host (a CPU tensor), or a one-element int64 or
// int32 tensor on the device, read by the kernel.
struct StepArg {
  const void* ptr = nullptr;
  bool is_int32 = false;
  int64_t value = 0;
};

struct BatchParams {
  const float* mentornet = nullptr;  // folded MentorNet on the device, nullptr for "threshold"
  StepArg step;
  int64_t total_steps = 1;
  int64_t burn_in_epoch = 0;
  const float* pool = nullptr;       // the percentile's values: pool [n_pool], or the batch's own
  int64_t n_pool = 0;
  int64_t rank = 0;                  // ascending rank of the percentile in the pool
  float decay = 0.f, one_minus_decay = 1.f;  // d and (1 - d) as the reference's fp32 arithmetic uses them
};

struct PlanDraws {
  bool mixing = false;               // alpha > 0
  const double* uniform = nullptr;   // explicit draws, or nullptr: draw from rng
  const float* beta = nullptr;
  int64_t* rng = nullptr;            // rng_state (key, counter) on the device, counter at rng[rng_stride]
  int64_t rng_stride = 1;
  GammaParams gamma;
};

// plan's batch part from loss [B]: v, partner, lam; loss_ma (and the rng counter when drawing)
// updated in place. cdf is a [B] float scratch.
void launch_plan_batch(const float* loss, int64_t B, float* loss_ma, const BatchParams& p, const PlanDraws& d,
                       float* v, int64_t* partner, float* lam, float* cdf, cudaStream_t stream);

// mixed_loss's batch part from m [B]: loss = sum(w m) / B with w = v2 (second_reweight, written
// to weights, loss_ma_mixed updated in place), given_weights or 1;
// num_steps = t + 1 when not null.
void launch_mixed_loss_batch(const float* m, int64_t B, float* loss_ma_mixed, int64_t* num_steps,
                             const BatchParams& p, bool second_reweight, const float* given_weights, float* weights,
                             float* loss, cudaStream_t stream);

}  // namespace mentormix::cuda
