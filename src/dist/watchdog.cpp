#include "dist/watchdog.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <optional>

#include "moda/dist.hpp"

namespace moda {

Watchdog::Watchdog(std::chrono::duration<double> timeout, Probe probe, Handler on_failure)
    : timeout_(timeout),
      probe_(std::move(probe)),
      on_failure_(std::move(on_failure)),
      thread_([this] { run(); }) {}

Watchdog::~Watchdog() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

Watchdog::Wait::Wait(Watchdog& watchdog, std::string what) : watchdog_(watchdog) {
  std::lock_guard lock(watchdog_.mutex_);
  id_ = watchdog_.next_id_++;
  watchdog_.pending_.emplace(id_, Pending{std::move(what), Clock::now()});
}

Watchdog::Wait::~Wait() {
  std::lock_guard lock(watchdog_.mutex_);
  watchdog_.pending_.erase(id_);
}

void Watchdog::run() {
  // A wait is noticed at most a tenth of the timeout late, and the probe runs at least once a
  // second.
  const auto period = std::clamp<std::chrono::duration<double>>(
      timeout_ / 10, std::chrono::milliseconds(1), std::chrono::seconds(1));
  std::unique_lock lock(mutex_);
  while (!wake_.wait_for(lock, period, [this] { return stop_; })) {
    std::optional<std::string> failure;
    if (!pending_.empty()) {
      const Pending& oldest = pending_.begin()->second;
      const std::chrono::duration<double> waited = Clock::now() - oldest.since;
      if (waited > timeout_) {
        failure = fmt::format("{} did not complete within {:g} s", oldest.what, timeout_.count());
      }
    }
    if (!failure) {
      // Unlocked: a probe may take a moment, and waits must come and go meanwhile.
      lock.unlock();
      std::string problem = probe_();
      lock.lock();
      if (!problem.empty()) failure = std::move(problem);
    }
    if (failure) {
      lock.unlock();
      on_failure_(*failure);
      return;
    }
  }
}

void stop_hung_job(int rank, const std::string& message) {
  spdlog::error(
      "rank {}: {}: another rank has died or hangs (runtime.comm_timeout_s); stopping the job",
      rank, message);
  spdlog::default_logger()->flush();
  abort_other_ranks(1);
  std::_Exit(1);
}

}  // namespace moda
