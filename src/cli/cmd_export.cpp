// `moda export`: a checkpoint to the Hugging Face layout (safetensors + config.json + tokenizer
// files; model_type "moda" models also get the modeling files of tools/hf/).
// `moda export --init-checkpoint ROOT [--config C --set k=v] [--output DIR]` instead writes a
// step-0 checkpoint of a freshly initialized model (parity and smoke tests of export without
// training) and exports that one.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <random>

#include "cli/commands.hpp"
#include "cli/config_options.hpp"
#include "export/hf_export.hpp"
#include "moda/checkpoint.hpp"

namespace moda::cli {

namespace {

std::string write_init_checkpoint(const Config& config, const std::string& root, double noise) {
  auto backend = make_backend("cpu", static_cast<int>(config.runtime.threads));
  Model model(config, *backend, 1, 1);
  model.init_parameters(config.runtime.seed);
  std::vector<double> params = model.parameters();
  if (noise > 0) {
    // Every tensor, norm weights included, moved off its init value, so a swapped tensor shows.
    std::mt19937_64 rng(config.runtime.seed + 1);
    std::normal_distribution<double> normal(0.0, noise);
    for (double& p : params) p += normal(rng);
  }
  CheckpointState state;
  state.meta.step = 0;
  state.meta.total_params = model.layout().total();
  state.meta.rng_seed = config.runtime.seed;
  state.meta.loader.seed = config.data.seed;
  state.meta.config_yaml = to_yaml(config);
  state.shard.range = {0, state.meta.total_params};
  state.shard.master.assign(params.begin(), params.end());
  state.shard.adam_m.assign(params.size(), 0.0f);
  state.shard.adam_v.assign(params.size(), 0.0f);
  return save_checkpoint(root, state, 0, 0);
}

}  // namespace

void register_export(CLI::App& app) {
  struct Options {
    std::string checkpoint, output, format = "hf", dtype = "f32", tools_dir, init_root;
    double init_noise = 0;
    ConfigOptions config;
  };
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("export", "Export a checkpoint's weights (Hugging Face format)");
  auto* checkpoint =
      cmd->add_option("--checkpoint", o->checkpoint, "Checkpoint directory (.../step-00000123)");
  cmd->add_option("--output,-o", o->output, "Output directory");
  cmd->add_option("--format", o->format, "Export format")->check(CLI::IsMember({"hf"}));
  cmd->add_option("--dtype", o->dtype, "Tensor dtype in model.safetensors")
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd->add_option("--hf-tools", o->tools_dir,
                  "Folder with modeling_moda.py / configuration_moda.py (default: tools/hf of "
                  "the repository, or $MODA_HF_TOOLS)");
  auto* init = cmd->add_option("--init-checkpoint", o->init_root,
                               "Instead of exporting a checkpoint: write ROOT/step-00000000, a "
                               "checkpoint of a freshly initialized model of --config / --set "
                               "(only with this option), and export it when --output is given");
  init->excludes(checkpoint);
  cmd->add_option("--init-noise", o->init_noise,
                  "With --init-checkpoint: add N(0, x) noise to every parameter (x >= 0)")
      ->needs(init);
  o->config.add_to(*cmd);
  o->config.path_option->needs(init);
  o->config.set_option->needs(init);
  cmd->callback([o] {
    if (!std::isfinite(o->init_noise) || o->init_noise < 0) {
      throw CLI::ValidationError("--init-noise",
                                 fmt::format("must be finite and >= 0, got {}", o->init_noise));
    }
    if (!o->init_root.empty()) {
      const std::string dir = write_init_checkpoint(o->config.load(), o->init_root, o->init_noise);
      spdlog::info("wrote {}", dir);
      if (o->output.empty()) return;
      o->checkpoint = dir;
    }
    if (o->checkpoint.empty() || o->output.empty()) {
      throw CLI::ValidationError("export", "--checkpoint and --output are required");
    }
    ExportOptions options;
    options.dtype = o->dtype == "bf16" ? SafeDType::bf16 : SafeDType::f32;
    options.tools_dir = o->tools_dir;
    writing_to("--output", o->output,
               [&] { export_checkpoint_hf(o->checkpoint, o->output, options); });
  });
}

}  // namespace moda::cli
