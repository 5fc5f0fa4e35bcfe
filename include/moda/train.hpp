// The training loop: micro-batches with gradient accumulation, AdamW with global grad-norm
// clipping and a warmup + decay schedule, periodic validation, console and JSONL metrics, and a
// loss-curve image at the end.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "moda/config.hpp"
#include "moda/model.hpp"

namespace moda {

// Learning rate at optimizer step `step` (0-based): linear warmup to the peak over
// warmup_steps ((step + 1) / warmup_steps), then cosine / linear decay at progress
// (step - warmup_steps) / (total_steps - warmup_steps), which reaches min_lr at step total_steps,
// one past the last (constant: stays at peak). llm.c's schedule.
double learning_rate(const ScheduleConfig& schedule, double peak, int64_t step);

struct GradientStats {
  double norm = 0;  // global L2 norm over all parameters
  bool finite = true;
  std::string first_bad;  // name of the first tensor holding NaN or inf
};
// Squared norms of each parameter tensor's part inside [begin, end) of the flat gradient buffer
// (a ZeRO-1 shard; the whole buffer otherwise), in layout order.
std::vector<double> gradient_square_sums(Model& model, int64_t begin, int64_t end);
// Norm and first non-finite tensor from per-tensor squared norms (summed over ranks).
GradientStats gradient_stats(const Model& model, std::span<const double> square_sums);

// One AdamW step over [begin, end) of the flat buffers: decay on [0, decay_end), none after;
// the gradient is multiplied by grad_scale (clipping and nothing else) first.
void adamw_step(Model& model, const OptimizerConfig& opt, double lr, int64_t step,
                double grad_scale, int64_t begin, int64_t end);

struct StepRecord {
  int64_t step = 0;  // 1-based optimizer step just completed
  double loss = NAN, lr = 0, grad_norm = 0, tokens_per_s = 0, mfu = 0, seconds = 0;
  double val_loss = NAN;  // NaN unless validated at this step
};

struct TrainSummary {
  int rank = 0;       // this process's data-parallel rank (rank 0 reports)
  int64_t steps = 0;  // the step the run ended at (the checkpoint's when nothing was left to do)
  int64_t start_step = 0;    // > 0 when resumed from a checkpoint of that step
  bool interrupted = false;  // stopped by SIGTERM / SIGINT after saving a checkpoint
  int64_t skipped_steps = 0;
  std::vector<StepRecord> history;
  double final_val_loss = NAN;
  std::string profile;  // the table of runtime.profile_step; empty without one
};

struct TrainOptions {
  bool log_to_console = true;
  // "" (start fresh; checkpoints already in checkpoint.dir are moved aside), "auto" (newest
  // complete checkpoint of the run, else fresh; an error when there are some but none verifies)
  // or a checkpoint directory.
  std::string resume;
};

TrainSummary train(const Config& config, const TrainOptions& options);

// A duration for the log, at the precision one plans by: "45s", "12m05s", "2h03m", "3d04h".
std::string format_duration(double seconds);

// Writes a PNG line chart of the training loss (and validation points) to `path`.
void write_loss_plot(const std::string& path, const std::vector<StepRecord>& history);

}  // namespace moda
