// LM head + softmax cross-entropy + z-loss, chunked over rows so that only one chunk's logits
// exist: per chunk of rows,
//   1. logits[rc, V] = x W^T                      (cuBLASLt, fp32 output: bf16 logits would
//                                                  shift the log-sum-exp by up to ~0.1 nats)
//   2. one block per row: lse, ce and, when training, the logit gradient
//        g = softmax * scale * (1 + 2 z lse) - scale * onehot(target)   (bf16)
//   3. dx[rc, D] = g W  and  dW += g^T x          (cuBLASLt, fp32 dW)
// The chunk is as many rows as the workspace budget allows, so dW is read and written once per
// chunk; at V = 100352 a 1 GiB budget holds 1664 rows.
#include <cmath>

#include "ops.cuh"

namespace moda::cuda {

namespace {

constexpr int kThreads = 512;

// Online (max, sum of exp) pair: merging two keeps sum relative to the larger max.
struct MaxSum {
  float m, s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.0f};
  return {m, a.s * __expf(a.m - m) + b.s * __expf(b.m - m)};
}

__device__ __forceinline__ void add(MaxSum& acc, float x) {
  if (x > acc.m) {
    acc.s = acc.s * __expf(acc.m - x) + 1.0f;
    acc.m = x;
  } else {
    acc.s += __expf(x - acc.m);
  }
}

template <int V>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_rows(const float* __restrict__ logits, int64_t vocab,
                       const int32_t* __restrict__ targets, float* __restrict__ ce,
                       float* __restrict__ lse, bf16* __restrict__ dlogits, float z_loss,
                       float scale) {
  __shared__ MaxSum warp_acc[kThreads / 32];
  __shared__ float row_lse;
  const int64_t r = blockIdx.x;
  const float* row = logits + r * vocab;
  MaxSum acc{-INFINITY, 0.0f};
  for (int64_t c = threadIdx.x * int64_t{V}; c < vocab; c += kThreads * V) {
    float x[V];
    load_vec<V>(row + c, x);
#pragma unroll
    for (int i = 0; i < V; ++i) add(acc, x[i]);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    acc = merge(acc,
                {__shfl_xor_sync(0xffffffffu, acc.m, o), __shfl_xor_sync(0xffffffffu, acc.s, o)});
  }
  if (threadIdx.x % 32 == 0) warp_acc[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    MaxSum total = warp_acc[0];
    for (int w = 1; w < kThreads / 32; ++w) total = merge(total, warp_acc[w]);
    const float l = total.m + logf(total.s);
    const int32_t t = targets[r];
    row_lse = l;
    lse[r] = l;
    ce[r] = l - row[t];
  }
  if (dlogits == nullptr) return;
  __syncthreads();
  const float l = row_lse;
  const float coef = scale * (1.0f + 2.0f * z_loss * l);
  const int64_t target = targets[r];
  bf16* out = dlogits + r * vocab;
  for (int64_t c = threadIdx.x * int64_t{V}; c < vocab; c += kThreads * V) {
    float x[V];
    load_vec<V>(row + c, x);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      x[i] = __expf(x[i] - l) * coef - (c + i == target ? scale : 0.0f);
    }
    if constexpr (V == 8) {
      store8(out + c, x);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) out[c + i] = __float2bfloat16(x[i]);
    }
  }
}

}  // namespace

void lm_head_cross_entropy(Gemm& gemm, const bf16* x, const bf16* weight, const int32_t* targets,
                           float* ce, float* lse, bf16* dx, float* dweight, int64_t rows,
                           int64_t dim, int64_t vocab, float z_loss, float scale,
                           int64_t chunk_rows, void* workspace, cudaStream_t stream) {
  float* logits = static_cast<float*>(workspace);
  const size_t logits_bytes = static_cast<size_t>(chunk_rows * vocab) * sizeof(float);
  bf16* dlogits = dx == nullptr ? nullptr
                                : reinterpret_cast<bf16*>(static_cast<char*>(workspace) +
                                                          (logits_bytes + 255) / 256 * 256);
  // 8-wide accesses need 8 | vocab: every row then starts 32-byte (fp32) / 16-byte (bf16) aligned.
  const bool vec = vocab % 8 == 0;
  for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
    const int64_t n = std::min(chunk_rows, rows - r0);
    gemm.linear(logits, CUDA_R_32F, x + r0 * dim, weight, n, vocab, dim, false);
    const auto kernel = vec ? cross_entropy_rows<8> : cross_entropy_rows<1>;
    kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(logits, vocab, targets + r0, ce + r0,
                                                              lse + r0, dlogits, z_loss, scale);
    MODA_LAUNCH_CHECK();
    if (dx != nullptr) {
      gemm.linear_dinput(dx + r0 * dim, CUDA_R_16BF, dlogits, weight, n, vocab, dim, false);
      gemm.linear_dweight(dweight, dlogits, x + r0 * dim, n, vocab, dim);
    }
  }
}

}  // namespace moda::cuda
