// Each subcommand of the `moda` binary lives in its own file and registers itself on the app.
#pragma once

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>

namespace moda::cli {

void register_train(CLI::App& app);
void register_info(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_export(CLI::App& app);
void register_eval(CLI::App& app);
void register_sample(CLI::App& app);
void register_bench(CLI::App& app);

// Runs `write` (which writes under `path`, given by `option`); a filesystem error about `path`
// itself (a file, not a folder; not writable) becomes an error that names the option, instead of
// the library's bare "filesystem error: ... [path]".
template <typename Write>
auto writing_to(std::string_view option, const std::string& path, Write&& write) {
  try {
    return write();
  } catch (const std::filesystem::filesystem_error& e) {
    if (e.path1() != std::filesystem::path(path)) throw;
    throw std::runtime_error(fmt::format("{} {}: {}", option, path, e.code().message()));
  }
}

}  // namespace moda::cli
