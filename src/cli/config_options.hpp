// The --config / --set options shared by the subcommands that read a run configuration.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moda/config.hpp"

namespace moda::cli {

struct ConfigOptions {
  // Unset: the embedded default (configs/tiny.yaml); set but empty is a missing file.
  std::optional<std::string> path;
  std::vector<std::string> overrides;  // --set section.key=value
  CLI::Option* path_option = nullptr;  // set by add_to, for needs()/excludes()
  CLI::Option* set_option = nullptr;
  void add_to(CLI::App& cmd);
  Config load() const;
};

}  // namespace moda::cli
