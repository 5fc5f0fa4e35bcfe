#include "cli/config_options.hpp"

namespace moda::cli {

void ConfigOptions::add_to(CLI::App& cmd) {
  path_option = cmd.add_option("-c,--config", path,
                               "YAML run configuration (default: the embedded configs/tiny.yaml)");
  set_option =
      cmd.add_option("--set", overrides,
                     "Override a key, e.g. --set model.n_layers=8 (repeatable; value is YAML)");
}

Config ConfigOptions::load() const {
  Config config = path ? load_config(*path) : default_config();
  if (!overrides.empty()) apply_overrides(config, overrides);
  return config;
}

}  // namespace moda::cli
