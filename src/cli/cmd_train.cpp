// `moda train`: trains the configured model (the embedded default without --config).
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cmath>

#include "cli/commands.hpp"
#include "cli/config_options.hpp"
#include "moda/train.hpp"

namespace moda::cli {

void register_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Train a model from a YAML config");
  auto options = std::make_shared<ConfigOptions>();
  options->add_to(*cmd);
  auto resume = std::make_shared<std::string>();
  cmd->add_option("--resume", *resume,
                  "auto: continue from the newest complete checkpoint of the run (if any; an "
                  "error when none verifies), or a checkpoint directory. Without it, checkpoints "
                  "already in checkpoint.dir are moved aside")
      // An empty value is a script's unset variable, not a wish to start over (which moves the
      // run's checkpoints aside).
      ->check([](const std::string& value) {
        return value.empty() ? std::string("empty; pass auto or a checkpoint directory") : "";
      });
  cmd->callback([options, resume] {
    const Config config = options->load();
    TrainOptions train_options;
    train_options.resume = *resume;
    const TrainSummary summary = train(config, train_options);
    if (summary.rank != 0) return;  // one report per job
    if (summary.interrupted) {
      spdlog::info("interrupted after step {}; checkpoint saved", summary.steps);
      return;
    }
    spdlog::info("done: step {}{}", summary.steps,
                 std::isfinite(summary.final_val_loss)
                     ? fmt::format(", final validation loss {:.4f}", summary.final_val_loss)
                     : "");
  });
}

}  // namespace moda::cli
