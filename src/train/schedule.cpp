#include <cmath>
#include <numbers>

#include "moda/train.hpp"

namespace moda {

double learning_rate(const ScheduleConfig& s, double peak, int64_t step) {
  if (step < s.warmup_steps) {
    return peak * static_cast<double>(step + 1) / static_cast<double>(s.warmup_steps);
  }
  if (s.decay == LrDecay::constant) return peak;
  const int64_t span = std::max<int64_t>(s.total_steps - s.warmup_steps, 1);
  const double progress =
      std::min(1.0, static_cast<double>(step - s.warmup_steps) / static_cast<double>(span));
  const double shape = s.decay == LrDecay::cosine
                           ? 0.5 * (1.0 + std::cos(std::numbers::pi * progress))
                           : 1.0 - progress;
  return s.min_lr + (peak - s.min_lr) * shape;
}

}  // namespace moda
