// Exact resume on the CPU backend and save-and-exit on SIGTERM (a real signal to a real process).
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "moda/checkpoint.hpp"
#include "moda/train.hpp"
#include "test_util.hpp"

#ifdef MODA_HAVE_CUDA
#include "moda/cuda_backend.hpp"
#endif

using namespace moda;
namespace fs = std::filesystem;
using moda::test::temp_dir;

namespace {

std::vector<std::string> small_overrides(const std::string& dir, int64_t steps) {
  return {"model.d_model=32",        "model.n_layers=2",
          "model.n_heads=2",         "model.n_kv_heads=1",
          "model.mlp_hidden=64",     "batch.seq_len=32",
          "batch.micro_batch=2",     "batch.global_batch=4",
          "schedule.warmup_steps=2", "logging.val_interval=3",
          "logging.val_batches=1",   "runtime.threads=2",
          "runtime.device=cpu",      "logging.plot=false",
          "logging.dir=" + dir,      fmt::format("schedule.total_steps={}", steps)};
}

Config small_config(const std::string& dir, int64_t steps) {
  Config c = default_config();
  apply_overrides(c, small_overrides(dir, steps));
  return c;
}

std::vector<float> final_master(const std::string& run_dir) {
  const auto latest = find_latest_checkpoint(run_dir + "/checkpoints");
  REQUIRE(latest.has_value());
  return load_checkpoint(*latest, 0, 1).shard.master;
}

// The 8-step run of `config`, stopped after step 4 (a checkpoint every 4 steps), then resumed.
// The schedule must stay that of 8 steps, so the run is cut by removing its later checkpoint
// instead of shortening it.
TrainSummary split_and_resume(const Config& config) {
  Config first = config;
  first.checkpoint.interval = 4;
  train(first, TrainOptions{false, ""});
  fs::remove_all(config.logging.dir + "/checkpoints/step-00000008");
  return train(config, TrainOptions{false, "auto"});
}

}  // namespace

TEST_CASE("N steps straight == N/2 steps + resume + N/2 steps, bitwise", "[checkpoint][train]") {
  const TrainOptions quiet{false, ""};
  const std::string a = temp_dir("straight");
  const TrainSummary straight = train(small_config(a, 8), quiet);

  const std::string b = temp_dir("split");
  const TrainSummary resumed = split_and_resume(small_config(b, 8));
  CHECK(resumed.start_step == 4);
  REQUIRE(resumed.history.size() == straight.history.size());
  for (size_t i = 0; i < straight.history.size(); ++i) {
    INFO("step " << i + 1);
    if (i < 4) {
      // Steps before the checkpoint come back from metrics.jsonl (6 significant digits).
      CHECK(resumed.history[i].loss == Approx(straight.history[i].loss).epsilon(1e-5));
    } else {
      CHECK(resumed.history[i].loss == straight.history[i].loss);  // bitwise
      CHECK(resumed.history[i].grad_norm == straight.history[i].grad_norm);
    }
  }
  CHECK(resumed.final_val_loss == straight.final_val_loss);
  const std::vector<float> wa = final_master(a), wb = final_master(b);
  REQUIRE(wa.size() == wb.size());
  CHECK(std::memcmp(wa.data(), wb.data(), wa.size() * sizeof(float)) == 0);
}

// The CUDA backend adds with fp32 atomics in the embedding and attention backward, so even two
// straight runs differ in the last bits and resume cannot be checked bitwise there. A resume that
// loses state (moments, loader position, schedule) moves the loss by far more than 1e-3; the run
// to run difference of two straight runs is printed beside the resumed one's.
TEST_CASE("CUDA: N steps straight and N/2 + resume + N/2 agree within 1e-3", "[gpu][checkpoint]") {
#ifdef MODA_HAVE_CUDA
  const bool gpu = cuda_device_count() > 0;
#else
  const bool gpu = false;
#endif
  MODA_SKIP_UNLESS(gpu, "moda: no GPU visible, skipping");
  const auto cuda_config = [](const std::string& dir, int64_t steps) {
    Config c = small_config(dir, steps);
    // Head size 64: the tensor-core attention kernels and the streaming depth kernels.
    apply_overrides(
        c, {"runtime.device=cuda", "model.d_model=128", "model.n_heads=2", "model.mlp_hidden=256"});
    return c;
  };
  const TrainOptions quiet{false, ""};
  const std::string a = temp_dir("cuda_straight"), a2 = temp_dir("cuda_straight2");
  const TrainSummary straight = train(cuda_config(a, 8), quiet);
  const TrainSummary again = train(cuda_config(a2, 8), quiet);
  const std::string b = temp_dir("cuda_split");
  const TrainSummary resumed = split_and_resume(cuda_config(b, 8));
  CHECK(resumed.start_step == 4);
  REQUIRE(resumed.history.size() == straight.history.size());
  double noise = 0, resume_diff = 0;
  for (size_t i = 4; i < straight.history.size(); ++i) {
    const double ref = straight.history[i].loss;
    noise = std::max(noise, std::abs(again.history[i].loss - ref) / ref);
    resume_diff = std::max(resume_diff, std::abs(resumed.history[i].loss - ref) / ref);
  }
  const std::vector<float> wa = final_master(a), wb = final_master(b);
  REQUIRE(wa.size() == wb.size());
  const double weights_diff = test::rel_error(std::vector<double>(wb.begin(), wb.end()),
                                              std::vector<double>(wa.begin(), wa.end()));
  fmt::print(
      "moda gpu: resume: largest relative loss difference after the resume {:.2e} (two straight "
      "runs: {:.2e}), final master weights {:.2e}\n",
      resume_diff, noise, weights_diff);
  CHECK(resume_diff <= 1e-3);
  CHECK(weights_diff <= 1e-3);
}

TEST_CASE("checkpoint.at_end=false leaves no final checkpoint but keeps the interval ones",
          "[checkpoint][train]") {
  const std::string dir = temp_dir("at_end");
  Config config = small_config(dir, 6);
  config.checkpoint.at_end = false;
  train(config, TrainOptions{false, ""});
  CHECK_FALSE(fs::exists(dir + "/checkpoints"));
  config.checkpoint.interval = 4;
  train(config, TrainOptions{false, ""});
  const auto latest = find_latest_checkpoint(dir + "/checkpoints");
  REQUIRE(latest.has_value());
  CHECK(fs::path(*latest).filename() == "step-00000004");
}

TEST_CASE("resume refuses a changed model shape, naming the key", "[checkpoint][train]") {
  const std::string dir = temp_dir("shape");
  train(small_config(dir, 2), TrainOptions{false, ""});
  Config changed = small_config(dir, 4);
  changed.model.n_layers = 3;
  CHECK_THROWS_WITH(train(changed, TrainOptions{false, "auto"}), Catch::Contains("model.n_layers"));
}

TEST_CASE("SIGTERM mid-run saves a resumable checkpoint and exits 0", "[checkpoint][train]") {
  const std::string dir = temp_dir("sigterm");
  std::vector<std::string> args = {MODA_BINARY, "train"};
  for (const std::string& o : small_overrides(dir, 100000)) {
    args.push_back("--set");
    args.push_back(o);
  }
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int devnull = ::open("/dev/null", O_WRONLY);
    ::dup2(devnull, 1);
    ::dup2(devnull, 2);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  // Wait until it has taken a few steps (metrics.jsonl has lines), then send SIGTERM.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  int64_t lines = 0;
  while (lines < 3 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::ifstream in(dir + "/metrics.jsonl");
    std::string line;
    lines = 0;
    while (std::getline(in, line)) ++lines;
  }
  REQUIRE(lines >= 3);
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  const auto latest = find_latest_checkpoint(dir + "/checkpoints");
  REQUIRE(latest.has_value());
  const CheckpointMeta meta = load_checkpoint_meta(*latest);
  CHECK(meta.step >= 3);
  CHECK(meta.step < 100000);
  // It resumes: two more steps from there.
  Config more = small_config(dir, meta.step + 2);
  const TrainSummary s = train(more, TrainOptions{false, "auto"});
  CHECK(s.start_step == meta.step);
  CHECK(s.steps == meta.step + 2);
}
