// Row kernels (one warp per row of the logits, computed in float, int64 offsets; the logits have
// unit stride along K and any row stride) and the mix kernel, with their launchers (tensors
// already checked by ops_cuda.cpp; launched on `stream`). A label outside [0, K) or a partner
// outside [0, B) gives a NaN loss, a zero gradient row and a NaN mixed row; nothing is read out
// of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime.h>

namespace mentormix::cuda {

// loss_i = lse(z_i) - z_i[y_i], or with `partner`/`lam` defined the mixed CE m_i (then lse_i is
// also written when `lse` is defined).
void launch_loss_rows(const at::Tensor& z, const at::Tensor& y, const at::Tensor& partner, const at::Tensor& lam,
                      at::Tensor& loss, at::Tensor& lse, cudaStream_t stream);

// grad_i = g w_i / B (softmax(z_i) - y~_i), g = *grad_loss (device scalar), w = 1 if undefined.
void launch_grad_rows(const at::Tensor& z, const at::Tensor& y, const at::Tensor& partner, const at::Tensor& lam,
                      const at::Tensor& lse, const at::Tensor& weights, const at::Tensor& grad_loss,
                      at::Tensor& grad, cudaStream_t stream);

// out_i = lam_i x_i + (1 - lam_i) x_{j_i} over x [B, D] contiguous.
void launch_mix(const at::Tensor& x, const at::Tensor& partner, const at::Tensor& lam, at::Tensor& out,
                cudaStream_t stream);

}  // namespace mentormix::cuda
