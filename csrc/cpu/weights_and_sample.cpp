// Steps 2-6 (SPEC §1): per-example CE in one multi-threaded pass over the logits, then the O(B)
// part (percentile, moving average, weights, softmax partner sampling, lam) on the calling thread.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/mentornet_layout.h"
#include "checks.h"
#include "draws.h"
#include "ops.h"
#include "vec_row.h"
#include "weights.h"

namespace mentormix::cpu {
namespace {

// l_i = logsumexp(z_i) - z_i[y_i]; a label outside [0, K) gives NaN. One read of each row.
template <typename T>
void per_sample_ce(const T* z, int64_t row_stride, int64_t B, int64_t K, const int64_t* y, float* loss) {
  const int64_t grain = std::max<int64_t>(1, 32768 / K);
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* row = z + i * row_stride;
      const int64_t yi = y[i];
      const float lse = row_logsumexp(row, K);
      loss[i] = (yi >= 0 && yi < K) ? lse - static_cast<float>(row[yi]) : std::numeric_limits<float>::quiet_NaN();
    }
  });
}

// P = softmax(v) (fp32, as torch.softmax), cdf accumulated in double and stored in fp32 (as
// torch.cumsum on CPU), partner_i = first j with cdf_j > u_i * cdf_{B-1}, clamped to B - 1.
// The search starts from a guide table (guide[g] = first j with cdf_j > (g / B) * total), so a
// lookup is O(1) expected instead of a branchy binary search; the start is verified, so the
// result is the binary search's whatever the rounding.
void sample_partners(const float* v, const double* uniform, int64_t B, int64_t* partner) {
  float vmax = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < B; ++i) vmax = std::max(vmax, v[i]);
  std::vector<float> cdf(B);
  float sum = 0.f;
  for (int64_t i = 0; i < B; ++i) {
    cdf[i] = std::exp(v[i] - vmax);
    sum += cdf[i];
  }
  const float inv = 1.f / sum;
  double acc = 0.0;
  for (int64_t i = 0; i < B; ++i) {
    acc += static_cast<double>(cdf[i] * inv);
    cdf[i] = static_cast<float>(acc);
  }
  const float total = cdf[B - 1];
  std::vector<int64_t> guide(B);
  for (int64_t g = 0, j = 0; g < B; ++g) {
    const float threshold = static_cast<float>(static_cast<double>(g) / static_cast<double>(B)) * total;
    while (j < B - 1 && cdf[j] <= threshold) ++j;
    guide[g] = j;
  }
  for (int64_t i = 0; i < B; ++i) {
    const float u = static_cast<float>(uniform[i]) * total;
    const int64_t g = std::min<int64_t>(B - 1, std::max<int64_t>(0, static_cast<int64_t>(uniform[i] * B)));
    int64_t j = guide[g];
    if (j > 0 && cdf[j - 1] > u) {  // rounding put the start past the answer: search below it
      j = std::upper_bound(cdf.begin(), cdf.begin() + j, u) - cdf.begin();
    } else {
      while (j < B && cdf[j] <= u) ++j;
    }
    partner[i] = std::min<int64_t>(j, B - 1);
  }
}

// lam = max(b, 1 - b), then 1 - lam where v < 0.5.
void mix_lambda(const float* beta, const float* v, int64_t B, float* lam) {
  for (int64_t i = 0; i < B; ++i) {
    const float l = std::max(beta[i], 1.f - beta[i]);
    lam[i] = v[i] >= 0.5f ? l : 1.f - l;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> weights_and_sample(
    const at::Tensor& logits_in, const at::Tensor& target_in, const at::Tensor& loss_ma, const at::Tensor& epoch,
    const at::Tensor& mentornet, const std::optional<at::Tensor>& uniform_in, const std::optional<at::Tensor>& beta_in,
    std::optional<at::Generator> generator, double alpha, int64_t rank, double decay, int64_t burn_in_epoch) {
  check_logits(logits_in, "logits");
  const int64_t B = logits_in.size(0), K = logits_in.size(1);
  check_vector(target_in, B, at::kLong, "target");
  check_scalar(loss_ma, at::kFloat, "loss_ma");
  check_scalar(epoch, at::kLong, "epoch");
  TORCH_CHECK(rank >= 0 && rank < B, "rank: must be in [0, ", B, "), got ", rank);
  const bool use_mn = mentornet.numel() > 0;
  if (use_mn) check_vector(mentornet, kMnSize, at::kFloat, "mentornet");
  const auto logits = unit_stride_rows(logits_in);
  const auto target = target_in.contiguous();
  const auto mn = use_mn ? mentornet.contiguous() : mentornet;

  const auto f32 = logits.options().dtype(at::kFloat);
  auto loss = at::empty({B}, f32);
  auto v = at::empty({B}, f32);
  auto partner = at::empty({B}, f32.dtype(at::kLong));
  auto lam = at::empty({B}, f32);
  auto new_ma = at::empty({}, f32);

  MENTORMIX_DISPATCH_LOGITS(logits.scalar_type(), "mentormix_weights_and_sample", [&] {
    per_sample_ce(logits.data_ptr<scalar_t>(), logits.stride(0), B, K, target.data_ptr<int64_t>(),
                  loss.data_ptr<float>());
  });

  const WeightParams p{use_mn ? mn.data_ptr<float>() : nullptr, rank, decay, burn_in_epoch, epoch.item<int64_t>()};
  const float ma = update_moving_average(loss.data_ptr<float>(), B, loss_ma.item<float>(), p);
  new_ma.fill_(ma);
  compute_weights(loss.data_ptr<float>(), B, ma, p, v.data_ptr<float>());

  int64_t* partner_ptr = partner.data_ptr<int64_t>();
  float* lam_ptr = lam.data_ptr<float>();
  if (alpha > 0) {
    at::Tensor uniform, beta;
    if (uniform_in.has_value() && beta_in.has_value()) {
      check_vector(*uniform_in, B, at::kDouble, "uniform");
      check_vector(*beta_in, B, at::kFloat, "beta");
      uniform = uniform_in->contiguous();
      beta = beta_in->contiguous();
    } else {
      TORCH_CHECK(!uniform_in.has_value() && !beta_in.has_value(), "uniform and beta: give both or neither");
      uniform = at::empty({B}, f32.dtype(at::kDouble));
      beta = at::empty({B}, f32);
      auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
      uint64_t key;
      {
        std::lock_guard<std::mutex> lock(gen->mutex_);
        key = gen->random64();
      }
      draw_uniform_beta(key, alpha, B, uniform.data_ptr<double>(), beta.data_ptr<float>());
    }
    sample_partners(v.data_ptr<float>(), uniform.data_ptr<double>(), B, partner_ptr);
    mix_lambda(beta.data_ptr<float>(), v.data_ptr<float>(), B, lam_ptr);
  } else {
    for (int64_t i = 0; i < B; ++i) partner_ptr[i] = i;
    std::fill(lam_ptr, lam_ptr + B, 1.f);
  }
  return {loss, v, partner, lam, new_ma};
}

}  // namespace mentormix::cpu
