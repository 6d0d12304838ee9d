// Steps 8-9: the mixed soft-label CE, its optional second reweighting, and the gradient.
//
//   m_i = lse_i - lam_i z_i[y_i] - (1 - lam_i) z_i[y_{j_i}]       (NaN when a label is out of range)
//   L   = sum_i w_i m_i / B,  w = v2 (second_reweight) or 1
//   dL/dz_i = g w_i / B (softmax(z_i) - y~_i)                       (zero for out-of-range labels)
//
// Passes over z [B, K]: without second_reweight the forward can write the gradient for g = 1 while
// the row is in cache (one read, one write; the backward only rescales when g != 1). With
// second_reweight the weights need the whole batch's percentile first, so the forward keeps
// lse [B] and the backward reads z once more and writes the gradient (two reads, one write).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../common/mentornet_layout.h"
#include "checks.h"
#include "ops.h"
#include "vec_row.h"
#include "weights.h"

namespace mentormix::cpu {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

inline int64_t row_grain(int64_t K) { return std::max<int64_t>(1, 32768 / K); }

// grad row = scale (softmax(z) - lam e_y - (1 - lam) e_yp); the two label entries are computed
// from z directly so that they are rounded to T once. Out-of-range labels: a zero row.
template <typename T>
inline void write_grad_row(const T* z, T* g, int64_t K, float lse, float scale, int64_t y, int64_t yp, float lam) {
  if (!(y >= 0 && y < K && yp >= 0 && yp < K)) {
    std::fill(g, g + K, static_cast<T>(0.f));
    return;
  }
  row_scaled_softmax(z, g, K, lse, scale);
  const float py = std::exp(static_cast<float>(z[y]) - lse);
  if (y == yp) {
    g[y] = static_cast<T>((py - 1.f) * scale);
  } else {
    const float pp = std::exp(static_cast<float>(z[yp]) - lse);
    g[y] = static_cast<T>((py - lam) * scale);
    g[yp] = static_cast<T>((pp - (1.f - lam)) * scale);
  }
}

template <typename T>
void forward_rows(const T* z, int64_t row_stride, int64_t B, int64_t K, const int64_t* y, const int64_t* partner,
                  const float* lam, float* lse_out, float* m_out, T* grad) {
  const float scale = 1.f / static_cast<float>(B);
  at::parallel_for(0, B, row_grain(K), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* row = z + i * row_stride;
      const int64_t yi = y[i], yp = y[partner[i]];
      const float lse = row_logsumexp(row, K);
      lse_out[i] = lse;
      const bool ok = yi >= 0 && yi < K && yp >= 0 && yp < K;
      m_out[i] = ok ? lse - lam[i] * static_cast<float>(row[yi]) - (1.f - lam[i]) * static_cast<float>(row[yp]) : kNaN;
      if (grad != nullptr) write_grad_row(row, grad + i * K, K, lse, scale, yi, yp, lam[i]);
    }
  });
}

template <typename T>
void backward_rows(const T* z, int64_t row_stride, int64_t B, int64_t K, const int64_t* y, const int64_t* partner,
                   const float* lam, const float* lse, const float* w, float g, T* grad) {
  const float scale = g / static_cast<float>(B);
  at::parallel_for(0, B, row_grain(K), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float s = w == nullptr ? scale : scale * w[i];
      write_grad_row(z + i * row_stride, grad + i * K, K, lse[i], s, y[i], y[partner[i]], lam[i]);
    }
  });
}

// sum_i w_i m_i / B with a double accumulator (w = 1 when null).
float weighted_mean(const float* m, const float* w, int64_t B) {
  double acc = 0.0;
  for (int64_t i = 0; i < B; ++i) acc += static_cast<double>(w == nullptr ? m[i] : w[i] * m[i]);
  return static_cast<float>(acc / static_cast<double>(B));
}

struct Common {
  at::Tensor logits, target, partner, lam;
  int64_t B, K;
};

Common check_common(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& partner,
                    const at::Tensor& lam) {
  check_logits(logits, "logits");
  const int64_t B = logits.size(0), K = logits.size(1);
  check_vector(target, B, at::kLong, "target");
  check_vector(partner, B, at::kLong, "partner");
  check_vector(lam, B, at::kFloat, "lam");
  Common c{unit_stride_rows(logits), target.contiguous(), partner.contiguous(), lam.contiguous(), B, K};
  check_partner(c.partner.data_ptr<int64_t>(), B);
  return c;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mixed_loss_forward(
    const at::Tensor& logits, const at::Tensor& target, const at::Tensor& partner, const at::Tensor& lam,
    const at::Tensor& loss_ma_mixed, const at::Tensor& epoch, const at::Tensor& mentornet, int64_t rank,
    double decay, int64_t burn_in_epoch, bool second_reweight, bool grad_in_forward) {
  const Common c = check_common(logits, target, partner, lam);
  check_scalar(loss_ma_mixed, at::kFloat, "loss_ma_mixed");
  check_scalar(epoch, at::kLong, "epoch");
  TORCH_CHECK(!(second_reweight && grad_in_forward), "grad_in_forward needs second_reweight = False");
  const bool use_mn = mentornet.numel() > 0;
  if (second_reweight) {
    TORCH_CHECK(rank >= 0 && rank < c.B, "rank: must be in [0, ", c.B, "), got ", rank);
    if (use_mn) check_vector(mentornet, kMnSize, at::kFloat, "mentornet");
  }
  const auto f32 = c.logits.options().dtype(at::kFloat);
  auto lse = at::empty({c.B}, f32);
  auto m = at::empty({c.B}, f32);
  auto grad = grad_in_forward ? at::empty({c.B, c.K}, c.logits.options()) : at::empty({0}, c.logits.options());
  MENTORMIX_DISPATCH_LOGITS(c.logits.scalar_type(), "mentormix_mixed_loss_forward", [&] {
    forward_rows(c.logits.data_ptr<scalar_t>(), c.logits.stride(0), c.B, c.K, c.target.data_ptr<int64_t>(),
                 c.partner.data_ptr<int64_t>(), c.lam.data_ptr<float>(), lse.data_ptr<float>(), m.data_ptr<float>(),
                 grad_in_forward ? grad.data_ptr<scalar_t>() : nullptr);
  });

  auto loss = at::empty({}, f32);
  auto new_ma = at::empty({}, f32);
  if (!second_reweight) {
    loss.fill_(weighted_mean(m.data_ptr<float>(), nullptr, c.B));
    new_ma.copy_(loss_ma_mixed.reshape({}));
    return {loss, new_ma, lse, at::empty({0}, f32), grad};
  }
  const auto mn = use_mn ? mentornet.contiguous() : mentornet;
  const WeightParams p{use_mn ? mn.data_ptr<float>() : nullptr, rank, decay, burn_in_epoch, epoch.item<int64_t>()};
  const float ma = update_moving_average(m.data_ptr<float>(), c.B, loss_ma_mixed.item<float>(), p);
  auto w = at::empty({c.B}, f32);
  compute_weights(m.data_ptr<float>(), c.B, ma, p, w.data_ptr<float>());
  loss.fill_(weighted_mean(m.data_ptr<float>(), w.data_ptr<float>(), c.B));
  new_ma.fill_(ma);
  return {loss, new_ma, lse, w, grad};
}

at::Tensor mixed_loss_backward(const at::Tensor& grad_output, const at::Tensor& logits, const at::Tensor& target,
                               const at::Tensor& partner, const at::Tensor& lam, const at::Tensor& lse_in,
                               const at::Tensor& weights) {
  const Common c = check_common(logits, target, partner, lam);
  check_scalar(grad_output, at::kFloat, "grad_output");
  check_vector(lse_in, c.B, at::kFloat, "lse");
  const bool weighted = weights.numel() > 0;
  if (weighted) check_vector(weights, c.B, at::kFloat, "weights");
  const auto lse = lse_in.contiguous();
  const auto w = weighted ? weights.contiguous() : weights;
  auto grad = at::empty({c.B, c.K}, c.logits.options());
  MENTORMIX_DISPATCH_LOGITS(c.logits.scalar_type(), "mentormix_mixed_loss_backward", [&] {
    backward_rows(c.logits.data_ptr<scalar_t>(), c.logits.stride(0), c.B, c.K, c.target.data_ptr<int64_t>(),
                  c.partner.data_ptr<int64_t>(), c.lam.data_ptr<float>(), lse.data_ptr<float>(),
                  weighted ? w.data_ptr<float>() : nullptr, grad_output.item<float>(), grad.data_ptr<scalar_t>());
  });
  return grad;
}

void scale_grad_(at::Tensor& grad, const at::Tensor& grad_output) {
  check_scalar(grad_output, at::kFloat, "grad_output");
  TORCH_CHECK(grad.device().is_cpu() && grad.is_contiguous(), "grad: expected a contiguous CPU tensor");
  const float g = grad_output.item<float>();
  if (g == 1.f) return;
  MENTORMIX_DISPATCH_LOGITS(grad.scalar_type(), "mentormix_scale_grad", [&] {
    scalar_t* p = grad.data_ptr<scalar_t>();
    at::parallel_for(0, grad.numel(), 65536, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) p[k] = static_cast<scalar_t>(static_cast<float>(p[k]) * g);
    });
  });
}

}  // namespace mentormix::cpu
