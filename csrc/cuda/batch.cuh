// The O(B) middle of a step on the GPU, in one thread block (no host synchronisation): exact
// percentile select, moving average, weights, and either the softmax partner sampling with the
// mixing factors (first pass) or the (re)weighted mean of the mixed losses (second pass).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/PhiloxCudaState.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mentormix::cuda {

struct BatchParams {
  const float* mentornet;       // folded MentorNet on the device, nullptr for "threshold"
  const int64_t* epoch_ptr;     // the epoch on the device, or nullptr: use epoch_value
  int64_t epoch_value;
  int64_t rank;                 // ascending rank of the percentile
  float decay, one_minus_decay; // d and (1 - d) as the reference's fp32 arithmetic uses them
  int64_t burn_in_epoch;
};

// Steps 3-6 from loss [B]: v, partner, lam, new_ma (0-d). Draws: `uniform`/`beta` when given
// (defined), else Philox (common/draws.h) from `philox`. cdf is a [B] float scratch.
void launch_weights_and_sample_batch(const at::Tensor& loss, const at::Tensor& loss_ma, const BatchParams& p,
                                     float alpha, const at::Tensor& uniform, const at::Tensor& beta,
                                     at::PhiloxCudaState philox, at::Tensor& v, at::Tensor& partner, at::Tensor& lam,
                                     at::Tensor& new_ma, at::Tensor& cdf, cudaStream_t stream);

// Step 9 from m [B]: loss = sum(w m) / B with w = v2 (second_reweight; also new_ma2 and w) or 1.
void launch_mixed_loss_batch(const at::Tensor& m, const at::Tensor& loss_ma_mixed, const BatchParams& p,
                             bool second_reweight, at::Tensor& weights, at::Tensor& loss, at::Tensor& new_ma,
                             cudaStream_t stream);

}  // namespace mentormix::cuda
