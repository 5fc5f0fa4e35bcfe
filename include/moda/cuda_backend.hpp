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
// (docs/kernels/moda_attention.md, "The backward's depth part beside the sequence kernel on every
// SM"): in the tail of the sequence kernel's blocks once their sequence part is done, or beside
// them, in a kernel of its own with a block of 4 warps on every SM next to the sequence kernel's
// block; automatic takes beside where it measured faster (attention_depth_backward_beside) and
// the two blocks fit on an SM together, else the tail. Head size 128 runs it in a streaming
// kernel beside the sequence kernel either way.
enum class DepthBackwardPlacement { automatic, tail, beside };
// A placement's name, as `moda bench attention --depth-backward` / `--depth-forward` and the
// variant timer take them.
template <class Placement>
struct NamedPlacement {
  const char* name;
  Placement placement;
};
inline constexpr NamedPlacement<DepthBackwardPlacement> kDepthBackwardPlacements[] = {
    {"automatic", DepthBackwardPlacement::automatic},
    {"tail", DepthBackwardPlacement::tail},
    {"beside", DepthBackwardPlacement::beside}};

// Where attention's forward adds the depth slots (docs/kernels/moda_attention.md, "The forward's
// depth part per token after the sequence kernel" and "... beside the sequence kernel, following
// its tiles"): inside (at head size 64 in the sequence kernel's steps, a block's rows 64 tokens of
// two heads, or 128 of one head at odd G, so that each slot row is read once per two heads of a
// group; at 128, where the sequence kernel has no room for them, in a streaming pass after it), or
// per token in a kernel that takes a (token, KV head) and 16 of its slots at a time with the
// group's G <= 8 heads as the MMA's N, reading each slot row once: after the sequence kernel, or
// (head size 64) beside it, a block of 4 warps on every SM taking the tokens of the sequence
// kernel's tiles as they are done and, after it, the tokens left on every warp the SMs hold.
// Automatic takes the per-token kernel where it measured faster (attention_depth_forward_after)
// and beside where that did (attention_depth_forward_beside) and the blocks fit on an SM
// together.
enum class DepthForwardPlacement { automatic, inside, after, beside };
inline constexpr NamedPlacement<DepthForwardPlacement> kDepthForwardPlacements[] = {
    {"automatic", DepthForwardPlacement::automatic},
    {"inside", DepthForwardPlacement::inside},
    {"after", DepthForwardPlacement::after},
    {"beside", DepthForwardPlacement::beside}};

struct CudaBackendOptions {
  // Upper bound of the LM head's scratch (fp32 logits + bf16 logit gradients of one chunk of
  // rows). Larger chunks re-read the weight gradient less often; tests shrink it to force chunks.
  size_t lm_head_workspace_bytes = size_t{1} << 30;
  DepthBackwardPlacement depth_backward = DepthBackwardPlacement::automatic;
  DepthForwardPlacement depth_forward = DepthForwardPlacement::automatic;
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

// fp32 scratch elements of MoDA attention. The forward, when there are depth slots, keeps the
// sequence part's normalized output [R, Hq d] and, for the depth part beside the sequence kernel,
// the sequence part's lse [R, Hq] (padded to whole 16-byte pieces) and the tiles' queue: four
// 64-bit words, then per tile of kForwardTileTokens tokens and KV head the count of its heads done
// and the published order (ints). The backward keeps delta = rowsum(dout * out) per query head
// and, after it at an 8-byte boundary, the depth kernels' queue (two 64-bit words).
inline constexpr int64_t kForwardTileTokens = 128;
inline int64_t attention_forward_tiles(const AttentionShape& s) {
  return s.batch * ((s.seq_len + kForwardTileTokens - 1) / kForwardTileTokens) * s.kv_heads;
}
inline int64_t attention_forward_workspace(const AttentionShape& s) {
  if (s.slots == 0) return 0;
  const int64_t lse = (s.batch * s.seq_len * s.q_heads + 3) / 4 * 4 + 4;
  return s.batch * s.seq_len * s.q_heads * s.head_dim + lse + 8 + 2 * attention_forward_tiles(s);
}
inline int64_t attention_backward_workspace(const AttentionShape& s) {
  return (s.batch * s.seq_len * s.q_heads + 1) / 2 * 2 + 4;
}

// Whether attention's backward at head size 64 forms the depth part beside the sequence kernel
// (a kernel of its own, one block per SM) rather than in the tail of the sequence kernel's blocks,
// given that the two kernels' blocks fit on an SM together (cuda_depth_backward_beside_fits).
// Automatic placement takes beside while the depth part is at most a bound of the sequence part,
// counted as slots x KV heads against query heads x T x d. The depth part moves bytes and the
// sequence part does math, so the bound depends on the device's memory bandwidth: beside costs
// the sequence kernel the SM it shares, and the slower the depth part's bytes, the sooner the
// tail can win. A layer that is its slots' only reader (slot_gradients: the depth part also writes
// the slots' gradients) has more depth work per slot and a bound of its own. Measured, bwd ms
// beside / tail (docs/kernels/moda_attention.md, "The backward's depth placement on the H100"):
// - H200 (4.8 TB/s): with the slot gradients pulled after it, (4, 4096, 16, 8) S 1 1.174 / 1.271,
//   S 8 1.383 / 1.486, S 36 2.332 / 2.540, S 72 3.636 / 3.816 (1.4e-4); (1, 4096, 64, 8) S 64
//   1.916 / 1.940 (3.1e-5); Table 6's (64, 1024, 6, 2) S 4 0.733 / 0.833, S 47 2.264 / 2.263
//   (2.4e-4), S 94 4.125 / 3.958 (4.8e-4). Sole reader: Table 6 S 16 0.901 / 0.908 (8.1e-5),
//   S 24 1.151 / 1.106 (1.2e-4), S 36 1.475 / 1.381 (1.8e-4), S 47 1.770 / 1.609; (4, 4096, 16, 8)
//   S 36 1.820 / 1.905, S 72 2.767 / 2.778 (1.37e-4); (1, 16384, 64, 8) S 64 16.19 / 16.59.
// - H100 (3.35 TB/s): sole reader, (4, 4096, 16, 8) S 8 1.329 / 1.477 (1.5e-5), S 16 1.745 /
//   1.747, S 24 2.049 / 2.058 (4.6e-5), S 36 2.465 / 2.148 (6.9e-5), S 72 3.819 / 3.390;
//   (1, 4096, 32, 8) S 64 1.066 / 1.008 (6.1e-5); (1, 4096, 64, 8) S 64 1.346 / 1.404 (3.1e-5);
//   Table 6 S 4 0.745 / 0.814, S 8 0.860 / 0.856 (4.1e-5), S 16 1.158 / 1.095. The model's form
//   keeps the H200's bound: in the variant timer the tail was faster from (4, 4096, 16, 8) S 44
//   (pulled, S 36 2.659 / 2.782, S 44 3.233 / 3.078, S 72 4.495 / 4.340), but MoDA-700M with the
//   bound at 7.5e-5 ran 0.75% slower end to end (attention bwd 470 against 446 ms a profiled
//   step), so the model's measurement decides.
struct BesideBounds {
  double depth;        // the depth part without the slot gradients
  double sole_reader;  // the depth part with the slot gradients
};
inline constexpr BesideBounds kBesideBoundsH200{2.4e-4, 1.4e-4};
inline constexpr BesideBounds kBesideBoundsH100{2.4e-4, 5.0e-5};
// The bounds of the measured device nearer in peak memory bandwidth (TB/s; the split at 4.0, about
// the geometric mean of the H100's 3.35 and the H200's 4.8).
inline BesideBounds beside_bounds(double peak_memory_tb_per_s) {
  return peak_memory_tb_per_s < 4.0 ? kBesideBoundsH100 : kBesideBoundsH200;
}
inline bool attention_depth_backward_beside(const AttentionShape& s,
                                            DepthBackwardPlacement placement, bool slot_gradients,
                                            const BesideBounds& bounds) {
  if (s.slots == 0 || placement == DepthBackwardPlacement::tail) return false;
  if (placement == DepthBackwardPlacement::beside) return true;
  const double ratio =
      static_cast<double>(s.slots * s.kv_heads) /
      (static_cast<double>(s.q_heads * s.seq_len) * static_cast<double>(s.head_dim));
  return ratio <= (slot_gradients ? bounds.sole_reader : bounds.depth);
}

// Whether attention's forward adds the depth slots after the sequence kernel
// (DepthForwardPlacement::after; head sizes 64 and 128, group sizes up to 8, the MMA's N).
// Automatic placement takes it from kMinAfterForwardGroup64 (head size 64) or
// kMinAfterForwardGroup128 heads per KV head on. Measured: at 64 faster at G = 3, 4 and 8,
// slower at G = 2, where the fused forward reads each slot row once and hides part of it under
// its math; at 128 faster than the streaming pass at G = 4 and 8, slower or equal at G = 2, where
// the fused forward (seq_forward_wgmma<128, true, 2>) now takes the slots.
inline constexpr int64_t kMinAfterForwardGroup64 = 3;
inline constexpr int64_t kMinAfterForwardGroup128 = 4;
inline bool attention_depth_forward_after(const AttentionShape& s,
                                          DepthForwardPlacement placement) {
  const int64_t group = s.q_heads / s.kv_heads;
  if (s.slots == 0 || (s.head_dim != 64 && s.head_dim != 128) || group > 8 ||
      placement == DepthForwardPlacement::inside) {
    return false;
  }
  const int64_t min_group = s.head_dim == 64 ? kMinAfterForwardGroup64 : kMinAfterForwardGroup128;
  return placement == DepthForwardPlacement::after || placement == DepthForwardPlacement::beside ||
         group >= min_group;
}

// Whether the per-token forward (attention_depth_forward_after) runs beside the sequence kernel
// rather than after it: head size 64 only, where the sequence kernel's blocks leave room on the
// SM (cuda_depth_forward_beside_fits). Automatic placement takes beside from
// kMinBesideForwardTokens on, where the sequence kernel is long enough to hide the slots under it
// and to pay for its own bound registers. Measured on the H200 (fwd ms, after / beside): (1, 4096,
// 64, 8) S 64 0.556 / 0.518, 8K 1.834 / 1.700, 16K 6.302-6.442 / 6.347-6.461, (1, 16384, 32, 8)
// S 64 3.513 / 3.421; at Table 6's T = 1024, (64, 1024, 6, 2) S 47 0.673 / 0.650 and S 94 1.070 /
// 1.062 alone, but in the MoDA + FFN KV model (S 0 to 94) the attention forward took 33.0-33.2
// instead of 32.6 ms a step, 0.688x of OLMo2 against 0.692x (docs/kernels/moda_attention.md).
inline constexpr int64_t kMinBesideForwardTokens = 4096;
inline bool attention_depth_forward_beside(const AttentionShape& s,
                                           DepthForwardPlacement placement) {
  if (!attention_depth_forward_after(s, placement) || s.head_dim != 64) return false;
  return placement == DepthForwardPlacement::beside ||
         (placement == DepthForwardPlacement::automatic && s.seq_len >= kMinBesideForwardTokens);
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

// How a timed call forms the gradients of its S slots, as their only reader: in the backward
// (Backend::attention_backward_sole_reader), or pulled after it by depth_slot_backward from the
// probabilities and score gradients the backward leaves, as the model does for slots that many
// layers read.
enum class SlotGradientTiming { sole_reader, pulled };
inline constexpr NamedPlacement<SlotGradientTiming> kSlotGradientTimings[] = {
    {"sole-reader", SlotGradientTiming::sole_reader}, {"pulled", SlotGradientTiming::pulled}};

// Forward and backward of MoDA attention at `shape` (slot_stride is set to the model's gap-free
// slot-major layout) on synthetic operands, the backward with the gradients of all S slots:
// medians over `reps` timed calls after one warm-up.
struct AttentionTiming {
  double forward_ms = 0;
  double backward_ms = 0;        // with the slots' gradients
  double slot_gradients_ms = 0;  // pulled: the depth_slot_backward part of backward_ms, else 0
  double total_ms = 0;           // median of forward + backward per repetition
};
AttentionTiming cuda_time_attention(
    const AttentionShape& shape, int reps,
    DepthBackwardPlacement placement = DepthBackwardPlacement::automatic,
    DepthForwardPlacement forward = DepthForwardPlacement::automatic,
    SlotGradientTiming slot_gradients = SlotGradientTiming::sole_reader);
// Median ms of depth_slot_backward forming two slots' gradients from `readers` layers that each
// read shape.slots (>= 2) slots, each with its own operands: one step of the model's backward.
double cuda_time_depth_slot_gradients(const AttentionShape& shape, int readers, int reps);
// Whether the backward's depth kernel (DepthBackwardPlacement::beside) and the sequence kernel
// fit on one SM of the current device together, by their registers, shared memory and threads.
// Where they do not, automatic placement takes the tail and `beside` is slower, not wrong.
bool cuda_depth_backward_beside_fits();
// The same for the forward's per-token depth kernel beside two blocks of the sequence kernel
// (DepthForwardPlacement::beside). Where they do not fit, the forward takes `after`: the depth
// blocks wait for the sequence kernel's tiles and must not keep its blocks off the SMs.
bool cuda_depth_forward_beside_fits();

}  // namespace moda
