// Predicted device memory of a CUDA training run, the fit check and the report. Each term counts
// an allocation the code makes; the comments name where.
#include "moda/device_memory.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <stdexcept>

#include "moda/cuda_backend.hpp"
#include "moda/model.hpp"

namespace moda {

namespace {

double gib(int64_t bytes) { return static_cast<double>(bytes) / static_cast<double>(1ll << 30); }

bool fits(const CudaMemoryPrediction& p, const DeviceMemory& device) {
  return p.allocated() - device.allocated + kFitSlackBytes <= device.free;
}

}  // namespace

CudaMemoryPrediction predict_cuda_memory(const Config& config, int64_t micro_batch, int64_t seq_len,
                                         int64_t shards) {
  const ModelShape s(config);
  const ParamLayout layout(s);
  const int64_t R = micro_batch * seq_len, D = s.d_model, Vp = s.padded_vocab;
  CudaMemoryPrediction p;
  // Model::Model: fp32 gradients and bf16 weights of all parameters, padded to a multiple of
  // 64 x shards elements; fp32 master weights and Adam m and v of all of them, or under ZeRO-1
  // of this rank's shard.
  const int64_t unit = 64 * shards;
  const int64_t padded = (layout.total() + unit - 1) / unit * unit;
  const int64_t state = config.runtime.zero1 ? padded / shards : padded;
  p.parameters = padded * (4 + 2) + 3 * state * 4;
  // ModelBuffers' arena, with the CUDA backend's dtype of each role.
  p.activations = plan_memory(config, micro_batch, seq_len, DType::bf16, DType::f32, DType::bf16,
                              DType::f32, DType::f32)
                      .activations;
  // CudaBackend::init_rope: cos and sin, [max_seq_len, head_dim / 2] fp32 each.
  p.rope = 2 * std::max<int64_t>(config.model.max_seq_len * (s.head_dim / 2), 1) * 4;
  p.cublas_workspace = static_cast<int64_t>(kCublasWorkspaceBytes);
  // CudaBackend::workspace grows to the largest request of a step: attention's (the deepest
  // layer reads the most slots, and only whether there are any matters), the LM head's chunk and
  // the segment table.
  const AttentionShape deepest{micro_batch, seq_len,    s.q_heads,
                               s.kv_heads,  s.head_dim, s.slots_read(s.n_layers - 1)};
  const int64_t attention_forward = attention_forward_workspace(deepest);
  const int64_t attention_backward = attention_backward_workspace(deepest);
  const CudaBackendOptions options;
  const int64_t lm_head = static_cast<int64_t>(
      lm_head_workspace_bytes(lm_head_chunk_rows(R, Vp, options.lm_head_workspace_bytes), Vp));
  const int64_t segments =
      static_cast<int64_t>(segment_sum_squares_workspace(layout.params().size()));
  p.op_workspace = std::max({4 * std::max<int64_t>(attention_forward, 1),
                             4 * std::max<int64_t>(attention_backward, 1), lm_head, segments});
  // Gemm::tune saves an accumulating output before timing candidates on it: the fp32 weight
  // gradients (the LM head's among them) and, except under pre-norm, the bf16 input gradients
  // that the mlp.in and attn.qkv backward add to the residual's.
  int64_t tuning = Vp * D * 4;
  for (int64_t l = 0; l < s.n_layers; ++l) {
    tuning = std::max({tuning, s.qkv_rows(l) * D * 4, s.mlp_in_rows(l) * D * 4});
  }
  tuning = std::max({tuning, D * s.q_width() * 4, D * s.mlp_hidden * 4});
  if (s.placement != NormPlacement::pre) tuning = std::max(tuning, R * D * 2);
  p.gemm_tuning = tuning;
  p.context = kCudaContextBytes;
  return p;
}

std::string memory_fit_error(const Config& config, int64_t shards, const DeviceMemory& device) {
  const int64_t B = config.batch.micro_batch, T = config.batch.seq_len;
  const CudaMemoryPrediction p = predict_cuda_memory(config, B, T, shards);
  if (fits(p, device)) return "";
  std::string message = fmt::format(
      "{}: the run does not fit in GPU memory: predicted peak {:.2f} GiB for micro-batch {} x {} "
      "(parameters and optimizer state {:.2f}, activations {:.2f}, workspaces {:.2f}, CUDA "
      "context ~{:.2f}), of which {:.2f} GiB is still to be allocated, but {:.2f} GiB is free on "
      "{}. ",
      config.source.empty() ? "config" : config.source, gib(p.total()), B, T, gib(p.parameters),
      gib(p.activations), gib(p.workspaces()), gib(p.context),
      gib(p.allocated() - device.allocated), gib(device.free), device.device);
  // The largest smaller micro-batch that still divides the global batch over the ranks.
  for (int64_t b = B - 1; b >= 1; --b) {
    if (config.batch.global_batch % (b * shards) != 0) continue;
    const CudaMemoryPrediction smaller = predict_cuda_memory(config, b, T, shards);
    if (!fits(smaller, device)) continue;
    return message + fmt::format(
                         "Try --set batch.micro_batch={} (predicted peak {:.2f} GiB; "
                         "batch.global_batch {} is kept by accumulating {} micro-batches per "
                         "step), or a shorter batch.seq_len.",
                         b, gib(smaller.total()), config.batch.global_batch,
                         config.batch.global_batch / (b * shards));
  }
  const CudaMemoryPrediction one = predict_cuda_memory(config, 1, T, shards);
  return message + fmt::format(
                       "Even batch.micro_batch=1 is predicted at {:.2f} GiB: use a shorter "
                       "batch.seq_len or a smaller model (parameters and optimizer state alone "
                       "take {:.2f} GiB).",
                       gib(one.total()), gib(one.parameters));
}

std::string host_memory_fit_error(const Config& config, int64_t shards, int64_t available) {
  const int64_t B = config.batch.micro_batch, T = config.batch.seq_len;
  const auto plan = [&](int64_t b) {
    return plan_memory(config, b, T, DType::f32, DType::f32, DType::f32, DType::f32, DType::f32)
        .total();
  };
  if (available <= 0 || plan(B) <= available) return "";
  std::string message = fmt::format(
      "{}: the run does not fit in host memory: the CPU backend's plan for micro-batch {} x {} is "
      "{:.2f} GiB (`moda info`), {:.2f} GiB is available (MemAvailable). ",
      config.source.empty() ? "config" : config.source, B, T, gib(plan(B)), gib(available));
  for (int64_t b = B - 1; b >= 1; --b) {
    if (config.batch.global_batch % (b * shards) != 0 || plan(b) > available) continue;
    return message + fmt::format(
                         "Try --set batch.micro_batch={} ({:.2f} GiB; batch.global_batch {} is "
                         "kept by accumulating {} micro-batches per step), or a shorter "
                         "batch.seq_len.",
                         b, gib(plan(b)), config.batch.global_batch,
                         config.batch.global_batch / (b * shards));
  }
  return message + fmt::format(
                       "Even batch.micro_batch=1 takes {:.2f} GiB: use a shorter batch.seq_len or "
                       "a smaller model.",
                       gib(plan(1)));
}

int64_t host_available_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    long long kib = 0;
    if (std::sscanf(line.c_str(), "MemAvailable: %lld kB", &kib) == 1) return kib * 1024;
  }
  return 0;
}

std::optional<CudaMemoryPrediction> check_memory_fit(const Config& config, const Backend& backend,
                                                     int64_t shards) {
  const DeviceMemory device = backend.device_memory();
  if (device.total == 0) {
    const std::string error = host_memory_fit_error(config, shards, host_available_bytes());
    if (!error.empty()) throw std::runtime_error(error);
    return std::nullopt;
  }
  const std::string error = memory_fit_error(config, shards, device);
  if (!error.empty()) throw std::runtime_error(error);
  return predict_cuda_memory(config, config.batch.micro_batch, config.batch.seq_len, shards);
}

std::string memory_report(const CudaMemoryPrediction& predicted, const DeviceMemory& device) {
  const int64_t used = device.total - device.free;
  return fmt::format(
      "memory: predicted {:.2f} GiB, allocated peak {:.2f} GiB (predicted {:.2f}), device used "
      "{:.2f} GiB (cudaMemGetInfo, of {:.2f} GiB; {:.3f} x predicted)",
      gib(predicted.total()), gib(device.allocated_peak), gib(predicted.allocated()), gib(used),
      gib(device.total), static_cast<double>(used) / static_cast<double>(predicted.total()));
}

}  // namespace moda
