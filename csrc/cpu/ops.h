// The CPU kernels of mentormix_fast._C (SPEC §1 steps 2-9, §4). Schemas in register.cpp.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <optional>

#include <tuple>

namespace mentormix::cpu {

// Steps 2-6. logits [B, K] (fp32/bf16/fp16, unit stride along K), target [B] int64, loss_ma 0-d
// fp32, epoch 0-d int64, mentornet folded fp32 [kMnSize] or empty (threshold). alpha <= 0: no
// mixing. The draws are uniform [B] fp64 and beta [B] fp32 when both are given, otherwise drawn
// from `generator` (draws.h). Returns (loss [B] f32, v [B] f32, partner [B] i64, lam [B] f32,
// new_ma 0-d f32).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> weights_and_sample(
    const at::Tensor& logits, const at::Tensor& target, const at::Tensor& loss_ma, const at::Tensor& epoch,
    const at::Tensor& mentornet, const std::optional<at::Tensor>& uniform, const std::optional<at::Tensor>& beta,
    std::optional<at::Generator> generator, double alpha, int64_t rank, double decay, int64_t burn_in_epoch);

// Step 7: x~_i = lam_i x_i + (1 - lam_i) x_{partner_i}; x [B, ...] float, in x's dtype.
at::Tensor mix(const at::Tensor& x, const at::Tensor& partner, const at::Tensor& lam);

// Steps 8-9 forward. Returns (loss 0-d f32, new_ma2 0-d f32, lse [B] f32, v2 [B] f32 or empty,
// grad [B, K] in the logits' dtype for an upstream gradient of 1, or empty unless grad_in_forward).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mixed_loss_forward(
    const at::Tensor& logits, const at::Tensor& target, const at::Tensor& partner, const at::Tensor& lam,
    const at::Tensor& loss_ma_mixed, const at::Tensor& epoch, const at::Tensor& mentornet, int64_t rank,
    double decay, int64_t burn_in_epoch, bool second_reweight, bool grad_in_forward);

// Steps 8-9 backward (flash pattern): dL/dz_i = g w_i / B (softmax(z_i) - y~_i), one read of z.
at::Tensor mixed_loss_backward(const at::Tensor& grad_output, const at::Tensor& logits, const at::Tensor& target,
                               const at::Tensor& partner, const at::Tensor& lam, const at::Tensor& lse,
                               const at::Tensor& weights);

// grad *= g in place, skipped when g == 1 (the gradient written by the forward).
void scale_grad_(at::Tensor& grad, const at::Tensor& grad_output);

}  // namespace mentormix::cpu
