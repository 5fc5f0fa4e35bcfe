// One rank's checkpoint shard written by a thread of its own while training goes on
// (checkpoint.background). The shard is a copy of the state taken before the thread starts, so
// the steps that follow cannot change what it writes. Its vectors are kept after the write, for
// the next save's copy (take_buffers).
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <string>
#include <thread>

#include "moda/checkpoint.hpp"

namespace moda {

class CheckpointShardWriter {
 public:
  CheckpointShardWriter() = default;
  // Waits for a write in progress: the process must not end in the middle of one.
  ~CheckpointShardWriter();
  CheckpointShardWriter(const CheckpointShardWriter&) = delete;
  CheckpointShardWriter& operator=(const CheckpointShardWriter&) = delete;

  // Starts write_shard(staging, rank, world, total_params, shard) on the thread; a write that
  // fails removes the staging directory (removing_staging_on_failure). One write at a time: the
  // previous one must have been waited for.
  void start(const std::string& staging, int rank, int world, int64_t total_params,
             ShardState shard);
  // A write was started and has not finished.
  bool busy() const { return started_ && !finished_.load(); }
  // Waits for the write started last (if any) and returns its error, or null.
  std::exception_ptr wait();
  // How long the last write took on its thread.
  double write_seconds() const { return write_seconds_; }
  // The last write's shard, to be filled again (capture_shard's `into`); empty before the first.
  // Only between wait() and the next start().
  ShardState take_buffers();

 private:
  std::thread thread_;
  bool started_ = false;
  std::atomic<bool> finished_{false};
  std::exception_ptr error_;
  double write_seconds_ = 0;
  ShardState shard_;  // read by the thread while a write is in flight
};

}  // namespace moda
