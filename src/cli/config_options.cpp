#include "cli/config_options.hpp"

namespace moda::cli {

void ConfigOptions::add_to(CLI::App& cmd) {
  cmd.add_option("-c,--config", path,
                 "YAML run configuration (default: the embedded configs/tiny.yaml)");
  cmd.add_option("--set", overrides,
                 "Override a key, e.g. --set model.n_layers=8 (repeatable; value is YAML)");
}

Config ConfigOptions::load() const {
  Config config = path.empty() ? default_config() : load_config(path);
  if (!overrides.empty()) apply_overrides(config, overrides);
  return config;
}

}  // namespace moda::cli
