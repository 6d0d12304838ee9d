// Row kernels (one warp per row of the logits, computed in float) and the element-wise kernels,
// with their launchers (tensors already checked by ops_cuda.cpp; launched on `stream`).
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime.h>

namespace mentormix::cuda {

// loss_i = lse(z_i) - z_i[y_i] (NaN for a label outside [0, K)).
void launch_ce_rows(const at::Tensor& z, const at::Tensor& y, at::Tensor& loss, cudaStream_t stream);

// lse_i and m_i = lse_i - lam_i z_i[y_i] - (1 - lam_i) z_i[y_{j_i}] (NaN for a label or partner out
// of range); with a defined `grad` also grad_i = (softmax(z_i) - y~_i) / B (upstream gradient 1).
void launch_mixed_rows(const at::Tensor& z, const at::Tensor& y, const at::Tensor& partner, const at::Tensor& lam,
                       at::Tensor& lse, at::Tensor& m, at::Tensor& grad, cudaStream_t stream);

// grad_i = g w_i / B (softmax(z_i) - y~_i), g = grad_output (device scalar), w = 1 if undefined/empty.
void launch_grad_rows(const at::Tensor& z, const at::Tensor& y, const at::Tensor& partner, const at::Tensor& lam,
                      const at::Tensor& lse, const at::Tensor& weights, const at::Tensor& grad_output,
                      at::Tensor& grad, cudaStream_t stream);

// out_i = lam_i x_i + (1 - lam_i) x_{j_i} over x [B, D] (NaN row for a partner out of range).
void launch_mix(const at::Tensor& x, const at::Tensor& partner, const at::Tensor& lam, at::Tensor& out,
                cudaStream_t stream);

// grad *= g unless g == 1 (g read on the device: no synchronisation).
void launch_scale(at::Tensor& grad, const at::Tensor& grad_output, cudaStream_t stream);

}  // namespace mentormix::cuda
