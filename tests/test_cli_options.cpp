// Command-line checks of the `moda` binary: subcommand names, option ranges and combinations, the
// errors of bad inputs and output paths, and the parameter counts `moda info` prints.
#include <fmt/format.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "test_util.hpp"

namespace {

using Catch::Matchers::Contains;
namespace fs = std::filesystem;

struct Result {
  int rc = -1;
  std::string output;  // stdout and stderr
};

// Runs `moda ARGS` in the source folder (configs/ resolves there).
Result moda_run(const std::string& args) {
  static const std::string log = moda::test::temp_dir("cli_options") + "/output.txt";
  const std::string cmd =
      fmt::format("cd '{}' && '{}' {} > '{}' 2>&1", MODA_SOURCE_DIR, MODA_BINARY, args, log);
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, moda::test::read_text(log)};
}

// A step-0 checkpoint of the embedded tiny config, written once.
const std::string& tiny_checkpoint() {
  static const std::string dir = [] {
    const std::string root = moda::test::temp_dir("cli_checkpoint");
    const Result r = moda_run("export --init-checkpoint " + root);
    REQUIRE(r.rc == 0);
    return root + "/step-00000000";
  }();
  return dir;
}

constexpr int kValidationError = 105;  // CLI::ExitCodes::ValidationError

}  // namespace

TEST_CASE("moda names an unknown subcommand", "[cli]") {
  const Result r = moda_run("foo");
  CHECK(r.rc != 0);
  CHECK_THAT(r.output, Contains("unknown subcommand 'foo'; expected one of train, info"));
}

TEST_CASE("moda colours its log on a terminal of its own, never with NO_COLOR", "[cli]") {
  MODA_SKIP_UNLESS(std::system("command -v script > /dev/null 2>&1") == 0,
                   "script not found (apt-get install bsdutils)");
  // `script` runs moda on a pseudo-terminal; an invalid schedule ends the run at its first log
  // line, an error, which a terminal shows in red.
  const std::string log = moda::test::temp_dir("cli_colour") + "/output.txt";
  const auto on_terminal = [&](const std::string& env) {
    const std::string cmd = fmt::format(
        "script -qec \"env -u OMPI_COMM_WORLD_SIZE -u PMIX_RANK -u PMI_RANK {} '{}' "
        "train --set schedule.total_steps=3\" /dev/null > '{}' 2>&1",
        env, MODA_BINARY, log);
    CHECK(std::system(cmd.c_str()) != 0);
    const std::string text = moda::test::read_text(log);
    CHECK_THAT(text, Contains("schedule.warmup_steps (15) exceeds schedule.total_steps (3)"));
    return text;
  };
  CHECK_THAT(on_terminal("-u NO_COLOR"), Contains("[\x1b[31m\x1b[1merror\x1b[m]"));
  CHECK(on_terminal("NO_COLOR=1").find('\x1b') == std::string::npos);
}

TEST_CASE("moda --version names the version and the commit of the build", "[cli]") {
  const Result r = moda_run("--version");
  REQUIRE(r.rc == 0);
  // The commit as git sees the sources now (the test is built with the binary); "unknown" outside
  // a git checkout.
  const std::string git = fmt::format("git -C '{}'", MODA_SOURCE_DIR);
  const std::string log = moda::test::temp_dir("cli_version") + "/head.txt";
  std::string commit = "unknown";
  if (std::system(
          fmt::format("{} rev-parse --short=12 HEAD > '{}' 2> /dev/null", git, log).c_str()) == 0) {
    commit = moda::test::read_text(log);
    commit.erase(commit.find_last_not_of('\n') + 1);
    const int diff = std::system(fmt::format("{} diff --quiet HEAD --", git).c_str());
    if (WIFEXITED(diff) && WEXITSTATUS(diff) == 1) commit += "-dirty";
  }
  CAPTURE(r.output, commit);
  CHECK(std::regex_match(r.output,
                         std::regex(R"(moda [0-9]+\.[0-9]+\.[0-9]+ \(commit )" + commit +
                                    R"(, (CPU only|CUDA backend|CUDA backend, NCCL)\)\n)")));
}

TEST_CASE("moda info prints the parameter counts of docs/parameter_counts.md", "[cli][params]") {
  // {config, paper convention, allocated}; Table 3 is docs/parameter_counts.md's first table.
  const std::vector<std::tuple<std::string, int64_t, int64_t>> rows = {
      {"table3_row1_olmo2_36l", 669045760, -1},
      {"table3_row2_olmo2_38l", 700510208, -1},
      {"table3_row3_moda_depth_kv", 669045760, -1},
      {"table3_row4_moda_ffn_kv", 705763840, -1},
      {"table3_row5_moda_attn_kv_proj", 742481920, -1},
      {"table6_olmo2_24l_post", 71233920, 90568704},
      {"table6_moda_24l_post", 71233920, 90568704},
      {"table6_moda_ffn_kv_24l_post", 73497856, 92832640},
      {"table6_olmo2_48l_post", 123169152, 142503936},
      {"table6_olmo2_48l_pre", 123169536, 142504320},
      {"table6_moda_48l_post", 123169152, 142503936},
      {"table6_moda_48l_pre", 123169536, 142504320},
      {"table6_moda_ffn_kv_48l_post", 127795456, 147130240},
      {"table6_moda_ffn_kv_48l_pre", 127795840, 147130624},
  };
  for (const auto& [name, paper, allocated] : rows) {
    CAPTURE(name);
    const Result r = moda_run(fmt::format("info -c configs/paper/{}.yaml", name));
    REQUIRE(r.rc == 0);
    CHECK_THAT(r.output, Contains(fmt::format(
                             "paper convention (embedding once, unpadded vocab): {} ", paper)));
    if (allocated >= 0) {
      CHECK_THAT(r.output, Contains(fmt::format("LM head):              {} ", allocated)));
    }
  }
}

TEST_CASE("moda info gives a checkpoint save's host memory: a shard file less its header",
          "[cli][checkpoint]") {
  const Result r = moda_run("info");
  REQUIRE(r.rc == 0);
  std::smatch m;
  REQUIRE(
      std::regex_search(r.output, m,
                        std::regex(R"(host memory of a checkpoint save: [0-9.]+ MiB \(([0-9]+) )"
                                   R"(bytes, .*; kept between saves)")));
  // The default config's one-rank checkpoint: one shard, a 64-byte header and the state.
  const auto file = std::filesystem::path(tiny_checkpoint()) / "shard-00000-of-00001.bin";
  CHECK(std::stoull(m[1].str()) + 64 == std::filesystem::file_size(file));
  CHECK_THAT(moda_run("info --set checkpoint.background=false").output,
             Contains("; freed after each save (checkpoint.background off)"));
}

TEST_CASE("train refuses an empty --resume (an unset variable), starting nothing", "[cli]") {
  const std::string dir = moda::test::temp_dir("cli_resume_empty");
  const Result r = moda_run(fmt::format("train --set logging.dir={} --resume ''", dir));
  CHECK(r.rc == kValidationError);
  CHECK_THAT(r.output, Contains("--resume: empty; pass auto or a checkpoint directory"));
  CHECK_FALSE(fs::exists(dir + "/metrics.jsonl"));
}

TEST_CASE("config options: an empty --config path and out-of-range values are errors", "[cli]") {
  Result r = moda_run("info --config ''");
  CHECK(r.rc == 1);
  CHECK_THAT(r.output, Contains("cannot read config file '': the path is empty"));
  r = moda_run("info --set model.vocab_multiple=9223372036854775807");
  CHECK(r.rc == 1);
  CHECK_THAT(r.output, Contains("model.vocab_multiple must be <= 2147483648"));
}

TEST_CASE("export: options that go together, the checkpoint root, the output path", "[cli]") {
  const std::string& checkpoint = tiny_checkpoint();
  const std::string out = moda::test::temp_dir("cli_export");
  const std::string base = fmt::format("export --checkpoint {} --output {}/x", checkpoint, out);
  const std::vector<std::pair<std::string, std::string>> refused = {
      {base + " --set model.n_layers=2", "--set requires --init-checkpoint"},
      {base + " --config /does/not/exist.yaml", "--config requires --init-checkpoint"},
      {base + " --init-noise 0.1", "--init-noise requires --init-checkpoint"},
      {fmt::format("export --init-checkpoint {}/i --init-noise -0.5", out),
       "--init-noise: must be finite and >= 0, got -0.5"},
      {fmt::format("export --init-checkpoint {}/i --init-noise nan", out),
       "--init-noise: must be finite and >= 0, got nan"},
      {base + fmt::format(" --init-checkpoint {}/i", out), "excludes"},
  };
  for (const auto& [args, message] : refused) {
    CAPTURE(args);
    const Result r = moda_run(args);
    CHECK(r.rc != 0);
    CHECK_THAT(r.output, Contains(message));
  }
  CHECK_FALSE(fs::exists(out + "/x"));
  CHECK_FALSE(fs::exists(out + "/i"));

  const std::string root = fs::path(checkpoint).parent_path().string();
  Result r = moda_run(fmt::format("export --checkpoint {} --output {}/x", root, out));
  CHECK(r.rc == 1);
  CHECK_THAT(r.output, Contains(root + " is a folder of 1 checkpoints, not a checkpoint") &&
                           Contains("the newest, " + checkpoint));

  std::ofstream(out + "/file") << "not a folder";
  r = moda_run(fmt::format("export --checkpoint {} --output {}/file", checkpoint, out));
  CHECK(r.rc == 1);
  CHECK_THAT(r.output, Contains(fmt::format("--output {}/file: Not a directory", out)));
}

TEST_CASE("eval and sample reject out-of-range numbers before loading anything", "[cli]") {
  const std::string& checkpoint = tiny_checkpoint();
  const std::string eval = "eval --checkpoint " + checkpoint + " --data x=README.md ";
  const std::string sample = "sample --checkpoint " + checkpoint + " --prompt x ";
  const std::vector<std::pair<std::string, std::string>> refused = {
      {eval + "--micro-batch -1", "--micro-batch: Value -1 not in range 1 to 16777216"},
      {eval + "--micro-batch 0", "--micro-batch: Value 0 not in range 1"},
      {eval + "--seq-len 0", "--seq-len: Value 0 not in range 1"},
      {eval + "--max-batches -1", "--max-batches: Value -1 not in range 0"},
      {eval + "--dump-logits d.safetensors --dump-batch 0", "--dump-batch: Value 0 not in range 1"},
      {eval + "--dump-logits d.safetensors --dump-seq -3", "--dump-seq: Value -3 not in range 1"},
      {sample + "-t -1", "--temperature: must be finite and >= 0, got -1"},
      {sample + "-t nan", "--temperature: must be finite and >= 0, got nan"},
      {sample + "-t inf", "--temperature: must be finite and >= 0, got inf"},
      {sample + "--top-k -3", "--top-k: Value -3 not in range 0"},
      {sample + "-n -5", "--max-tokens: Value -5 not in range 0"},
  };
  for (const auto& [args, message] : refused) {
    CAPTURE(args);
    const Result r = moda_run(args);
    CHECK(r.rc == kValidationError);
    CHECK_THAT(r.output, Contains(message));
  }
}

TEST_CASE("eval: an empty choices file and a missing --json folder are errors", "[cli]") {
  const std::string& checkpoint = tiny_checkpoint();
  const std::string dir = moda::test::temp_dir("cli_eval");
  std::ofstream(dir + "/empty.jsonl").flush();
  Result r =
      moda_run(fmt::format("eval --checkpoint {} --choices {}/empty.jsonl", checkpoint, dir));
  CHECK(r.rc == 1);
  CHECK_THAT(r.output, Contains(dir + "/empty.jsonl: no items"));
  r = moda_run(fmt::format("eval --checkpoint {} --data x=README.md --json {}/none/out.json",
                           checkpoint, dir));
  CHECK(r.rc == 1);
  CHECK_THAT(r.output, Contains(fmt::format("--json {0}/none/out.json: the folder {0}/none does "
                                            "not exist",
                                            dir)));
  CHECK_THAT(r.output, !Contains("perplexity"));  // stopped before evaluating
  // Sets too small for a window or a micro-batch: named by the options, and no table printed.
  std::ofstream(dir + "/short.txt") << "a few words";
  r = moda_run(fmt::format("eval --checkpoint {} --data s={}/short.txt", checkpoint, dir));
  CHECK(r.rc == 1);
  CHECK_THAT(r.output, Contains(fmt::format("--data s [{}/short.txt] (1 documents) has ", dir)) &&
                           Contains("fewer than one window of 129 (--seq-len + 1)") &&
                           !Contains("data.train"));
  r = moda_run(
      fmt::format("eval --checkpoint {} --data s={}/short.txt --seq-len 4", checkpoint, dir));
  CHECK(r.rc == 1);
  CHECK_THAT(r.output, Contains("fewer than one micro-batch of 8 (use --micro-batch 1)") &&
                           !Contains("perplexity"));
}

TEST_CASE("tokenize: no training documents and a file as --output are errors", "[cli]") {
  const std::string dir = moda::test::temp_dir("cli_tokenize");
  std::ofstream(dir + "/empty.txt").flush();
  Result r = moda_run(
      fmt::format("tokenize --tokenizer byte --input {0}/empty.txt --output {0}/out", dir));
  CHECK(r.rc == 1);
  CHECK_THAT(r.output, Contains("no training documents: 1 documents read (1 empty"));
  CHECK(fs::is_empty(dir + "/out"));  // nothing left to block the next attempt

  r = moda_run(fmt::format(
      "tokenize --tokenizer byte --input README.md --output {}/out --val-fraction 1", dir));
  CHECK(r.rc == kValidationError);
  CHECK_THAT(r.output, Contains("--val-fraction: must be < 1"));

  r = moda_run(
      fmt::format("tokenize --tokenizer byte --input README.md --output {}/empty.txt", dir));
  CHECK(r.rc == 1);
  CHECK_THAT(r.output, Contains(fmt::format("--output {}/empty.txt: Not a directory", dir)));
}
