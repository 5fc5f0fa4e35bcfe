// Shared by every kernel file: error checking that throws with file:line, bf16 vector helpers and
// warp reductions.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace moda::cuda {

using bf16 = __nv_bfloat16;

[[noreturn]] inline void throw_error(const char* expr, const char* file, int line,
                                     const char* detail) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + expr +
                           " failed: " + detail);
}

}  // namespace moda::cuda

#define MODA_CUDA_CHECK(expr)                                                              \
  do {                                                                                     \
    const cudaError_t moda_err_ = (expr);                                                  \
    if (moda_err_ != cudaSuccess) {                                                        \
      ::moda::cuda::throw_error(#expr, __FILE__, __LINE__, cudaGetErrorString(moda_err_)); \
    }                                                                                      \
  } while (0)

#define MODA_CUBLAS_CHECK(expr)                                                                \
  do {                                                                                         \
    const cublasStatus_t moda_st_ = (expr);                                                    \
    if (moda_st_ != CUBLAS_STATUS_SUCCESS) {                                                   \
      ::moda::cuda::throw_error(#expr, __FILE__, __LINE__, cublasLtGetStatusString(moda_st_)); \
    }                                                                                          \
  } while (0)

// After every launch: catches bad launch configurations at the call site.
#define MODA_LAUNCH_CHECK() MODA_CUDA_CHECK(cudaGetLastError())

namespace moda::cuda {

// Error messages without a formatting library (kernels/ links none of its own).
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Bytes of device memory a backend holds through cudaMalloc (buffers, workspaces, tables,
// autotuning copies) and the most it held at once: the trainer compares them with the
// prediction of moda/device_memory.hpp.
struct AllocationCounter {
  size_t current = 0, peak = 0;
  void add(size_t bytes) {
    current += bytes;
    peak = std::max(peak, current);
  }
  void remove(size_t bytes) { current -= bytes; }
};

// A second stream for work that may run beside the caller's stream: fork() makes it wait for
// what the caller queued so far, join() makes the caller wait for what was queued on it. At the
// greatest priority the blocks of its kernels are started before those of kernels already waiting
// on other streams.
class SideStream {
 public:
  explicit SideStream(bool greatest_priority = false) {
    int least = 0, greatest = 0;
    MODA_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    MODA_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking,
                                                 greatest_priority ? greatest : least));
    MODA_CUDA_CHECK(cudaEventCreateWithFlags(&forked_, cudaEventDisableTiming));
    MODA_CUDA_CHECK(cudaEventCreateWithFlags(&joined_, cudaEventDisableTiming));
  }
  ~SideStream() {
    cudaStreamSynchronize(stream_);
    cudaEventDestroy(forked_);
    cudaEventDestroy(joined_);
    cudaStreamDestroy(stream_);
  }
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;

  cudaStream_t fork(cudaStream_t caller) const {
    MODA_CUDA_CHECK(cudaEventRecord(forked_, caller));
    MODA_CUDA_CHECK(cudaStreamWaitEvent(stream_, forked_));
    return stream_;
  }
  void join(cudaStream_t caller) const {
    MODA_CUDA_CHECK(cudaEventRecord(joined_, stream_));
    MODA_CUDA_CHECK(cudaStreamWaitEvent(caller, joined_));
  }

 private:
  cudaStream_t stream_ = nullptr;
  cudaEvent_t forked_ = nullptr, joined_ = nullptr;
};

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Blocks of a grid-stride elementwise loop over `work` items (capped; the loop covers the rest).
inline int elementwise_grid(int64_t work, int threads) {
  return static_cast<int>(
      std::min<int64_t>(std::max<int64_t>(ceil_div(work, threads), 1), int64_t{1} << 16));
}

// compute() on the current device the first time it is asked there, its result kept for the
// process: device attributes, and launch attributes and layouts that depend only on the device. A
// process may drive cards of different kinds (a backend each), so the cache is per device. One
// cache per call site (each lambda its own instantiation).
template <class F>
std::invoke_result_t<F> once_per_device(F&& compute) {
  static std::mutex mutex;
  static std::map<int, std::invoke_result_t<F>> by_device;
  int device = 0;
  MODA_CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = by_device.find(device); it != by_device.end()) return it->second;
  return by_device.emplace(device, compute()).first->second;
}

// An attribute of the current device.
inline int device_attribute(cudaDeviceAttr attribute) {
  int device = 0, value = 0;
  MODA_CUDA_CHECK(cudaGetDevice(&device));
  MODA_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}

// Multiprocessors of the current device.
inline int sm_count() {
  return once_per_device([] { return device_attribute(cudaDevAttrMultiProcessorCount); });
}

// Peak memory bandwidth of the current device in TB/s, from its memory clock and bus width (two
// transfers a clock): 3.35 on the H100 SXM, 4.8 on the H200.
inline double peak_memory_tb_per_s() {
  return once_per_device([] {
    const double clock_khz = device_attribute(cudaDevAttrMemoryClockRate);
    const double bus_bits = device_attribute(cudaDevAttrGlobalMemoryBusWidth);
    return 2.0 * clock_khz * 1e3 * bus_bits / 8 / 1e12;
  });
}

// The most dynamic shared memory one block may opt into on the current device, in bytes.
inline size_t smem_per_block_limit() {
  return once_per_device([] {
    return static_cast<size_t>(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
  });
}

// Calls f(std::integral_constant<int, L>{}) with L = lanes, one of 8, 16 and 32: the row kernels'
// lanes per row as a template argument.
template <class F>
void with_lanes(int lanes, F&& f) {
  switch (lanes) {
    case 8:
      return f(std::integral_constant<int, 8>{});
    case 16:
      return f(std::integral_constant<int, 16>{});
    case 32:
      return f(std::integral_constant<int, 32>{});
    default:
      throw std::invalid_argument(
          concat("row kernels take 8, 16 or 32 lanes per row, not ", lanes));
  }
}

// Grid size for a grid-stride loop over `blocks` blocks' worth of work of `kernel`: enough
// resident blocks to fill every multiprocessor, never more than the work needs.
template <class Kernel>
int resident_grid(Kernel kernel, int threads, size_t smem, int64_t blocks) {
  int per_sm = 0;
  MODA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  if (per_sm == 0) throw std::runtime_error("kernel does not fit on a multiprocessor");
  return static_cast<int>(std::min<int64_t>(blocks, int64_t{per_sm} * sm_count()));
}

// Raises a kernel's dynamic shared memory limit when it needs more than the default 48 KiB.
template <class Kernel>
void allow_smem(Kernel kernel, size_t smem) {
  if (smem > 48 * 1024) {
    MODA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)));
  }
}

// ---- bf16 vectors: 8 bf16 = one 16-byte access ----

// 8 bf16 packed in 16 bytes -> 8 floats (kept packed in registers until used, this halves them).
__device__ __forceinline__ void unpack8(const uint4& raw, float (&out)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

__device__ __forceinline__ void load8(const bf16* p, float (&out)[8]) {
  unpack8(*reinterpret_cast<const uint4*>(p), out);
}

__device__ __forceinline__ void store8(bf16* p, const float (&in)[8]) {
  uint4 raw;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(in[2 * i], in[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// Loads/stores V consecutive elements (V = 8: one 16-byte access; V = 1: scalar fallback).
template <int V>
__device__ __forceinline__ void load_vec(const bf16* p, float (&out)[V]) {
  if constexpr (V == 8) {
    load8(p, out);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = __bfloat162float(p[i]);
  }
}

template <int V>
__device__ __forceinline__ void store_vec(bf16* p, const float (&in)[V]) {
  if constexpr (V == 8) {
    store8(p, in);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) p[i] = __float2bfloat16(in[i]);
  }
}

// fp32: V = 2 and multiples of 4 take 8- and 16-byte accesses (p aligned to them), others scalar.
template <int V>
__device__ __forceinline__ void load_vec(const float* p, float (&out)[V]) {
  if constexpr (V == 2) {
    const float2 f = *reinterpret_cast<const float2*>(p);
    out[0] = f.x;
    out[1] = f.y;
  } else if constexpr (V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V; i += 4) {
      const float4 f = *reinterpret_cast<const float4*>(p + i);
      out[i] = f.x;
      out[i + 1] = f.y;
      out[i + 2] = f.z;
      out[i + 3] = f.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = p[i];
  }
}

template <int V>
__device__ __forceinline__ void store_vec(float* p, const float (&in)[V]) {
  if constexpr (V == 2) {
    *reinterpret_cast<float2*>(p) = make_float2(in[0], in[1]);
  } else if constexpr (V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V; i += 4) {
      *reinterpret_cast<float4*>(p + i) = make_float4(in[i], in[i + 1], in[i + 2], in[i + 3]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) p[i] = in[i];
  }
}

// p[0..V) += v, 16 bytes at a time when V = 8 (p 32-byte aligned). For per-warp partial sums in
// shared memory: lanes 8 floats apart then collide two ways per bank instead of eight.
template <int V>
__device__ __forceinline__ void add_partial(float* p, const float (&v)[V]) {
  if constexpr (V == 8) {
    float4* q = reinterpret_cast<float4*>(p);
    float4 a = q[0], b = q[1];
    a.x += v[0];
    a.y += v[1];
    a.z += v[2];
    a.w += v[3];
    b.x += v[4];
    b.y += v[5];
    b.z += v[6];
    b.w += v[7];
    q[0] = a;
    q[1] = b;
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) p[i] += v[i];
  }
}

// Rounds to bf16 and back: what a value becomes once stored as an activation.
__device__ __forceinline__ float round_bf16(float x) {
  return __bfloat162float(__float2bfloat16(x));
}

// ---- vector atomics: one 8/16-byte reduction on sm_90, scalar ones before it ----

__device__ __forceinline__ void atomic_add2(float* p, float a, float b) {
#if __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(a, b));
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

__device__ __forceinline__ void atomic_add4(float* p, float a, float b, float c, float d) {
#if __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float4*>(p), make_float4(a, b, c, d));
#else
  atomic_add2(p, a, b);
  atomic_add2(p + 2, c, d);
#endif
}

// ---- warp reductions (every lane gets the result) ----

// Sum over the L lanes of a row's group (contiguous, L a power of two up to 32); only the group's
// lanes take part, so groups whose row is past the end may leave early.
template <int L>
__device__ __forceinline__ float group_sum(float x) {
  unsigned mask = 0xffffffffu;
  if constexpr (L < 32) mask = ((1u << L) - 1u) << (threadIdx.x % 32 / L * L);
#pragma unroll
  for (int o = L / 2; o > 0; o >>= 1) x += __shfl_xor_sync(mask, x, o);
  return x;
}

__device__ __forceinline__ float warp_sum(float x) { return group_sum<32>(x); }

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Two sums at once: the shuffles of both interleave.
__device__ __forceinline__ void warp_sum2(float& a, float& b) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, o);
    b += __shfl_xor_sync(0xffffffffu, b, o);
  }
}

}  // namespace moda::cuda
