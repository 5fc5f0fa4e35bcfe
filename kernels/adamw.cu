// AdamW on fp32 master weights with the bf16 compute copy refreshed in the same pass, and the
// per-segment sums of squares that gradient clipping needs. Both are one pass over memory with
// 16-byte accesses where the range allows.
#include <cmath>
#include <vector>

#include "ops.cuh"

namespace moda::cuda {

namespace {

constexpr int kThreads = 256;

struct AdamConsts {
  float lr, b1, b2, decay, scale, eps, inv_bc1, inv_sqrt_bc2;
};

__device__ __forceinline__ void adam_step(const AdamConsts& k, float& p, float g, float& m,
                                          float& v) {
  g *= k.scale;
  m = k.b1 * m + (1.0f - k.b1) * g;
  v = k.b2 * v + (1.0f - k.b2) * g * g;
  const float update = (m * k.inv_bc1) / (sqrtf(v) * k.inv_sqrt_bc2 + k.eps);
  p = p * k.decay - k.lr * update;
}

__global__ void adamw_vec4_kernel(float4* __restrict__ master, const float4* __restrict__ grad,
                                  float4* __restrict__ m, float4* __restrict__ v,
                                  __nv_bfloat162* __restrict__ weights, int64_t n4, AdamConsts k) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n4;
       i += int64_t{gridDim.x} * blockDim.x) {
    float4 p = master[i], mm = m[i], vv = v[i];
    const float4 g = grad[i];
    adam_step(k, p.x, g.x, mm.x, vv.x);
    adam_step(k, p.y, g.y, mm.y, vv.y);
    adam_step(k, p.z, g.z, mm.z, vv.z);
    adam_step(k, p.w, g.w, mm.w, vv.w);
    master[i] = p;
    m[i] = mm;
    v[i] = vv;
    if (weights != nullptr) {
      weights[2 * i] = __floats2bfloat162_rn(p.x, p.y);
      weights[2 * i + 1] = __floats2bfloat162_rn(p.z, p.w);
    }
  }
}

__global__ void adamw_scalar_kernel(float* __restrict__ master, const float* __restrict__ grad,
                                    float* __restrict__ m, float* __restrict__ v,
                                    bf16* __restrict__ weights, int64_t n, AdamConsts k) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    float p = master[i], mm = m[i], vv = v[i];
    adam_step(k, p, grad[i], mm, vv);
    master[i] = p;
    m[i] = mm;
    v[i] = vv;
    if (weights != nullptr) weights[i] = __float2bfloat16(p);
  }
}

// Each block sums one chunk of one segment; block_start (size segments + 1) is the prefix sum of
// blocks per segment, so a block finds its segment by binary search.
constexpr int64_t kChunk = kThreads * 16;

__global__ void segment_sum_squares_kernel(const float* __restrict__ values,
                                           const int64_t* __restrict__ offsets,
                                           const int64_t* __restrict__ counts,
                                           const int64_t* __restrict__ block_start, int segments,
                                           double* __restrict__ out) {
  __shared__ double warp_sums[kThreads / 32];
  int lo = 0, hi = segments - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (block_start[mid] <= blockIdx.x) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int64_t begin = (blockIdx.x - block_start[lo]) * kChunk;
  const int64_t end = std::min(begin + kChunk, counts[lo]);
  const float* x = values + offsets[lo];
  float acc = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) acc += x[i] * x[i];
  double total = acc;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffffu, total, o);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = total;
  __syncthreads();
  if (threadIdx.x == 0) {
    double sum = 0;
    for (int w = 0; w < kThreads / 32; ++w) sum += warp_sums[w];
    atomicAdd(out + lo, sum);
  }
}

}  // namespace

void adamw(float* master, const float* grad, float* m, float* v, bf16* weights, int64_t count,
           const AdamWArgs& a, cudaStream_t stream) {
  if (count == 0) return;
  const double bc1 = 1.0 - std::pow(a.beta1, static_cast<double>(a.step));
  const double bc2 = 1.0 - std::pow(a.beta2, static_cast<double>(a.step));
  const AdamConsts k{
      static_cast<float>(a.lr),         static_cast<float>(a.beta1),
      static_cast<float>(a.beta2),      static_cast<float>(1.0 - a.lr * a.weight_decay),
      static_cast<float>(a.grad_scale), static_cast<float>(a.eps),
      static_cast<float>(1.0 / bc1),    static_cast<float>(1.0 / std::sqrt(bc2))};
  const bool vec = count % 4 == 0 && aligned16(master) && aligned16(grad) && aligned16(m) &&
                   aligned16(v) &&
                   (weights == nullptr || (reinterpret_cast<uintptr_t>(weights) & 7) == 0);
  if (vec) {
    adamw_vec4_kernel<<<elementwise_grid(count / 4, kThreads), kThreads, 0, stream>>>(
        reinterpret_cast<float4*>(master), reinterpret_cast<const float4*>(grad),
        reinterpret_cast<float4*>(m), reinterpret_cast<float4*>(v),
        reinterpret_cast<__nv_bfloat162*>(weights), count / 4, k);
  } else {
    adamw_scalar_kernel<<<elementwise_grid(count, kThreads), kThreads, 0, stream>>>(
        master, grad, m, v, weights, count, k);
  }
  MODA_LAUNCH_CHECK();
}

std::vector<double> segment_sum_squares(const float* values,
                                        std::span<const std::pair<int64_t, int64_t>> segments,
                                        void* workspace, cudaStream_t stream) {
  const size_t n = segments.size();
  std::vector<double> result(n, 0.0);
  if (n == 0) return result;
  // Host table: offsets, counts, block_start (n + 1); then the device sums follow it.
  std::vector<int64_t> table(3 * n + 1);
  int64_t blocks = 0;
  for (size_t i = 0; i < n; ++i) {
    table[i] = segments[i].first;
    table[n + i] = segments[i].second;
    table[2 * n + i] = blocks;
    blocks += ceil_div(segments[i].second, kChunk);
  }
  table[3 * n] = blocks;
  auto* dev_table = static_cast<int64_t*>(workspace);
  auto* sums = reinterpret_cast<double*>(dev_table + 3 * n + 1);
  MODA_CUDA_CHECK(cudaMemcpyAsync(dev_table, table.data(), sizeof(int64_t) * table.size(),
                                  cudaMemcpyHostToDevice, stream));
  MODA_CUDA_CHECK(cudaMemsetAsync(sums, 0, sizeof(double) * n, stream));
  if (blocks > 0) {
    segment_sum_squares_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        values, dev_table, dev_table + n, dev_table + 2 * n, static_cast<int>(n), sums);
    MODA_LAUNCH_CHECK();
  }
  MODA_CUDA_CHECK(
      cudaMemcpyAsync(result.data(), sums, sizeof(double) * n, cudaMemcpyDeviceToHost, stream));
  MODA_CUDA_CHECK(cudaStreamSynchronize(stream));
  return result;
}

}  // namespace moda::cuda
