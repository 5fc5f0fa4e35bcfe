// GPU tests: every op of the CUDA backend against the float64 CPU backend on random data, and
// whole models (every variant) on both backends with the same parameters and tokens. Inputs are
// rounded through the GPU's storage dtype first, and a backward op gets the GPU forward's saved
// outputs on both sides, so the errors measure one op's GPU arithmetic alone. Errors are
// ||gpu - ref|| / ||ref|| in double; for fp32 outputs that accumulate (+=) they are taken over
// the added part only (a bf16 output is rounded as a whole, so it is compared as a whole).
//
// Tolerances (bf16 storage rounds each value by up to 2^-8 relative, ~1.6e-3 RMS):
//   bf16 outputs of one op                      5e-3 (one rounding of the result)
//   attention outputs and gradients             1e-2 (P and dS pass through bf16 for the MMAs)
//   LM head dx, dW                              1e-2 (logit gradients are bf16 for the GEMMs)
//   fp32 outputs from identical bf16 inputs     1e-5 (fp32 accumulation only); 1e-4 where an
//                                               fp32 sum runs over rows in another order
//   rstd of add_then_norm                       2e-3 (the GPU normalizes the bf16-rounded sum)
//   AdamW (fp32 state)                          1e-6
//   whole model: logits 2e-2, loss 5e-3, each parameter gradient 5e-2 (three layers of bf16
//   activations between input and loss)
// Each check prints its measured error; the "[.][gpu_bench]" case times the ops at the 700M
// shape (it is hidden: run it by its tag).
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moda/backend.hpp"
#include "moda/cuda_backend.hpp"
#include "moda/depth_stats_layout.hpp"
#include "moda/model.hpp"
#include "test_util.hpp"

using namespace moda;

namespace {

bool gpu_visible() {
#ifdef MODA_HAVE_CUDA
  return cuda_device_count() > 0;
#else
  return false;
#endif
}

#define MODA_REQUIRE_GPU() MODA_SKIP_UNLESS_GPU(gpu_visible())

// A CUDA backend whose attention places its depth parts so.
std::unique_ptr<Backend> cuda_backend_placing(
    DepthBackwardPlacement placement,
    DepthForwardPlacement forward = DepthForwardPlacement::automatic) {
#ifdef MODA_HAVE_CUDA
  CudaBackendOptions options;
  options.depth_backward = placement;
  options.depth_forward = forward;
  return make_cuda_backend(options);
#else
  (void)placement;
  (void)forward;
  return make_backend("cuda", 0);  // refused: built without CUDA (GPU tests skip before this)
#endif
}

constexpr double kBf16Tol = 5e-3;
constexpr double kAttnTol = 1e-2;
constexpr double kF32Tol = 1e-5;

// One tensor on each backend with identical contents.
struct Twin {
  Tensor gpu, cpu;
};

class Harness {
 public:
  Harness() : Harness(make_backend("cuda", 0)) {}
  explicit Harness(std::unique_ptr<Backend> gpu)
      : gpu_(std::move(gpu)), cpu_(make_backend("cpu64", 0)) {}
  ~Harness() {
    for (Twin& t : twins_) {
      gpu_->release(t.gpu);
      cpu_->release(t.cpu);
    }
  }
  Backend& gpu() { return *gpu_; }
  Backend& cpu() { return *cpu_; }

  // The values as the GPU stores them in `role`, given to the CPU side as well.
  Twin values(Role role, std::span<const double> v) {
    const auto n = static_cast<int64_t>(v.size());
    Twin t{gpu_->alloc(role, n), cpu_->alloc(role, n)};
    gpu_->upload(t.gpu, v);
    cpu_->upload(t.cpu, gpu_values(t));
    twins_.push_back(t);
    return t;
  }
  Twin random(Role role, int64_t n, uint64_t seed, double std_dev = 1.0, double mean = 0.0) {
    return values(role, test::random_normal(static_cast<size_t>(n), seed, std_dev, mean));
  }
  Twin tokens(std::span<const int32_t> ids) {
    const auto n = static_cast<int64_t>(ids.size());
    Twin t{gpu_->alloc(Role::index, n), cpu_->alloc(Role::index, n)};
    gpu_->upload_tokens(t.gpu, ids);
    cpu_->upload_tokens(t.cpu, ids);
    twins_.push_back(t);
    return t;
  }

  std::vector<double> gpu_values(const Twin& t) {
    std::vector<double> v(static_cast<size_t>(t.gpu.numel));
    gpu_->download(t.gpu, v);
    return v;
  }
  std::vector<double> cpu_values(const Twin& t) {
    std::vector<double> v(static_cast<size_t>(t.cpu.numel));
    cpu_->download(t.cpu, v);
    return v;
  }
  // Gives the CPU side what the GPU side holds (a forward's outputs before a backward).
  void share_gpu(const Twin& t) { cpu_->upload(t.cpu, gpu_values(t)); }
  // ||gpu - base||
  double gpu_norm(const Twin& t, const std::vector<double>& base) {
    const std::vector<double> g = gpu_values(t);
    double ss = 0;
    for (size_t i = 0; i < g.size(); ++i) ss += (g[i] - base[i]) * (g[i] - base[i]);
    return std::sqrt(ss);
  }

  // Checks ||gpu - cpu|| / ||cpu - base|| (base: what an accumulating output held before).
  void check(const Twin& t, double tol, const std::string& what,
             const std::vector<double>& base = {}) {
    std::vector<double> g = gpu_values(t), c = cpu_values(t);
    if (!base.empty()) {
      for (size_t i = 0; i < g.size(); ++i) {
        g[i] -= base[i];
        c[i] -= base[i];
      }
    }
    const double err = test::rel_error(g, c);
    fmt::print("moda gpu: {:<70} rel err {:.3e} (tol {:.0e})\n", what, err, tol);
    INFO(what << ": relative error " << err << " above " << tol);
    CHECK(err <= tol);
  }

 private:
  std::unique_ptr<Backend> gpu_, cpu_;
  std::vector<Twin> twins_;
};

// Entries (r, c) of a rows x cols row-major matrix that differ from expect(r, c), which gives
// nothing where any value may stand.
int64_t count_unexpected(const std::vector<double>& got, int64_t rows, int64_t cols,
                         const std::function<std::optional<double>(int64_t, int64_t)>& expect) {
  int64_t wrong = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const std::optional<double> want = expect(r, c);
      wrong += want.has_value() && got[static_cast<size_t>(r * cols + c)] != *want;
    }
  }
  return wrong;
}

}  // namespace

TEST_CASE("cuda backend: memory, transfers and dtype conversion", "[gpu]") {
  MODA_REQUIRE_GPU();
  auto gpu = make_backend("cuda", 0);
  // The name ends with the peak memory bandwidth, which picks attention's depth placements:
  // Hopper cards have 2.04 TB/s (H100 PCIe) to 4.8 (H200), 3.35 on the H100 SXM.
  const std::string name = gpu->name();
  INFO(name);
  const size_t comma = name.rfind(", ");
  REQUIRE(comma != std::string::npos);
  REQUIRE(name.ends_with(" TB/s)"));
  const double tb_per_s = std::stod(name.substr(comma + 2));
  CHECK(tb_per_s > 2.0);
  CHECK(tb_per_s < 5.0);
  CHECK(gpu->dtype_of(Role::weight) == DType::bf16);
  CHECK(gpu->dtype_of(Role::activation) == DType::bf16);
  CHECK(gpu->dtype_of(Role::master) == DType::f32);
  CHECK(gpu->dtype_of(Role::accum) == DType::f32);
  CHECK(gpu->dtype_of(Role::stat) == DType::f32);
  CHECK(gpu->dtype_of(Role::index) == DType::i32);

  const int64_t n = 1001;
  const std::vector<double> values = test::random_normal(static_cast<size_t>(n), 3, 10.0);
  std::vector<double> back(static_cast<size_t>(n), -1.0);
  Tensor f = gpu->alloc(Role::master, n);
  gpu->download(f, back);
  CHECK(std::all_of(back.begin(), back.end(), [](double x) { return x == 0.0; }));
  gpu->upload(f, values);
  gpu->download(f, back);
  for (int64_t i = 0; i < n; ++i) {
    REQUIRE(back[i] == static_cast<double>(static_cast<float>(values[i])));
  }

  Tensor b = gpu->alloc(Role::weight, n);
  gpu->upload(b, values);
  std::vector<double> rounded(static_cast<size_t>(n));
  gpu->download(b, rounded);
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    worst = std::max(worst, std::abs(rounded[i] - values[i]) / std::abs(values[i]));
  }
  CHECK(worst <= std::ldexp(1.0, -8));

  // fp32 -> bf16 copy rounds like the upload; bf16 -> fp32 is exact.
  Tensor b2 = gpu->alloc(Role::activation, n);
  gpu->copy(b2, f);
  gpu->download(b2, back);
  CHECK(back == rounded);
  gpu->copy(f, b);
  gpu->download(f, back);
  CHECK(back == rounded);

  // float32 downloads (checkpoints) through the default: in chunks of download().
  std::vector<float> narrow(static_cast<size_t>(n - 3));
  gpu->download_f32(b2.slice(3, n - 3), narrow);
  for (int64_t i = 3; i < n; ++i) REQUIRE(narrow[i - 3] == static_cast<float>(rounded[i]));

  // zero() of a slice touches only the slice.
  gpu->zero(f.slice(100, 50));
  gpu->download(f, back);
  for (int64_t i = 0; i < n; ++i) {
    REQUIRE(back[i] == (i >= 100 && i < 150 ? 0.0 : rounded[i]));
  }

  Tensor tok = gpu->alloc(Role::index, 7);
  const std::vector<int32_t> ids{5, 0, 99, 3, 3, 100351, 42};
  gpu->upload_tokens(tok, ids);
  gpu->download(tok, back = std::vector<double>(7));
  for (size_t i = 0; i < ids.size(); ++i) REQUIRE(back[i] == ids[i]);

  CHECK_THROWS(gpu->copy(f, tok.slice(0, 5)));
  for (Tensor* t : {&f, &b, &b2, &tok}) gpu->release(*t);
}

TEST_CASE("cuda backend: embedding", "[gpu]") {
  MODA_REQUIRE_GPU();
  // 64 and 12: the backward's row kernel in one pass; 1028: a second pass over the columns with a
  // partial chunk; 6: the scalar kernel (width not a multiple of 4).
  for (int64_t dim : {64, 12, 1028, 6}) {
    Harness h;
    const int64_t rows = 37, vocab = 20;
    const auto ids = test::random_tokens(static_cast<size_t>(rows), vocab, 7);
    Twin tok = h.tokens(ids);
    Twin table = h.random(Role::weight, vocab * dim, 1);
    Twin out = h.random(Role::activation, rows * dim, 2);
    for (Backend* be : {&h.gpu(), &h.cpu()}) {
      const bool g = be == &h.gpu();
      be->embedding_forward(g ? tok.gpu : tok.cpu, g ? table.gpu : table.cpu, g ? out.gpu : out.cpu,
                            rows, dim);
    }
    h.check(out, 0.0, fmt::format("embedding forward dim={}", dim));
    Twin dout = h.random(Role::activation, rows * dim, 3);
    Twin dtable = h.random(Role::master, vocab * dim, 4);
    const auto base = h.cpu_values(dtable);
    h.gpu().embedding_backward(tok.gpu, dout.gpu, dtable.gpu, rows, dim);
    h.cpu().embedding_backward(tok.cpu, dout.cpu, dtable.cpu, rows, dim);
    h.check(dtable, kF32Tol, fmt::format("embedding backward dim={}", dim), base);
  }
}

TEST_CASE("cuda backend: matmul forward and backward", "[gpu]") {
  MODA_REQUIRE_GPU();
  struct Shape {
    int64_t m, n, k;
  };
  for (const Shape& s : {Shape{37, 50, 24}, Shape{1, 8, 16}, Shape{65, 129, 72},
                         Shape{128, 256, 128}, Shape{33, 1000, 64}, Shape{7, 13, 5}}) {
    for (bool acc : {false, true}) {
      Harness h;
      const std::string tag = fmt::format("m={} n={} k={} accumulate={}", s.m, s.n, s.k, acc);
      const double wstd = 1.0 / std::sqrt(static_cast<double>(s.k));
      Twin x = h.random(Role::activation, s.m * s.k, 1);
      Twin w = h.random(Role::weight, s.n * s.k, 2, wstd);
      Twin y = h.random(Role::activation, s.m * s.n, 3);
      Twin y32 = h.random(Role::stat, s.m * s.n, 4);
      const auto y32_base = h.cpu_values(y32);
      for (Backend* be : {&h.gpu(), &h.cpu()}) {
        const bool g = be == &h.gpu();
        be->matmul(g ? y.gpu : y.cpu, g ? x.gpu : x.cpu, g ? w.gpu : w.cpu, s.m, s.n, s.k, acc);
        be->matmul(g ? y32.gpu : y32.cpu, g ? x.gpu : x.cpu, g ? w.gpu : w.cpu, s.m, s.n, s.k, acc);
      }
      h.check(y, kBf16Tol, "matmul bf16 out " + tag);
      h.check(y32, kF32Tol, "matmul fp32 out " + tag, acc ? y32_base : std::vector<double>{});

      Twin dy = h.random(Role::activation, s.m * s.n, 5);
      Twin dx = h.random(Role::activation, s.m * s.k, 6);
      Twin dw = h.random(Role::master, s.n * s.k, 7);
      const auto dw_base = h.cpu_values(dw);
      for (Backend* be : {&h.gpu(), &h.cpu()}) {
        const bool g = be == &h.gpu();
        be->matmul_backward(g ? dy.gpu : dy.cpu, g ? x.gpu : x.cpu, g ? w.gpu : w.cpu,
                            g ? dx.gpu : dx.cpu, g ? dw.gpu : dw.cpu, s.m, s.n, s.k, acc);
      }
      h.check(dx, kBf16Tol, "matmul din " + tag);
      h.check(dw, kF32Tol, "matmul dweight " + tag, dw_base);
      // Without din: the weight gradient alone.
      const auto dw_base2 = h.cpu_values(dw);
      for (Backend* be : {&h.gpu(), &h.cpu()}) {
        const bool g = be == &h.gpu();
        be->matmul_backward(g ? dy.gpu : dy.cpu, g ? x.gpu : x.cpu, g ? w.gpu : w.cpu, Tensor{},
                            g ? dw.gpu : dw.cpu, s.m, s.n, s.k, false);
      }
      h.check(dw, kF32Tol, "matmul dweight only " + tag, dw_base2);
    }
  }
}

TEST_CASE("cuda backend: rmsnorm and fused residual norms", "[gpu]") {
  MODA_REQUIRE_GPU();
  const double eps = 1e-6;
  // 8, 16 and 32 lanes per row (up to 256, 512 and any columns), rows kept in registers (up to
  // 1024 and 2048) or read again, and the element-wise path (100, 20001). 12288 and 20001 columns
  // are too wide for eight warps' partial sums of the weight gradient in shared memory (the
  // backward takes fewer warps per block).
  for (int64_t cols : {64, 100, 384, 1024, 1536, 12288, 20001}) {
    Harness h;
    const int64_t rows = 37, n = rows * cols;
    Twin x = h.random(Role::activation, n, 1, 2.0);
    Twin br = h.random(Role::activation, n, 2);
    Twin w = h.random(Role::weight, cols, 3, 0.2, 1.0);
    Twin out = h.random(Role::activation, n, 4);
    Twin sum = h.random(Role::activation, n, 5);
    Twin rstd = h.random(Role::stat, rows, 6);
    const auto run_both = [&](const std::function<void(Backend&, bool)>& f) {
      f(h.gpu(), true);
      f(h.cpu(), false);
    };
    const auto T = [](const Twin& t, bool g) { return g ? t.gpu : t.cpu; };
    run_both([&](Backend& be, bool g) {
      be.rmsnorm_forward(T(x, g), T(w, g), T(out, g), T(rstd, g), rows, cols, eps);
    });
    h.check(out, kBf16Tol, fmt::format("rmsnorm forward cols={}", cols));
    h.check(rstd, kF32Tol, fmt::format("rmsnorm rstd cols={}", cols));
    run_both([&](Backend& be, bool g) {
      be.residual_norm_forward(ResidualNorm::norm_then_add, T(x, g), T(br, g), T(w, g), Tensor{},
                               T(out, g), T(rstd, g), rows, cols, eps);
    });
    h.check(out, kBf16Tol, fmt::format("norm_then_add forward cols={}", cols));
    h.check(rstd, kF32Tol, fmt::format("norm_then_add rstd cols={}", cols));
    run_both([&](Backend& be, bool g) {
      be.residual_norm_forward(ResidualNorm::add_then_norm, T(x, g), T(br, g), T(w, g), T(sum, g),
                               T(out, g), T(rstd, g), rows, cols, eps);
    });
    h.check(sum, kBf16Tol, fmt::format("add_then_norm sum cols={}", cols));
    h.check(out, kBf16Tol, fmt::format("add_then_norm forward cols={}", cols));
    h.check(rstd, 2e-3, fmt::format("add_then_norm rstd cols={} (of the rounded sum)", cols));
    // The backward reads the forward's saved sum and rstd: the GPU's, on both sides.
    h.share_gpu(sum);
    h.share_gpu(rstd);
    for (bool acc : {false, true}) {
      Twin dy = h.random(Role::activation, n, 7);
      Twin dx = h.random(Role::activation, n, 8);
      Twin dw = h.random(Role::master, cols, 9);
      const auto dw_base = h.cpu_values(dw);
      run_both([&](Backend& be, bool g) {
        be.residual_norm_backward(ResidualNorm::add_then_norm, T(dy, g), T(sum, g), T(w, g),
                                  T(rstd, g), T(dx, g), T(dw, g), rows, cols, acc);
      });
      const std::string tag = fmt::format("cols={} accumulate={}", cols, acc);
      h.check(dx, kBf16Tol, "rmsnorm backward din " + tag);
      h.check(dw, 1e-4, "rmsnorm backward dweight " + tag, dw_base);
    }
  }
}

TEST_CASE("cuda backend: QK-norm + RoPE", "[gpu]") {
  MODA_REQUIRE_GPU();
  struct Case {
    int64_t d, nq, nk, col0, extra;
  };
  // Vector path (d/2 % 8 == 0, aligned columns) with 8, 16 and 32 lanes per row (k of 8, 16, 32
  // and 64 8-element units, two per lane in the forward, one in the backward; 64 q heads over 2
  // KV heads take 16 lanes in the backward, since the partial sums of 8-lane groups would not fit
  // in shared memory), scalar paths (small heads, odd offsets), and depth projections (nq = 0) at
  // an offset inside a wider row.
  for (const Case& c :
       {Case{64, 4, 2, 0, 0}, Case{128, 2, 1, 0, 16}, Case{64, 8, 4, 0, 0}, Case{64, 16, 8, 0, 0},
        Case{128, 16, 8, 0, 0}, Case{64, 64, 2, 0, 0}, Case{16, 6, 2, 0, 0}, Case{8, 6, 2, 0, 0},
        Case{4, 2, 2, 0, 3}, Case{64, 0, 2, 256, 0}, Case{64, 4, 2, 3, 5}}) {
    Harness h;
    const int64_t B = 2, T = 17, rows = B * T;
    const int64_t qw = c.nq * c.d, kw = c.nk * c.d;
    const int64_t ld = c.col0 + qw + 2 * kw + c.extra;
    const std::string tag =
        fmt::format("d={} q_heads={} kv_heads={} col0={} ld={}", c.d, c.nq, c.nk, c.col0, ld);
    for (Backend* be : {&h.gpu(), &h.cpu()}) be->init_rope(32, c.d, 10000.0);
    const Backend::QkvLayout l{rows, T, ld, c.col0, c.nq, c.nk, c.d, 1e-6};
    Twin raw = h.random(Role::activation, rows * ld, 1, 2.0);
    Twin qwt = h.random(Role::weight, std::max<int64_t>(qw, 1), 2, 0.2, 1.0);
    Twin kwt = h.random(Role::weight, kw, 3, 0.2, 1.0);
    Twin q = h.random(Role::activation, std::max<int64_t>(rows * qw, 1), 4);
    Twin k = h.random(Role::activation, rows * kw, 5);
    Twin v = h.random(Role::activation, rows * kw, 6);
    Twin qr = h.random(Role::stat, rows, 7);
    Twin kr = h.random(Role::stat, rows, 8);
    const auto T_ = [&](const Twin& t, bool g) { return g ? t.gpu : t.cpu; };
    const auto Q = [&](const Twin& t, bool g) { return c.nq > 0 ? T_(t, g) : Tensor{}; };
    for (bool g : {true, false}) {
      Backend& be = g ? h.gpu() : h.cpu();
      be.qkv_norm_rope_forward(l, T_(raw, g), Q(qwt, g), T_(kwt, g), Q(q, g), T_(k, g), T_(v, g),
                               Q(qr, g), T_(kr, g));
    }
    if (c.nq > 0) {
      h.check(q, kBf16Tol, "qkv forward q " + tag);
      h.check(qr, kF32Tol, "qkv forward q_rstd " + tag);
    }
    h.check(k, kBf16Tol, "qkv forward k " + tag);
    h.check(kr, kF32Tol, "qkv forward k_rstd " + tag);
    h.check(v, 0.0, "qkv forward v " + tag);

    h.share_gpu(qr);
    h.share_gpu(kr);
    Twin dq = h.random(Role::accum, std::max<int64_t>(rows * qw, 1), 9);
    Twin dk = h.random(Role::accum, rows * kw, 10);
    Twin dv = h.random(Role::accum, rows * kw, 11);
    Twin draw = h.random(Role::activation, rows * ld, 12);
    Twin dqw = h.random(Role::master, std::max<int64_t>(qw, 1), 13);
    Twin dkw = h.random(Role::master, kw, 14);
    const auto dqw_base = h.cpu_values(dqw), dkw_base = h.cpu_values(dkw);
    for (bool g : {true, false}) {
      Backend& be = g ? h.gpu() : h.cpu();
      be.qkv_norm_rope_backward(l, T_(raw, g), Q(qwt, g), T_(kwt, g), Q(qr, g), T_(kr, g), Q(dq, g),
                                T_(dk, g), T_(dv, g), T_(draw, g), Q(dqw, g), T_(dkw, g));
    }
    h.check(draw, kBf16Tol, "qkv backward draw " + tag);
    if (c.nq > 0) h.check(dqw, 1e-4, "qkv backward dq_weight " + tag, dqw_base);
    h.check(dkw, 1e-4, "qkv backward dk_weight " + tag, dkw_base);
    // Without dv the v columns keep what they hold (written there by depth_slot_backward).
    Twin draw_kept = h.random(Role::activation, rows * ld, 15);
    const std::vector<double> kept_before = h.cpu_values(draw_kept);
    for (bool g : {true, false}) {
      Backend& be = g ? h.gpu() : h.cpu();
      be.qkv_norm_rope_backward(l, T_(raw, g), Q(qwt, g), T_(kwt, g), Q(qr, g), T_(kr, g), Q(dq, g),
                                T_(dk, g), Tensor{}, T_(draw_kept, g), Q(dqw, g), T_(dkw, g));
    }
    h.check(draw_kept, kBf16Tol, "qkv backward draw without dv " + tag, kept_before);
    const int64_t v0 = c.col0 + qw + kw;
    CHECK(count_unexpected(h.gpu_values(draw_kept), rows, ld,
                           [&](int64_t r, int64_t i) -> std::optional<double> {
                             if (i < v0 || i >= v0 + kw) return std::nullopt;
                             return kept_before[static_cast<size_t>(r * ld + i)];
                           }) == 0);
  }
}

TEST_CASE("cuda backend: SwiGLU", "[gpu]") {
  MODA_REQUIRE_GPU();
  for (auto [hidden, extra] : {std::pair<int64_t, int64_t>{64, 0}, {64, 32}, {12, 5}}) {
    Harness h;
    const int64_t rows = 37, ld = 2 * hidden + extra;
    const std::string tag = fmt::format("hidden={} ld={}", hidden, ld);
    Twin in = h.random(Role::activation, rows * ld, 1, 2.0);
    Twin out = h.random(Role::activation, rows * hidden, 2);
    Twin dout = h.random(Role::activation, rows * hidden, 3);
    Twin din = h.random(Role::activation, rows * ld, 4);
    h.gpu().swiglu_forward(in.gpu, out.gpu, rows, hidden, ld);
    h.cpu().swiglu_forward(in.cpu, out.cpu, rows, hidden, ld);
    h.check(out, kBf16Tol, "swiglu forward " + tag);
    h.gpu().swiglu_backward(dout.gpu, in.gpu, din.gpu, rows, hidden, ld);
    h.cpu().swiglu_backward(dout.cpu, in.cpu, din.cpu, rows, hidden, ld);
    h.check(din, kBf16Tol, "swiglu backward " + tag);
  }
}

TEST_CASE("cuda backend: MoDA attention", "[gpu]") {
  MODA_REQUIRE_GPU();
  // 64 and 128 take the tensor-core and streaming depth kernels (the forward at 64, and at 128
  // with an even G, with the slots folded into the tensor-core kernel), 8 and 4 the warp kernels.
  // S = 37 spans several unrolled batches of slot rows and ends inside one; G = 8 is the paper's;
  // G = 4 and 8 split the backward's head group over blocks (dK, dV added with atomics), and G = 4
  // has its own depth-kernel instantiation.
  // q_scale > 1 sharpens the scores so that later slots move the softmax's maximum by more than
  // the fused forward's slack (kDepthRescaleSlack), which otherwise rarely happens. At head size 64
  // the backward's depth part runs in the sequence kernel's blocks' tail or beside the sequence
  // kernel (DepthBackwardPlacement), and the forward's inside the sequence kernel or after it
  // (DepthForwardPlacement): each shape in automatic placement, then in both others.
  const auto run = [](int64_t d, int64_t group, int64_t slots, int64_t T, double q_scale,
                      DepthBackwardPlacement placement = DepthBackwardPlacement::automatic,
                      DepthForwardPlacement forward = DepthForwardPlacement::automatic) {
    Harness h(cuda_backend_placing(placement, forward));
    const int64_t B = 2, Hk = 2, Hq = Hk * group, R = B * T;
    const int64_t qn = R * Hq * d, kn = R * Hk * d;
    // A gap between slots checks that slot_stride, not the slot size, is used.
    const int64_t stride = kn + 64, depth_n = slots > 0 ? (slots - 1) * stride + kn : 0;
    const AttentionShape shape{B, T, Hq, Hk, d, slots, stride};
    const std::string tag =
        fmt::format("d={} G={} S={} T={} q_scale={} placement={} forward={}", d, group, slots, T,
                    q_scale, static_cast<int>(placement), static_cast<int>(forward));
    Twin q = h.random(Role::activation, qn, 1, q_scale);
    Twin k = h.random(Role::activation, kn, 2);
    Twin v = h.random(Role::activation, kn, 3);
    Twin dk_s = h.random(Role::activation, std::max<int64_t>(depth_n, 1), 4);
    Twin dv_s = h.random(Role::activation, std::max<int64_t>(depth_n, 1), 5);
    Twin out = h.random(Role::activation, qn, 6);
    Twin lse = h.random(Role::stat, R * Hq, 7);
    const auto S_ = [&](const Twin& t, bool g) {
      return slots > 0 ? (g ? t.gpu : t.cpu) : Tensor{};
    };
    for (bool g : {true, false}) {
      Backend& be = g ? h.gpu() : h.cpu();
      be.attention_forward(shape, g ? q.gpu : q.cpu, g ? k.gpu : k.cpu, g ? v.gpu : v.cpu,
                           S_(dk_s, g), S_(dv_s, g), g ? out.gpu : out.cpu, g ? lse.gpu : lse.cpu);
    }
    h.check(out, kAttnTol, "attention forward out " + tag);
    h.check(lse, 1e-4, "attention forward lse " + tag);
    h.share_gpu(out);
    h.share_gpu(lse);

    Twin dout = h.random(Role::activation, qn, 8);
    Twin dq = h.random(Role::accum, qn, 9);
    Twin dk = h.random(Role::accum, kn, 10, 0.1);
    Twin dv = h.random(Role::accum, kn, 11, 0.1);
    const int64_t pn = std::max<int64_t>(slots * R * Hq, 1);
    Twin probs = h.random(Role::accum, pn, 12), dscores = h.random(Role::accum, pn, 13);
    const auto dk_base = h.cpu_values(dk), dv_base = h.cpu_values(dv);
    for (bool g : {true, false}) {
      Backend& be = g ? h.gpu() : h.cpu();
      const auto P = [g](const Twin& t) { return g ? t.gpu : t.cpu; };
      be.attention_backward(shape, P(dout), P(q), P(k), P(v), S_(dk_s, g), S_(dv_s, g), P(out),
                            P(lse), P(dq), P(dk), P(dv), S_(probs, g), S_(dscores, g));
    }
    h.check(dv, kAttnTol, "attention backward dv " + tag, dv_base);
    if (T == 1 && slots == 0) {
      // One key per query: p = 1 and dp = delta, so dq and dk are zero up to rounding.
      const double scale = h.gpu_norm(dv, dv_base);
      const auto zeros = std::vector<double>(static_cast<size_t>(qn), 0.0);
      CHECK(h.gpu_norm(dq, zeros) <= 1e-2 * scale);
      CHECK(h.gpu_norm(dk, dk_base) <= 1e-2 * scale);
    } else {
      h.check(dq, kAttnTol, "attention backward dq " + tag);
      h.check(dk, kAttnTol, "attention backward dk " + tag, dk_base);
    }
    if (slots > 0) {
      h.check(probs, kAttnTol, "attention backward depth_probs " + tag);
      h.check(dscores, kAttnTol, "attention backward depth_dscores " + tag);
      // The slot gradients from this layer and a second reader of the same slots. The
      // gradients start random and are overwritten; the gap between slots must keep its
      // values.
      h.share_gpu(probs);
      h.share_gpu(dscores);
      Twin q2 = h.random(Role::activation, qn, 14), dout2 = h.random(Role::activation, qn, 15);
      Twin probs2 = h.random(Role::accum, pn, 16), dscores2 = h.random(Role::accum, pn, 17);
      Twin ddk = h.random(Role::accum, depth_n, 18), ddv = h.random(Role::accum, depth_n, 19);
      for (bool g : {true, false}) {
        const auto P = [g](const Twin& t) { return g ? t.gpu : t.cpu; };
        const std::vector<Backend::DepthReader> readers{
            {P(q), P(dout), P(probs), P(dscores), slots},
            {P(q2), P(dout2), P(probs2), P(dscores2), slots}};
        (g ? h.gpu() : h.cpu())
            .depth_slot_backward(shape, 0, slots, readers, P(ddk), P(ddv), false, {});
      }
      h.check(ddk, kAttnTol, "depth slot gradients d_depth_k " + tag);
      h.check(ddv, kAttnTol, "depth slot gradients d_depth_v " + tag);
    }
    // The layer as its slots' only reader: the slots' gradients formed in the backward (at head
    // size 64 by the depth kernels themselves; elsewhere pulled after it). dq is overwritten and
    // dk, dv added to as in attention_backward; the gradients start random and are overwritten,
    // the gap between slots keeps its values.
    Twin dq1 = h.random(Role::accum, qn, 20);
    Twin dk1 = h.random(Role::accum, kn, 21, 0.1), dv1 = h.random(Role::accum, kn, 22, 0.1);
    Twin sdk = h.random(Role::accum, std::max<int64_t>(depth_n, 1), 23);
    Twin sdv = h.random(Role::accum, std::max<int64_t>(depth_n, 1), 24);
    const auto dk1_base = h.cpu_values(dk1), dv1_base = h.cpu_values(dv1);
    for (bool g : {true, false}) {
      Backend& be = g ? h.gpu() : h.cpu();
      const auto P = [g](const Twin& t) { return g ? t.gpu : t.cpu; };
      be.attention_backward_sole_reader(shape, P(dout), P(q), P(k), P(v), S_(dk_s, g), S_(dv_s, g),
                                        P(out), P(lse), P(dq1), P(dk1), P(dv1), S_(sdk, g),
                                        S_(sdv, g));
    }
    h.check(dv1, kAttnTol, "sole reader dv " + tag, dv1_base);
    if (T == 1 && slots == 0) {
      // As above: dq (started random, overwritten) and what was added to dk are zero up to
      // rounding.
      const double scale = h.gpu_norm(dv1, dv1_base);
      const auto zeros = std::vector<double>(static_cast<size_t>(qn), 0.0);
      CHECK(h.gpu_norm(dq1, zeros) <= 1e-2 * scale);
      CHECK(h.gpu_norm(dk1, dk1_base) <= 1e-2 * scale);
    } else {
      h.check(dq1, kAttnTol, "sole reader dq " + tag);
      h.check(dk1, kAttnTol, "sole reader dk " + tag, dk1_base);
    }
    if (slots > 0) {
      h.check(sdk, kAttnTol, "sole reader d_depth_k " + tag);
      h.check(sdv, kAttnTol, "sole reader d_depth_v " + tag);
    }
  };
  for (int64_t d : {64, 128, 8, 4}) {
    for (int64_t group : {1, 2, 3, 4, 8}) {
      for (int64_t slots : {0, 1, 3, 37}) {
        for (int64_t T : {1, 33, 130}) {
          run(d, group, slots, T, 1.0);
          if (d == 64 && slots > 0) {
            run(d, group, slots, T, 1.0, DepthBackwardPlacement::beside,
                DepthForwardPlacement::after);
            run(d, group, slots, T, 1.0, DepthBackwardPlacement::tail,
                DepthForwardPlacement::inside);
            run(d, group, slots, T, 1.0, DepthBackwardPlacement::automatic,
                DepthForwardPlacement::beside);
          }
          if (d == 128 && slots > 0) {
            run(d, group, slots, T, 1.0, DepthBackwardPlacement::automatic,
                DepthForwardPlacement::after);
          }
          if (d == 128 && slots > 0 && group > 2 && group % 2 == 0) {
            // The fused forward at head size 128 (automatic at G = 2), its blocks two heads of
            // a group of G.
            run(d, group, slots, T, 1.0, DepthBackwardPlacement::automatic,
                DepthForwardPlacement::inside);
          }
        }
      }
    }
  }
  // Group sizes the loops above leave out, in the forward's per-token kernel (any G <= 8).
  for (int64_t group : {5, 6, 7}) {
    for (int64_t d : {64, 128}) {
      run(d, group, 37, 33, 1.0, DepthBackwardPlacement::beside, DepthForwardPlacement::after);
    }
    run(64, group, 37, 33, 1.0, DepthBackwardPlacement::automatic, DepthForwardPlacement::beside);
  }
  for (int64_t group : {1, 2, 8}) {
    run(64, group, 37, 130, 6.0, DepthBackwardPlacement::beside, DepthForwardPlacement::after);
    run(64, group, 37, 130, 6.0, DepthBackwardPlacement::tail, DepthForwardPlacement::inside);
    run(64, group, 37, 130, 6.0, DepthBackwardPlacement::automatic, DepthForwardPlacement::beside);
    run(128, group, 37, 130, 6.0);  // the streaming forward's online maximum moves
    run(128, group, 37, 130, 6.0, DepthBackwardPlacement::automatic, DepthForwardPlacement::after);
  }
  // Many slots: S = 1,300 at G = 8 once took the warp kernels (the streaming forward kept its
  // scores in shared memory); now every path takes any S.
  for (int64_t d : {64, 128}) run(d, 8, 1300, 33, 1.0);
  run(64, 8, 1300, 33, 1.0, DepthBackwardPlacement::beside, DepthForwardPlacement::after);
  run(64, 8, 1300, 33, 1.0, DepthBackwardPlacement::automatic, DepthForwardPlacement::beside);
}

// T = 65,535 (the 64K, and ragged: no tile divides it) is beyond the float64 CPU backend
// (its attention is O(T^2)), so a float64 formula checks the outputs where it costs O(T d) each:
// out and lse at sampled rows; dq, the slots' probabilities and score gradients at sampled rows;
// dk and dv at sampled keys (sums over the rows at or after the key, the first key's over all);
// with slots, the layer as their only reader (attention_backward_sole_reader): its dq at the
// sampled rows, and the slots' gradients of the sampled tokens (sums over the group's heads).
// The backward's formulas take the forward's out and lse as the op does, as its inputs (checked
// at the sampled rows); 64-bit offsets past 2^31 elements are not reached at these sizes.
TEST_CASE("cuda backend: MoDA attention at T = 65535 on sampled rows and keys", "[gpu]") {
  MODA_REQUIRE_GPU();
  const auto run = [](int64_t d, int64_t G, int64_t Hk, int64_t S) {
    auto gpu = make_backend("cuda", 0);
    Backend& g = *gpu;
    const int64_t T = 65535, Hq = Hk * G, qn = T * Hq * d, kn = T * Hk * d;
    const AttentionShape shape{1, T, Hq, Hk, d, S, kn};
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    const std::string tag = fmt::format("T={} d={} G={} Hk={} S={}", T, d, G, Hk, S);
    std::vector<Tensor> owned;
    // A tensor of random values and those values as the GPU holds them (bf16 for activations).
    const auto random = [&](Role role, int64_t n, uint64_t seed, std::vector<double>& held) {
      Tensor t = g.alloc(role, std::max<int64_t>(n, 1));
      owned.push_back(t);
      held = test::random_normal(static_cast<size_t>(n), seed);
      if (n > 0) {
        g.upload(t, held);
        g.download(t.slice(0, n), held);
      }
      return t;
    };
    const auto zeros = [&](Role role, int64_t n) {
      owned.push_back(g.alloc(role, std::max<int64_t>(n, 1)));
      return owned.back();
    };
    const auto values = [&](const Tensor& t, int64_t n) {
      std::vector<double> v(static_cast<size_t>(n));
      g.download(t.slice(0, n), v);
      return v;
    };
    std::vector<double> q, k, v, slot_k, slot_v, dout;
    const Tensor tq = random(Role::activation, qn, 31, q), tk = random(Role::activation, kn, 32, k);
    const Tensor tv = random(Role::activation, kn, 33, v);
    const Tensor tsk = random(Role::activation, S * kn, 34, slot_k);
    const Tensor tsv = random(Role::activation, S * kn, 35, slot_v);
    const Tensor tdout = random(Role::activation, qn, 36, dout);
    const Tensor tout = zeros(Role::activation, qn), tlse = zeros(Role::stat, T * Hq);
    const Tensor tdq = zeros(Role::accum, qn), tdk = zeros(Role::accum, kn);
    const Tensor tdv = zeros(Role::accum, kn), tprobs = zeros(Role::accum, S * T * Hq);
    const Tensor tdscores = zeros(Role::accum, S * T * Hq);
    const Tensor empty;
    g.attention_forward(shape, tq, tk, tv, S > 0 ? tsk : empty, S > 0 ? tsv : empty, tout, tlse);
    g.attention_backward(shape, tdout, tq, tk, tv, S > 0 ? tsk : empty, S > 0 ? tsv : empty, tout,
                         tlse, tdq, tdk, tdv, S > 0 ? tprobs : empty, S > 0 ? tdscores : empty);
    const auto out = values(tout, qn), lse = values(tlse, T * Hq), dq = values(tdq, qn);
    const auto dk = values(tdk, kn), dv = values(tdv, kn);
    const auto probs = values(tprobs, S * T * Hq), dscores = values(tdscores, S * T * Hq);
    std::vector<double> sole_dq, sole_dk_slots, sole_dv_slots;
    if (S > 0) {
      const Tensor tdq_sole = zeros(Role::accum, qn), tdk_sole = zeros(Role::accum, kn);
      const Tensor tdv_sole = zeros(Role::accum, kn);
      const Tensor tdk_slots = zeros(Role::accum, S * kn), tdv_slots = zeros(Role::accum, S * kn);
      g.attention_backward_sole_reader(shape, tdout, tq, tk, tv, tsk, tsv, tout, tlse, tdq_sole,
                                       tdk_sole, tdv_sole, tdk_slots, tdv_slots);
      sole_dq = values(tdq_sole, qn);
      sole_dk_slots = values(tdk_slots, S * kn);
      sole_dv_slots = values(tdv_slots, S * kn);
    }
    for (Tensor& t : owned) g.release(t);

    const auto dot = [d](const double* a, const double* b) {
      double s = 0;
      for (int64_t e = 0; e < d; ++e) s += a[e] * b[e];
      return s;
    };
    const auto q_at = [&](int64_t t, int64_t h) { return q.data() + (t * Hq + h) * d; };
    const auto do_at = [&](int64_t t, int64_t h) { return dout.data() + (t * Hq + h) * d; };
    const auto k_at = [&](int64_t j, int64_t kh) { return k.data() + (j * Hk + kh) * d; };
    const auto v_at = [&](int64_t j, int64_t kh) { return v.data() + (j * Hk + kh) * d; };
    const auto sk_at = [&](int64_t c, int64_t t, int64_t kh) {
      return slot_k.data() + c * kn + (t * Hk + kh) * d;
    };
    const auto sv_at = [&](int64_t c, int64_t t, int64_t kh) {
      return slot_v.data() + c * kn + (t * Hk + kh) * d;
    };
    // delta = dout . out per row and head, from the forward's out as the op reads it.
    std::vector<double> delta(static_cast<size_t>(T * Hq));
    for (int64_t i = 0; i < T * Hq; ++i) delta[i] = dot(dout.data() + i * d, out.data() + i * d);
    // The probability and score gradient of a scaled score of row t, head h, for a key whose value
    // row is `val`, from the op's inputs lse and out (through delta).
    struct Grad {
      double p, ds;
    };
    const auto grad = [&](int64_t t, int64_t h, double score, const double* val) {
      const double p = std::exp(score - lse[t * Hq + h]);
      return Grad{p, p * (dot(do_at(t, h), val) - delta[t * Hq + h]) * scale};
    };

    std::vector<double> got_out, want_out, got_lse, want_lse, got_dq, want_dq, got_p, want_p,
        got_ds, want_ds, got_dk, want_dk, got_dv, want_dv, got_sole_dq, got_slot_dk, want_slot_dk,
        got_slot_dv, want_slot_dv;
    for (int64_t t : {int64_t{0}, int64_t{1}, int64_t{63}, int64_t{64}, int64_t{127}, int64_t{4096},
                      int64_t{30001}, int64_t{65407}, T - 1}) {
      // The token's slot gradients with this layer as the only reader: [S][Hk][d].
      std::vector<double> slot_dk(static_cast<size_t>(S * Hk * d), 0.0),
          slot_dv(slot_dk.size(), 0.0);
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t kh = h / G;
        // Forward: one softmax over keys 0..t and the S slots of token t.
        std::vector<double> sc;
        for (int64_t j = 0; j <= t; ++j) sc.push_back(dot(q_at(t, h), k_at(j, kh)) * scale);
        for (int64_t c = 0; c < S; ++c) sc.push_back(dot(q_at(t, h), sk_at(c, t, kh)) * scale);
        const double m = *std::max_element(sc.begin(), sc.end());
        double z = 0;
        for (double s : sc) z += std::exp(s - m);
        const double row_lse = m + std::log(z);
        std::vector<double> o(static_cast<size_t>(d), 0.0);
        for (size_t j = 0; j < sc.size(); ++j) {
          const int64_t c = static_cast<int64_t>(j) - (t + 1);
          const double* val = c < 0 ? v_at(static_cast<int64_t>(j), kh) : sv_at(c, t, kh);
          for (int64_t e = 0; e < d; ++e) o[e] += std::exp(sc[j] - row_lse) * val[e];
        }
        for (int64_t e = 0; e < d; ++e) {
          got_out.push_back(out[(t * Hq + h) * d + e]);
          want_out.push_back(o[e]);
        }
        got_lse.push_back(lse[t * Hq + h]);
        want_lse.push_back(row_lse);
        // Backward.
        std::vector<double> dqr(static_cast<size_t>(d), 0.0);
        for (size_t j = 0; j < sc.size(); ++j) {
          const int64_t c = static_cast<int64_t>(j) - (t + 1);
          const double* key = c < 0 ? k_at(static_cast<int64_t>(j), kh) : sk_at(c, t, kh);
          const double* val = c < 0 ? v_at(static_cast<int64_t>(j), kh) : sv_at(c, t, kh);
          const Grad gr = grad(t, h, sc[j], val);
          for (int64_t e = 0; e < d; ++e) dqr[e] += gr.ds * key[e];
          if (c >= 0) {
            const int64_t at = depth_stats_index(S, T * Hk, G, c, t * Hk + kh, h % G);
            got_p.push_back(probs[at]);
            want_p.push_back(gr.p);
            got_ds.push_back(dscores[at]);
            want_ds.push_back(gr.ds);
            for (int64_t e = 0; e < d; ++e) {
              slot_dk[(c * Hk + kh) * d + e] += gr.ds * q_at(t, h)[e];
              slot_dv[(c * Hk + kh) * d + e] += gr.p * do_at(t, h)[e];
            }
          }
        }
        for (int64_t e = 0; e < d; ++e) {
          got_dq.push_back(dq[(t * Hq + h) * d + e]);
          want_dq.push_back(dqr[e]);
          if (S > 0) got_sole_dq.push_back(sole_dq[(t * Hq + h) * d + e]);
        }
      }
      for (int64_t c = 0; c < S; ++c) {
        for (int64_t kh = 0; kh < Hk; ++kh) {
          for (int64_t e = 0; e < d; ++e) {
            const int64_t at = c * kn + (t * Hk + kh) * d + e;
            got_slot_dk.push_back(sole_dk_slots[at]);
            want_slot_dk.push_back(slot_dk[(c * Hk + kh) * d + e]);
            got_slot_dv.push_back(sole_dv_slots[at]);
            want_slot_dv.push_back(slot_dv[(c * Hk + kh) * d + e]);
          }
        }
      }
    }
    for (int64_t j : {int64_t{0}, int64_t{1}, int64_t{64}, int64_t{4095}, int64_t{32768},
                      int64_t{65470}, T - 1}) {
      for (int64_t kh = 0; kh < Hk; ++kh) {
        std::vector<double> dkr(static_cast<size_t>(d), 0.0), dvr(static_cast<size_t>(d), 0.0);
        for (int64_t h = kh * G; h < (kh + 1) * G; ++h) {
          for (int64_t t = j; t < T; ++t) {
            const Grad gr = grad(t, h, dot(q_at(t, h), k_at(j, kh)) * scale, v_at(j, kh));
            for (int64_t e = 0; e < d; ++e) {
              dkr[e] += gr.ds * q_at(t, h)[e];
              dvr[e] += gr.p * do_at(t, h)[e];
            }
          }
        }
        for (int64_t e = 0; e < d; ++e) {
          got_dk.push_back(dk[(j * Hk + kh) * d + e]);
          want_dk.push_back(dkr[e]);
          got_dv.push_back(dv[(j * Hk + kh) * d + e]);
          want_dv.push_back(dvr[e]);
        }
      }
    }
    const auto check = [&](const char* what, const std::vector<double>& got,
                           const std::vector<double>& want, double tol) {
      const double err = test::rel_error(got, want);
      fmt::print("moda gpu: {:<30} {:<34} rel err {:.3e} (tol {:.0e})\n", what, tag, err, tol);
      INFO(what << " " << tag << ": relative error " << err << " above " << tol);
      CHECK(err <= tol);
    };
    check("long attention out", got_out, want_out, kAttnTol);
    check("long attention lse", got_lse, want_lse, 1e-4);
    check("long attention dq", got_dq, want_dq, kAttnTol);
    check("long attention dk", got_dk, want_dk, kAttnTol);
    check("long attention dv", got_dv, want_dv, kAttnTol);
    if (S > 0) {
      check("long attention depth_probs", got_p, want_p, kAttnTol);
      check("long attention depth_dscores", got_ds, want_ds, kAttnTol);
      check("long attention sole reader dq", got_sole_dq, want_dq, kAttnTol);
      check("long attention sole reader d_depth_k", got_slot_dk, want_slot_dk, kAttnTol);
      check("long attention sole reader d_depth_v", got_slot_dv, want_slot_dv, kAttnTol);
    }
  };
  run(64, 2, 2, 5);   // the fused forward and backward tail, two heads per forward block
  run(64, 3, 2, 0);   // G = 3 without slots
  run(128, 2, 2, 5);  // the fused forward at head size 128, the backward's streaming depth pass
  run(64, 8, 1, 3);   // the paper's G = 8: the forward's depth part after the sequence kernel,
                      // the backward's head group over blocks
}

TEST_CASE("cuda backend: depth slot gradients over many readers", "[gpu]") {
  MODA_REQUIRE_GPU();
  // 40 readers take two launches of the reader table (32 each), the second adding to the first;
  // slots 1..5 of 7 are one launch of four slots and one of a single slot. d = 8 takes the scalar
  // path. With accumulate the gradients are added to the slots' values (the model's second
  // producing layer of a pair adds its one remaining reader so). With rows, the last slot's value
  // gradient goes to bf16 rows of a wider matrix (the model's FFN KV slot into the MLP
  // projection's output gradient), from the last launch only.
  for (int64_t d : {64, 8}) {
    for (int64_t readers_n : {0, 1, 40}) {
      for (bool accumulate : {false, true}) {
        for (bool rows : {false, true}) {
          Harness h;
          const int64_t B = 2, T = 19, Hk = 2, Hq = 6, S = 7, first = 1, count = 5, R = B * T;
          const int64_t qn = R * Hq * d, kn = R * Hk * d, stride = kn + 64;
          // The rows: Hk d values at column 16 of rows of ld.
          const int64_t width = Hk * d, col0 = 16, ld = width + 24;
          const AttentionShape shape{B, T, Hq, Hk, d, S, stride};
          const std::string tag =
              fmt::format("d={} readers={} accumulate={} rows={}", d, readers_n, accumulate, rows);
          std::vector<std::array<Twin, 4>> twins;
          for (int64_t i = 0; i < readers_n; ++i) {
            const auto seed = static_cast<uint64_t>(4 * i);
            twins.push_back({h.random(Role::activation, qn, seed),
                             h.random(Role::activation, qn, seed + 1),
                             h.random(Role::accum, S * R * Hq, seed + 2),
                             h.random(Role::accum, S * R * Hq, seed + 3)});
          }
          Twin ddk = h.random(Role::accum, S * stride, 1000),
               ddv = h.random(Role::accum, S * stride, 1001),
               dv_rows = h.random(Role::activation, R * ld, 1002);
          const std::vector<double> before = h.cpu_values(ddk), rows_before = h.cpu_values(dv_rows);
          for (bool g : {true, false}) {
            const auto P = [g](const Twin& t) { return g ? t.gpu : t.cpu; };
            std::vector<Backend::DepthReader> readers;
            for (const auto& t : twins) readers.push_back({P(t[0]), P(t[1]), P(t[2]), P(t[3]), S});
            Backend::SlotValueGradient last_dv;
            if (rows) last_dv = {P(dv_rows).slice(col0, (R - 1) * ld + width), ld};
            (g ? h.gpu() : h.cpu())
                .depth_slot_backward(shape, first, count, readers, P(ddk), P(ddv), accumulate,
                                     last_dv);
          }
          h.check(ddk, kF32Tol, "depth slot gradients d_depth_k " + tag);
          if (rows) {
            // The last slot of d_depth_v is scratch; the rows hold its gradient in bf16.
            const int64_t kept = (count - 1) * stride;
            h.check({ddv.gpu.slice(0, kept), ddv.cpu.slice(0, kept)}, kF32Tol,
                    "depth slot gradients d_depth_v " + tag);
            h.check(dv_rows, kBf16Tol, "depth slot gradients, last slot's d_depth_v " + tag);
            CHECK(count_unexpected(h.gpu_values(dv_rows), R, ld,
                                   [&](int64_t r, int64_t c) -> std::optional<double> {
                                     if (c >= col0 && c < col0 + width) return std::nullopt;
                                     return rows_before[static_cast<size_t>(r * ld + c)];
                                   }) == 0);
          } else {
            h.check(ddv, kF32Tol, "depth slot gradients d_depth_v " + tag);
          }
          // Slots first .. first + count - 1 land at 0 .. count - 1. Without readers they are
          // zero, or keep their values when added to; the other slots and the gaps keep theirs.
          CHECK(count_unexpected(h.gpu_values(ddk), S, stride,
                                 [&](int64_t j, int64_t i) -> std::optional<double> {
                                   const double old = before[static_cast<size_t>(j * stride + i)];
                                   if (j >= count || i >= kn) return old;
                                   if (readers_n > 0) return std::nullopt;
                                   return accumulate ? old : 0.0;
                                 }) == 0);
          // A reader that reads fewer slots than asked for is refused, and rows too narrow.
          if (readers_n > 0) {
            std::vector<Backend::DepthReader> short_reader{
                {twins[0][0].gpu, twins[0][1].gpu, twins[0][2].gpu, twins[0][3].gpu, 5}};
            CHECK_THROWS_WITH(h.gpu().depth_slot_backward(shape, first, count, short_reader,
                                                          ddk.gpu, ddv.gpu, accumulate, {}),
                              Catch::Contains("reads fewer slots"));
          }
          if (rows) {
            for (bool g : {true, false}) {
              Backend& be = g ? h.gpu() : h.cpu();
              const Tensor& t = g ? dv_rows.gpu : dv_rows.cpu;
              CHECK_THROWS_WITH(
                  be.depth_slot_backward(shape, first, count, {}, g ? ddk.gpu : ddk.cpu,
                                         g ? ddv.gpu : ddv.cpu, accumulate, {t, width - 1}),
                  Catch::Contains("last_dv"));
            }
          }
        }
      }
    }
  }
}

#ifdef MODA_HAVE_CUDA
// The backward's depth kernel (DepthBackwardPlacement::beside) gains only while its block and the
// sequence kernel's share an SM; a kernel grown in registers or shared memory would silently send
// automatic placement back to the slower tail.
TEST_CASE("cuda backend: the depth backward's block fits beside the sequence kernel's", "[gpu]") {
  MODA_REQUIRE_GPU();
  CHECK(cuda_depth_backward_beside_fits());
}

// The forward's depth blocks beside wait for the sequence kernel's tiles: where they do not fit
// beside its blocks the forward must take `after`, and on the H200 they fit.
TEST_CASE("cuda backend: the depth forward's block fits beside the sequence kernel's", "[gpu]") {
  MODA_REQUIRE_GPU();
  CHECK(cuda_depth_forward_beside_fits());
}

// Race check by repetition: at G <= 2 everything but dq is written without atomics, so three runs
// on the same inputs must agree bit for bit; dq (fp32 atomics over query tiles) up to summation
// order. (Groups of more than two heads add dK, dV from one block per head, with atomics.)
TEST_CASE("cuda backend: MoDA attention repeats bit for bit", "[gpu]") {
  MODA_REQUIRE_GPU();
  // Head size 64 in every placement of the depth parts: the forward's beside the sequence kernel
  // combines each (token, KV head) in one warp, whichever order the tiles finish in.
  struct Placing {
    int64_t d;
    DepthBackwardPlacement placement;
    DepthForwardPlacement forward;
  };
  for (auto [d, placement, forward] :
       {Placing{64, DepthBackwardPlacement::tail, DepthForwardPlacement::inside},
        Placing{64, DepthBackwardPlacement::beside, DepthForwardPlacement::after},
        Placing{64, DepthBackwardPlacement::beside, DepthForwardPlacement::beside},
        Placing{128, DepthBackwardPlacement::automatic, DepthForwardPlacement::inside}}) {
    Harness h(cuda_backend_placing(placement, forward));
    Backend& g = h.gpu();
    const int64_t B = 2, T = 197, Hk = 2, Hq = 4, S = 37, R = B * T;
    const int64_t qn = R * Hq * d, kn = R * Hk * d;
    const AttentionShape shape{B, T, Hq, Hk, d, S, kn};
    Twin q = h.random(Role::activation, qn, 21), k = h.random(Role::activation, kn, 22);
    Twin v = h.random(Role::activation, kn, 23), dout = h.random(Role::activation, qn, 24);
    Twin sk = h.random(Role::activation, S * kn, 25), sv = h.random(Role::activation, S * kn, 26);
    Twin out = h.random(Role::activation, qn, 0), lse = h.random(Role::stat, R * Hq, 0);
    Twin dq = h.random(Role::accum, qn, 0), dk = h.random(Role::accum, kn, 0);
    Twin dv = h.random(Role::accum, kn, 0), dsk = h.random(Role::accum, S * kn, 0);
    Twin dsv = h.random(Role::accum, S * kn, 0);
    Twin probs = h.random(Role::accum, S * R * Hq, 0),
         dscores = h.random(Role::accum, S * R * Hq, 0);
    std::vector<std::vector<double>> first;
    for (int run = 0; run < 3; ++run) {
      for (Twin* t : {&dk, &dv, &dsk, &dsv}) g.upload(t->gpu, h.cpu_values(*t));
      g.attention_forward(shape, q.gpu, k.gpu, v.gpu, sk.gpu, sv.gpu, out.gpu, lse.gpu);
      g.attention_backward(shape, dout.gpu, q.gpu, k.gpu, v.gpu, sk.gpu, sv.gpu, out.gpu, lse.gpu,
                           dq.gpu, dk.gpu, dv.gpu, probs.gpu, dscores.gpu);
      const Backend::DepthReader reader{q.gpu, dout.gpu, probs.gpu, dscores.gpu, S};
      g.depth_slot_backward(shape, 0, S, {&reader, 1}, dsk.gpu, dsv.gpu, false, {});
      std::vector<std::vector<double>> now;
      for (Twin* t : {&out, &lse, &dk, &dv, &probs, &dscores, &dsk, &dsv, &dq}) {
        now.push_back(h.gpu_values(*t));
      }
      if (run == 0) {
        first = now;
        continue;
      }
      for (size_t i = 0; i + 1 < now.size(); ++i) {
        INFO("d=" << d << " placement " << static_cast<int>(placement) << " forward "
                  << static_cast<int>(forward) << " run " << run << " output " << i
                  << " differs from run 0");
        CHECK(now[i] == first[i]);
      }
      const double err = test::rel_error(now.back(), first.back());
      INFO("d=" << d << " placement " << static_cast<int>(placement) << " forward "
                << static_cast<int>(forward) << " run " << run << " dq relative difference "
                << err);
      CHECK(err <= 1e-6);
    }
  }
}

TEST_CASE("cuda backend: LM head + cross-entropy + z-loss", "[gpu]") {
  MODA_REQUIRE_GPU();
  struct Case {
    int64_t rows, dim, vocab;
    size_t budget;  // 0: the default workspace
  };
  // Vector and scalar row paths, several row chunks, and the full padded dolma2 vocabulary.
  for (const Case& c : {Case{37, 64, 1000, 0}, Case{37, 64, 999, 0}, Case{37, 48, 1000, 48000},
                        Case{64, 64, 100352, 0}}) {
    CudaBackendOptions options;
    if (c.budget > 0) options.lm_head_workspace_bytes = c.budget;
    Harness h(make_cuda_backend(options));
    const std::string tag =
        fmt::format("rows={} dim={} vocab={} workspace={}", c.rows, c.dim, c.vocab, c.budget);
    const double z = 1e-2, scale = 1.0 / static_cast<double>(c.rows);
    Twin x = h.random(Role::activation, c.rows * c.dim, 1);
    Twin w =
        h.random(Role::weight, c.vocab * c.dim, 2, 2.0 / std::sqrt(static_cast<double>(c.dim)));
    Twin tgt = h.tokens(test::random_tokens(static_cast<size_t>(c.rows), c.vocab, 3));
    Twin ce = h.random(Role::stat, c.rows, 4);
    Twin lse = h.random(Role::stat, c.rows, 5);
    for (bool g : {true, false}) {
      Backend& be = g ? h.gpu() : h.cpu();
      const auto P = [g](const Twin& t) { return g ? t.gpu : t.cpu; };
      be.lm_head_cross_entropy(P(x), P(w), P(tgt), P(ce), P(lse), Tensor{}, Tensor{}, c.rows, c.dim,
                               c.vocab, z, scale);
    }
    h.check(ce, 1e-4, "lm head forward ce " + tag);
    h.check(lse, 1e-4, "lm head forward lse " + tag);

    Twin dx = h.random(Role::activation, c.rows * c.dim, 6);
    Twin dw = h.random(Role::master, c.vocab * c.dim, 7, 0.01);
    const auto dw_base = h.cpu_values(dw);
    for (bool g : {true, false}) {
      Backend& be = g ? h.gpu() : h.cpu();
      const auto P = [g](const Twin& t) { return g ? t.gpu : t.cpu; };
      be.lm_head_cross_entropy(P(x), P(w), P(tgt), P(ce), P(lse), P(dx), P(dw), c.rows, c.dim,
                               c.vocab, z, scale);
    }
    h.check(ce, 1e-4, "lm head ce " + tag);
    h.check(lse, 1e-4, "lm head lse " + tag);
    h.check(dx, 1e-2, "lm head dx " + tag);
    h.check(dw, 1e-2, "lm head dweight " + tag, dw_base);

    Twin logits = h.random(Role::stat, c.rows * c.vocab, 8);
    h.gpu().lm_head_logits(x.gpu, w.gpu, logits.gpu, c.rows, c.dim, c.vocab);
    h.cpu().lm_head_logits(x.cpu, w.cpu, logits.cpu, c.rows, c.dim, c.vocab);
    h.check(logits, kF32Tol, "lm head logits " + tag);
  }
}
#endif

TEST_CASE("cuda backend: AdamW and segment sums of squares", "[gpu]") {
  MODA_REQUIRE_GPU();
  Harness h;
  const int64_t n = 1003;
  Twin master = h.random(Role::master, n, 1);
  Twin grad = h.random(Role::master, n, 2);
  Twin m = h.random(Role::master, n, 3, 0.1);
  auto v_init = test::random_normal(static_cast<size_t>(n), 4, 0.1);
  for (double& x : v_init) x = x * x;
  Twin v = h.values(Role::master, v_init);
  Twin weights = h.random(Role::weight, n, 5);
  AdamWArgs args;
  args.lr = 1e-2;
  args.weight_decay = 0.1;
  args.step = 7;
  args.grad_scale = 0.5;
  // A misaligned range (scalar kernel), then an aligned one (vector kernel).
  for (auto [offset, count] : {std::pair<int64_t, int64_t>{5, 990}, {0, 1000}}) {
    for (bool g : {true, false}) {
      Backend& be = g ? h.gpu() : h.cpu();
      const auto P = [g](const Twin& t) { return g ? t.gpu : t.cpu; };
      be.adamw(P(master), P(grad), P(m), P(v), P(weights), offset, count, args);
    }
    const std::string tag = fmt::format("offset={} count={}", offset, count);
    h.check(master, 1e-6, "adamw master " + tag);
    h.check(m, 1e-6, "adamw m " + tag);
    h.check(v, 1e-6, "adamw v " + tag);
    h.check(weights, kBf16Tol, "adamw bf16 weights " + tag);
  }

  const int64_t big = (int64_t{1} << 20) + 17;
  Twin values = h.random(Role::master, big, 6);
  const std::vector<std::pair<int64_t, int64_t>> segments{
      {0, big}, {5, 0}, {7, 100}, {500, 503}, {4096, 4096 * 3 + 1}, {big - 1, 1}};
  const auto gs = h.gpu().segment_sum_squares(values.gpu, segments);
  const auto cs = h.cpu().segment_sum_squares(values.cpu, segments);
  REQUIRE(gs.size() == cs.size());
  for (size_t i = 0; i < gs.size(); ++i) {
    INFO("segment " << i);
    CHECK(std::abs(gs[i] - cs[i]) <= 1e-6 * std::max(cs[i], 1e-30));
  }
}

namespace {

struct Parity {
  double logits = 0, loss = 0, worst_grad = 0;
  std::string worst_name;
};

Parity model_parity(const test::Variant& v) {
  Config config = test::tiny_variant_config(v, 64);
  config.model.max_seq_len = 64;
  config.model.mlp_hidden = 256;
  config.model.vocab_size = 300;
  config.model.vocab_multiple = 128;
  const int64_t B = 2, T = 33;
  auto gpu = make_backend("cuda", 0);
  auto cpu = make_backend("cpu64", 0);
  Model gm(config, *gpu, B, T);
  Model cm(config, *cpu, B, T);
  const ParamLayout& layout = gm.layout();
  gm.init_parameters(17);
  std::vector<double> theta = gm.parameters();
  // Norm weights around 1 but not 1, so their gradients and scaling paths are exercised.
  const auto noise = test::random_normal(theta.size(), 18, 0.2);
  for (const ParamInfo& p : layout.params()) {
    if (p.shape.size() != 1) continue;
    for (int64_t i = 0; i < p.numel; ++i) {
      theta[static_cast<size_t>(p.offset + i)] += noise[static_cast<size_t>(p.offset + i)];
    }
  }
  // bf16-representable parameters: the GPU's compute copy then equals the CPU's weights.
  Tensor round = gpu->alloc(Role::weight, layout.total());
  gpu->upload(round, theta);
  gpu->download(round, theta);
  gpu->release(round);
  gm.set_parameters(theta);
  cm.set_parameters(theta);

  const auto tokens =
      test::random_tokens(static_cast<size_t>(B * (T + 1)), config.model.vocab_size, 19);
  const double scale = 1.0 / static_cast<double>(B * T), z = config.optimizer.z_loss;
  gm.zero_gradients();
  cm.zero_gradients();
  const LossSums gl = gm.forward_backward(tokens, scale);
  const LossSums cl = cm.forward_backward(tokens, scale);
  const std::vector<double> gg = gm.gradients(), cg = cm.gradients();
  Parity r;
  r.logits = test::rel_error(gm.logits(tokens), cm.logits(tokens));
  const double gloss = scale * (gl.ce + z * gl.lse_sq), closs = scale * (cl.ce + z * cl.lse_sq);
  r.loss = std::abs(gloss - closs) / std::abs(closs);
  for (const ParamInfo& p : layout.params()) {
    const auto at = static_cast<size_t>(p.offset), len = static_cast<size_t>(p.numel);
    const double e =
        test::rel_error(std::span(gg).subspan(at, len), std::span(cg).subspan(at, len));
    INFO(fmt::format("gradient of {}: relative error {:.3e}", p.name, e));
    CHECK(e <= 5e-2);
    if (e > r.worst_grad || !std::isfinite(e)) {
      r.worst_grad = e;
      r.worst_name = p.name;
    }
  }
  return r;
}

// The model's logits and loss against cpu64's (model_parity checks each gradient).
void check_model_parity(const test::Variant& v, const std::string& tag) {
  INFO(tag);
  const Parity r = model_parity(v);
  fmt::print("moda gpu: model {:<50} logits {:.2e} loss {:.2e} worst grad {:.2e} ({})\n", tag,
             r.logits, r.loss, r.worst_grad, r.worst_name);
  CHECK(r.logits <= 2e-2);
  CHECK(r.loss <= 5e-3);
}

}  // namespace

TEST_CASE("cuda backend: whole model matches cpu64 in every variant", "[gpu][model]") {
  MODA_REQUIRE_GPU();
  for (NormPlacement placement :
       {NormPlacement::reordered, NormPlacement::pre, NormPlacement::post}) {
    for (int64_t group : {1, 2, 3}) {
      // Mode 5: tied embeddings (the LM head's and the embedding's gradients add into one
      // buffer), without MoDA to bound the run time: the tie touches neither layers nor slots.
      for (int mode = 0; mode < 6; ++mode) {
        test::Variant v;
        v.placement = placement;
        v.group = group;
        v.moda = mode > 0 && mode < 5;
        v.ffn_kv = mode == 2 || mode == 4;
        v.attn_kv_proj = mode == 3 || mode == 4;
        v.tied = mode == 5;
        check_model_parity(
            v, fmt::format("{} G={} moda={} ffn_kv={} attn_kv_proj={} tied={}",
                           to_string(placement), group, v.moda, v.ffn_kv, v.attn_kv_proj, v.tied));
      }
    }
  }
}

// Seven layers: the last one and three pairs of producing layers, whose slot gradients the upper
// layer forms for both from every reader above and the lower layer completes with the one between.
TEST_CASE("cuda backend: a deeper MoDA model matches cpu64", "[gpu][model]") {
  MODA_REQUIRE_GPU();
  for (int mode = 1; mode < 5; ++mode) {
    test::Variant v;
    v.placement = NormPlacement::pre;
    v.group = 2;
    v.n_layers = 7;
    v.moda = true;
    v.ffn_kv = mode == 2 || mode == 4;
    v.attn_kv_proj = mode >= 3;
    check_model_parity(v,
                       fmt::format("7 layers ffn_kv={} attn_kv_proj={}", v.ffn_kv, v.attn_kv_proj));
  }
}

#ifdef MODA_HAVE_CUDA
namespace {

// Milliseconds per call: one warm-up call, then `reps` calls between two synchronizations (the
// launches queue up, so host overhead hides behind the GPU work).
double time_ms(Backend& be, const std::function<void()>& f, int reps = 20) {
  f();
  be.synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) f();
  be.synchronize();
  const auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double, std::milli>(t1 - t0).count() / reps;
}

// Device tensors of a timing test, released together. Random contents (never zeros): 1M random
// values, then doubled by device copies.
class BenchTensors {
 public:
  explicit BenchTensors(Backend& g) : g_(g) {}
  BenchTensors(const BenchTensors&) = delete;
  BenchTensors& operator=(const BenchTensors&) = delete;
  ~BenchTensors() { release(); }

  Tensor random(Role role, int64_t n) {
    Tensor t = g_.alloc(role, n);
    int64_t filled = std::min<int64_t>(n, 1 << 20);
    g_.upload(t.slice(0, filled),
              test::random_normal(static_cast<size_t>(filled), owned_.size() + 1));
    for (; filled < n; filled += std::min(filled, n - filled)) {
      const int64_t c = std::min(filled, n - filled);
      g_.copy(t.slice(filled, c), t.slice(0, c));
    }
    return keep(t);
  }
  // Takes a tensor allocated elsewhere into the set.
  Tensor keep(Tensor t) {
    owned_.push_back(t);
    return t;
  }
  void release() {
    for (Tensor& t : owned_) g_.release(t);
    owned_.clear();
  }

 private:
  Backend& g_;
  std::vector<Tensor> owned_;
};

// This GPU's copy rate in GB/s, the peer of every bandwidth the timing tests print:
// device-to-device copies of 512 MiB of random fp32 (read and written), the median of 5 timings of
// 5 copies, measured once per run. (They printed percentages of the H100's 3.0 TB/s until the
// twelfth session, which read about 1.4x high on the H200.)
double copy_rate_gbps() {
  static const double rate = [] {
    auto gpu = make_backend("cuda", 0);
    BenchTensors bench(*gpu);
    const int64_t n = int64_t{128} << 20;
    const Tensor src = bench.random(Role::master, n), dst = bench.random(Role::master, n);
    std::vector<double> ms;
    const auto copy = [&] { gpu->copy(dst, src); };
    for (int i = 0; i < 5; ++i) ms.push_back(time_ms(*gpu, copy, 5));
    std::sort(ms.begin(), ms.end());
    const double gbps = 2.0 * static_cast<double>(n) * 4 / ms[2] * 1e-6;
    fmt::print("bench: copy rate of this GPU (device-to-device, 512 MiB) {:.3f} ms, {:.0f} GB/s\n",
               ms[2], gbps);
    return gbps;
  }();
  return rate;
}

void report_bandwidth(const std::string& op, double ms, double bytes) {
  const double gbps = bytes / ms * 1e-6;
  fmt::print("bench: {:<44} {:8.3f} ms  {:7.0f} GB/s  ({:.0f}% of the copy rate)\n", op, ms, gbps,
             100.0 * gbps / copy_rate_gbps());
}

}  // namespace

TEST_CASE("cuda backend: timings at the 700M shape", "[.][gpu_bench]") {
  MODA_REQUIRE_GPU();
  const int64_t D = 1024, Hq = 16, Hk = 8, d = 64, F = 4096, T = 4096, B = 4, R = B * T;
  const int64_t V = 100352;
  struct Linear {
    const char* name;
    int64_t n, k;
  };
  for (const Linear& l :
       {Linear{"attn.qkv", Hq * d + 2 * Hk * d, D},
        Linear{"attn.qkv + slot proj", Hq * d + 4 * Hk * d, D}, Linear{"attn.out", D, Hq * d},
        Linear{"mlp.in", 2 * F, D}, Linear{"mlp.in + ffn kv", 2 * F + 2 * Hk * d, D},
        Linear{"mlp.down", D, F}}) {
    for (const GemmAlgoTiming& t : cuda_time_gemm_algorithms(R, l.n, l.k)) {
      fmt::print(
          "bench: gemm {:<20} {:<11} m={} n={} k={}: tuned {:.3f} ms ({:.0f} TFLOP/s, "
          "candidate {}), heuristic {:.3f} ms, best of {} {:.3f} ms, tuned/best {:.3f}\n",
          l.name, t.op, R, l.n, l.k, t.chosen_ms, t.tflops, t.chosen, t.heuristic_ms, t.candidates,
          t.best_ms, t.chosen_ms / t.best_ms);
    }
  }

  auto gpu = make_backend("cuda", 0);
  Backend& g = *gpu;
  BenchTensors bench(g);
  const auto alloc = [&](Role role, int64_t n) { return bench.random(role, n); };
  const double bf = 2, f32 = 4;
  {
    Tensor x = alloc(Role::activation, R * D), br = alloc(Role::activation, R * D);
    Tensor w = alloc(Role::weight, D), out = alloc(Role::activation, R * D);
    Tensor sum = alloc(Role::activation, R * D), rstd = alloc(Role::stat, R);
    Tensor dw = alloc(Role::master, D);
    report_bandwidth("rmsnorm forward [16384 x 1024]",
                     time_ms(g, [&] { g.rmsnorm_forward(x, w, out, rstd, R, D, 1e-6); }),
                     2 * R * D * bf);
    report_bandwidth("residual add_then_norm forward",
                     time_ms(g,
                             [&] {
                               g.residual_norm_forward(ResidualNorm::add_then_norm, x, br, w, sum,
                                                       out, rstd, R, D, 1e-6);
                             }),
                     4 * R * D * bf);
    report_bandwidth("residual norm_then_add forward",
                     time_ms(g,
                             [&] {
                               g.residual_norm_forward(ResidualNorm::norm_then_add, x, br, w,
                                                       Tensor{}, out, rstd, R, D, 1e-6);
                             }),
                     3 * R * D * bf);
    report_bandwidth("rmsnorm backward (accumulate)",
                     time_ms(g, [&] { g.rmsnorm_backward(br, x, w, rstd, out, dw, R, D, true); }),
                     4 * R * D * bf);
    Tensor tok = g.alloc(Role::index, R);
    g.upload_tokens(tok, test::random_tokens(static_cast<size_t>(R), 50000, 3));
    bench.keep(tok);
    Tensor table = alloc(Role::weight, 50304 * D), dtable = alloc(Role::master, 50304 * D);
    report_bandwidth("embedding forward",
                     time_ms(g, [&] { g.embedding_forward(tok, table, out, R, D); }),
                     2 * R * D * bf);
    report_bandwidth("embedding backward (fp32 atomics)",
                     time_ms(g, [&] { g.embedding_backward(tok, x, dtable, R, D); }),
                     R * D * (bf + 2 * f32));
  }
  {
    Tensor in = alloc(Role::activation, R * 2 * F), din = alloc(Role::activation, R * 2 * F);
    Tensor act = alloc(Role::activation, R * F);
    report_bandwidth("swiglu forward", time_ms(g, [&] { g.swiglu_forward(in, act, R, F, 2 * F); }),
                     3 * R * F * bf);
    report_bandwidth("swiglu backward",
                     time_ms(g, [&] { g.swiglu_backward(act, in, din, R, F, 2 * F); }),
                     5 * R * F * bf);
  }
  bench.release();
  {
    const int64_t P = 700'000'000;
    Tensor master = alloc(Role::master, P), grad = alloc(Role::master, P);
    Tensor m = alloc(Role::master, P), v = g.alloc(Role::master, P);
    bench.keep(v);  // second moments must be >= 0: start from zeros, the timing is the same
    Tensor w = alloc(Role::weight, P);
    AdamWArgs args;
    args.lr = 1e-4;
    report_bandwidth("adamw (700M params)",
                     time_ms(
                         g, [&] { g.adamw(master, grad, m, v, w, 0, P, args); }, 5),
                     P * (7 * f32 + bf));
    const std::vector<std::pair<int64_t, int64_t>> seg{{0, P / 2}, {P / 2, P - P / 2}};
    report_bandwidth("segment sum of squares (700M)",
                     time_ms(
                         g, [&] { g.segment_sum_squares(grad, seg); }, 5),
                     P * f32);
  }
  bench.release();
  {
    Tensor x = alloc(Role::activation, R * D), w = alloc(Role::weight, V * D);
    Tensor tok = g.alloc(Role::index, R);
    g.upload_tokens(tok, test::random_tokens(static_cast<size_t>(R), V, 4));
    bench.keep(tok);
    Tensor ce = alloc(Role::stat, R), lse = alloc(Role::stat, R);
    Tensor dx = alloc(Role::activation, R * D), dw = alloc(Role::master, V * D);
    const double ms = time_ms(
        g, [&] { g.lm_head_cross_entropy(x, w, tok, ce, lse, dx, dw, R, D, V, 1e-4, 1.0 / R); }, 3);
    fmt::print("bench: {:<44} {:8.3f} ms  {:.0f} TFLOP/s (3 GEMMs of {} x {} x {})\n",
               "lm head + CE fwd+bwd (V=100352)", ms, 6.0 * R * V * D / ms * 1e-9, R, V, D);
  }
  bench.release();
  for (int64_t S : {0, 72}) {
    const int64_t kn = R * Hk * d;
    Tensor q = alloc(Role::activation, R * Hq * d), k = alloc(Role::activation, kn);
    Tensor v = alloc(Role::activation, kn), out = alloc(Role::activation, R * Hq * d);
    Tensor lse = alloc(Role::stat, R * Hq), dout = alloc(Role::activation, R * Hq * d);
    Tensor dq = alloc(Role::accum, R * Hq * d), dk = alloc(Role::accum, kn);
    Tensor dv = alloc(Role::accum, kn);
    Tensor sk, sv, dsk, dsv, probs, dscores;
    if (S > 0) {
      sk = alloc(Role::activation, S * kn);
      sv = alloc(Role::activation, S * kn);
      dsk = alloc(Role::accum, S * kn);
      dsv = alloc(Role::accum, S * kn);
      probs = alloc(Role::accum, S * R * Hq);
      dscores = alloc(Role::accum, S * R * Hq);
    }
    const Backend::DepthReader reader{q, dout, probs, dscores, S};
    const AttentionShape shape{B, T, Hq, Hk, d, S, kn};
    const double flops = 4.0 * B * Hq * (T * (T + 1) / 2.0) * d;
    const double fwd = time_ms(
        g, [&] { g.attention_forward(shape, q, k, v, sk, sv, out, lse); }, 5);
    const double bwd = time_ms(
        g,
        [&] {
          g.attention_backward(shape, dout, q, k, v, sk, sv, out, lse, dq, dk, dv, probs, dscores);
          g.depth_slot_backward(shape, 0, S, {&reader, 1}, dsk, dsv, false, {});
        },
        5);
    fmt::print(
        "bench: attention forward  S={:<3} {:8.3f} ms  ({:.0f} TFLOP/s on the causal part; "
        "depth K/V {:.2f} GB)\n",
        S, fwd, flops / fwd * 1e-9, 2.0 * S * kn * bf * 1e-9);
    fmt::print(
        "bench: attention backward S={:<3} {:8.3f} ms  (with the slot gradients; {:.0f} TFLOP/s on "
        "the causal part)\n",
        S, bwd, 2.5 * flops / bwd * 1e-9);
    bench.release();
  }
  {
    // The gradients of one layer's two slots in the 700M MoDA model, pulled from 18 readers (the
    // average over its 35 slot-writing layers), each with its own q, dout, probabilities and
    // score gradients.
    const int64_t readers_n = 18, S = 72, kn = R * Hk * d, qn = R * Hq * d;
    std::vector<Backend::DepthReader> readers;
    for (int64_t i = 0; i < readers_n; ++i) {
      readers.push_back({alloc(Role::activation, qn), alloc(Role::activation, qn),
                         alloc(Role::accum, S * R * Hq), alloc(Role::accum, S * R * Hq), S});
    }
    Tensor dsk = alloc(Role::accum, 2 * kn), dsv = alloc(Role::accum, 2 * kn);
    const AttentionShape shape{B, T, Hq, Hk, d, S, kn};
    report_bandwidth(
        "depth slot gradients, 2 slots from 18 readers",
        time_ms(g, [&] { g.depth_slot_backward(shape, 0, 2, readers, dsk, dsv, false, {}); }),
        readers_n * (2 * qn * bf + 2 * 2 * R * Hq * f32) + 2 * 2 * kn * f32);
    bench.release();
  }
}

TEST_CASE("cuda backend: row kernel timings at the 700M, 1.5B and Table 6 shapes",
          "[.][gpu_bench]") {
  MODA_REQUIRE_GPU();
  const int64_t R = 4 * 4096, T = 4096, Hq = 16, Hk = 8, d = 64;
  const double bf = 2, f32 = 4;
  auto gpu = make_backend("cuda", 0);
  Backend& g = *gpu;
  BenchTensors bench(g);
  const auto alloc = [&](Role role, int64_t n) { return bench.random(role, n); };
  // The norms of Table 6's residual stream (384 columns, 16 lanes per row; the 700M shape's are in
  // the test above).
  {
    const int64_t rows = 64 * 1024, cols = 384;
    Tensor x = alloc(Role::activation, rows * cols), br = alloc(Role::activation, rows * cols);
    Tensor w = alloc(Role::weight, cols), out = alloc(Role::activation, rows * cols);
    Tensor rstd = alloc(Role::stat, rows), dw = alloc(Role::master, cols);
    const std::string shape = fmt::format("[{} x {}]", rows, cols);
    report_bandwidth("residual norm_then_add forward " + shape,
                     time_ms(g,
                             [&] {
                               g.residual_norm_forward(ResidualNorm::norm_then_add, x, br, w,
                                                       Tensor{}, out, rstd, rows, cols, 1e-6);
                             }),
                     3 * rows * cols * bf);
    report_bandwidth(
        "rmsnorm backward (accumulate) " + shape,
        time_ms(g, [&] { g.rmsnorm_backward(br, x, w, rstd, out, dw, rows, cols, true); }),
        4 * rows * cols * bf);
    bench.release();
  }
  // QK-norm + RoPE at the 700M, 1.5B and Table 6 shapes: attention rows [q | k | v] and the FFN
  // KV slots' rows [k | v] (no q), each row read whole from a projection of its own width. The
  // FFN KV rows' backward also without dv, as the model runs it (depth_slot_backward writes the
  // v columns).
  struct QkvShape {
    const char* name;
    int64_t rows, seq, q_heads, kv_heads, head_dim;
  };
  for (const QkvShape& s :
       {QkvShape{"700M attention", R, T, Hq, Hk, d}, QkvShape{"700M FFN KV", R, T, 0, Hk, d},
        QkvShape{"1.5B attention", 2 * T, T, 16, 8, 128},
        QkvShape{"1.5B FFN KV", 2 * T, T, 0, 8, 128},
        QkvShape{"Table 6 attention", 64 * 1024, 1024, 6, 2, d},
        QkvShape{"Table 6 FFN KV", 64 * 1024, 1024, 0, 2, d}}) {
    const int64_t hd = s.head_dim, qw = s.q_heads * hd, kw = s.kv_heads * hd;
    const int64_t qkv = qw + 2 * kw, rows = s.rows;
    g.init_rope(s.seq, hd, 500000.0);
    const auto maybe = [&](Role role, int64_t n) { return n > 0 ? alloc(role, n) : Tensor{}; };
    Tensor raw = alloc(Role::activation, rows * qkv), draw = alloc(Role::activation, rows * qkv);
    Tensor qn = maybe(Role::weight, qw), kn = alloc(Role::weight, kw);
    Tensor q = maybe(Role::activation, rows * qw), k = alloc(Role::activation, rows * kw);
    Tensor v = alloc(Role::activation, rows * kw);
    Tensor qr = maybe(Role::stat, s.q_heads > 0 ? rows : 0), kr = alloc(Role::stat, rows);
    Tensor dq = maybe(Role::accum, rows * qw), dk = alloc(Role::accum, rows * kw);
    Tensor dv = alloc(Role::accum, rows * kw);
    Tensor dqn = maybe(Role::master, qw), dkn = alloc(Role::master, kw);
    const Backend::QkvLayout l{rows, s.seq, qkv, 0, s.q_heads, s.kv_heads, hd, 1e-6};
    report_bandwidth(fmt::format("qkv norm + rope forward, {}", s.name),
                     time_ms(g, [&] { g.qkv_norm_rope_forward(l, raw, qn, kn, q, k, v, qr, kr); }),
                     2 * rows * qkv * bf);
    report_bandwidth(
        fmt::format("qkv norm + rope backward, {}", s.name),
        time_ms(
            g,
            [&] { g.qkv_norm_rope_backward(l, raw, qn, kn, qr, kr, dq, dk, dv, draw, dqn, dkn); }),
        rows * qkv * (2 * bf + f32));
    if (s.q_heads == 0) {
      report_bandwidth(fmt::format("qkv norm + rope backward without dv, {}", s.name),
                       time_ms(g,
                               [&] {
                                 g.qkv_norm_rope_backward(l, raw, qn, kn, qr, kr, dq, dk, Tensor{},
                                                          draw, dqn, dkn);
                               }),
                       rows * kw * (2 * bf + f32));
    }
    bench.release();
  }
}
#endif
