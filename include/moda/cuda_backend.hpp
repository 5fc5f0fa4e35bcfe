// The CUDA backend (kernels/): bf16 storage, fp32 accumulation, cuBLASLt GEMMs. This header is
// plain C++ so that code built without nvcc can name the backend; CUDA types stay in kernels/.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moda/backend.hpp"

namespace moda {

// Number of CUDA devices visible to this process; 0 when there is no driver or no GPU. Never
// throws.
int cuda_device_count();

// Where attention's backward forms the depth part at head size 64
// (docs/kernels/moda_attention.md, "The backward's depth part on SMs of its own"): in the tail of
// the sequence kernel's blocks once their sequence part is done, in a kernel of its own on a share
// of the SMs beside the sequence kernel, or (automatic) split where the depth part's estimated
// share of the work is small enough for the split to have measured faster. Head size 128 runs
// it beside the sequence kernel either way.
enum class DepthBackwardPlacement { automatic, tail, split };
// Their names, as `moda bench attention --depth-backward` and the variant timer take them.
struct NamedDepthBackwardPlacement {
  const char* name;
  DepthBackwardPlacement placement;
};
inline constexpr NamedDepthBackwardPlacement kDepthBackwardPlacements[] = {
    {"automatic", DepthBackwardPlacement::automatic},
    {"tail", DepthBackwardPlacement::tail},
    {"split", DepthBackwardPlacement::split}};

struct CudaBackendOptions {
  // Upper bound of the LM head's scratch (fp32 logits + bf16 logit gradients of one chunk of
  // rows). Larger chunks re-read the weight gradient less often; tests shrink it to force chunks.
  size_t lm_head_workspace_bytes = size_t{1} << 30;
  DepthBackwardPlacement depth_backward = DepthBackwardPlacement::automatic;
};

// Sizes of the backend's scratch buffers. Inline, so that `moda info` and the trainer's memory
// prediction (moda/device_memory.hpp) use the kernels' own formulas in builds without CUDA too.
inline constexpr size_t kCublasWorkspaceBytes = size_t{64} << 20;

// Rows per LM-head chunk whose fp32 logits and bf16 logit gradients fit in `budget` bytes.
inline int64_t lm_head_chunk_rows(int64_t rows, int64_t vocab, size_t budget) {
  const int64_t per_row = static_cast<int64_t>(sizeof(float) + sizeof(uint16_t)) * vocab;
  int64_t chunk = std::max<int64_t>(1, static_cast<int64_t>(budget) / per_row);
  // Whole tiles of rows keep the GEMMs on their fast paths.
  if (chunk >= 128) chunk = chunk / 128 * 128;
  return std::min(chunk, rows);
}

// Workspace bytes of a chunk: fp32 logits, then bf16 gradients starting 256-byte aligned.
inline size_t lm_head_workspace_bytes(int64_t chunk_rows, int64_t vocab) {
  const size_t logits = static_cast<size_t>(chunk_rows * vocab) * sizeof(float);
  return (logits + 255) / 256 * 256 + static_cast<size_t>(chunk_rows * vocab) * sizeof(uint16_t);
}

// Device scratch bytes of segment_sum_squares over `segments` segments: the segment table
// (offsets, counts, block starts + 1) and one double sum per segment.
inline size_t segment_sum_squares_workspace(size_t segments) {
  return sizeof(int64_t) * (3 * segments + 1) + sizeof(double) * segments;
}

// fp32 scratch elements of MoDA attention: the forward keeps the sequence part's normalized
// output when there are depth slots; the backward keeps delta = rowsum(dout * out) per query head.
inline int64_t attention_forward_workspace(const AttentionShape& s) {
  return s.slots > 0 ? s.batch * s.seq_len * s.q_heads * s.head_dim : 0;
}
inline int64_t attention_backward_workspace(const AttentionShape& s) {
  return s.batch * s.seq_len * s.q_heads;
}

// SMs that attention's backward gives its depth part at head size 64 (a kernel of its own on
// them, beside the sequence kernel on the rest), or 0 to keep it in the sequence kernel's tail.
// From estimates of SM time calibrated at (4, 4096, 16, 8) on the H200 (2026-12-02,
// docs/kernels/moda_attention.md, "The backward's depth part on SMs of its own"): the depth code
// about 7.1 ns per (row, KV head) pair and slot (its 36 GB/s per SM), plus 2 G + 8 slots' worth
// per pair (its q, dO and dq rows, the start of a pair's pipeline); the sequence backward 141
// SM-ms per 6.87e10 of B Hq T^2 d. The depth part gets a quarter more than its share: with an SM
// short it runs on after the sequence kernel, while a spare SM goes back to the sequence kernel
// once the depth blocks end (at S 8, 8 SMs instead of 16 took the backward from 1.44 to 2.09 ms).
// Automatic placement splits from kMinSplitSlots slots while the share is at most
// kMaxSplitShare, where the split measured faster than the tail (bwd ms with the slot gradients,
// tail / split: S 2 1.30 / 1.35, S 4 1.37 / 1.31, S 36 2.55 / 2.45, S 60 3.39 / 3.34 (share
// 0.40), S 64 3.51 / 3.54 (0.42), S 72 3.83 / 3.83).
inline constexpr int64_t kMinSplitSlots = 4;
inline constexpr double kMaxSplitShare = 0.405;
inline int64_t attention_depth_split_sms(const AttentionShape& s, DepthBackwardPlacement placement,
                                         int64_t sm_count) {
  if (placement == DepthBackwardPlacement::tail || sm_count < 2 || s.slots == 0) return 0;
  const auto group = static_cast<double>(s.q_heads / s.kv_heads);
  const double pairs = static_cast<double>(s.batch * s.seq_len * s.kv_heads);
  const double depth_ns = pairs * (static_cast<double>(s.slots) + 2.0 * group + 8.0) * 7.1;
  const double seq_ns = static_cast<double>(s.batch * s.q_heads * s.head_dim) *
                        static_cast<double>(s.seq_len) * static_cast<double>(s.seq_len) * 2.05e-3;
  const double share = 1.25 * depth_ns / (depth_ns + seq_ns);
  if (placement == DepthBackwardPlacement::automatic &&
      (s.slots < kMinSplitSlots || share > kMaxSplitShare)) {
    return 0;
  }
  const auto sms = static_cast<int64_t>(std::ceil(share * static_cast<double>(sm_count)));
  return std::clamp<int64_t>(sms, 1, sm_count - 1);
}

// A backend on the current CUDA device with its own stream. Throws when no GPU is usable.
std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options = {});

// The three GEMMs of a linear layer x[m, k] W[n, k]^T (forward, input gradient, weight gradient)
// timed with the algorithm the backend tunes to (median of 15 runs), with cuBLASLt's first
// heuristic choice and with the fastest of all its candidates.
struct GemmAlgoTiming {
  std::string op;
  double chosen_ms = 0;     // the backend's (tuned) choice
  int chosen = 0;           // its index among the heuristic's candidates
  double heuristic_ms = 0;  // the heuristic's first candidate
  double best_ms = 0;       // the fastest candidate
  int candidates = 0;
  double tflops = 0;  // of the chosen algorithm
};
std::vector<GemmAlgoTiming> cuda_time_gemm_algorithms(int64_t m, int64_t n, int64_t k);

// Forward and backward of MoDA attention at `shape` (slot_stride is set to the model's gap-free
// slot-major layout) on synthetic operands: medians over `reps` timed calls after one warm-up.
struct AttentionTiming {
  double forward_ms = 0;
  double backward_ms = 0;        // attention_backward + depth_slot_backward of the S slots
  double slot_gradients_ms = 0;  // the depth_slot_backward part of backward_ms
  double total_ms = 0;           // median of forward + backward per repetition
};
AttentionTiming cuda_time_attention(
    const AttentionShape& shape, int reps,
    DepthBackwardPlacement placement = DepthBackwardPlacement::automatic);
// Median ms of depth_slot_backward forming two slots' gradients from `readers` layers that each
// read shape.slots (>= 2) slots, each with its own operands: one step of the model's backward.
double cuda_time_depth_slot_gradients(const AttentionShape& shape, int readers, int reps);

}  // namespace moda
