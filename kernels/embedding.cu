// Token embedding: a gather of bf16 rows (forward) and a scatter-add of bf16 row gradients into
// the fp32 table gradient (backward). Rows sharing a token collide, so the backward adds with
// atomics: 16-byte vector atomics (sm_90) when the row allows, scalar ones otherwise. The order
// of the additions, hence the last bits of the result, varies between runs.
#include "ops.cuh"

namespace moda::cuda {

namespace {

constexpr int kThreads = 256;

template <int V>
__global__ void embedding_forward_kernel(const int32_t* tokens, const bf16* table, bf16* out,
                                         int64_t rows, int64_t dim) {
  const int64_t per_row = dim / V;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < rows * per_row;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / per_row, c = (i % per_row) * V;
    const bf16* src = table + static_cast<int64_t>(tokens[r]) * dim + c;
    bf16* dst = out + r * dim + c;
    if constexpr (V == 8) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      *dst = *src;
    }
  }
}

template <int V>
__global__ void embedding_backward_kernel(const int32_t* tokens, const bf16* dout, float* dtable,
                                          int64_t rows, int64_t dim) {
  const int64_t per_row = dim / V;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < rows * per_row;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / per_row, c = (i % per_row) * V;
    float g[V];
    load_vec<V>(dout + r * dim + c, g);
    float* dst = dtable + static_cast<int64_t>(tokens[r]) * dim + c;
    if constexpr (V == 8) {
      atomic_add4(dst, g[0], g[1], g[2], g[3]);
      atomic_add4(dst + 4, g[4], g[5], g[6], g[7]);
    } else {
      atomicAdd(dst, g[0]);
    }
  }
}

}  // namespace

void embedding_forward(const int32_t* tokens, const bf16* table, bf16* out, int64_t rows,
                       int64_t dim, cudaStream_t stream) {
  if (rows == 0) return;
  if (dim % 8 == 0 && aligned16(table) && aligned16(out)) {
    embedding_forward_kernel<8>
        <<<elementwise_grid(rows * dim / 8, kThreads), kThreads, 0, stream>>>(tokens, table, out,
                                                                              rows, dim);
  } else {
    embedding_forward_kernel<1><<<elementwise_grid(rows * dim, kThreads), kThreads, 0, stream>>>(
        tokens, table, out, rows, dim);
  }
  MODA_LAUNCH_CHECK();
}

void embedding_backward(const int32_t* tokens, const bf16* dout, float* dtable, int64_t rows,
                        int64_t dim, cudaStream_t stream) {
  if (rows == 0) return;
  if (dim % 8 == 0 && aligned16(dout) && aligned16(dtable)) {
    embedding_backward_kernel<8>
        <<<elementwise_grid(rows * dim / 8, kThreads), kThreads, 0, stream>>>(tokens, dout, dtable,
                                                                              rows, dim);
  } else {
    embedding_backward_kernel<1><<<elementwise_grid(rows * dim, kThreads), kThreads, 0, stream>>>(
        tokens, dout, dtable, rows, dim);
  }
  MODA_LAUNCH_CHECK();
}

}  // namespace moda::cuda
