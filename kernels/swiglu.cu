// SwiGLU: out = silu(gate) * up, with gate and up the two halves of the MLP input row (row
// stride ld, which also holds the FFN depth-slot projections when MoDA has ffn_kv). Elementwise,
// one thread per 8 outputs (16-byte accesses) when the shapes allow.
#include "ops.cuh"

namespace moda::cuda {

namespace {

constexpr int kThreads = 256;

template <int V>
__global__ void swiglu_forward_kernel(const bf16* __restrict__ in, bf16* __restrict__ out,
                                      int64_t rows, int64_t hidden, int64_t ld) {
  const int64_t per_row = hidden / V;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < rows * per_row;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / per_row, c = (i % per_row) * V;
    float g[V], u[V], y[V];
    load_vec<V>(in + r * ld + c, g);
    load_vec<V>(in + r * ld + hidden + c, u);
#pragma unroll
    for (int k = 0; k < V; ++k) y[k] = g[k] / (1.0f + __expf(-g[k])) * u[k];
    store_vec<V>(out + r * hidden + c, y);
  }
}

template <int V>
__global__ void swiglu_backward_kernel(const bf16* __restrict__ dout, const bf16* __restrict__ in,
                                       bf16* __restrict__ din, int64_t rows, int64_t hidden,
                                       int64_t ld) {
  const int64_t per_row = hidden / V;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < rows * per_row;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / per_row, c = (i % per_row) * V;
    float g[V], u[V], dy[V], dg[V], du[V];
    load_vec<V>(in + r * ld + c, g);
    load_vec<V>(in + r * ld + hidden + c, u);
    load_vec<V>(dout + r * hidden + c, dy);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float sig = 1.0f / (1.0f + __expf(-g[k]));
      dg[k] = dy[k] * u[k] * sig * (1.0f + g[k] * (1.0f - sig));
      du[k] = dy[k] * g[k] * sig;
    }
    store_vec<V>(din + r * ld + c, dg);
    store_vec<V>(din + r * ld + hidden + c, du);
  }
}

bool vectorizable(int64_t hidden, int64_t ld, const void* a, const void* b, const void* c) {
  return hidden % 8 == 0 && ld % 8 == 0 && aligned16(a) && aligned16(b) &&
         (c == nullptr || aligned16(c));
}

}  // namespace

void swiglu_forward(const bf16* in, bf16* out, int64_t rows, int64_t hidden, int64_t ld,
                    cudaStream_t stream) {
  if (rows == 0 || hidden == 0) return;
  if (vectorizable(hidden, ld, in, out, nullptr)) {
    swiglu_forward_kernel<8>
        <<<elementwise_grid(rows * hidden / 8, kThreads), kThreads, 0, stream>>>(in, out, rows,
                                                                                 hidden, ld);
  } else {
    swiglu_forward_kernel<1><<<elementwise_grid(rows * hidden, kThreads), kThreads, 0, stream>>>(
        in, out, rows, hidden, ld);
  }
  MODA_LAUNCH_CHECK();
}

void swiglu_backward(const bf16* dout, const bf16* in, bf16* din, int64_t rows, int64_t hidden,
                     int64_t ld, cudaStream_t stream) {
  if (rows == 0 || hidden == 0) return;
  if (vectorizable(hidden, ld, dout, in, din)) {
    swiglu_backward_kernel<8>
        <<<elementwise_grid(rows * hidden / 8, kThreads), kThreads, 0, stream>>>(dout, in, din,
                                                                                 rows, hidden, ld);
  } else {
    swiglu_backward_kernel<1><<<elementwise_grid(rows * hidden, kThreads), kThreads, 0, stream>>>(
        dout, in, din, rows, hidden, ld);
  }
  MODA_LAUNCH_CHECK();
}

}  // namespace moda::cuda
