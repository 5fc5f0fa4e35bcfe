// RMSNorm and the two fused residual forms. A group of L lanes per row (a warp; 16 or 8 lanes for
// rows of at most 512 or 256 columns, which left half a warp idle at Table 6's 384): the sum of
// squares is a reduction over the group, and the row's second pass re-reads its inputs from L1/L2
// rather than DRAM. Rows move in 16-byte vectors when their width and addresses allow, element by
// element otherwise.
//
// add_then_norm rounds the sum to bf16 before normalizing it, so the forward normalizes exactly
// the tensor the backward sees. The weight gradient is a column sum over rows: each group of lanes
// keeps its own fp32 row of partial sums in shared memory, the block adds them up at the end and
// adds its total to dweight with one atomic per column. Blocks of rows too wide for all their
// groups' rows in shared memory have fewer warps.
#include <algorithm>
#include <initializer_list>

#include "ops.cuh"

namespace moda::cuda {

namespace {

constexpr int kWarps = 8;

// kChunks > 0: the row has at most L * V * kChunks columns and stays in registers between the
// two passes; kChunks = 0: any width, the second pass re-reads the row (from L1/L2).
template <int V, int kChunks, int L>
__global__ void __launch_bounds__(kWarps * 32)
    rmsnorm_forward_kernel(NormKind kind, const bf16* __restrict__ x,
                           const bf16* __restrict__ branch, const bf16* __restrict__ w, bf16* sum,
                           bf16* out, float* __restrict__ rstd, int64_t rows, int cols, float eps) {
  const int lane = threadIdx.x % L;
  const int64_t row = (blockIdx.x * int64_t{kWarps * 32} + threadIdx.x) / L;
  if (row >= rows) return;
  const bf16* xr = x + row * cols;
  const bf16* br = branch == nullptr ? nullptr : branch + row * cols;
  // The normalized input of one vector: x, the rounded sum x + branch, or branch.
  const auto normed = [&](int c, float(&v)[V]) {
    if (kind == NormKind::norm_then_add) {
      load_vec<V>(br + c, v);
    } else {
      load_vec<V>(xr + c, v);
      if (kind == NormKind::add_then_norm) {
        float b[V];
        load_vec<V>(br + c, b);
#pragma unroll
        for (int i = 0; i < V; ++i) v[i] = round_bf16(v[i] + b[i]);
      }
    }
  };
  const auto finish = [&](int c, const float(&v)[V], float r) {
    float wv[V], y[V];
    load_vec<V>(w + c, wv);
#pragma unroll
    for (int i = 0; i < V; ++i) y[i] = v[i] * r * wv[i];
    if (kind == NormKind::norm_then_add) {
      float xv[V];
      load_vec<V>(xr + c, xv);
#pragma unroll
      for (int i = 0; i < V; ++i) y[i] += xv[i];
    }
    store_vec<V>(out + row * cols + c, y);
  };
  constexpr int kCache = kChunks > 0 ? kChunks : 1;
  float cache[kCache][V];
  float ss = 0;
  if constexpr (kChunks > 0) {
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int c = (lane + L * k) * V;
      if (c < cols) {
        normed(c, cache[k]);
#pragma unroll
        for (int i = 0; i < V; ++i) ss += cache[k][i] * cache[k][i];
        if (kind == NormKind::add_then_norm) store_vec<V>(sum + row * cols + c, cache[k]);
      }
    }
  } else {
    for (int c = lane * V; c < cols; c += L * V) {
      normed(c, cache[0]);
#pragma unroll
      for (int i = 0; i < V; ++i) ss += cache[0][i] * cache[0][i];
      if (kind == NormKind::add_then_norm) store_vec<V>(sum + row * cols + c, cache[0]);
    }
  }
  const float r = rsqrtf(group_sum<L>(ss) / static_cast<float>(cols) + eps);
  if constexpr (kChunks > 0) {
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int c = (lane + L * k) * V;
      if (c < cols) finish(c, cache[k], r);
    }
  } else {
    for (int c = lane * V; c < cols; c += L * V) {
      normed(c, cache[0]);
      finish(c, cache[0], r);
    }
  }
  if (lane == 0) rstd[row] = r;
}

template <int V, int L>
__global__ void __launch_bounds__(kWarps * 32)
    rmsnorm_backward_kernel(const bf16* __restrict__ dy, const bf16* __restrict__ x,
                            const bf16* __restrict__ w, const float* __restrict__ rstd, bf16* dx,
                            float* dw, int64_t rows, int cols, bool accumulate) {
  extern __shared__ float partial[];  // [groups][cols]
  const int lane = threadIdx.x % L, group = threadIdx.x / L, groups = blockDim.x / L;
  float* mine = partial + group * cols;
  for (int c = lane; c < cols; c += L) mine[c] = 0.0f;
  for (int64_t row = blockIdx.x * int64_t{groups} + group; row < rows;
       row += int64_t{gridDim.x} * groups) {
    const bf16* dyr = dy + row * cols;
    const bf16* xr = x + row * cols;
    const float r = rstd[row];
    float dot = 0;
    for (int c = lane * V; c < cols; c += L * V) {
      float g[V], xv[V], wv[V];
      load_vec<V>(dyr + c, g);
      load_vec<V>(xr + c, xv);
      load_vec<V>(w + c, wv);
#pragma unroll
      for (int i = 0; i < V; ++i) dot += g[i] * wv[i] * xv[i];
    }
    const float coef = group_sum<L>(dot) / static_cast<float>(cols) * r * r;
    for (int c = lane * V; c < cols; c += L * V) {
      float g[V], xv[V], wv[V], out[V];
      load_vec<V>(dyr + c, g);
      load_vec<V>(xr + c, xv);
      load_vec<V>(w + c, wv);
      if (accumulate) {
        load_vec<V>(dx + row * cols + c, out);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) out[i] = 0.0f;
      }
      float part[V];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        out[i] += r * (g[i] * wv[i] - xv[i] * coef);
        part[i] = g[i] * xv[i] * r;
      }
      add_partial<V>(mine + c, part);
      store_vec<V>(dx + row * cols + c, out);
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    float total = 0;
    for (int k = 0; k < groups; ++k) total += partial[k * cols + c];
    atomicAdd(dw + c, total);
  }
}

bool vectorizable(int64_t cols, std::initializer_list<const void*> ptrs) {
  if (cols % 8 != 0) return false;
  for (const void* p : ptrs) {
    if (p != nullptr && !aligned16(p)) return false;
  }
  return true;
}

// Lanes per row: a warp, or 16 or 8 for rows that 16 or 8 lanes cover in four 8-value vectors.
int lanes_per_row(int cols, bool vector) {
  if (!vector) return 32;
  return cols <= 8 * 8 * 4 ? 8 : cols <= 16 * 8 * 4 ? 16 : 32;
}

// Warps per backward block: as many as kWarps whose groups' rows of partial sums fit in shared
// memory.
int backward_warps(int cols, int lanes) {
  const size_t limit = smem_per_block_limit();
  for (int warps = kWarps; warps >= 1; warps /= 2) {
    const size_t groups = static_cast<size_t>(warps * 32 / lanes);
    if (sizeof(float) * groups * static_cast<size_t>(cols) <= limit) return warps;
  }
  throw std::invalid_argument(concat("rmsnorm backward: rows of ", cols, " columns exceed the ",
                                     limit / sizeof(float),
                                     " fp32 partial sums one block can keep in shared memory"));
}

template <int V, int L>
void launch_backward(const bf16* dy, const bf16* x, const bf16* w, const float* rstd, bf16* dx,
                     float* dw, int64_t rows, int cols, bool accumulate, cudaStream_t stream) {
  const int warps = backward_warps(cols, L), groups = warps * 32 / L;
  const size_t smem = sizeof(float) * static_cast<size_t>(groups) * static_cast<size_t>(cols);
  auto kernel = rmsnorm_backward_kernel<V, L>;
  allow_smem(kernel, smem);
  const int blocks = resident_grid(kernel, warps * 32, smem, ceil_div(rows, groups));
  kernel<<<blocks, warps * 32, smem, stream>>>(dy, x, w, rstd, dx, dw, rows, cols, accumulate);
  MODA_LAUNCH_CHECK();
}

}  // namespace

void rmsnorm_forward(NormKind kind, const bf16* x, const bf16* branch, const bf16* weight,
                     bf16* sum, bf16* out, float* rstd, int64_t rows, int64_t cols, float eps,
                     cudaStream_t stream) {
  if (rows == 0) return;
  const int c = static_cast<int>(cols);
  const bool vector = vectorizable(cols, {x, branch, weight, sum, out});
  const int lanes = lanes_per_row(c, vector);
  auto kernel = rmsnorm_forward_kernel<1, 0, 32>;
  if (vector) {
    kernel = lanes == 8           ? rmsnorm_forward_kernel<8, 4, 8>
             : lanes == 16        ? rmsnorm_forward_kernel<8, 4, 16>
             : cols <= 32 * 8 * 4 ? rmsnorm_forward_kernel<8, 4, 32>
             : cols <= 32 * 8 * 8 ? rmsnorm_forward_kernel<8, 8, 32>
                                  : rmsnorm_forward_kernel<8, 0, 32>;
  }
  const int blocks = static_cast<int>(ceil_div(rows, kWarps * 32 / lanes));
  kernel<<<blocks, kWarps * 32, 0, stream>>>(kind, x, branch, weight, sum, out, rstd, rows, c, eps);
  MODA_LAUNCH_CHECK();
}

void rmsnorm_backward(const bf16* dout, const bf16* normed, const bf16* weight, const float* rstd,
                      bf16* din, float* dweight, int64_t rows, int64_t cols, bool accumulate,
                      cudaStream_t stream) {
  if (rows == 0) return;
  const int c = static_cast<int>(cols);
  if (!vectorizable(cols, {dout, normed, weight, din})) {
    launch_backward<1, 32>(dout, normed, weight, rstd, din, dweight, rows, c, accumulate, stream);
    return;
  }
  with_lanes(lanes_per_row(c, true), [&](auto lanes) {
    launch_backward<8, decltype(lanes)::value>(dout, normed, weight, rstd, din, dweight, rows, c,
                                               accumulate, stream);
  });
}

}  // namespace moda::cuda
