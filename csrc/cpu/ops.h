// The CPU kernels of mentormix_fast._C: the op contract of docs/SPEC.md §5 (schemas in
// register.cpp, output shapes for tracing in meta.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace mentormix::cpu {

// Per-row loss [B] fp32: l without a partner, else the mixed CE m.
at::Tensor ce(const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& partner,
              const std::optional<at::Tensor>& lam);

// (loss [B] f32, v [B] f32, partner [B] i64, lam [B] f32); updates loss_ma and, when it draws,
// rng_state[1] in place.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> plan(
    const at::Tensor& logits, const at::Tensor& target, at::Tensor& loss_ma, at::Tensor& rng_state,
    const at::Tensor& mentornet, const at::Tensor& step, const std::optional<at::Tensor>& pool,
    const std::optional<at::Tensor>& uniform, const std::optional<at::Tensor>& beta, int64_t total_steps,
    double percentile, double decay, int64_t burn_in_epoch, double alpha);

// x~_i = lam_i x_i + (1 - lam_i) x_{partner_i}; x [B, ...] float, in x's dtype, contiguous.
at::Tensor mix(const at::Tensor& x, const at::Tensor& partner, const at::Tensor& lam);

// (loss 0-d f32, lse [B] f32, weights [B] f32 or [0]); updates loss_ma_mixed (second_reweight)
// and num_steps (when given) in place.
std::tuple<at::Tensor, at::Tensor, at::Tensor> mixed_loss(
    const at::Tensor& logits, const at::Tensor& target, const at::Tensor& partner, const at::Tensor& lam,
    const std::optional<at::Tensor>& given_weights, const std::optional<at::Tensor>& loss_ma_mixed,
    const std::optional<at::Tensor>& num_steps, const at::Tensor& mentornet, const at::Tensor& step,
    const std::optional<at::Tensor>& pool, int64_t total_steps, double percentile, double decay,
    int64_t burn_in_epoch, bool second_reweight);

// dL/dz_i = g w_i / B (softmax(z_i) - y~_i) in the logits' dtype (contiguous [B, K]); weights
// None or [0] mean 1.
at::Tensor mixed_loss_backward(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
                               const at::Tensor& partner, const at::Tensor& lam, const at::Tensor& lse,
                               const std::optional<at::Tensor>& weights);

}  // namespace mentormix::cpu
