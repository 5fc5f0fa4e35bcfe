// Global gradient norm (per tensor, so a non-finite gradient can be named) and AdamW.
#include <cmath>

#include "moda/train.hpp"

namespace moda {

GradientStats gradient_stats(Model& model) {
  const auto& params = model.layout().params();
  std::vector<std::pair<int64_t, int64_t>> segments;
  segments.reserve(params.size());
  for (const ParamInfo& p : params) segments.emplace_back(p.offset, p.numel);
  const std::vector<double> sums = model.backend().segment_sum_squares(model.grads(), segments);
  GradientStats stats;
  double total = 0;
  for (size_t i = 0; i < sums.size(); ++i) {
    if (!std::isfinite(sums[i]) && stats.finite) {
      stats.finite = false;
      stats.first_bad = params[i].name;
    }
    total += sums[i];
  }
  stats.norm = std::sqrt(total);
  return stats;
}

void adamw_step(Model& model, const OptimizerConfig& opt, double lr, int64_t step,
                double grad_scale) {
  AdamWArgs args;
  args.lr = lr;
  args.beta1 = opt.beta1;
  args.beta2 = opt.beta2;
  args.eps = opt.eps;
  args.step = step;
  args.grad_scale = grad_scale;
  const ParamLayout& layout = model.layout();
  Backend& be = model.backend();
  args.weight_decay = opt.weight_decay;
  be.adamw(model.master(), model.grads(), model.adam_m(), model.adam_v(), model.weights(), 0,
           layout.decay_end(), args);
  args.weight_decay = 0.0;
  be.adamw(model.master(), model.grads(), model.adam_m(), model.adam_v(), model.weights(),
           layout.decay_end(), layout.total() - layout.decay_end(), args);
}

}  // namespace moda
