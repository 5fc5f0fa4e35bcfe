// The device-memory prediction of a CUDA training run, the fit check before step 1 and the
// report after it: the arithmetic on the CPU, the allocation counter against it on a GPU.
#include <catch2/catch.hpp>
#include <string>

#include "moda/device_memory.hpp"
#include "moda/model.hpp"
#include "moda/train.hpp"
#include "test_util.hpp"

#ifdef MODA_HAVE_CUDA
#include "moda/cuda_backend.hpp"
#endif

using namespace moda;

namespace {

// Table 3 row 1 (OLMo2, 36 layers, 772M allocated parameters) at micro-batch B x 4096.
Config olmo2_700m(int64_t micro_batch) {
  Config c =
      load_config(std::string(MODA_SOURCE_DIR) + "/configs/paper/table3_row1_olmo2_36l.yaml");
  c.source = "700m.yaml";
  c.batch.micro_batch = micro_batch;
  return c;
}

DeviceMemory h100(double free_gib) {
  DeviceMemory d;
  d.device = "NVIDIA H100 80GB HBM3";
  d.allocated = int64_t{64} << 20;  // the backend's cuBLASLt workspace, there from the start
  d.free = static_cast<int64_t>(free_gib * (1ll << 30));
  d.total = int64_t{80} << 30;
  return d;
}

}  // namespace

TEST_CASE("the CUDA memory prediction counts each allocation of a 700M run", "[memory]") {
  const CudaMemoryPrediction p = predict_cuda_memory(olmo2_700m(4), 4, 4096, 1);
  // 771,881,984 parameters (a multiple of 64): fp32 master, gradients, m, v + bf16 weights.
  CHECK(p.parameters == 771'881'984LL * 18);
  // The arena by role, R = 16384 rows, D = 1024, 36 layers, reordered norms, no MoDA:
  //   bf16: 73 residual buffers x R D, per layer R (2048 qkv + 1024 q + 2 x 512 k, v + 1024 attn
  //         out + 2 x 1024 branch outputs + 8192 mlp in + 4096 act), the final norm's R D and
  //         the backward scratch R (4 x 1024 + 1024 + 2048 + 4096 + 8192)
  //   fp32: dq, dk, dv R (1024 + 512 + 512); per layer 20 R statistics (4 rstd + 16 lse); 3 R
  //   int32: inputs and targets
  const int64_t R = 16384;
  const int64_t bf16 = 73 * R * 1024 + 36 * R * 19456 + R * 1024 + R * 19456;
  const int64_t f32 = R * 2048 + 36 * 20 * R + 3 * R;
  CHECK(p.activations == 2 * bf16 + 4 * f32 + 4 * 2 * R);
  CHECK(p.activations == 26'253'524'992LL);
  CHECK(p.rope == 2 * 4096 * 32 * 4);
  CHECK(p.cublas_workspace == int64_t{64} << 20);
  // The LM head's chunk: 1664 rows of fp32 logits and bf16 gradients over 100352 columns.
  CHECK(p.op_workspace == 1664LL * 100352 * 6);
  // Autotuning the LM head's weight gradient saves a copy of it (fp32, V x D).
  CHECK(p.gemm_tuning == 100352LL * 1024 * 4);
  CHECK(p.context == int64_t{512} << 20);
  CHECK(p.total() == 42'165'385'216LL);
}

TEST_CASE("the prediction follows MoDA's depth slots, ZeRO-1 shards and pre-norm", "[memory]") {
  Config c = test::tiny_variant_config({NormPlacement::pre, true, true, false, 2}, 64);
  const CudaMemoryPrediction base = predict_cuda_memory(c, 2, 16, 1);
  // With depth slots the attention forward keeps an fp32 partial output (R Hq d floats), the
  // sequence part's lse (R Hq, padded by 4) and the tiles' queue (8 words, then 2 ints per tile
  // of 128 tokens and KV head: 2 x 1 x 2 tiles), more than the LM head's chunk at this
  // vocabulary (24 padded: 2 x 16 x 24 x 6 bytes).
  CHECK(base.op_workspace == (2 * 16 * 4 * 64 + 2 * 16 * 4 + 4 + 8 + 2 * 4) * 4);
  // Pre-norm never accumulates an input gradient, so the largest saved output is a weight
  // gradient: attn.qkv's, (256 + 2 x 128) x 256 fp32.
  CHECK(base.gemm_tuning == (256 + 2 * 128) * 256 * 4);
  c.model.norm_placement = NormPlacement::reordered;
  // Otherwise the bf16 input gradient [R, D] may be the largest: not at R = 32 (32 x 256 x 2
  // bytes), but at R = 2048.
  CHECK(predict_cuda_memory(c, 2, 16, 1).gemm_tuning == base.gemm_tuning);
  CHECK(predict_cuda_memory(c, 128, 16, 1).gemm_tuning == 128 * 16 * 256 * 2);
  c.runtime.zero1 = true;
  const ParamLayout layout{ModelShape(c)};
  const int64_t padded = (layout.total() + 127) / 128 * 128;
  CHECK(predict_cuda_memory(c, 2, 16, 2).parameters == padded * 6 + 3 * (padded / 2) * 4);
}

TEST_CASE("a run that does not fit names the numbers and the micro-batch that fits", "[memory]") {
  const Config c = olmo2_700m(8);
  CHECK(memory_fit_error(c, 1, h100(40)) ==
        "700m.yaml: the run does not fit in GPU memory: predicted peak 63.72 GiB for micro-batch "
        "8 x 4096 (parameters and optimizer state 12.94, activations 48.90, workspaces 1.38, CUDA "
        "context ~0.50), of which 63.16 GiB is still to be allocated, but 40.00 GiB is free on "
        "NVIDIA H100 80GB HBM3. Try --set batch.micro_batch=4 (predicted peak 39.27 GiB; "
        "batch.global_batch 1024 is kept by accumulating 256 micro-batches per step), or a "
        "shorter batch.seq_len.");
  // Micro-batches that do not divide the global batch over the ranks are not offered: 8 / (3 x 2
  // ranks) is not whole, so the next one down is 2.
  Config two_ranks = olmo2_700m(4);
  two_ranks.batch.global_batch = 8;
  CHECK_THAT(memory_fit_error(two_ranks, 2, h100(33)),
             Catch::Contains("Try --set batch.micro_batch=2 (predicted peak") &&
                 Catch::Contains("accumulating 2 micro-batches per step"));
  CHECK(memory_fit_error(c, 1, h100(10))
            .ends_with("Even batch.micro_batch=1 is predicted at 20.93 GiB: use a shorter "
                       "batch.seq_len or a "
                       "smaller model (parameters and optimizer state alone take 12.94 GiB)."));
  CHECK(memory_fit_error(olmo2_700m(4), 1, h100(79)).empty());
  // The margin kept free for kernels loaded later: a run needing exactly the free memory fails.
  const CudaMemoryPrediction p = predict_cuda_memory(olmo2_700m(4), 4, 4096, 1);
  DeviceMemory exact = h100(0);
  exact.free = p.allocated() - exact.allocated;
  CHECK_FALSE(memory_fit_error(olmo2_700m(4), 1, exact).empty());
  exact.free += kFitSlackBytes;
  CHECK(memory_fit_error(olmo2_700m(4), 1, exact).empty());
}

TEST_CASE("host backends are checked against the host's memory, with no prediction", "[memory]") {
  const auto cpu = make_backend("cpu", 1);
  Config tiny;
  tiny.source = "tiny.yaml";
  CHECK_FALSE(check_memory_fit(tiny, *cpu, 1).has_value());
  // About 16 TB of activations: no machine this runs on has them.
  CHECK_THROWS_WITH(check_memory_fit(olmo2_700m(1024), *cpu, 1),
                    Catch::StartsWith("700m.yaml: the run does not fit in host memory"));
}

TEST_CASE("the memory line after step 1 compares prediction, counter and device", "[memory]") {
  const CudaMemoryPrediction p = predict_cuda_memory(olmo2_700m(4), 4, 4096, 1);
  DeviceMemory d = h100(0);
  d.allocated_peak = 41'000'000'000;
  d.total = 85'000'000'000;
  d.free = d.total - 42'000'000'000;
  CHECK(memory_report(p, d) ==
        "memory: predicted 39.27 GiB, allocated peak 38.18 GiB (predicted 38.77), device used "
        "39.12 GiB (cudaMemGetInfo, of 79.16 GiB; 0.996 x predicted)");
}

#ifdef MODA_HAVE_CUDA
TEST_CASE("cuda backend: the allocation counter matches the memory prediction", "[gpu]") {
  MODA_SKIP_UNLESS_GPU(cuda_device_count() > 0);
  for (const bool moda : {false, true}) {
    const Config c =
        test::tiny_variant_config({NormPlacement::reordered, moda, moda, false, 2}, 64);
    const int64_t B = 2, T = 16;
    const CudaMemoryPrediction p = predict_cuda_memory(c, B, T, 1);
    const auto backend = make_cuda_backend();
    // The backend's own cuBLASLt workspace exists from the start.
    CHECK(backend->device_memory().allocated == p.cublas_workspace);
    {
      Model model(c, *backend, B, T);
      model.init_parameters(1);
      const auto tokens = test::random_tokens(static_cast<size_t>(B * (T + 1)), 20, 2);
      model.forward_backward(tokens, 1.0 / (B * T));
      const std::vector<double> squares = gradient_square_sums(model, 0, model.padded_size());
      CHECK(squares.size() == model.layout().params().size());
      adamw_step(model, c.optimizer, 1e-3, 1, 1.0, 0, model.padded_size());
      backend->synchronize();
      const DeviceMemory m = backend->device_memory();
      CAPTURE(moda, m.allocated, m.allocated_peak, p.allocated(), p.gemm_tuning);
      // Everything but the autotuning copy stays allocated; that copy lives only while a GEMM
      // is tuned (and not at all when cuBLASLt offers one algorithm).
      CHECK(m.allocated == p.allocated() - p.gemm_tuning);
      CHECK(m.allocated_peak >= m.allocated);
      CHECK(m.allocated_peak <= p.allocated());
      CHECK(m.total > 0);
      CHECK(m.free < m.total);
    }
    CHECK(backend->device_memory().allocated ==
          p.allocated() - p.gemm_tuning - p.parameters - p.activations);
  }
}
#endif

TEST_CASE("the CPU backend's run is checked against the host's available memory", "[memory]") {
  const Config c = olmo2_700m(8);
  const auto plan = [&](int64_t b) {
    return plan_memory(c, b, 4096, DType::f32, DType::f32, DType::f32, DType::f32, DType::f32)
        .total();
  };
  CHECK(host_memory_fit_error(c, 1, plan(8)).empty());
  CHECK(host_memory_fit_error(c, 1, 0).empty());  // unknown: nothing checked
  // One byte short: 7, 6 and 5 do not divide the global batch of 1024, so 4 is offered.
  const std::string error = host_memory_fit_error(c, 1, plan(8) - 1);
  CHECK_THAT(error,
             Catch::StartsWith(fmt::format(
                 "700m.yaml: the run does not fit in host memory: the CPU backend's plan for "
                 "micro-batch 8 x 4096 is {:.2f} GiB (`moda info`)",
                 static_cast<double>(plan(8)) / (1 << 30))) &&
                 Catch::Contains("Try --set batch.micro_batch=4 (") &&
                 Catch::Contains("accumulating 256 micro-batches per step"));
  CHECK_THAT(host_memory_fit_error(c, 1, plan(1) - 1), Catch::Contains("Even batch.micro_batch=1"));
  // The machine this runs on reports some memory.
  CHECK(host_available_bytes() > 0);
}
