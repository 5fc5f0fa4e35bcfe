// `moda info`: parameter counts (with their conventions), FLOPs per token and the memory a run
// of the config needs, without allocating anything.
#include <fmt/format.h>

#include "cli/commands.hpp"
#include "cli/config_options.hpp"
#include "format/byte_size.hpp"
#include "moda/checkpoint.hpp"
#include "moda/device_memory.hpp"
#include "moda/model.hpp"

namespace moda::cli {

namespace {

std::string gib(int64_t bytes) {
  return fmt::format("{:.2f} GiB", static_cast<double>(bytes) / (1ull << 30));
}

void print_info(const Config& c) {
  const ModelShape s(c);
  const ParamCounts n = count_params(s);
  const int64_t T = c.batch.seq_len, B = c.batch.micro_batch;
  fmt::print("config: {}\n", c.source);
  fmt::print(
      "model: D={} layers={} heads={} kv_heads={} (G={}) head_dim={} mlp_hidden={} vocab={} "
      "(padded {})\n",
      s.d_model, s.n_layers, s.q_heads, s.kv_heads, s.q_heads / s.kv_heads, s.head_dim,
      s.mlp_hidden, s.vocab, s.padded_vocab);
  fmt::print("norm: {}, tied embeddings: {}\n", to_string(s.placement), s.tied ? "yes" : "no");
  fmt::print("moda: {}{}{}\n", s.moda ? "on" : "off", s.ffn_kv ? ", ffn_kv" : "",
             s.attn_kv_proj ? ", attn_kv_proj" : "");
  if (s.moda) {
    fmt::print("depth slots: {} stored per token; layer l reads {} (deepest layer reads {})\n",
               s.slot_buffers(), s.ffn_kv ? "2l" : "l", s.slots_read(s.n_layers - 1));
  }
  fmt::print("parameters:\n");
  fmt::print("  paper convention (embedding once, unpadded vocab): {} ({:.1f}M)\n", n.paper,
             n.paper / 1e6);
  fmt::print("  allocated (padded embedding{}):              {} ({:.1f}M)\n",
             s.tied ? "" : " + LM head", n.total, n.total / 1e6);
  fmt::print("  non-embedding:                                    {} ({:.1f}M)\n", n.non_embedding,
             n.non_embedding / 1e6);
  const double fpt = flops_per_token(c, T);
  fmt::print("training FLOPs per token at T={}: {:.4g} GFLOP (6 x matmul params + attention)\n", T,
             fpt / 1e9);
  fmt::print("memory for micro-batch {} x {}:\n", B, T);
  const MemoryPlan cpu =
      plan_memory(c, B, T, DType::f32, DType::f32, DType::f32, DType::f32, DType::f32);
  const MemoryPlan gpu =
      plan_memory(c, B, T, DType::bf16, DType::f32, DType::bf16, DType::f32, DType::f32);
  fmt::print("  {:<6} {:>12} {:>12} {:>12} {:>12}\n", "", "params+opt", "weights", "activations",
             "total");
  fmt::print("  {:<6} {:>12} {:>12} {:>12} {:>12}\n", "cpu", gib(cpu.params), gib(cpu.weights),
             gib(cpu.activations), gib(cpu.total()));
  fmt::print("  {:<6} {:>12} {:>12} {:>12} {:>12}\n", "cuda", gib(gpu.params), gib(gpu.weights),
             gib(gpu.activations), gib(gpu.total()));
  // What `moda train` checks against the free GPU memory before step 1 (one GPU).
  const CudaMemoryPrediction peak = predict_cuda_memory(c, B, T, 1);
  fmt::print("  cuda peak of a training run (checked before step 1): {}\n", gib(peak.total()));
  const auto g = [](int64_t bytes) { return static_cast<double>(bytes) / (1ull << 30); };
  fmt::print(
      "    = params+opt+weights {:.2f} + activations {:.2f} + op scratch {:.2f} + cuBLASLt {:.2f}\n"
      "      + autotuning copy {:.2f} + RoPE tables {:.2f} + CUDA context ~{:.2f} (GiB)\n",
      g(peak.parameters), g(peak.activations), g(peak.op_workspace), g(peak.cublas_workspace),
      g(peak.gemm_tuning), g(peak.rope), g(peak.context));
  // Host memory, not GPU memory: what a save copies out of the model (docs/checkpoints.md).
  const uint64_t save_bytes = shard_state_bytes(n.total);
  fmt::print(
      "host memory of a checkpoint save: {} ({} bytes, float32 master weights and Adam moments) "
      "on rank 0, or 1/N of it on each of N ranks with runtime.zero1; {}\n",
      format_bytes(save_bytes), save_bytes,
      c.checkpoint.background ? "kept between saves (checkpoint.background)"
                              : "freed after each save (checkpoint.background off)");
}

}  // namespace

void register_info(CLI::App& app) {
  auto* cmd =
      app.add_subcommand("info", "Print parameter count, FLOPs per token and memory of a config");
  auto options = std::make_shared<ConfigOptions>();
  options->add_to(*cmd);
  cmd->callback([options] { print_info(options->load()); });
}

}  // namespace moda::cli
