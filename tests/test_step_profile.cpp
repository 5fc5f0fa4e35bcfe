// runtime.profile_step: the ProfilingBackend's records, their grouping into layer families, the
// logged table, and a profiled training run on the CPU (wall clock) and the GPU (CUDA events).
#include <fmt/format.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "moda/profiling.hpp"
#include "moda/train.hpp"
#include "test_util.hpp"

#ifdef MODA_HAVE_CUDA
#include "moda/cuda_backend.hpp"
#endif

using namespace moda;
using moda::test::temp_dir;

namespace {

// The embedded default shrunk to a fraction of a second per run (as in test_train.cpp).
Config small_run(const std::string& dir) {
  Config c = default_config();
  apply_overrides(
      c, {"model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1",
          "model.mlp_hidden=64", "batch.seq_len=32", "batch.micro_batch=2", "batch.global_batch=4",
          "schedule.total_steps=3", "schedule.warmup_steps=1", "logging.val_interval=0",
          "logging.val_batches=1", "logging.plot=false", "runtime.threads=2", "runtime.device=cpu",
          "logging.dir=" + dir});
  return c;
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("GEMMs are named by the layer of their shape, the rest by op family", "[profile]") {
  // configs/tiny.yaml: D 128, q width 128, kv width 64, F 384, post-norm, MoDA + FFN KV: mlp.in
  // has 2F + 2 x 64 rows except in the last layer, which writes no FFN slot.
  const ModelShape shape(default_config());
  const std::vector<OpRecord> records = {{"matmul", 896, 128, 1.0},
                                         {"matmul", 768, 128, 0.5},
                                         {"matmul_backward", 128, 384, 2.0},
                                         {"matmul", 7, 3, 0.09375},
                                         {"attention_forward", 0, 0, 3.0},
                                         {"rmsnorm_forward", 0, 0, 0.25},
                                         {"residual_norm_backward", 0, 0, 0.25},
                                         {"zero", 0, 0, 0.0625},
                                         {"communication", 0, 0, 0.375},
                                         {"segment_sum_squares", 0, 0, 0.03125},
                                         {"lm_head_cross_entropy", 0, 0, 4.0},
                                         {"upload_tokens", 0, 0, 0.0625}};
  const std::vector<ProfileRow> rows = group_profile(records, shape);
  std::vector<std::string> families;
  for (const ProfileRow& r : rows) families.push_back(r.family);
  CHECK(families == std::vector<std::string>{"lm_head+CE", "attention fwd", "gemm mlp.down bwd",
                                             "gemm mlp.in fwd", "norms", "communication", "other",
                                             "gemm 7x3 fwd", "grad norm"});
  CHECK(rows[3].calls == 2);
  CHECK(rows[3].ms == 1.5);
  CHECK(rows[6].calls == 2);  // zero + upload_tokens
  CHECK(rows[6].ms == 0.125);

  // Layers of equal shape share a row: attn.out and mlp.down when F equals the q width.
  Config square = default_config();
  square.model.mlp_hidden = 128;
  const std::vector<OpRecord> one = {{"matmul_backward", 128, 128, 1.0}};
  CHECK(group_profile(one, ModelShape(square))[0].family == "gemm attn.out/mlp.down bwd");
}

TEST_CASE("the profile table marks the five largest and the time outside ops", "[profile]") {
  const std::vector<ProfileRow> rows = {
      {"lm_head+CE", 1, 4.0},       {"attention fwd", 36, 3.0}, {"gemm mlp.down bwd", 36, 2.0},
      {"gemm mlp.in fwd", 36, 1.5}, {"norms", 108, 0.5},        {"communication", 1, 0.25}};
  CHECK(format_profile(rows, 3, 12.5, "CUDA events") ==
        "profile of step 3: 12.500 ms wall; CUDA events around each backend op\n"
        "    family                            calls   total ms   share\n"
        "  * lm_head+CE                            1      4.000   32.0%\n"
        "  * attention fwd                        36      3.000   24.0%\n"
        "  * gemm mlp.down bwd                    36      2.000   16.0%\n"
        "  * gemm mlp.in fwd                      36      1.500   12.0%\n"
        "  * norms                               108      0.500    4.0%\n"
        "    communication                         1      0.250    2.0%\n"
        "    (outside ops: host, launch gaps)             1.250   10.0%\n"
        "  (* = the five largest)");
}

TEST_CASE("the profiling backend forwards every call and records them only while on", "[profile]") {
  const auto cpu = make_backend("cpu", 1);
  ProfilingBackend profiled(*cpu);
  CHECK(profiled.name() == cpu->name());
  Tensor x = profiled.alloc(Role::activation, 6), w = profiled.alloc(Role::weight, 6);
  Tensor y = profiled.alloc(Role::activation, 4);
  profiled.upload(x, std::vector<double>{1, 2, 3, 4, 5, 6});
  profiled.upload(w, std::vector<double>{1, 0, 1, 0, 1, 0});
  profiled.start();
  profiled.matmul(y, x, w, 2, 2, 3, false);  // y = x [2 x 3] w^T [3 x 2]
  profiled.begin_region("communication");
  profiled.end_region();
  std::vector<double> out(4);
  profiled.download(y, out);
  const std::vector<OpRecord> records = profiled.stop();
  CHECK(out == std::vector<double>{1 + 3, 2, 4 + 6, 5});
  REQUIRE(records.size() == 3);
  CHECK(records[0].op == "matmul");
  CHECK(records[0].n == 2);
  CHECK(records[0].k == 3);
  CHECK(records[1].op == "communication");
  CHECK(records[2].op == "download");
  for (const OpRecord& r : records) CHECK(r.ms >= 0);
  // Off again: calls pass through unrecorded.
  profiled.zero(y);
  profiled.start();
  CHECK_THROWS_AS(profiled.end_region(), std::logic_error);  // no region is open
  CHECK(profiled.stop().empty());
  for (Tensor* t : {&x, &w, &y}) profiled.release(*t);
}

TEST_CASE("runtime.profile_step profiles one step of a CPU run with the wall clock",
          "[profile][train]") {
  TrainOptions quiet;
  quiet.log_to_console = false;
  Config c = small_run(temp_dir("cpu"));
  c.runtime.profile_step = 2;
  const TrainSummary s = train(c, quiet);
  REQUIRE(s.history.size() == 3);
  CAPTURE(s.profile);
  CHECK_THAT(s.profile,
             Catch::StartsWith(fmt::format(
                 "profile of step 2: {:.3f} ms wall; wall clock around each backend op\n",
                 1e3 * s.history[1].seconds)));
  for (const char* family :
       {"gemm attn.qkv fwd", "gemm attn.qkv bwd", "gemm mlp.in fwd", "gemm mlp.down bwd",
        "attention fwd", "attention bwd", "norms", "qkv_norm_rope", "swiglu", "embedding",
        "lm_head+CE", "adamw", "grad norm", "communication", "other"}) {
    CHECK(count(s.profile, fmt::format(" {} ", family)) == 1);
  }
  CHECK(count(s.profile, "\n  * ") == 5);
  // Without the option there is no table.
  const TrainSummary off = train(small_run(temp_dir("off")), quiet);
  CHECK(off.profile.empty());
}

#ifdef MODA_HAVE_CUDA
TEST_CASE("cuda backend: CUDA events time the ops of a profiled step", "[gpu]") {
  MODA_SKIP_UNLESS_GPU(cuda_device_count() > 0);
  const Config c = test::tiny_variant_config({NormPlacement::reordered, true, true, false, 2}, 64);
  const int64_t B = 2, T = 16;
  const auto cuda = make_cuda_backend();
  ProfilingBackend profiled(*cuda);
  Model model(c, profiled, B, T);
  model.init_parameters(1);
  const auto tokens = test::random_tokens(static_cast<size_t>(B * (T + 1)), 20, 2);
  model.forward_backward(tokens, 1.0 / (B * T));  // autotunes the GEMMs outside the profile
  profiled.synchronize();
  profiled.start();
  const auto t0 = std::chrono::steady_clock::now();
  model.forward_backward(tokens, 1.0 / (B * T));
  profiled.synchronize();
  const double wall_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const std::vector<OpRecord> records = profiled.stop();
  REQUIRE_FALSE(records.empty());
  double sum = 0;
  for (const OpRecord& r : records) {
    CHECK(r.ms >= 0);
    sum += r.ms;
  }
  // The events bracket GPU work inside the step, one op after the other on one stream.
  CHECK(sum <= wall_ms);
  const std::vector<ProfileRow> rows = group_profile(records, model.shape());
  CHECK(std::any_of(rows.begin(), rows.end(),
                    [](const ProfileRow& r) { return r.family == "attention bwd" && r.ms > 0; }));
}
#endif
