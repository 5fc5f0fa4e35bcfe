// Shared helpers of the test suite: random data, relative error, small configs.
#pragma once

#include <fmt/format.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <regex>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "moda/config.hpp"

// Ends the test case unless `condition` holds (no GPU, no mpirun, no tokenizer files). Every skip's
// warning starts with "moda: SKIPPED:", which the SKIP_REGULAR_EXPRESSION of CMakeLists.txt
// matches, so ctest reports the test as skipped rather than passed. ctest reports a test whose
// output matches as skipped even when it also failed, so skip before the first check.
#define MODA_SKIP_UNLESS(condition, message) \
  do {                                       \
    if (!(condition)) {                      \
      WARN("moda: SKIPPED: " << message);    \
      return;                                \
    }                                        \
  } while (0)

// MODA_SKIP_UNLESS for a test that needs a GPU: skipped where none is visible (CI), failed under
// MODA_EXPECT_GPU=1 (scripts/gpu_test.sh), where no GPU means a driver mismatch or a wrong
// CUDA_VISIBLE_DEVICES and skipping every GPU test would report a run that tested nothing as
// passed.
#define MODA_SKIP_UNLESS_GPU(visible)                                                      \
  do {                                                                                     \
    if (!(visible) && std::getenv("MODA_EXPECT_GPU") != nullptr) {                         \
      FAIL("MODA_EXPECT_GPU is set but no GPU is visible (driver, CUDA_VISIBLE_DEVICES)"); \
    }                                                                                      \
    MODA_SKIP_UNLESS(visible, "no GPU visible");                                           \
  } while (0)

namespace moda::test {

// The folders temp_dir made in this process, removed when it exits (each test run left about 25
// behind before); not by a forked child that exits normally.
class TempDirs {
 public:
  TempDirs() = default;
  TempDirs(const TempDirs&) = delete;
  TempDirs& operator=(const TempDirs&) = delete;
  ~TempDirs() {
    if (::getpid() != owner_) return;
    for (const auto& p : made_) {
      std::error_code ignored;
      std::filesystem::remove_all(p, ignored);
    }
  }
  void add(const std::filesystem::path& p) { made_.push_back(p); }

 private:
  pid_t owner_ = ::getpid();
  std::vector<std::filesystem::path> made_;
};

// An empty folder under the system's temp folder, named after `name` and this process; removed
// when the process exits.
inline std::string temp_dir(const std::string& name) {
  static TempDirs made;
  const auto p =
      std::filesystem::temp_directory_path() / fmt::format("moda_test_{}_{}", name, ::getpid());
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  made.add(p);
  return p.string();
}

// A whole text file; empty when it cannot be read.
inline std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return {(std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()};
}

// The training losses a run wrote to DIR/metrics.jsonl, in step order.
inline std::vector<double> run_losses(const std::string& dir) {
  std::ifstream in(dir + "/metrics.jsonl");
  std::vector<double> out;
  std::string line;
  const std::regex loss_re("\"loss\": ([0-9.eE+-]+)");
  std::smatch m;
  while (std::getline(in, line)) {
    if (std::regex_search(line, m, loss_re)) out.push_back(std::stod(m[1]));
  }
  return out;
}

inline std::vector<double> random_normal(size_t n, uint64_t seed, double std_dev = 1.0,
                                         double mean = 0.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(mean, std_dev);
  std::vector<double> v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

inline std::vector<int32_t> random_tokens(size_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> v(n);
  for (int32_t& x : v) x = dist(rng);
  return v;
}

// ||a - b|| / ||b||; NaN anywhere, different lengths or nothing to compare give infinity, so that
// none of them passes a tolerance.
inline double rel_error(std::span<const double> a, std::span<const double> b) {
  if (a.size() != b.size() || a.empty()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

struct Variant {
  NormPlacement placement = NormPlacement::reordered;
  bool moda = false, ffn_kv = false, attn_kv_proj = false;
  int64_t group = 1;
  int64_t n_layers = 3;
  bool tied = false;  // model.tie_embeddings: the LM head and the embedding share one weight
};

// A small model of every variant: 3 layers (unless asked for more), Hk = 2, Hq = 2G, head_dim 4,
// vocabulary 20 padded to 24. Validation is skipped (the byte tokenizer's vocabulary floor does not
// apply here).
inline Config tiny_variant_config(const Variant& v, int64_t head_dim = 4) {
  Config c;
  c.model.n_layers = v.n_layers;
  c.model.n_kv_heads = 2;
  c.model.n_heads = 2 * v.group;
  c.model.d_model = c.model.n_heads * head_dim;
  c.model.mlp_hidden = 12;
  c.model.vocab_size = 20;
  c.model.vocab_multiple = 8;
  c.model.max_seq_len = 16;
  c.model.rope_theta = 100.0;
  c.model.norm_placement = v.placement;
  c.moda.enabled = v.moda;
  c.moda.ffn_kv = v.ffn_kv;
  c.moda.attn_kv_proj = v.attn_kv_proj;
  c.model.tie_embeddings = v.tied;
  c.optimizer.z_loss = 1e-2;
  return c;
}

// Damages a file in place: the byte at `offset` changes (XOR 0x5a).
inline void flip_byte(const std::string& path, int64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(offset);
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  f.seekp(offset);
  f.write(&c, 1);
}

// Collects spdlog messages while alive.
class LogCapture {
 public:
  LogCapture() {
    previous_ = spdlog::default_logger();
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(stream_);
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;
  std::string text() const { return stream_.str(); }

 private:
  std::ostringstream stream_;
  std::shared_ptr<spdlog::logger> previous_;
};

}  // namespace moda::test
