// The window loader: disjoint rank slices, determinism, resume, epochs.
#include <catch2/catch.hpp>
#include <numeric>
#include <set>

#include "moda/data.hpp"

using namespace moda;

namespace {

std::shared_ptr<const TokenStore> counting_store(int64_t n) {
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  std::iota(tokens.begin(), tokens.end(), 0);
  return std::make_shared<MemoryTokenStore>(std::move(tokens), "counting store");
}

}  // namespace

TEST_CASE("windows overlap by one token and cover the store", "[data]") {
  const int64_t T = 8;
  BatchLoader loader(counting_store(8 * 10 + 1), T, 1, 7, 0, 1, true);
  REQUIRE(loader.windows_per_epoch() == 10);
  std::set<int32_t> starts;
  std::vector<int32_t> w(T + 1);
  for (int i = 0; i < 10; ++i) {
    loader.next(w.data());
    CHECK(w[0] % T == 0);
    for (int64_t j = 0; j <= T; ++j) CHECK(w[static_cast<size_t>(j)] == w[0] + j);
    starts.insert(w[0]);
  }
  CHECK(starts.size() == 10);  // every window once per epoch
}

TEST_CASE("data-parallel ranks read disjoint windows that together cover the epoch", "[data]") {
  const int64_t T = 4, windows = 24;
  auto store = counting_store(T * windows + 1);
  std::multiset<int32_t> seen;
  for (int rank = 0; rank < 3; ++rank) {
    BatchLoader loader(store, T, 2, 99, rank, 3, true);
    std::vector<int32_t> batch(2 * (T + 1));
    for (int i = 0; i < 4; ++i) {  // 8 windows per rank = one epoch
      loader.next(batch.data());
      seen.insert(batch[0]);
      seen.insert(batch[T + 1]);
    }
  }
  CHECK(seen.size() == 24);
  CHECK(std::set<int32_t>(seen.begin(), seen.end()).size() == 24);
}

TEST_CASE("the shuffle depends on the seed and is reproducible", "[data]") {
  auto store = counting_store(4 * 50 + 1);
  auto first_windows = [&](uint64_t seed) {
    BatchLoader loader(store, 4, 1, seed, 0, 1, true);
    std::vector<int32_t> out, w(5);
    for (int i = 0; i < 20; ++i) {
      loader.next(w.data());
      out.push_back(w[0]);
    }
    return out;
  };
  CHECK(first_windows(1) == first_windows(1));
  CHECK(first_windows(1) != first_windows(2));
}

TEST_CASE("a restored loader continues exactly where the saved one was", "[data]") {
  auto store = counting_store(6 * 13 + 1);
  BatchLoader a(store, 6, 3, 5, 0, 1, true);
  std::vector<int32_t> batch(3 * 7);
  for (int i = 0; i < 7; ++i) a.next(batch.data());  // crosses an epoch boundary (13 windows)
  const LoaderState saved = a.state();
  CHECK(saved.epoch == 1);
  std::vector<std::vector<int32_t>> expected;
  for (int i = 0; i < 10; ++i) {
    a.next(batch.data());
    expected.push_back(batch);
  }
  BatchLoader b(store, 6, 3, 5, 0, 1, true);
  b.restore(saved);
  for (int i = 0; i < 10; ++i) {
    b.next(batch.data());
    CHECK(batch == expected[static_cast<size_t>(i)]);
  }
}

TEST_CASE("a store shorter than one window per rank is rejected with its name", "[data]") {
  CHECK_THROWS_WITH(BatchLoader(counting_store(10), 16, 1, 0, 0, 1, true),
                    Catch::Contains("counting store") && Catch::Contains("fewer than one window"));
}

TEST_CASE("the prefetching loader yields the loader's batches and exact states", "[data]") {
  auto store = counting_store(5 * 17 + 1);
  BatchLoader plain(store, 5, 2, 3, 0, 1, true);
  PrefetchLoader prefetch(BatchLoader(store, 5, 2, 3, 0, 1, true), 3);
  std::vector<int32_t> a(2 * 6), b(2 * 6);
  LoaderState mid;
  for (int i = 0; i < 20; ++i) {
    plain.next(a.data());
    prefetch.next(b.data());
    CHECK(a == b);
    CHECK(prefetch.state().cursor == plain.state().cursor);
    CHECK(prefetch.state().epoch == plain.state().epoch);
    if (i == 9) mid = prefetch.state();
  }
  // Restoring an earlier state replays the same batches.
  BatchLoader replay(store, 5, 2, 3, 0, 1, true);
  replay.restore(mid);
  prefetch.restore(mid);
  for (int i = 0; i < 5; ++i) {
    replay.next(a.data());
    prefetch.next(b.data());
    CHECK(a == b);
  }
}
