// Kills one rank of a running `mpirun -np 2 moda train` (CPU and GPU data-parallel tests): what
// the other rank and the launcher do, and what the run left for a resume.
#pragma once

#include <fmt/format.h>
#include <signal.h>
#include <sys/types.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <vector>

#include "moda/checkpoint.hpp"
#include "test_util.hpp"

namespace moda::test {

// The process of MPI rank `rank` (Open MPI's OMPI_COMM_WORLD_RANK) whose command line mentions
// `marker` (the run's own folder), or 0 when there is none.
inline pid_t find_rank_pid(const std::string& marker, int rank) {
  const std::string want = fmt::format("\nOMPI_COMM_WORLD_RANK={}\n", rank);
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmdline = read_text(entry.path().string() + "/cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (cmdline.find("moda") == std::string::npos || cmdline.find(marker) == std::string::npos) {
      continue;
    }
    // A leading newline lets the search match the first variable too.
    std::string environ(1, '\n');
    environ += read_text(entry.path().string() + "/environ");
    std::replace(environ.begin(), environ.end(), '\0', '\n');
    if (environ.find(want) != std::string::npos) return static_cast<pid_t>(std::stol(name));
  }
  return 0;
}

struct KilledRun {
  int status = 0;               // the launcher's exit status
  double stop_seconds = 0;      // from the kill to the launcher's exit
  std::string log;              // the launcher's and the ranks' output
  std::vector<double> losses;   // metrics.jsonl at the launcher's exit
  int64_t checkpoint_step = 0;  // of the newest complete checkpoint
};

// Starts `launch` (an mpirun command of 2 ranks writing into `dir`), waits for the checkpoint of
// step `checkpoint_step`, sends rank 1 `signal` (SIGKILL: it dies; SIGSTOP: it hangs) and waits
// up to `wait_s` seconds for the launcher to end. Requires that the newest checkpoint then
// verifies.
inline KilledRun kill_rank_mid_run(const std::string& launch, const std::string& dir,
                                   int checkpoint_step, int wait_s, int signal = SIGKILL) {
  const std::string log_path = dir + "/killed.log";
  auto job = std::async(std::launch::async, [&] {
    return std::system(fmt::format("{} > {} 2>&1", launch, log_path).c_str());
  });
  const auto first =
      std::filesystem::path(dir) / "checkpoints" / fmt::format("step-{:08d}", checkpoint_step);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(180);
  while (!std::filesystem::exists(first) && std::chrono::steady_clock::now() < deadline &&
         job.wait_for(std::chrono::milliseconds(5)) != std::future_status::ready) {
  }
  KilledRun out;
  INFO(read_text(log_path));
  REQUIRE(std::filesystem::exists(first));
  const pid_t rank1 = find_rank_pid(dir, 1);
  REQUIRE(rank1 > 0);
  const auto killed_at = std::chrono::steady_clock::now();
  REQUIRE(::kill(rank1, signal) == 0);
  const bool ended = job.wait_for(std::chrono::seconds(wait_s)) == std::future_status::ready;
  if (signal != SIGKILL) ::kill(rank1, SIGKILL);  // a stopped rank the launcher left behind
  REQUIRE(ended);
  out.stop_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - killed_at).count();
  out.status = job.get();
  out.log = read_text(log_path);
  out.losses = run_losses(dir);
  const auto latest = find_latest_checkpoint(dir + "/checkpoints");
  REQUIRE(latest.has_value());
  REQUIRE_FALSE(verify_checkpoint(*latest).has_value());
  out.checkpoint_step = load_checkpoint_meta(*latest).step;
  REQUIRE(out.checkpoint_step >= checkpoint_step);
  REQUIRE(static_cast<int64_t>(out.losses.size()) >= out.checkpoint_step);
  return out;
}

}  // namespace moda::test
