// plan (SPEC §1.2-1.6, §5): per-example CE in one multi-threaded pass over the logits, then the
// O(B) part (percentile, moving average in place, weights, draws, softmax partner sampling, lam).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "checks.h"
#include "draws.h"
#include "ops.h"
#include "rows.h"
#include "weights.h"

namespace mentormix::cpu {
namespace {

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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> plan(
    const at::Tensor& logits_in, const at::Tensor& target_in, at::Tensor& loss_ma, at::Tensor& rng_state,
    const at::Tensor& mentornet, const at::Tensor& step, const std::optional<at::Tensor>& pool_in,
    const std::optional<at::Tensor>& uniform_in, const std::optional<at::Tensor>& beta_in, int64_t total_steps,
    double percentile, double decay, int64_t burn_in_epoch, double alpha) {
  // Every check before any state moves.
  check_logits(logits_in, "logits");
  const int64_t B = logits_in.size(0), K = logits_in.size(1);
  check_vector(target_in, B, at::kLong, "target");
  check_scalar(loss_ma, at::kFloat, "loss_ma");
  check_vector(rng_state, 2, at::kLong, "rng_state");
  at::Tensor mn_keep;
  const float* mn = mentornet_data(mentornet, mn_keep);
  const int64_t t = read_step(step);
  check_pool(pool_in);
  TORCH_CHECK(uniform_in.has_value() == beta_in.has_value(), "uniform and beta: give both or neither (got ",
              uniform_in.has_value() ? "uniform" : "beta", " only)");
  if (uniform_in.has_value()) {
    check_vector(*uniform_in, B, at::kDouble, "uniform");
    check_vector(*beta_in, B, at::kFloat, "beta");
  }
  check_total_steps(total_steps);
  check_percentile(percentile, decay);
  TORCH_CHECK(std::isfinite(alpha), "alpha: must be finite, got ", alpha);
  const bool mixing = alpha > 0;
  const bool draw = mixing && !uniform_in.has_value();
  TORCH_CHECK(!draw || B <= (int64_t{1} << 32), "logits: drawing in the kernel needs a batch of at most 2^32 "
              "examples, got ", B);

  const auto logits = unit_stride_rows(logits_in);
  const auto target = target_in.contiguous();
  const auto f32 = logits.options().dtype(at::kFloat);
  auto loss = at::empty({B}, f32);
  auto v = at::empty({B}, f32);
  auto partner = at::empty({B}, f32.dtype(at::kLong));
  auto lam = at::empty({B}, f32);
  float* loss_ptr = loss.data_ptr<float>();

  MENTORMIX_DISPATCH_LOGITS(logits.scalar_type(), "mentormix_plan", [&] {
    ce_rows(logits.const_data_ptr<scalar_t>(), logits.stride(0), B, K, target.const_data_ptr<int64_t>(), loss_ptr);
  });

  at::Tensor pool = pool_in.has_value() ? pool_in->contiguous() : loss;
  const int64_t n = pool.size(0);
  const float q = select_rank(pool.const_data_ptr<float>(), n, percentile_rank(n, percentile));
  float* ma_ptr = loss_ma.data_ptr<float>();
  const float ma = moving_average(*ma_ptr, q, decay);
  *ma_ptr = ma;
  const WeightParams p{mn, epoch_of_step(t, total_steps), burn_in_epoch};
  compute_weights(loss_ptr, B, ma, p, v.data_ptr<float>());

  int64_t* partner_ptr = partner.data_ptr<int64_t>();
  float* lam_ptr = lam.data_ptr<float>();
  if (!mixing) {
    for (int64_t i = 0; i < B; ++i) partner_ptr[i] = i;
    std::fill(lam_ptr, lam_ptr + B, 1.f);
    return {loss, v, partner, lam};
  }
  at::Tensor uniform, beta;
  if (draw) {
    uniform = at::empty({B}, f32.dtype(at::kDouble));
    beta = at::empty({B}, f32);
    int64_t* rng = rng_state.data_ptr<int64_t>();
    const int64_t rng_stride = rng_state.stride(0);
    const int64_t counter = rng[rng_stride];
    draw_uniform_beta(static_cast<uint64_t>(rng[0]), static_cast<uint64_t>(counter), alpha, B,
                      uniform.data_ptr<double>(), beta.data_ptr<float>());
    rng[rng_stride] = add_one_wrapping(counter);
  } else {
    uniform = uniform_in->contiguous();
    beta = beta_in->contiguous();
  }
  sample_partners(v.const_data_ptr<float>(), uniform.const_data_ptr<double>(), B, partner_ptr);
  mix_lambda(beta.const_data_ptr<float>(), v.const_data_ptr<float>(), B, lam_ptr);
  return {loss, v, partner, lam};
}

}  // namespace mentormix::cpu
