// Token sources and the batch loader. A TokenStore is one long token array (documents separated
// by eos) that may be backed by memory or by memory-mapped shards; the loader cuts it into
// fixed windows of T+1 tokens, visits them in a seeded shuffled order, gives each data-parallel
// rank a disjoint slice, and can save and restore its position.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moda/config.hpp"

namespace moda {

class TokenStore {
 public:
  virtual ~TokenStore() = default;
  virtual int64_t size() const = 0;  // tokens
  // Copies tokens [offset, offset + count) into out.
  virtual void read(int64_t offset, int64_t count, int32_t* out) const = 0;
  virtual std::string describe() const = 0;  // for logs: files, token count
};

// A store over tokens held in memory.
class MemoryTokenStore : public TokenStore {
 public:
  MemoryTokenStore(std::vector<int32_t> tokens, std::string description);
  int64_t size() const override { return static_cast<int64_t>(tokens_.size()); }
  void read(int64_t offset, int64_t count, int32_t* out) const override;
  std::string describe() const override { return description_; }

 private:
  std::vector<int32_t> tokens_;
  std::string description_;
};

// A contiguous range of another store (the held-out tail of shards).
class SliceTokenStore : public TokenStore {
 public:
  SliceTokenStore(std::shared_ptr<const TokenStore> base, int64_t offset, int64_t count);
  int64_t size() const override { return count_; }
  void read(int64_t offset, int64_t count, int32_t* out) const override;
  std::string describe() const override;

 private:
  std::shared_ptr<const TokenStore> base_;
  int64_t offset_, count_;
};

// Where the loader stands; stored in checkpoints.
struct LoaderState {
  uint64_t seed = 0;
  int64_t epoch = 0;
  int64_t cursor = 0;  // next window index (into the epoch's permutation) of this rank's slice
};

// Deterministic windows of seq_len + 1 tokens. Windows start at multiples of seq_len (the last
// token of one window is the first of the next, so every token is a target exactly once per
// epoch). Each epoch visits the windows in a permutation derived from (seed, epoch); rank r of
// world w takes positions r, r + w, r + 2w, ... of that permutation.
class BatchLoader {
 public:
  BatchLoader(std::shared_ptr<const TokenStore> store, int64_t seq_len, int64_t micro_batch,
              uint64_t seed, int rank, int world, bool shuffle);
  // Fills out[micro_batch * (seq_len + 1)] with the next micro-batch of this rank.
  void next(int32_t* out);
  LoaderState state() const { return state_; }
  // Throws when `state` lies outside this loader's data (a checkpoint of other data), naming both.
  void check_restorable(const LoaderState& state) const;
  void restore(const LoaderState& state);
  int64_t windows_per_epoch() const { return n_windows_; }
  int64_t windows_per_rank() const { return n_windows_ / world_; }
  int64_t micro_batch_tokens() const { return micro_batch_ * (seq_len_ + 1); }

 private:
  void start_epoch(int64_t epoch);

  std::shared_ptr<const TokenStore> store_;
  int64_t seq_len_, micro_batch_;
  int rank_, world_;
  bool shuffle_;
  int64_t n_windows_;
  std::vector<int64_t> order_;
  LoaderState state_;
};

// Prepares the next micro-batches of a BatchLoader on a background thread (reading memory-mapped
// shards can page-fault; the GPU should not wait for it). The batch order is the loader's, and
// state() is the state after the last batch handed out, so checkpoints stay exact.
class PrefetchLoader {
 public:
  PrefetchLoader(BatchLoader loader, int64_t depth = 4);
  ~PrefetchLoader();
  PrefetchLoader(const PrefetchLoader&) = delete;
  PrefetchLoader& operator=(const PrefetchLoader&) = delete;
  void next(int32_t* out);
  LoaderState state() const;
  void check_restorable(const LoaderState& state) const;
  void restore(const LoaderState& state);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Train and validation stores described by the data section of a config.
struct Dataset {
  std::shared_ptr<const TokenStore> train;
  std::shared_ptr<const TokenStore> val;  // null when there is nothing to validate on
  int64_t vocab_size = 0;  // what the tokenizer can emit; must not exceed model.vocab_size
  int32_t eos = 0;
};
// What errors and descriptions call the training sources and the sequence length: the config's
// keys in `moda train`, the options in `moda eval --data`.
struct DatasetNames {
  std::string train = "data.train";
  std::string seq_len = "batch.seq_len";
};
Dataset open_dataset(const DataConfig& data, int64_t seq_len, const DatasetNames& names = {});

}  // namespace moda
