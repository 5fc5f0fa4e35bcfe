// Stops a job whose ranks wait on each other for too long. A rank whose peer died or hangs would
// otherwise wait forever: in a collective on the GPU, in cudaDeviceSynchronize behind one, or in
// an MPI call. A thread checks a few times per timeout how long the oldest registered wait has
// lasted, and asks a probe whether the transport reported an error; either fires the handler,
// once (the handler is meant to end the process).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace moda {

class Watchdog {
 public:
  using Clock = std::chrono::steady_clock;
  // Returns "" while healthy, else what went wrong; called from the watchdog's thread.
  using Probe = std::function<std::string()>;
  // Receives the message; called from the watchdog's thread.
  using Handler = std::function<void(const std::string& message)>;

  Watchdog(std::chrono::duration<double> timeout, Probe probe, Handler on_failure);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Registers a wait for its lifetime; `what` names it in the failure message.
  class Wait {
   public:
    Wait(Watchdog& watchdog, std::string what);
    ~Wait();
    Wait(const Wait&) = delete;
    Wait& operator=(const Wait&) = delete;

   private:
    Watchdog& watchdog_;
    uint64_t id_;
  };

 private:
  struct Pending {
    std::string what;
    Clock::time_point since;
  };
  void run();

  const std::chrono::duration<double> timeout_;
  const Probe probe_;
  const Handler on_failure_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  uint64_t next_id_ = 0;
  std::map<uint64_t, Pending> pending_;  // ids grow, so the first entry is the oldest wait
  std::thread thread_;                   // last: started once everything above exists
};

// The handler of a communicator's watchdog: logs that `rank` waited too long in `message`'s wait,
// then ends every rank (MPI_Abort, which needs MPI_THREAD_MULTIPLE from this thread) and this
// process.
[[noreturn]] void stop_hung_job(int rank, const std::string& message);

}  // namespace moda
