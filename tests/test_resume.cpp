// Exact resume on the CPU backend, save-and-exit on SIGTERM (a real signal to a real process), the
// checkpoint lineage (earlier runs and abandoned branches moved aside, damaged checkpoints), and
// the trainer's behaviour when files cannot be written.
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>
#include <thread>

#include "moda/build_info.hpp"
#include "moda/checkpoint.hpp"
#include "moda/train.hpp"
#include "test_util.hpp"

#ifdef MODA_HAVE_CUDA
#include "moda/cuda_backend.hpp"
#endif

using namespace moda;
namespace fs = std::filesystem;
using moda::test::flip_byte;
using moda::test::LogCapture;
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

// A run of 6 steps that saves at steps 2, 4 and 6: a folder with a history to set aside, roll
// back or damage.
Config six_steps_saving_every_two(const std::string& dir) {
  Config c = small_config(dir, 6);
  c.checkpoint.interval = 2;
  return c;
}

std::vector<float> final_master(const std::string& run_dir) {
  const auto latest = find_latest_checkpoint(run_dir + "/checkpoints");
  REQUIRE(latest.has_value());
  return load_checkpoint(*latest, 0, 1).shard.master;
}

// Caps the size of the files this process writes (RLIMIT_FSIZE): a write past it fails with
// EFBIG ("File too large"), a full disk that needs no mount and no root.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &previous_) == 0);
    previous_handler_ = std::signal(SIGXFSZ, SIG_IGN);  // else the signal kills the process
    rlimit limit = previous_;
    limit.rlim_cur = bytes;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &limit) == 0);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &previous_);
    std::signal(SIGXFSZ, previous_handler_);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;

 private:
  rlimit previous_{};
  void (*previous_handler_)(int) = nullptr;
};

// The step numbers of the step-* directories directly under root, newest first.
std::vector<int64_t> steps_in(const std::string& root) {
  std::vector<int64_t> out;
  for (const CheckpointDir& d : list_checkpoints(root)) out.push_back(d.step);
  return out;
}

// Trains that run in `dir`: checkpoints of steps 6, 4 and 2.
void train_saving_every_two(const std::string& dir) {
  train(six_steps_saving_every_two(dir), TrainOptions{false, ""});
  REQUIRE(steps_in(dir + "/checkpoints") == std::vector<int64_t>{6, 4, 2});
}

int64_t lines_in(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) ++n;
  return n;
}

// How spawn_moda_train starts the process: as under nohup (SIGHUP ignored), and its output into
// an open descriptor (a pipe) instead of the log file.
struct SpawnOptions {
  bool ignore_hangup = false;
  int output_fd = -1;
};

// Starts `moda train` with small_overrides(dir, steps) and `extra` arguments; stdout and stderr
// go to `log`. Returns its pid.

pid_t spawn_moda_train(const std::string& dir, int64_t steps, const std::vector<std::string>& extra,
                       const std::string& log, SpawnOptions spawn = {}) {
  std::vector<std::string> args = {MODA_BINARY, "train"};
  for (const std::string& o : small_overrides(dir, steps)) {
    args.push_back("--set");
    args.push_back(o);
  }
  args.insert(args.end(), extra.begin(), extra.end());
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int out = spawn.output_fd >= 0 ? spawn.output_fd
                                         : ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(out, 1);
    ::dup2(out, 2);
    if (spawn.ignore_hangup) ::signal(SIGHUP, SIG_IGN);  // kept across exec, as nohup does
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

// spawn_moda_train, then its wait status.
int run_moda_train(const std::string& dir, int64_t steps, const std::vector<std::string>& extra,
                   const std::string& log) {
  const pid_t pid = spawn_moda_train(dir, steps, extra, log);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
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
  MODA_SKIP_UNLESS_GPU(gpu);
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
  CHECK(list_checkpoints(dir + "/checkpoints").empty());
  config.checkpoint.interval = 4;
  train(config, TrainOptions{false, ""});
  const auto latest = find_latest_checkpoint(dir + "/checkpoints");
  REQUIRE(latest.has_value());
  CHECK(fs::path(*latest).filename() == "step-00000004");
}

TEST_CASE("resume refuses a changed model shape, naming the key", "[checkpoint][train]") {
  const std::string dir = temp_dir("shape"), root = dir + "/checkpoints";
  Config first = small_config(dir, 2);
  first.checkpoint.interval = 1;
  train(first, TrainOptions{false, ""});
  Config changed = small_config(dir, 4);
  changed.model.n_layers = 3;
  CHECK_THROWS_WITH(train(changed, TrainOptions{false, "auto"}), Catch::Contains("model.n_layers"));
  // A refused resume from step 1 moves nothing aside: step 2 stays where it was.
  CHECK_THROWS_WITH(train(changed, TrainOptions{false, root + "/step-00000001"}),
                    Catch::Contains("model.n_layers"));
  CHECK(steps_in(root) == std::vector<int64_t>{2, 1});
}

TEST_CASE("SIGTERM mid-run saves a resumable checkpoint and exits 0", "[checkpoint][train]") {
  const std::string dir = temp_dir("sigterm"), log = dir + "/moda.log";
  const pid_t pid = spawn_moda_train(dir, 100000, {}, log);
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
  CHECK_THAT(test::read_text(log),
             Catch::Contains("moda: terminated: stopping after this step with a checkpoint\n"));
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

TEST_CASE("SIGINT is acknowledged at once, and a second one stops the run without a checkpoint",
          "[checkpoint][train]") {
  const std::string dir = temp_dir("sigint_twice"), log = dir + "/moda.log";
  // 2,048 micro-batches a step, about a second or more: both signals come within the first step.
  const pid_t pid = spawn_moda_train(dir, 10, {"--set", "batch.global_batch=4096"}, log);
  // The handlers are in place once the run has logged its batch line.
  const auto logged = [&](const std::string& text) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      if (test::read_text(log).find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  };
  REQUIRE(logged("micro-batches per step"));
  ::kill(pid, SIGINT);
  REQUIRE(
      logged("moda: interrupted: stopping after this step with a checkpoint; interrupt again "
             "to stop now, without one\n"));
  ::kill(pid, SIGINT);
  int status = 0;
  ::waitpid(pid, &status, 0);
  const std::string text = test::read_text(log);
  INFO(text);
  REQUIRE(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGINT);
  CHECK_THAT(text, Catch::Contains("moda: interrupted again: stopping now, without a checkpoint"));
  CHECK(text.find("step      1/10") == std::string::npos);
  CHECK(list_checkpoints(dir + "/checkpoints").empty());
}

TEST_CASE(
    "SIGHUP saves like SIGTERM, also when the hangup ended the log's reader, but not under nohup",
    "[checkpoint][train]") {
  // The log goes into a pipe, as with `moda train | tee`; its reader is gone before the hangup.
  const std::string dir = temp_dir("sighup");
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);  // the child keeps no copy of the reading end
  const pid_t pid = spawn_moda_train(dir, 100000, {}, "", SpawnOptions{false, fds[1]});
  ::close(fds[1]);
  std::string seen;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (seen.find("micro-batches per step") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    char buf[4096];
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    seen.append(buf, static_cast<size_t>(n));
  }
  REQUIRE_THAT(seen, Catch::Contains("micro-batches per step"));
  ::close(fds[0]);
  ::kill(pid, SIGHUP);
  int status = 0;
  ::waitpid(pid, &status, 0);
  REQUIRE(WIFEXITED(status));  // not killed by SIGPIPE on its next log line
  CHECK(WEXITSTATUS(status) == 0);
  const auto latest = find_latest_checkpoint(dir + "/checkpoints");
  REQUIRE(latest.has_value());
  CHECK(load_checkpoint_meta(*latest).step < 100000);

  // Under nohup the hangup changes nothing: the run takes all its steps.
  const std::string kept = temp_dir("nohup"), log = kept + "/moda.log";
  const pid_t nohup_pid =
      spawn_moda_train(kept, 3, {"--set", "batch.global_batch=4096"}, log, SpawnOptions{true, -1});
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (test::read_text(log).find("micro-batches per step") == std::string::npos &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ::kill(nohup_pid, SIGHUP);
  ::waitpid(nohup_pid, &status, 0);
  const std::string text = test::read_text(log);
  INFO(text);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK_THAT(text, Catch::Contains("step      3/3") && !Catch::Contains("hangup"));
}

TEST_CASE("a fresh start moves an earlier run's checkpoints aside and --resume auto continues",
          "[checkpoint][train]") {
  const std::string dir = temp_dir("fresh_again"), root = dir + "/checkpoints";
  train_saving_every_two(dir);
  const std::vector<float> earlier = final_master(dir);

  // The same folder again without --resume (scripts/run.sh reruns this way): a new run.
  Config again = small_config(dir, 3);
  again.runtime.seed = 7;
  LogCapture log;
  const TrainSummary s = train(again, TrainOptions{false, ""});
  CHECK(s.start_step == 0);
  CHECK(steps_in(root) == std::vector<int64_t>{3});  // its own save, not pruned by older ones
  const std::vector<std::string> folders = list_set_aside_folders(root);
  REQUIRE(folders.size() == 1);
  CHECK(steps_in(folders[0]) == std::vector<int64_t>{6, 4, 2});
  CHECK(log.text().find(fmt::format("moved 3 checkpoint(s) of an earlier run, the newest step 6, "
                                    "to {}; to continue that run, pass --resume auto",
                                    folders[0])) != std::string::npos);
  // Every start counts what is set aside (moda never deletes it), with its size.
  uint64_t bytes = 0;
  for (const auto& e : fs::recursive_directory_iterator(folders[0])) {
    if (e.is_regular_file()) bytes += e.file_size();
  }
  CHECK(log.text().find(fmt::format("{} holds 1 set-aside folder(s) of earlier runs or branches, "
                                    "{:.1f} MiB in all, the oldest {}; moda never deletes them",
                                    root, static_cast<double>(bytes) / (1 << 20), folders[0])) !=
        std::string::npos);
  // The earlier run is intact in the folder; --resume auto continues the new one.
  CHECK(load_checkpoint(folders[0] + "/step-00000006", 0, 1).shard.master == earlier);
  Config more = small_config(dir, 4);
  more.runtime.seed = 7;
  CHECK(train(more, TrainOptions{false, "auto"}).start_step == 3);
}

TEST_CASE("a rollback moves the abandoned branch aside and keeps the rollback point",
          "[checkpoint][train]") {
  const std::string dir = temp_dir("rollback"), root = dir + "/checkpoints";
  Config run = six_steps_saving_every_two(dir);
  run.checkpoint.keep_last = 2;
  train(run, TrainOptions{false, ""});
  REQUIRE(steps_in(root) == std::vector<int64_t>{6, 4});

  // Back to step 4 with another learning rate, saving every step, two kept.
  Config branch = small_config(dir, 5);
  branch.optimizer.lr = 1e-3;
  branch.checkpoint.interval = 1;
  branch.checkpoint.keep_last = 2;
  LogCapture log;
  const TrainSummary s = train(branch, TrainOptions{false, root + "/step-00000004"});
  CHECK(s.start_step == 4);
  CHECK(s.steps == 5);
  CHECK(steps_in(root) == std::vector<int64_t>{5, 4});
  const std::vector<std::string> folders = list_set_aside_folders(root);
  REQUIRE(folders.size() == 1);
  CHECK(steps_in(folders[0]) == std::vector<int64_t>{6});
  CHECK(
      log.text().find("moved 1 checkpoint(s) past the resume point (step 4), the newest step 6") !=
      std::string::npos);
  // --resume auto now continues the branch, not the abandoned step 6.
  CHECK(find_latest_checkpoint(root) == root + "/step-00000005");
}

TEST_CASE("resume auto moves damaged newer checkpoints aside and refuses when none verifies",
          "[checkpoint][train]") {
  const std::string dir = temp_dir("damaged_run"), root = dir + "/checkpoints";
  train_saving_every_two(dir);
  std::mt19937 rng(std::random_device{}());
  // Damage the two newest at a random byte of their shard.
  const auto damage = [&](int64_t step) {
    const std::string shard = root + "/" + checkpoint_name(step) + "/shard-00000-of-00001.bin";
    flip_byte(shard, std::uniform_int_distribution<int64_t>(
                         64, static_cast<int64_t>(fs::file_size(shard)) - 1)(rng));
  };
  damage(6);
  damage(4);
  {
    LogCapture log;
    const TrainSummary s = train(small_config(dir, 3), TrainOptions{false, "auto"});
    CHECK(s.start_step == 2);
    CHECK(steps_in(root) == std::vector<int64_t>{3, 2});
    const std::vector<std::string> folders = list_set_aside_folders(root);
    REQUIRE(folders.size() == 1);
    CHECK(steps_in(folders[0]) == std::vector<int64_t>{6, 4});
    CHECK(log.text().find("moved 2 checkpoint(s) past the resume point (step 2)") !=
          std::string::npos);
  }
  // Now nothing verifies: an error naming each, not a silent restart that rewrites the metrics.
  damage(3);
  damage(2);
  const int64_t metrics_lines = lines_in(dir + "/metrics.jsonl");
  REQUIRE(metrics_lines == 3);
  CHECK_THROWS_WITH(train(small_config(dir, 6), TrainOptions{false, "auto"}),
                    Catch::Contains("no checkpoint in " + root + " verifies") &&
                        Catch::Contains(root + "/step-00000003: ") &&
                        Catch::Contains(root + "/step-00000002: ") && Catch::Contains("crc32"));
  CHECK(lines_in(dir + "/metrics.jsonl") == metrics_lines);
  CHECK(steps_in(root) == std::vector<int64_t>{3, 2});
}

TEST_CASE("resume names a missing path, a run's checkpoint root and a renamed checkpoint",
          "[checkpoint][train]") {
  const std::string dir = temp_dir("resume_paths"), root = dir + "/checkpoints";
  train_saving_every_two(dir);
  const auto resume = [&](const std::string& from) {
    train(small_config(dir, 8), TrainOptions{false, from});
  };
  CHECK_THROWS_WITH(resume(dir + "/nope"), Catch::Contains(dir + "/nope does not exist"));
  CHECK_THROWS_WITH(resume(root), Catch::Contains(root + " is a folder of 3 checkpoints") &&
                                      Catch::Contains("the newest, " + root + "/step-00000006"));
  // Step 4's checkpoint copied under step 7's name: refused, and nothing moved aside (it would
  // have set aside the very folder it was asked to resume from).
  fs::copy(root + "/step-00000004", root + "/step-00000007");
  CHECK_THROWS_WITH(resume(root + "/step-00000007"),
                    Catch::Contains("its folder is named for step 7, its meta.yaml says step 4") &&
                        Catch::Contains("rename the folder to step-00000004"));
  CHECK(steps_in(root) == std::vector<int64_t>{7, 6, 4, 2});
  // Other training data with fewer windows than the saved position: named as such.
  const std::string small = dir + "/small.txt";
  std::ofstream(small) << "A few words, fewer than one micro-batch's windows of 33 tokens.\n";
  Config other_data = small_config(dir, 8);
  apply_overrides(other_data, {"data.train=" + small});
  CHECK_THROWS_WITH(train(other_data, TrainOptions{false, root + "/step-00000006"}),
                    Catch::Contains("cannot resume from " + root +
                                    "/step-00000006: its data "
                                    "position (epoch 0, window ") &&
                        Catch::Contains("lies outside") &&
                        Catch::Contains("resume with the data it was saved with"));
  CHECK(steps_in(root) == std::vector<int64_t>{7, 6, 4, 2});  // a refused resume moves nothing
  // --resume auto skips it as damaged and takes step 6.
  LogCapture log;
  CHECK(train(small_config(dir, 8), TrainOptions{false, "auto"}).start_step == 6);
  CHECK_THAT(log.text(), Catch::Contains("its folder is named for step 7"));
}

TEST_CASE("startup removes staging leftovers and stops early on an unwritable checkpoint.dir",
          "[checkpoint][train]") {
  const std::string dir = temp_dir("startup"), root = dir + "/checkpoints";
  fs::create_directories(checkpoint_staging_dir(root, 9, "4242") + "/partial");
  fs::create_directories(root + "/step-00000005.old-4242");
  Config c = small_config(dir, 2);
  c.checkpoint.at_end = false;  // no save, so no prune: only the startup clean-up removes them
  train(c, TrainOptions{false, ""});
  CHECK(std::distance(fs::directory_iterator(root), fs::directory_iterator()) == 0);

  // checkpoint.dir under a regular file: the error comes before the first step.
  const std::string blocked = temp_dir("startup_blocked");
  std::ofstream(blocked + "/file") << "not a directory";
  Config b = small_config(blocked + "/run", 2);
  b.checkpoint.dir = blocked + "/file/checkpoints";
  CHECK_THROWS_WITH(
      train(b, TrainOptions{false, ""}),
      Catch::Contains("checkpoint.dir " + b.checkpoint.dir) && Catch::Contains("Not a directory"));
  CHECK_FALSE(fs::exists(blocked + "/run/metrics.jsonl"));  // not a step was taken
}

TEST_CASE("a failed save removes its staging directory and the run stops with the error",
          "[checkpoint][train]") {
  const std::string dir = temp_dir("save_fails"), root = dir + "/checkpoints";
  Config c = small_config(dir, 4);
  c.checkpoint.interval = 2;
  // Written in the step, or in the background, where the error reaches the run at a later step.
  c.checkpoint.background = GENERATE(false, true);
  CAPTURE(c.checkpoint.background);
  fs::remove_all(root);
  {
    // The shard file (about 12 bytes a parameter) outgrows 64 KiB; config.yaml and metrics do not.
    FileSizeLimit limit(64 << 10);
    CHECK_THROWS_WITH(
        train(c, TrainOptions{false, ""}),
        Catch::Contains("shard-00000-of-00001.bin") && Catch::Contains("File too large"));
  }
  CHECK(std::distance(fs::directory_iterator(root), fs::directory_iterator()) == 0);

  // The library's single-process save does the same.
  CheckpointState st;
  st.meta.step = 3;
  st.meta.total_params = 20000;
  st.meta.config_yaml = to_yaml(c);
  const std::vector<double> values = test::random_normal(20000, std::random_device{}());
  st.shard.range = {0, 20000};
  st.shard.master = st.shard.adam_m = st.shard.adam_v =
      std::vector<float>(values.begin(), values.end());
  {
    FileSizeLimit limit(64 << 10);
    CHECK_THROWS_WITH(save_checkpoint(root, st, 3, 0), Catch::Contains("File too large"));
  }
  CHECK(std::distance(fs::directory_iterator(root), fs::directory_iterator()) == 0);
  const std::string saved = save_checkpoint(root, st, 3, 0);
  CHECK(load_checkpoint(saved, 0, 1).shard.master == st.shard.master);
}

TEST_CASE("interval checkpoints written in the background equal those written in the step",
          "[checkpoint][train]") {
  const std::string in_step = temp_dir("saves_in_step"), beside = temp_dir("saves_beside");
  Config c = small_config(in_step, 7);
  c.checkpoint.interval = 2;
  c.checkpoint.keep_last = 10;
  c.checkpoint.background = false;
  train(c, TrainOptions{false, ""});
  c.logging.dir = beside;
  c.checkpoint.background = true;
  LogCapture log;
  train(c, TrainOptions{true, ""});
  const std::string text = log.text();
  INFO(text);
  // Steps 2, 4 and 6 in the background, the last one (7) in the step, as the run ends there.
  REQUIRE(steps_in(beside + "/checkpoints") == std::vector<int64_t>{7, 6, 4, 2});
  for (const int64_t step : {2, 4, 6}) {
    CHECK(text.find(fmt::format("saved checkpoint {}/checkpoints/{} (", beside,
                                checkpoint_name(step))) != std::string::npos);
  }
  CHECK(text.find("beside training; the run paid ") != std::string::npos);
  CHECK(text.find(fmt::format("saved checkpoint {}/checkpoints/{} (", beside,
                              checkpoint_name(7))) != std::string::npos);
  // The same state: the copy was taken at the step, not while later steps ran. (metrics.jsonl
  // differs in its timings.)
  for (const int64_t step : {2, 4, 6, 7}) {
    CAPTURE(step);
    const std::string name = "/checkpoints/" + checkpoint_name(step);
    const std::string a = test::read_text(in_step + name + "/shard-00000-of-00001.bin");
    CHECK(!a.empty());
    CHECK(a == test::read_text(beside + name + "/shard-00000-of-00001.bin"));
    const CheckpointMeta ma = load_checkpoint_meta(in_step + name),
                         mb = load_checkpoint_meta(beside + name);
    CHECK(ma.step == mb.step);
    CHECK(ma.loader.cursor == mb.loader.cursor);
    CHECK(ma.loader.epoch == mb.loader.epoch);
    CHECK(parse_metrics_jsonl(ma.metrics_jsonl).size() == static_cast<size_t>(step));
    CHECK(parse_metrics_jsonl(mb.metrics_jsonl).size() == static_cast<size_t>(step));
  }
}

TEST_CASE("metrics.jsonl failing mid-run is one error and training goes on, a failed plot warns",
          "[train]") {
  const std::string dir = temp_dir("metrics_full");
  Config c = small_config(dir, 12);
  c.logging.plot = true;
  c.checkpoint.at_end = false;
  // config.yaml fits; metrics.jsonl (about 200 bytes a step) and loss.png do not.
  const std::string yaml = to_yaml(c);
  LogCapture log;
  TrainSummary s;
  {
    FileSizeLimit limit(yaml.size() + 300);
    s = train(c, TrainOptions{false, ""});
  }
  CHECK(s.steps == 12);
  CHECK(s.history.size() == 12);
  const std::string text = log.text();
  const std::string error = "cannot write " + dir + "/metrics.jsonl: File too large";
  CHECK(text.find(error) != std::string::npos);
  CHECK(text.find(error) == text.rfind(error));  // once, not every step
  CHECK(text.find("cannot write " + dir + "/loss.png") != std::string::npos);
  CHECK(text.find("the run itself completed") != std::string::npos);
  CHECK(lines_in(dir + "/metrics.jsonl") < 12);
  CHECK(test::read_text(dir + "/config.yaml") == yaml);
}

TEST_CASE("the log shows the first step after a resume, and each save's size and time",
          "[checkpoint][train]") {
  const std::string dir = temp_dir("resume_log"), root = dir + "/checkpoints";
  Config c = small_config(dir, 6);
  c.checkpoint.interval = 3;
  c.logging.interval = 100;  // shown: the first step, validation steps (3, 6) and the last
  train(c, TrainOptions{false, ""});
  fs::remove_all(root + "/step-00000006");
  LogCapture log;
  train(c, TrainOptions{true, "auto"});
  const std::string text = log.text();
  INFO(text);
  // The build that saved the checkpoint is named (this one), and every start names its own.
  CHECK(text.find("resuming from " + root + "/step-00000003 (step 3), saved by " +
                  build_description() + "\n") != std::string::npos);
  CHECK(text.find("] " + build_description() + "\n") != std::string::npos);
  CHECK(load_checkpoint_meta(root + "/step-00000003").written_by == build_description());
  CHECK(text.find("step      4/6 | loss ") != std::string::npos);
  CHECK(text.find("step      5/6 |") == std::string::npos);
  // "saved checkpoint DIR (X MiB in Y s)", X the bytes of DIR's files.
  const std::string saved = root + "/step-00000006", prefix = "saved checkpoint " + saved + " (";
  const size_t at = text.find(prefix);
  REQUIRE(at != std::string::npos);
  const std::string rest = text.substr(at + prefix.size());
  std::smatch m;
  REQUIRE(std::regex_search(rest, m, std::regex(R"(^([0-9.]+) MiB in ([0-9]+\.[0-9]{2}) s\))")));
  uintmax_t bytes = 0;
  for (const auto& e : fs::directory_iterator(saved)) bytes += e.file_size();
  CHECK(std::abs(std::stod(m[1]) - static_cast<double>(bytes) / (1 << 20)) <= 0.05);
  CHECK(std::stod(m[2]) < 60.0);
}

TEST_CASE("a resume at or past total_steps trains nothing and says so", "[checkpoint][train]") {
  const std::string dir = temp_dir("past_end");
  train(small_config(dir, 4), TrainOptions{false, ""});
  LogCapture log;
  const TrainSummary s = train(small_config(dir, 3), TrainOptions{false, "auto"});
  CHECK(s.start_step == 4);
  CHECK(s.steps == 4);
  CHECK(s.history.size() == 4);
  CHECK(log.text().find("the checkpoint's step 4 is at or past schedule.total_steps 3: nothing "
                        "trained") != std::string::npos);
  // `moda train` reports the final step and no validation loss it does not have.
  const std::string out = dir + "/moda.log";
  const int status = run_moda_train(dir, 3, {"--resume", "auto"}, out);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  const std::string text = test::read_text(out);
  INFO(text);
  CHECK(text.find("done: step 4\n") != std::string::npos);
  CHECK(text.find("validation loss") == std::string::npos);
}
