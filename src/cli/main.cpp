// moda: one binary, one subcommand per job.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <exception>

#include "cli/commands.hpp"
#include "moda/dist.hpp"

int main(int argc, char** argv) {
  CLI::App app{"moda: pretraining of OLMo2 and Mixture-of-Depths Attention (MoDA) language models"};
  app.require_subcommand(1);
  moda::cli::register_train(app);
  moda::cli::register_info(app);
  moda::cli::register_tokenize(app);
  moda::cli::register_export(app);
  moda::cli::register_eval(app);
  moda::cli::register_sample(app);
  moda::cli::register_bench(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    moda::abort_other_ranks(1);
    return 1;
  }
  return 0;
}
