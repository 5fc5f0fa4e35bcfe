// Launchers of the kernel families: host functions on raw device pointers that pick a kernel
// variant (vector width, head size), launch it on `stream` and check the launch. The backend
// class (cuda_backend.cu) checks dtypes and shapes before calling them.
#pragma once

#include <span>
#include <utility>
#include <vector>

#include "common.cuh"
#include "gemm.cuh"
#include "moda/backend.hpp"
#include "moda/cuda_backend.hpp"

namespace moda::cuda {

// embedding.cu
void embedding_forward(const int32_t* tokens, const bf16* table, bf16* out, int64_t rows,
                       int64_t dim, cudaStream_t stream);
void embedding_backward(const int32_t* tokens, const bf16* dout, float* dtable, int64_t rows,
                        int64_t dim, cudaStream_t stream);

// rmsnorm.cu
enum class NormKind {
  plain,          // out = RMSNorm(x) * w
  add_then_norm,  // sum = x + branch; out = RMSNorm(sum) * w
  norm_then_add,  // out = x + RMSNorm(branch) * w
};
void rmsnorm_forward(NormKind kind, const bf16* x, const bf16* branch, const bf16* weight,
                     bf16* sum, bf16* out, float* rstd, int64_t rows, int64_t cols, float eps,
                     cudaStream_t stream);
// din (+)= d/d normed; dweight += d/d w.
void rmsnorm_backward(const bf16* dout, const bf16* normed, const bf16* weight, const float* rstd,
                      bf16* din, float* dweight, int64_t rows, int64_t cols, bool accumulate,
                      cudaStream_t stream);

// qkv_norm_rope.cu; rope_cos/rope_sin are [max_seq_len, head_dim / 2] fp32.
struct QkvArgs {
  int64_t rows, seq_len, ld, col0, q_heads, kv_heads, head_dim;
  float eps;
  const float* rope_cos;
  const float* rope_sin;
};
void qkv_norm_rope_forward(const QkvArgs& a, const bf16* raw, const bf16* q_weight,
                           const bf16* k_weight, bf16* q_out, bf16* k_out, bf16* v_out,
                           float* q_rstd, float* k_rstd, cudaStream_t stream);
void qkv_norm_rope_backward(const QkvArgs& a, const bf16* raw, const bf16* q_weight,
                            const bf16* k_weight, const float* q_rstd, const float* k_rstd,
                            const float* dq, const float* dk, const float* dv, bf16* draw,
                            float* dq_weight, float* dk_weight, cudaStream_t stream);

// swiglu.cu
void swiglu_forward(const bf16* in, bf16* out, int64_t rows, int64_t hidden, int64_t ld,
                    cudaStream_t stream);
void swiglu_backward(const bf16* dout, const bf16* in, bf16* din, int64_t rows, int64_t hidden,
                     int64_t ld, cudaStream_t stream);

// attention.cu. Workspace (fp32 elements): moda::attention_{forward,backward}_workspace.
// Where the depth parts run: the forward's inside the sequence kernel (head size 64), after it,
// or beside it with a block on every SM on `priority` (`forward`); the backward's beside
// `stream`, which waits for them: the streaming kernel (head size 128 and the unaligned cases) on
// `streaming`; at head size 64 the tail of the sequence kernel's blocks or, beside them, a kernel
// with a block on every SM on `priority` (a stream of the greatest priority, so that its blocks
// take their place on the SMs before the sequence kernel's).
struct DepthStreams {
  const SideStream& streaming;
  const SideStream& priority;
  DepthForwardPlacement forward;
  DepthBackwardPlacement backward;
  int sm_count;
};
void attention_forward(const AttentionShape& s, const bf16* q, const bf16* k, const bf16* v,
                       const bf16* depth_k, const bf16* depth_v, bf16* out, float* lse,
                       float* workspace, cudaStream_t stream, const DepthStreams& depth);
// What attention_backward's depth part leaves per slot: each slot's probability and score
// gradient per query head (fp32 [S, R, Hq], moda/depth_stats_layout.hpp), from which
// depth_slot_backward forms the slots' gradients once every layer reading them is done; or, with
// d_depth_k and d_depth_v (a layer that is its slots' only reader), the slots' gradients
// themselves (fp32, overwritten, slot c at c s.slot_stride), probs and dscores then scratch that
// may be left unwritten.
struct DepthBackwardOut {
  float* probs;
  float* dscores;
  float* d_depth_k = nullptr;
  float* d_depth_v = nullptr;
};
void attention_backward(const AttentionShape& s, const bf16* dout, const bf16* q, const bf16* k,
                        const bf16* v, const bf16* depth_k, const bf16* depth_v, const bf16* out,
                        const float* lse, float* dq, float* dk, float* dv,
                        const DepthBackwardOut& slot_out, float* workspace, cudaStream_t stream,
                        const DepthStreams& depth);
// Backend::DepthReader as typed pointers.
struct DepthReaderPtrs {
  const bf16* q;
  const bf16* dout;
  const float* probs;
  const float* dscores;
  int64_t slots;
};
// With last_dv, the last slot's value gradient goes there as bf16 rows of Hk d at last_dv_ld
// (Backend::SlotValueGradient) instead of to d_depth_v.
void depth_slot_backward(const AttentionShape& s, int64_t first, int64_t count,
                         std::span<const DepthReaderPtrs> readers, float* d_depth_k,
                         float* d_depth_v, bool accumulate, cudaStream_t stream,
                         bf16* last_dv = nullptr, int64_t last_dv_ld = 0);

// cross_entropy.cu. `workspace` holds lm_head_workspace_bytes(chunk_rows, vocab) bytes
// (moda/cuda_backend.hpp).
void lm_head_cross_entropy(Gemm& gemm, const bf16* x, const bf16* weight, const int32_t* targets,
                           float* ce, float* lse, bf16* dx, float* dweight, int64_t rows,
                           int64_t dim, int64_t vocab, float z_loss, float scale,
                           int64_t chunk_rows, void* workspace, cudaStream_t stream);

// adamw.cu
void adamw(float* master, const float* grad, float* m, float* v, bf16* weights, int64_t count,
           const AdamWArgs& args, cudaStream_t stream);
// `workspace` holds segment_sum_squares_workspace(segments.size()) bytes (moda/cuda_backend.hpp).
std::vector<double> segment_sum_squares(const float* values,
                                        std::span<const std::pair<int64_t, int64_t>> segments,
                                        void* workspace, cudaStream_t stream);

// cuda_backend.cu: dtype conversion for copy().
void convert(const void* src, DType src_type, void* dst, DType dst_type, int64_t n,
             cudaStream_t stream);

}  // namespace moda::cuda
