// The --config / --set options shared by the subcommands that read a run configuration.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include "moda/config.hpp"

namespace moda::cli {

struct ConfigOptions {
  std::string path;                    // empty: the embedded default (configs/tiny.yaml)
  std::vector<std::string> overrides;  // --set section.key=value
  void add_to(CLI::App& cmd);
  Config load() const;
};

}  // namespace moda::cli
