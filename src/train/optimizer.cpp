// Gradient norms (per tensor, so a non-finite gradient can be named) and AdamW over a range of
// the flat buffers (all of it, or this rank's ZeRO-1 shard).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "moda/train.hpp"

namespace moda {

std::vector<double> gradient_square_sums(Model& model, int64_t begin, int64_t end) {
  const auto& params = model.layout().params();
  std::vector<std::pair<int64_t, int64_t>> segments;
  segments.reserve(params.size());
  for (const ParamInfo& p : params) {
    const int64_t lo = std::max(p.offset, begin), hi = std::min(p.offset + p.numel, end);
    segments.emplace_back(lo, std::max<int64_t>(hi - lo, 0));
  }
  return model.backend().segment_sum_squares(model.grads(), segments);
}

GradientStats gradient_stats(const Model& model, std::span<const double> square_sums) {
  const auto& params = model.layout().params();
  GradientStats stats;
  double total = 0;
  for (size_t i = 0; i < square_sums.size(); ++i) {
    if (!std::isfinite(square_sums[i]) && stats.finite) {
      stats.finite = false;
      stats.first_bad = params[i].name;
    }
    total += square_sums[i];
  }
  stats.norm = std::sqrt(total);
  return stats;
}

void adamw_step(Model& model, const OptimizerConfig& opt, double lr, int64_t step,
                double grad_scale, int64_t begin, int64_t end) {
  AdamWArgs args;
  args.lr = lr;
  args.beta1 = opt.beta1;
  args.beta2 = opt.beta2;
  args.eps = opt.eps;
  args.step = step;
  args.grad_scale = grad_scale;
  Backend& be = model.backend();
  const int64_t decay_end = model.layout().decay_end(), total = model.layout().total();
  // Master weights and moments may hold one shard only: index them relative to its start.
  const int64_t state = model.state_offset();
  if (begin < state || end > state + model.master().numel) {
    throw std::logic_error(fmt::format(
        "adamw_step: range [{}, {}) outside the optimizer state [{}, {}) this model holds", begin,
        end, state, state + model.master().numel));
  }
  auto update = [&](int64_t lo, int64_t hi, double decay) {
    lo = std::max(lo, begin);
    hi = std::min(hi, end);
    if (hi <= lo) return;
    args.weight_decay = decay;
    const int64_t n = hi - lo;
    be.adamw(model.master().slice(lo - state, n), model.grads().slice(lo, n),
             model.adam_m().slice(lo - state, n), model.adam_v().slice(lo - state, n),
             model.weights().slice(lo, n), 0, n, args);
  };
  update(0, decay_end, opt.weight_decay);
  update(decay_end, total, 0.0);
}

}  // namespace moda
