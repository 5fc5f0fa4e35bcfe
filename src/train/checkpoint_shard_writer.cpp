#include "train/checkpoint_shard_writer.hpp"

#include <chrono>
#include <stdexcept>
#include <utility>

namespace moda {

CheckpointShardWriter::~CheckpointShardWriter() { static_cast<void>(wait()); }

void CheckpointShardWriter::start(const std::string& staging, int rank, int world,
                                  int64_t total_params, ShardState shard) {
  if (started_)
    throw std::logic_error("CheckpointShardWriter::start: the previous write was not waited for");
  started_ = true;
  finished_.store(false);
  error_ = nullptr;
  shard_ = std::move(shard);
  thread_ = std::thread([this, staging, rank, world, total_params] {
    const auto began = std::chrono::steady_clock::now();
    try {
      removing_staging_on_failure(staging,
                                  [&] { write_shard(staging, rank, world, total_params, shard_); });
    } catch (...) {
      error_ = std::current_exception();
    }
    write_seconds_ =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    finished_.store(true);
  });
}

ShardState CheckpointShardWriter::take_buffers() {
  if (started_) throw std::logic_error("CheckpointShardWriter::take_buffers: a write is in flight");
  return std::move(shard_);
}

std::exception_ptr CheckpointShardWriter::wait() {
  if (!started_) return nullptr;
  thread_.join();
  started_ = false;
  return error_;
}

}  // namespace moda
