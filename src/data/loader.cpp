// In-memory token store and the deterministic window loader.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <stdexcept>

#include "moda/data.hpp"

namespace moda {

MemoryTokenStore::MemoryTokenStore(std::vector<int32_t> tokens, std::string description)
    : tokens_(std::move(tokens)), description_(std::move(description)) {}

void MemoryTokenStore::read(int64_t offset, int64_t count, int32_t* out) const {
  if (offset < 0 || offset + count > size()) {
    throw std::out_of_range(fmt::format("token read [{}, {}) beyond the {} tokens of {}", offset,
                                        offset + count, size(), description_));
  }
  std::memcpy(out, tokens_.data() + offset, sizeof(int32_t) * static_cast<size_t>(count));
}

BatchLoader::BatchLoader(std::shared_ptr<const TokenStore> store, int64_t seq_len,
                         int64_t micro_batch, uint64_t seed, int rank, int world, bool shuffle)
    : store_(std::move(store)),
      seq_len_(seq_len),
      micro_batch_(micro_batch),
      rank_(rank),
      world_(world),
      shuffle_(shuffle) {
  if (world < 1 || rank < 0 || rank >= world) {
    throw std::invalid_argument(fmt::format("bad data-parallel rank {} of world {}", rank, world));
  }
  // Window w covers tokens [w T, w T + T]; the last window must end inside the store.
  n_windows_ = (store_->size() - 1) / seq_len_;
  if (n_windows_ < world_) {
    throw std::runtime_error(
        fmt::format("{} holds {} tokens: fewer than one window of {} tokens per rank ({} ranks)",
                    store_->describe(), store_->size(), seq_len_ + 1, world_));
  }
  state_.seed = seed;
  start_epoch(0);
}

void BatchLoader::start_epoch(int64_t epoch) {
  state_.epoch = epoch;
  state_.cursor = 0;
  order_.resize(static_cast<size_t>(n_windows_));
  for (int64_t i = 0; i < n_windows_; ++i) order_[static_cast<size_t>(i)] = i;
  if (shuffle_) {
    // Fisher-Yates with our own draw so the order is the same on every platform (std::shuffle's
    // use of the engine is implementation-defined).
    std::mt19937_64 rng(state_.seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(epoch));
    for (int64_t i = n_windows_ - 1; i > 0; --i) {
      const auto j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
      std::swap(order_[static_cast<size_t>(i)], order_[static_cast<size_t>(j)]);
    }
  }
}

void BatchLoader::next(int32_t* out) {
  for (int64_t b = 0; b < micro_batch_; ++b) {
    if (state_.cursor >= windows_per_rank()) start_epoch(state_.epoch + 1);
    const int64_t position = state_.cursor * world_ + rank_;
    const int64_t window = order_[static_cast<size_t>(position)];
    store_->read(window * seq_len_, seq_len_ + 1, out + b * (seq_len_ + 1));
    ++state_.cursor;
  }
}

void BatchLoader::check_restorable(const LoaderState& state) const {
  if (state.cursor < 0 || state.cursor > windows_per_rank() || state.epoch < 0) {
    throw std::runtime_error(fmt::format(
        "its data position (epoch {}, window {} of each rank) lies outside {}, {} windows a rank "
        "at batch.seq_len {}: the data changed since the save; resume with the data it was saved "
        "with",
        state.epoch, state.cursor, store_->describe(), windows_per_rank(), seq_len_));
  }
}

void BatchLoader::restore(const LoaderState& state) {
  check_restorable(state);
  state_.seed = state.seed;
  start_epoch(state.epoch);
  state_.cursor = state.cursor;
}

}  // namespace moda
