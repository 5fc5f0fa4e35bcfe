// moda: one binary, one subcommand per job.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <exception>
#include <string>
#include <vector>

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
    // CLI11 would only say "A subcommand is required" for a misspelt one.
    if (argc > 1 && argv[1][0] != '-' &&
        app.get_subcommands([&](CLI::App* sub) { return sub->check_name(argv[1]); }).empty()) {
      std::vector<std::string> names;
      for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
        names.push_back(sub->get_name());
      }
      throw CLI::ExtrasError(fmt::format("unknown subcommand '{}'; expected one of {}", argv[1],
                                         fmt::join(names, ", ")),
                             CLI::ExitCodes::ExtrasError);
    }
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
