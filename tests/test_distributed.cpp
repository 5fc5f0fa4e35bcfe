// Data parallelism on the CPU backend through MPI: 2 ranks x micro-batch b must give the losses
// of 1 rank x 2b, and ZeRO-1 those of plain data parallelism, up to float32 summation order; the
// bucketed all-reduce those of one all-reduce; a ZeRO-1 run resumes exactly from its sharded
// checkpoint; a rank killed mid-run stops the job, which then resumes from its last checkpoint.
// Runs the real binary under mpirun.
#include <fmt/format.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <thread>

#include "kill_rank.hpp"
#include "moda/checkpoint.hpp"
#include "test_util.hpp"

using Catch::Contains;
using moda::test::read_text;
using moda::test::temp_dir;

namespace {

bool have_mpirun() { return std::system("command -v mpirun >/dev/null 2>&1") == 0; }
constexpr const char* kNoMpirun = "mpirun not found (apt-get install openmpi-bin)";

// A small model, 5 steps; every rank 1 OpenMP thread so 2 ranks fit 2 cores.
std::string train_args(const std::string& dir, int micro_batch, int steps = 5) {
  return fmt::format(
      "train --set model.d_model=32 --set model.n_layers=2 --set model.n_heads=2 "
      "--set model.n_kv_heads=1 --set model.mlp_hidden=64 --set batch.seq_len=32 "
      "--set batch.micro_batch={} --set batch.global_batch=4 --set schedule.total_steps={} "
      "--set schedule.warmup_steps=1 --set logging.val_interval=0 --set runtime.threads=1 "
      "--set runtime.device=cpu --set logging.dir={}",
      micro_batch, steps, dir);
}

// setsid: mpirun signals its process group when a rank aborts; keep the test runner out of it.
const char* kMpirun =
    "setsid env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
    "OMPI_MCA_rmaps_base_oversubscribe=1 mpirun";

int run(const std::string& cmd) { return std::system((cmd + " > /dev/null 2>&1").c_str()); }

}  // namespace

TEST_CASE("2 ranks x micro-batch 2 equal 1 rank x micro-batch 4, and ZeRO-1 equals plain DP",
          "[dist]") {
  MODA_SKIP_UNLESS(have_mpirun(), kNoMpirun);
  const std::string one = temp_dir("one"), two = temp_dir("two"), zero = temp_dir("zero1");
  REQUIRE(run(fmt::format("{} {}", MODA_BINARY, train_args(one, 4))) == 0);
  REQUIRE(run(fmt::format("{} -np 2 {} {}", kMpirun, MODA_BINARY, train_args(two, 2))) == 0);
  REQUIRE(run(fmt::format("{} -np 2 {} {} --set runtime.zero1=true", kMpirun, MODA_BINARY,
                          train_args(zero, 2))) == 0);
  // Buckets of 10 KiB: one per layer of this model, started during the backward.
  const std::string buckets = temp_dir("buckets");
  REQUIRE(run(fmt::format("{} -np 2 {} {} --set runtime.grad_bucket_mb=0.01", kMpirun, MODA_BINARY,
                          train_args(buckets, 2))) == 0);
  // One rank through MPI (runtime.comm forces it; auto would run without MPI).
  const std::string mpi1 = temp_dir("mpi1");
  REQUIRE(run(fmt::format("{} -np 1 {} {} --set runtime.comm=mpi", kMpirun, MODA_BINARY,
                          train_args(mpi1, 4))) == 0);
  const auto a = moda::test::run_losses(one), b = moda::test::run_losses(two),
             c = moda::test::run_losses(zero), d = moda::test::run_losses(buckets),
             e = moda::test::run_losses(mpi1);
  REQUIRE(a.size() == 5);
  REQUIRE(b.size() == 5);
  REQUIRE(c.size() == 5);
  REQUIRE(d.size() == 5);
  REQUIRE(e.size() == 5);
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(fmt::format("step {}: 1 rank {} / 2 ranks {} / ZeRO-1 {} / buckets {} / MPI 1 rank {}",
                     i + 1, a[i], b[i], c[i], d[i], e[i]));
    // The gradients are the same sums in another order (two partial sums of micro-batch rows
    // added by MPI): float32 rounding of ~1e-7 relative, grown over 5 Adam steps.
    CHECK(std::abs(a[i] - b[i]) <= 1e-5 * a[i]);
    CHECK(std::abs(b[i] - c[i]) <= 1e-5 * b[i]);
    // Bucketing changes which elements go together, not any sum: the same values (a missed or
    // twice-reduced bucket would be off by far more than the 6 digits metrics.jsonl prints).
    CHECK(std::abs(b[i] - d[i]) <= 1e-6 * b[i]);
    // A sum over one rank is the value itself.
    CHECK(e[i] == a[i]);
  }
  CHECK(a.back() < a.front());
}

TEST_CASE("a ZeRO-1 run resumed from its sharded checkpoint continues exactly", "[dist]") {
  MODA_SKIP_UNLESS(have_mpirun(), kNoMpirun);
  const std::string straight = temp_dir("z_straight"), split = temp_dir("z_split");
  const std::string zero1 = " --set runtime.zero1=true";
  REQUIRE(run(fmt::format("{} -np 2 {} {}{}", kMpirun, MODA_BINARY, train_args(straight, 2, 6),
                          zero1)) == 0);
  // The same run with a checkpoint after step 3, whose step 6 is then thrown away and redone.
  REQUIRE(run(fmt::format("{} -np 2 {} {}{} --set checkpoint.interval=3", kMpirun, MODA_BINARY,
                          train_args(split, 2, 6), zero1)) == 0);
  std::filesystem::remove_all(split + "/checkpoints/step-00000006");
  REQUIRE(run(fmt::format("{} -np 2 {} {}{} --resume auto", kMpirun, MODA_BINARY,
                          train_args(split, 2, 6), zero1)) == 0);
  const auto a = moda::test::run_losses(straight), b = moda::test::run_losses(split);
  REQUIRE(a.size() == 6);
  REQUIRE(b.size() == 6);
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(fmt::format("step {}: straight {} / resumed {}", i + 1, a[i], b[i]));
    CHECK(a[i] == b[i]);
  }
  // Two shards per checkpoint, and the same master weights to the bit.
  const auto last_a = moda::find_latest_checkpoint(straight + "/checkpoints");
  const auto last_b = moda::find_latest_checkpoint(split + "/checkpoints");
  REQUIRE(last_a.has_value());
  REQUIRE(last_b.has_value());
  CHECK(moda::load_checkpoint_meta(*last_b).world == 2);
  const int64_t total = moda::load_checkpoint_meta(*last_a).total_params;
  CHECK(moda::load_checkpoint(*last_a, {0, total}).shard.adam_v ==
        moda::load_checkpoint(*last_b, {0, total}).shard.adam_v);
  CHECK(moda::load_checkpoint(*last_a, {0, total}).shard.master ==
        moda::load_checkpoint(*last_b, {0, total}).shard.master);
}

TEST_CASE("runtime.comm single under a launch of several ranks stops with a clear error",
          "[dist]") {
  MODA_SKIP_UNLESS(have_mpirun(), kNoMpirun);
  const std::string dir = temp_dir("single");
  const int rc = std::system(fmt::format("{} -np 2 {} {} --set runtime.comm=single > {}/log 2>&1",
                                         kMpirun, MODA_BINARY, train_args(dir, 2), dir)
                                 .c_str());
  CHECK(rc != 0);
  CHECK_THAT(read_text(dir + "/log"),
             Contains("runtime.comm is single, but this process is one of several ranks"));
}

TEST_CASE("ranks started with different configs stop with a clear error", "[dist]") {
  MODA_SKIP_UNLESS(have_mpirun(), kNoMpirun);
  const std::string dir = temp_dir("mismatch");
  const std::string log = dir + "/log.txt";
  const int rc = std::system(
      fmt::format("{} -np 1 {} {} : -np 1 {} {} --set optimizer.lr=0.1 > {} 2>&1", kMpirun,
                  MODA_BINARY, train_args(dir, 2), MODA_BINARY, train_args(dir, 2), log)
          .c_str());
  CHECK(rc != 0);
  CHECK_THAT(read_text(log), Contains("rank 1: the resolved config differs from rank 0's") &&
                                 Contains("\n  optimizer.lr: 0.003 on rank 0, 0.1 here"));
}

TEST_CASE("the log of a run under mpirun holds no colour codes", "[dist]") {
  MODA_SKIP_UNLESS(have_mpirun(), kNoMpirun);
  // Open MPI gives the rank a pseudo-terminal even when mpirun writes into a file. An invalid
  // schedule ends the run at its first log line, an error, which a terminal shows in red.
  const std::string log = temp_dir("mpirun_colour") + "/log.txt";
  const int rc = std::system(fmt::format("env -u NO_COLOR {} -np 1 {} train --set "
                                         "schedule.total_steps=3 > {} 2>&1",
                                         kMpirun, MODA_BINARY, log)
                                 .c_str());
  CHECK(rc != 0);
  const std::string text = read_text(log);
  INFO(text);
  CHECK_THAT(text, Contains("[error] embedded default (configs/tiny.yaml)"));
  CHECK(text.find('\x1b') == std::string::npos);
}

TEST_CASE("SIGUSR1 to mpirun reaches every rank: a checkpoint, and the job exits 0", "[dist]") {
  MODA_SKIP_UNLESS(have_mpirun(), kNoMpirun);
  // mpirun kills the ranks a second after a SIGTERM or SIGINT of its own, too soon for a save of
  // a large model; it forwards SIGUSR1, which moda takes as a stop with a checkpoint.
  const std::string dir = temp_dir("usr1"), log = dir + "/log.txt";
  auto job = std::async(std::launch::async, [&] {
    return std::system(fmt::format("exec {} -np 2 {} {} > {} 2>&1", kMpirun, MODA_BINARY,
                                   train_args(dir, 2, 100000), log)
                           .c_str());
  });
  pid_t launcher = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (moda::test::run_losses(dir).size() < 3 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE(moda::test::run_losses(dir).size() >= 3);
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    std::string cmdline = read_text(entry.path().string() + "/cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (cmdline.starts_with("mpirun ") && cmdline.find(dir) != std::string::npos) {
      launcher = static_cast<pid_t>(std::stol(entry.path().filename().string()));
    }
  }
  REQUIRE(launcher > 0);
  REQUIRE(::kill(launcher, SIGUSR1) == 0);
  REQUIRE(job.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
  const int status = job.get();
  const std::string text = read_text(log);
  INFO(text);
  CHECK(status == 0);
  CHECK_THAT(text, Contains("moda: SIGUSR1: stopping after this step with a checkpoint"));
  const auto latest = moda::find_latest_checkpoint(dir + "/checkpoints");
  REQUIRE(latest.has_value());
  CHECK(moda::load_checkpoint_meta(*latest).step < 100000);
}

TEST_CASE("a rank that hangs stops the job after runtime.comm_timeout_s, naming the wait",
          "[dist]") {
  MODA_SKIP_UNLESS(have_mpirun(), kNoMpirun);
  const std::string dir = temp_dir("stop_rank");
  const std::string args =
      train_args(dir, 2, 600) + " --set checkpoint.interval=20 --set runtime.comm_timeout_s=3";
  const std::string launch = fmt::format("{} -np 2 {} {}", kMpirun, MODA_BINARY, args);
  // SIGSTOP: rank 1 neither dies nor answers; rank 0 waits in a collective.
  const moda::test::KilledRun stopped = moda::test::kill_rank_mid_run(launch, dir, 40, 60, SIGSTOP);
  INFO(stopped.log);
  CHECK(stopped.status != 0);
  CHECK(stopped.stop_seconds >= 3.0);
  CHECK(stopped.stop_seconds < 30.0);
  CHECK_THAT(stopped.log,
             Contains("rank 0: the ") &&
                 Contains(": another rank has died or hangs (runtime.comm_timeout_s); stopping "
                          "the job"));
}

TEST_CASE("one rank killed mid-run stops the job, and the run resumes from its last checkpoint",
          "[dist]") {
  MODA_SKIP_UNLESS(have_mpirun(), kNoMpirun);
  const std::string dir = temp_dir("kill_rank");
  // Long enough (about 10 ms a step here) that the kill lands well before the end.
  const std::string args =
      train_args(dir, 2, 600) + " --set checkpoint.interval=20 --set runtime.comm_timeout_s=30";
  const std::string launch = fmt::format("{} -np 2 {} {}", kMpirun, MODA_BINARY, args);
  const moda::test::KilledRun killed = moda::test::kill_rank_mid_run(launch, dir, 40, 30);
  INFO(killed.log);
  CHECK(killed.status != 0);
  CHECK(killed.stop_seconds < 30.0);
  CHECK_THAT(killed.log, Contains("rank 1") && Contains("signal 9"));
  REQUIRE(killed.losses.size() < 600);

  // Every rank resumes from the newest checkpoint and the run finishes, repeating the killed
  // run's steps after the checkpoint to the bit (CPU backend, fixed data order).
  const std::string resumed_log = dir + "/resumed.log";
  REQUIRE(std::system(fmt::format("{} --resume auto > {} 2>&1", launch, resumed_log).c_str()) == 0);
  CHECK_THAT(read_text(resumed_log), Contains(fmt::format("(step {})", killed.checkpoint_step)));
  const std::vector<double> after = moda::test::run_losses(dir);
  REQUIRE(after.size() == 600);
  for (size_t i = 0; i < killed.losses.size(); ++i) {
    INFO(fmt::format("step {}: killed run {} / resumed run {}", i + 1, killed.losses[i], after[i]));
    CHECK(killed.losses[i] == after[i]);
  }
}
