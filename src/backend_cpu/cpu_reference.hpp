// Reference algorithms of the CPU backend that are larger than a loop: MoDA attention and the
// LM head with cross-entropy. Free function templates over raw pointers (float and double).
#pragma once

#include <cstdint>
#include <span>

#include "moda/backend.hpp"

namespace moda {

// C[M, N] (+)= A[M, K] B[K, N], row-major.
template <class T>
void gemm_cpu(const T* a, const T* b, T* c, int64_t m, int64_t n, int64_t k, bool accumulate);
// out[cols, rows] = in[rows, cols]^T
template <class T>
void transpose_cpu(const T* in, T* out, int64_t rows, int64_t cols);

template <class T>
void attention_forward_cpu(const AttentionShape& shape, const T* q, const T* k, const T* v,
                           const T* depth_k, const T* depth_v, T* out, T* lse);
template <class T>
void attention_backward_cpu(const AttentionShape& shape, const T* dout, const T* q, const T* k,
                            const T* v, const T* depth_k, const T* depth_v, const T* out,
                            const T* lse, T* dq, T* dk, T* dv, T* depth_probs, T* depth_dscores);
// Backend::DepthReader as typed pointers.
template <class T>
struct DepthReaderView {
  const T *q, *dout, *probs, *dscores;
  int64_t slots;
};
template <class T>
void depth_slot_backward_cpu(const AttentionShape& shape, int64_t first, int64_t count,
                             std::span<const DepthReaderView<T>> readers, T* d_depth_k,
                             T* d_depth_v, bool accumulate);

// Cross-entropy over logits = x W^T, one row at a time (no [rows, vocab] tensor kept). When dx
// is non-null, writes dx and adds into dweight the gradient of
// scale * sum_r (ce[r] + z_loss * lse[r]^2).
template <class T>
void lm_head_cross_entropy_cpu(const T* x, const T* weight, const int32_t* targets, T* ce, T* lse,
                               T* dx, T* dweight, int64_t rows, int64_t dim, int64_t vocab,
                               double z_loss, double scale);

}  // namespace moda
