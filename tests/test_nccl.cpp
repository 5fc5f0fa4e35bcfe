// The NCCL communicator on GPUs (tagged [gpu]: skipped without one). The real binary trains the
// embedded tiny config for 10 steps through NCCL and must give the losses of the plain
// single-process run: with one rank (started alone, and by `mpirun -np 1` with the NCCL path
// forced), the sums over ranks are the values themselves, so only run-to-run differences of the
// CUDA backend remain; with two GPUs, 2 ranks x micro-batch 4 against 1 rank x 8, and a rank
// killed mid-run (the job must stop and resume).
//
// Tolerances (relative, on the loss of each step):
//   one rank     2e-3: the same arithmetic; only the backend's fp32 atomics (attention, LM head
//                backward) may add in another order, and bf16 storage can round the difference
//                up to one bf16 step (4e-3) in single values, far less on a mean loss
//   two ranks    5e-3: also the weight gradients are two partial GEMM sums over 4 sequences plus
//                NCCL's sum instead of one GEMM over 8
#include <fmt/format.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "kill_rank.hpp"
#include "test_util.hpp"

#ifdef MODA_HAVE_CUDA
#include "moda/cuda_backend.hpp"
#endif

using Catch::Contains;
using moda::test::temp_dir;

namespace {

int gpus() {
#ifdef MODA_HAVE_CUDA
  return moda::cuda_device_count();
#else
  return 0;
#endif
}

#define MODA_REQUIRE_GPU() MODA_SKIP_UNLESS_GPU(gpus() > 0)

// Open MPI's: the binary links Open MPI's libmpi, and the options below are Open MPI's.
bool have_mpirun() { return std::system("mpirun --version 2>/dev/null | grep -q 'Open MPI'") == 0; }

// The moda binary beside this test binary (a bundle's bin/ or the build directory), so that a
// bundled build runs where the build directory does not exist.
std::string moda_binary() {
  const auto beside = std::filesystem::read_symlink("/proc/self/exe").parent_path() / "moda";
  return std::filesystem::exists(beside) ? beside.string() : std::string(MODA_BINARY);
}

// NVLink multicast stays off: on shared GPU hosts it can take the GPUs out of service.
const char* kEnv = "env NCCL_NVLS_ENABLE=0 NCCL_DEBUG=WARN";
// setsid: mpirun signals its process group when a rank aborts; keep the test runner out of it.
const char* kMpirun =
    "setsid env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0 "
    "NCCL_DEBUG=WARN mpirun --oversubscribe";

std::string train_args(const std::string& dir, int micro_batch, int global_batch) {
  return fmt::format(
      "train --set runtime.device=cuda --set schedule.total_steps=10 "
      "--set schedule.warmup_steps=2 --set logging.val_interval=0 --set logging.plot=false "
      "--set batch.micro_batch={} --set batch.global_batch={} --set logging.dir={}",
      micro_batch, global_batch, dir);
}

// Runs `cmd`, its output into dir/log; returns the exit status.
int run(const std::string& cmd, const std::string& dir) {
  return std::system(fmt::format("{} > {}/log 2>&1", cmd, dir).c_str());
}

std::string log_of(const std::string& dir) { return moda::test::read_text(dir + "/log"); }

void check_losses(const std::string& reference, const std::string& other, double tolerance) {
  const auto a = moda::test::run_losses(reference), b = moda::test::run_losses(other);
  REQUIRE(a.size() == 10);
  REQUIRE(b.size() == 10);
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(fmt::format("step {}: {} {} / {} {}", i + 1, reference, a[i], other, b[i]));
    CHECK(std::abs(a[i] - b[i]) <= tolerance * a[i]);
    worst = std::max(worst, std::abs(a[i] - b[i]) / a[i]);
  }
  fmt::print(
      "moda nccl: {} against {}: largest relative loss difference {:.2e} over 10 steps "
      "(tol {:.0e}), loss {:.4f} -> {:.4f}\n",
      other, reference, worst, tolerance, b.front(), b.back());
  CHECK(a.back() < a.front());
}

// The plain single-process run of micro-batch `micro_batch` and global batch `global_batch`.
std::string plain_run(int micro_batch, int global_batch) {
  const std::string dir = temp_dir(fmt::format("plain{}", micro_batch));
  const int rc =
      run(fmt::format("{} {} {}", kEnv, moda_binary(), train_args(dir, micro_batch, global_batch)),
          dir);
  INFO(log_of(dir));
  REQUIRE(rc == 0);
  return dir;
}

}  // namespace

TEST_CASE("NCCL with one rank started alone gives the losses of the plain run", "[gpu]") {
  MODA_REQUIRE_GPU();
  const std::string plain = plain_run(8, 16);
  for (const char* zero1 : {"false", "true"}) {
    const std::string dir = temp_dir(fmt::format("alone_zero1_{}", zero1));
    const int rc = run(fmt::format("{} {} {} --set runtime.comm=nccl --set runtime.zero1={}", kEnv,
                                   moda_binary(), train_args(dir, 8, 16), zero1),
                       dir);
    const std::string log = log_of(dir);
    INFO(log);
    REQUIRE(rc == 0);
    CHECK_THAT(log, Contains("NCCL"));
    CHECK_THAT(log, Contains("rank 0 of 1 on GPU 0 (bootstrap: single process)"));
    check_losses(plain, dir, 2e-3);
  }
}

TEST_CASE("mpirun -np 1 with runtime.comm nccl gives the losses of the plain run", "[gpu]") {
  MODA_REQUIRE_GPU();
  MODA_SKIP_UNLESS(have_mpirun(),
                   "no Open MPI mpirun: the MPI bootstrap of the NCCL path is not tested");
  const std::string plain = plain_run(8, 16);
  for (const char* zero1 : {"false", "true"}) {
    const std::string dir = temp_dir(fmt::format("np1_zero1_{}", zero1));
    const int rc = run(fmt::format("{} -np 1 {} {} --set runtime.comm=nccl --set runtime.zero1={}",
                                   kMpirun, moda_binary(), train_args(dir, 8, 16), zero1),
                       dir);
    const std::string log = log_of(dir);
    INFO(log);
    REQUIRE(rc == 0);
    CHECK_THAT(log, Contains("rank 0 of 1 on GPU 0 (bootstrap: MPI rank 0 of 1)"));
    check_losses(plain, dir, 2e-3);
  }
}

TEST_CASE("mpirun -np 2 on two GPUs gives the losses of one GPU with twice the micro-batch",
          "[gpu]") {
  MODA_REQUIRE_GPU();
  MODA_SKIP_UNLESS(
      gpus() >= 2 && have_mpirun(),
      "fewer than 2 GPUs or no Open MPI mpirun: the 2-rank NCCL comparison is not run");
  const std::string plain = plain_run(8, 8);
  for (const char* zero1 : {"false", "true"}) {
    const std::string dir = temp_dir(fmt::format("np2_zero1_{}", zero1));
    // runtime.comm auto: several ranks on the CUDA backend take NCCL.
    const int rc = run(fmt::format("{} -np 2 {} {} --set runtime.zero1={}", kMpirun, moda_binary(),
                                   train_args(dir, 4, 8), zero1),
                       dir);
    const std::string log = log_of(dir);
    INFO(log);
    REQUIRE(rc == 0);
    CHECK_THAT(log, Contains("rank 0 of 2 on GPU 0 (bootstrap: MPI rank 0 of 2)"));
    check_losses(plain, dir, 5e-3);
  }
}

// On GPUs the dead rank can leave the other blocked in an NCCL collective, which only the
// watchdog (runtime.comm_timeout_s) or the MPI host reduction of the same step notices.
TEST_CASE("NCCL: one rank killed mid-run stops the job, and the run resumes on both GPUs",
          "[gpu]") {
  MODA_REQUIRE_GPU();
  MODA_SKIP_UNLESS(gpus() >= 2 && have_mpirun(),
                   "fewer than 2 GPUs or no Open MPI mpirun: the rank-kill test is not run");
  const std::string dir = temp_dir("nccl_kill_rank");
  const std::string launch = fmt::format(
      "{} -np 2 {} train --set runtime.device=cuda --set schedule.total_steps=600 "
      "--set schedule.warmup_steps=2 --set logging.val_interval=0 --set logging.plot=false "
      "--set batch.micro_batch=4 --set batch.global_batch=8 --set checkpoint.interval=20 "
      "--set runtime.comm_timeout_s=20 --set logging.dir={}",
      kMpirun, moda_binary(), dir);
  const moda::test::KilledRun killed = moda::test::kill_rank_mid_run(launch, dir, 40, 60);
  INFO(killed.log);
  CHECK(killed.status != 0);
  // The watchdog's timeout, and a few seconds for MPI_Abort to end the job.
  CHECK(killed.stop_seconds < 30.0);
  CHECK_THAT(killed.log, Contains("rank 1"));
  fmt::print("moda nccl: rank 1 killed after step {}: job ended after {:.1f} s\n",
             killed.losses.size(), killed.stop_seconds);
  REQUIRE(killed.losses.size() < 600);

  const int rc = run(fmt::format("{} --resume auto", launch), dir);
  const std::string log = log_of(dir);
  INFO(log);
  REQUIRE(rc == 0);
  CHECK_THAT(log, Contains(fmt::format("(step {})", killed.checkpoint_step)));
  const std::vector<double> after = moda::test::run_losses(dir);
  REQUIRE(after.size() == 600);
  // The CUDA backend's fp32 atomics leave run-to-run differences (tests/test_resume.cpp).
  for (size_t i = 0; i < killed.losses.size(); ++i) {
    INFO(fmt::format("step {}: killed run {} / resumed run {}", i + 1, killed.losses[i], after[i]));
    CHECK(std::abs(killed.losses[i] - after[i]) <= 1e-3 * killed.losses[i]);
  }
}
