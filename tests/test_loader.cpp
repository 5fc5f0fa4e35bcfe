// The window loader: disjoint rank slices, determinism, resume, epochs; token files whose dtype
// is wrong, and text sources that are directories.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <set>

#include "data/shards.hpp"
#include "moda/data.hpp"
#include "test_util.hpp"

using namespace moda;

namespace {

namespace fs = std::filesystem;

// `n` random token ids in [1, vocab), written as T.
template <typename T>
std::vector<T> write_tokens(const std::string& path, size_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<T> tokens(n);
  for (T& t : tokens) t = static_cast<T>(std::uniform_int_distribution<int64_t>(1, vocab - 1)(rng));
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(tokens.data()),
             static_cast<std::streamsize>(n * sizeof(T)));
  return tokens;
}

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

TEST_CASE("uint32 tokens read as uint16 are refused, and so is a dtype the manifest contradicts",
          "[data]") {
  const std::string dir = moda::test::temp_dir("loader_dtype");
  std::mt19937_64 rng(std::random_device{}());
  const auto n = static_cast<size_t>(std::uniform_int_distribution<int>(200, 3000)(rng));
  const std::vector<uint32_t> wide = write_tokens<uint32_t>(dir + "/wide.npy", n, 258, rng());
  INFO(n << " tokens");
  // Every high half is 0 < 258: only the pattern can tell.
  CHECK_THROWS_WITH(open_shards({dir + "/wide.npy"}, "auto", "uint16", 258, 10),
                    Catch::Contains("wide.npy") && Catch::Contains("looks like uint32 tokens") &&
                        Catch::Contains("set data.dtype: uint32"));
  const auto right = open_shards({dir + "/wide.npy"}, "auto", "uint32", 258, 10);
  REQUIRE(right->size() == static_cast<int64_t>(n));
  std::vector<int32_t> back(n);
  right->read(0, static_cast<int64_t>(n), back.data());
  CHECK(std::equal(back.begin(), back.end(), wide.begin()));
  // Real uint16 tokens pass, zeros among them included.
  std::vector<uint16_t> narrow = write_tokens<uint16_t>(dir + "/narrow.npy", n, 258, rng());
  for (size_t i = 1; i < n; i += 3) narrow[i] = 0;
  std::ofstream(dir + "/narrow.npy", std::ios::binary)
      .write(reinterpret_cast<const char*>(narrow.data()),
             static_cast<std::streamsize>(n * sizeof(uint16_t)));
  CHECK(open_shards({dir + "/narrow.npy"}, "auto", "uint16", 258, 10)->size() ==
        static_cast<int64_t>(n));

  // A manifest saying uint16 beside uint16 tokens, and data.dtype: uint32.
  fs::create_directories(dir + "/tokenized");
  const std::string shard = dir + "/tokenized/train-00000.npy";
  write_tokens<uint16_t>(shard, 2 * n, 258, rng());
  ShardManifest m;
  m.dtype = TokenDtype::uint16;
  m.tokenizer = "byte";
  m.vocab_size = 258;
  m.eos = 256;
  m.files = {{"train-00000.npy", "train", static_cast<int64_t>(2 * n), 1, 0}};
  write_manifest((dir + "/tokenized"), m);
  CHECK(open_shards({shard}, "auto", "auto", 258, 10)->size() == static_cast<int64_t>(2 * n));
  CHECK_THROWS_WITH(open_shards({shard}, "auto", "uint32", 258, 10),
                    Catch::Contains("train-00000.npy") &&
                        Catch::Contains("data.dtype is uint32 but the manifest.json beside it "
                                        "says uint16"));
}

TEST_CASE("a directory named as a text source is an error, not an empty document", "[data]") {
  const std::string dir = moda::test::temp_dir("loader_text_dir");
  fs::create_directories(dir + "/chapters.txt");
  std::ofstream(dir + "/a.txt") << std::string(4000, 'a');
  DataConfig data;
  data.train = {dir + "/a.txt", dir + "/chapters.txt"};
  CHECK_THROWS_WITH(open_dataset(data, 16),
                    Catch::Contains(dir + "/chapters.txt") && Catch::Contains("is a directory"));
  data.train = {dir + "/a.txt"};
  CHECK(open_dataset(data, 16).train->size() > 16);
}

TEST_CASE("text sources take globs, and a glob matching text among shards says so", "[data]") {
  const std::string dir = moda::test::temp_dir("loader_text_glob");
  std::ofstream(dir + "/a.txt") << std::string(3000, 'a');
  std::ofstream(dir + "/b.txt") << std::string(2000, 'b');
  DataConfig data;
  data.val_fraction = 0;
  data.train = {dir + "/*.txt"};
  // Two documents, each followed by the byte tokenizer's end-of-text token.
  CHECK(open_dataset(data, 16).train->size() == 3000 + 2000 + 2);
  data.train = {dir + "/none-*.txt"};
  CHECK_THROWS_WITH(open_dataset(data, 16),
                    Catch::Contains("no file matches " + dir + "/none-*.txt"));
  data.train = {dir + "/missing.txt"};
  CHECK_THROWS_WITH(open_dataset(data, 16),
                    Catch::Contains("data file " + dir + "/missing.txt does not exist"));
  // No extension in the glob: the matches go to the shard reader, which names the text file.
  data.train = {dir + "/*"};
  CHECK_THROWS_WITH(open_dataset(data, 16),
                    Catch::Contains(dir + "/a.txt: is a text file among token shards"));
}
