// `moda train`: trains the configured model (the embedded default without --config).
#include <spdlog/spdlog.h>

#include "cli/commands.hpp"
#include "cli/config_options.hpp"
#include "moda/train.hpp"

namespace moda::cli {

void register_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Train a model from a YAML config");
  auto options = std::make_shared<ConfigOptions>();
  options->add_to(*cmd);
  cmd->callback([options] {
    const Config config = options->load();
    const TrainSummary summary = train(config, TrainOptions{});
    spdlog::info("done: {} steps, final validation loss {:.4f}", summary.steps,
                 summary.final_val_loss);
  });
}

}  // namespace moda::cli
