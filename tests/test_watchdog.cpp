// The watchdog that stops a job whose ranks wait on each other too long (the NCCL path's failure
// behaviour): a wait past the timeout, or an error the probe reports, fires the handler once with
// a message naming the wait; waits that end in time never fire it.
#include <catch2/catch.hpp>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dist/watchdog.hpp"

using namespace moda;
using namespace std::chrono_literals;
using Catch::Contains;

namespace {

// Collects what the handler receives.
struct Fired {
  std::mutex mutex;
  std::vector<std::string> messages;

  Watchdog::Handler handler() {
    return [this](const std::string& m) {
      std::lock_guard lock(mutex);
      messages.push_back(m);
    };
  }
  std::vector<std::string> get() {
    std::lock_guard lock(mutex);
    return messages;
  }
};

}  // namespace

TEST_CASE("a wait past the timeout fires the handler once, naming the wait", "[dist]") {
  Fired fired;
  const auto start = std::chrono::steady_clock::now();
  {
    Watchdog dog(
        50ms, [] { return std::string(); }, fired.handler());
    Watchdog::Wait wait(dog, "the all-reduce of step 3");
    while (fired.get().empty() && std::chrono::steady_clock::now() - start < 10s) {
      std::this_thread::sleep_for(5ms);
    }
    std::this_thread::sleep_for(200ms);  // room for a second, wrong firing
  }
  const auto messages = fired.get();
  REQUIRE(messages.size() == 1);
  CHECK_THAT(messages[0], Contains("the all-reduce of step 3 did not complete within 0.05 s"));
  CHECK(std::chrono::steady_clock::now() - start < 5s);
}

TEST_CASE("waits that end within the timeout never fire", "[dist]") {
  Fired fired;
  {
    Watchdog dog(
        300ms, [] { return std::string(); }, fired.handler());
    // Many short waits over two timeouts or more: their durations must not add up.
    for (int i = 0; i < 60; ++i) {
      Watchdog::Wait wait(dog, "a short wait");
      std::this_thread::sleep_for(10ms);
    }
  }
  CHECK(fired.get().empty());
}

TEST_CASE("an error reported by the probe fires without any wait", "[dist]") {
  Fired fired;
  {
    Watchdog dog(
        1h, [] { return std::string("NCCL reported an error: remote process exited"); },
        fired.handler());
    const auto start = std::chrono::steady_clock::now();
    while (fired.get().empty() && std::chrono::steady_clock::now() - start < 10s) {
      std::this_thread::sleep_for(5ms);
    }
  }
  const auto messages = fired.get();
  REQUIRE(messages.size() == 1);
  CHECK(messages[0] == "NCCL reported an error: remote process exited");
}
