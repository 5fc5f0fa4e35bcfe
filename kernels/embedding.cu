// Token embedding: a gather of bf16 rows (forward) and a scatter-add of bf16 row gradients into
// the fp32 table gradient (backward). Rows sharing a token collide, so the backward adds with
// atomics: 16-byte vector atomics (sm_90) when the row allows, scalar ones otherwise. The order
// of the additions, hence the last bits of the result, varies between runs.
//
// At the 700M shape (16384 rows of 1024) a first version, one thread per 8 columns issuing two
// 16-byte reductions, reached 64% of the copy bandwidth by bytes; its real DRAM traffic (dout,
// plus each touched table row read and written back once: ~150 MB) ran at ~1.7 TB/s, so the
// limit was the L2's atomic work rather than DRAM. Its lanes sat 32 bytes apart, so a warp-wide
// reduction touched 32 sectors with 16 bytes each and every 32-byte sector of the table was
// reduced twice, by two instructions. The row kernel gives lane j the columns [4j, 4j + 4) of each
// 128-column chunk: a warp-wide 16-byte reduction covers 512 contiguous bytes, so each sector gets
// one full-width reduction (half the L2 atomic operations for the same bytes), and a lane issues
// all its loads of the row (up to 8) before its first reduction instead of one at a time.
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

// 4 bf16 (one 8-byte load) as floats.
__device__ __forceinline__ void load4(const bf16* p, float (&out)[4]) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
  const float2 a = __bfloat1622float2(h[0]), b = __bfloat1622float2(h[1]);
  out[0] = a.x;
  out[1] = a.y;
  out[2] = b.x;
  out[3] = b.y;
}

constexpr int kRowWarps = kThreads / 32;
constexpr int kChunk = 128;  // columns a warp covers with one 4-wide access per lane
constexpr int kChunks = 8;   // chunks whose loads a lane issues before reducing: D = 1024 at once

// One warp per row of dout; needs dim % 4 == 0, dout 8-byte and dtable 16-byte aligned.
__global__ void __launch_bounds__(kThreads)
    embedding_backward_rows_kernel(const int32_t* __restrict__ tokens,
                                   const bf16* __restrict__ dout, float* __restrict__ dtable,
                                   int64_t rows, int64_t dim) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t stride = int64_t{gridDim.x} * kRowWarps;
  for (int64_t r = blockIdx.x * int64_t{kRowWarps} + threadIdx.x / 32; r < rows; r += stride) {
    const bf16* src = dout + r * dim;
    float* dst = dtable + static_cast<int64_t>(tokens[r]) * dim;
    for (int64_t c0 = lane * 4; c0 < dim; c0 += kChunks * kChunk) {
      float g[kChunks][4] = {};
#pragma unroll
      for (int i = 0; i < kChunks; ++i) {
        if (c0 + i * kChunk < dim) load4(src + c0 + i * kChunk, g[i]);
      }
#pragma unroll
      for (int i = 0; i < kChunks; ++i) {
        if (c0 + i * kChunk < dim)
          atomic_add4(dst + c0 + i * kChunk, g[i][0], g[i][1], g[i][2], g[i][3]);
      }
    }
  }
}

// Any width and alignment: one thread per element.
__global__ void embedding_backward_scalar_kernel(const int32_t* tokens, const bf16* dout,
                                                 float* dtable, int64_t rows, int64_t dim) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < rows * dim;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / dim, c = i % dim;
    atomicAdd(dtable + static_cast<int64_t>(tokens[r]) * dim + c, __bfloat162float(dout[i]));
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
  const bool aligned8 = (reinterpret_cast<uintptr_t>(dout) & 7) == 0;
  if (dim % 4 == 0 && aligned8 && aligned16(dtable)) {
    embedding_backward_rows_kernel<<<elementwise_grid(rows, kRowWarps), kThreads, 0, stream>>>(
        tokens, dout, dtable, rows, dim);
  } else {
    embedding_backward_scalar_kernel<<<elementwise_grid(rows * dim, kThreads), kThreads, 0,
                                       stream>>>(tokens, dout, dtable, rows, dim);
  }
  MODA_LAUNCH_CHECK();
}

}  // namespace moda::cuda
