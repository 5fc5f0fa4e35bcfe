// moda: one binary, one subcommand per job.
#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "moda/build_info.hpp"
#include "moda/dist.hpp"

namespace {

// spdlog colours its lines when stdout is a terminal. Under an MPI launcher it always is: Open MPI
// hands every rank a pseudo-terminal and forwards it, also into the file a job's output goes to,
// which then holds escape codes. So colours only without a launcher, and never with NO_COLOR set
// (no-color.org).
void set_up_console_log() {
  const auto set = [](const char* name) {
    const char* value = std::getenv(name);
    return value != nullptr && *value != '\0';
  };
  const bool launched = set("OMPI_COMM_WORLD_SIZE") || set("PMIX_RANK") || set("PMI_RANK");
  const spdlog::color_mode mode =
      launched || set("NO_COLOR") ? spdlog::color_mode::never : spdlog::color_mode::automatic;
  spdlog::set_default_logger(std::make_shared<spdlog::logger>(
      "", std::make_shared<spdlog::sinks::stdout_color_sink_mt>(mode)));
}

}  // namespace

int main(int argc, char** argv) {
  set_up_console_log();
  CLI::App app{"moda: pretraining of OLMo2 and Mixture-of-Depths Attention (MoDA) language models"};
  app.set_version_flag("--version", moda::build_description(),
                       "Print the version and the commit of this build");
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
  } catch (const std::bad_alloc&) {
    // The allocation's size and owner are gone by here; say what to look at.
    spdlog::error(
        "out of host memory (std::bad_alloc): the command needs more memory than this process may "
        "take (free memory, ulimit -v, a container's limit); `moda info` prints a config's plan");
    moda::abort_other_ranks(1);
    return 1;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    moda::abort_other_ranks(1);
    return 1;
  }
  return 0;
}
