// Timing of the MoDA attention kernels on synthetic operands (`moda bench attention`): CUDA
// events around each call, medians over repetitions. Operands are filled on the device with
// hashed pseudo-random values, so multi-gigabyte depth buffers cost no host time.
#include <algorithm>
#include <vector>

#include "moda/cuda_backend.hpp"
#include "ops.cuh"

namespace moda {

using cuda::bf16;

namespace {

__global__ void fill_hashed(bf16* p, int64_t n, uint32_t seed, float amplitude) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 0x9E3779B1u ^ seed ^ static_cast<uint32_t>(i >> 32);
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    const float u = static_cast<float>(h & 0xFFFFFF) / 16777216.0f;  // [0, 1)
    p[i] = __float2bfloat16((2.0f * u - 1.0f) * amplitude);
  }
}

struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(size_t bytes) {
    if (bytes > 0) {
      MODA_CUDA_CHECK(cudaMalloc(&ptr, bytes));
      MODA_CUDA_CHECK(cudaMemset(ptr, 0, bytes));
    }
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr);
  }
};

double median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

AttentionTiming cuda_time_attention(const AttentionShape& shape, int reps) {
  if (reps < 1) throw std::invalid_argument("cuda_time_attention: reps must be at least 1");
  const int64_t rows = shape.batch * shape.seq_len;
  const int64_t qn = rows * shape.q_heads * shape.head_dim;
  const int64_t kn = rows * shape.kv_heads * shape.head_dim;
  AttentionShape s = shape;
  s.slot_stride = kn;  // slot-major, no gaps: the model's layout
  const int64_t depth_n = s.slots * kn;
  DeviceBuffer q(qn * 2), k(kn * 2), v(kn * 2), out(qn * 2), dout(qn * 2);
  DeviceBuffer lse(rows * shape.q_heads * 4);
  DeviceBuffer dq(qn * 4), dk(kn * 4), dv(kn * 4);
  DeviceBuffer depth_k(depth_n * 2), depth_v(depth_n * 2), d_depth_k(depth_n * 4),
      d_depth_v(depth_n * 4);
  const int64_t work =
      std::max(moda::attention_forward_workspace(s), moda::attention_backward_workspace(s));
  DeviceBuffer workspace(std::max<int64_t>(work, 1) * 4);
  cudaStream_t stream = nullptr;
  MODA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  uint32_t seed = 1;
  // Amplitudes give scores of order one, as after QK-norm.
  for (const auto& [buf, n, amp] : {std::tuple{&q, qn, 1.0f},
                                    {&k, kn, 1.0f},
                                    {&v, kn, 1.0f},
                                    {&dout, qn, 1.0f},
                                    {&depth_k, depth_n, 1.0f},
                                    {&depth_v, depth_n, 1.0f}}) {
    if (n > 0) fill_hashed<<<1024, 256, 0, stream>>>(buf->as<bf16>(), n, seed++, amp);
  }
  MODA_LAUNCH_CHECK();
  cudaEvent_t start = nullptr, mid = nullptr, stop = nullptr;
  MODA_CUDA_CHECK(cudaEventCreate(&start));
  MODA_CUDA_CHECK(cudaEventCreate(&mid));
  MODA_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> fwd, bwd;
  for (int i = 0; i <= reps; ++i) {  // the first round warms up and is not counted
    MODA_CUDA_CHECK(cudaEventRecord(start, stream));
    cuda::attention_forward(s, q.as<bf16>(), k.as<bf16>(), v.as<bf16>(), depth_k.as<bf16>(),
                            depth_v.as<bf16>(), out.as<bf16>(), lse.as<float>(),
                            workspace.as<float>(), stream);
    MODA_CUDA_CHECK(cudaEventRecord(mid, stream));
    cuda::attention_backward(s, dout.as<bf16>(), q.as<bf16>(), k.as<bf16>(), v.as<bf16>(),
                             depth_k.as<bf16>(), depth_v.as<bf16>(), out.as<bf16>(),
                             lse.as<float>(), dq.as<float>(), dk.as<float>(), dv.as<float>(),
                             d_depth_k.as<float>(), d_depth_v.as<float>(), workspace.as<float>(),
                             stream);
    MODA_CUDA_CHECK(cudaEventRecord(stop, stream));
    MODA_CUDA_CHECK(cudaEventSynchronize(stop));
    float f = 0, b = 0;
    MODA_CUDA_CHECK(cudaEventElapsedTime(&f, start, mid));
    MODA_CUDA_CHECK(cudaEventElapsedTime(&b, mid, stop));
    if (i > 0) {
      fwd.push_back(f);
      bwd.push_back(b);
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(mid);
  cudaEventDestroy(stop);
  cudaStreamDestroy(stream);
  std::vector<float> total(fwd.size());
  for (size_t i = 0; i < fwd.size(); ++i) total[i] = fwd[i] + bwd[i];
  return {median(fwd), median(bwd), median(total)};
}

}  // namespace moda
