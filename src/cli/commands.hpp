// Each subcommand of the `moda` binary lives in its own file and registers itself on the app.
#pragma once

#include <CLI/CLI.hpp>

namespace moda::cli {

void register_train(CLI::App& app);
void register_info(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_export(CLI::App& app);
void register_eval(CLI::App& app);
void register_sample(CLI::App& app);
void register_bench(CLI::App& app);

}  // namespace moda::cli
