// Data parallelism on the CPU backend through MPI: 2 ranks x micro-batch b must give the losses
// of 1 rank x 2b, and ZeRO-1 those of plain data parallelism, up to float32 summation order.
// Runs the real binary under mpirun.
#include <fmt/format.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>

using Catch::Contains;

namespace {

std::string temp_dir(const std::string& name) {
  auto p =
      std::filesystem::temp_directory_path() / fmt::format("moda_dist_{}_{}", name, ::getpid());
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

bool have_mpirun() { return std::system("command -v mpirun >/dev/null 2>&1") == 0; }

// A small model, 5 steps; every rank 1 OpenMP thread so 2 ranks fit 2 cores.
std::string train_args(const std::string& dir, int micro_batch) {
  return fmt::format(
      "train --set model.d_model=32 --set model.n_layers=2 --set model.n_heads=2 "
      "--set model.n_kv_heads=1 --set model.mlp_hidden=64 --set batch.seq_len=32 "
      "--set batch.micro_batch={} --set batch.global_batch=4 --set schedule.total_steps=5 "
      "--set schedule.warmup_steps=1 --set logging.val_interval=0 --set runtime.threads=1 "
      "--set runtime.device=cpu --set logging.dir={}",
      micro_batch, dir);
}

// setsid: mpirun signals its process group when a rank aborts; keep the test runner out of it.
const char* kMpirun =
    "setsid env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
    "OMPI_MCA_rmaps_base_oversubscribe=1 mpirun";

std::vector<double> losses(const std::string& dir) {
  std::ifstream in(dir + "/metrics.jsonl");
  std::vector<double> out;
  std::string line;
  const std::regex loss_re("\"loss\": ([0-9.eE+-]+)");
  std::smatch m;
  while (std::getline(in, line)) {
    if (std::regex_search(line, m, loss_re)) out.push_back(std::stod(m[1]));
  }
  return out;
}

int run(const std::string& cmd) { return std::system((cmd + " > /dev/null 2>&1").c_str()); }

}  // namespace

TEST_CASE("2 ranks x micro-batch 2 equal 1 rank x micro-batch 4; ZeRO-1 equals plain DP",
          "[dist]") {
  if (!have_mpirun()) {
    WARN("moda: mpirun not found (apt-get install openmpi-bin), skipping");
    return;
  }
  const std::string one = temp_dir("one"), two = temp_dir("two"), zero = temp_dir("zero1");
  REQUIRE(run(fmt::format("{} {}", MODA_BINARY, train_args(one, 4))) == 0);
  REQUIRE(run(fmt::format("{} -np 2 {} {}", kMpirun, MODA_BINARY, train_args(two, 2))) == 0);
  REQUIRE(run(fmt::format("{} -np 2 {} {} --set runtime.zero1=true", kMpirun, MODA_BINARY,
                          train_args(zero, 2))) == 0);
  const auto a = losses(one), b = losses(two), c = losses(zero);
  REQUIRE(a.size() == 5);
  REQUIRE(b.size() == 5);
  REQUIRE(c.size() == 5);
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(fmt::format("step {}: 1 rank {} / 2 ranks {} / ZeRO-1 {}", i + 1, a[i], b[i], c[i]));
    // The gradients are the same sums in another order (two partial sums of micro-batch rows
    // added by MPI): float32 rounding of ~1e-7 relative, grown over 5 Adam steps.
    CHECK(std::abs(a[i] - b[i]) <= 1e-5 * a[i]);
    CHECK(std::abs(b[i] - c[i]) <= 1e-5 * b[i]);
  }
  CHECK(a.back() < a.front());
}

TEST_CASE("ranks started with different configs stop with a clear error", "[dist]") {
  if (!have_mpirun()) {
    WARN("moda: mpirun not found (apt-get install openmpi-bin), skipping");
    return;
  }
  const std::string dir = temp_dir("mismatch");
  const std::string log = dir + "/log.txt";
  const int rc = std::system(
      fmt::format("{} -np 1 {} {} : -np 1 {} {} --set optimizer.lr=0.1 > {} 2>&1", kMpirun,
                  MODA_BINARY, train_args(dir, 2), MODA_BINARY, train_args(dir, 2), log)
          .c_str());
  CHECK(rc != 0);
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK_THAT(text, Contains("rank 1: the resolved config differs from rank 0's"));
}
