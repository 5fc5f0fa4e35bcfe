#include "random_operands.cuh"

namespace moda::cuda {

namespace {

__global__ void fill_hashed(bf16* p, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 0x9E3779B1u ^ seed ^ static_cast<uint32_t>(i >> 32);
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    const float u = static_cast<float>(h & 0xFFFFFF) / 16777216.0f;  // [0, 1)
    p[i] = __float2bfloat16(2.0f * u - 1.0f);
  }
}

}  // namespace

DeviceBuffer::DeviceBuffer(size_t bytes) {
  if (bytes > 0) {
    MODA_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
    MODA_CUDA_CHECK(cudaMemset(ptr_, 0, bytes));
  }
}

DeviceBuffer::~DeviceBuffer() { cudaFree(ptr_); }

void fill_random_bf16(bf16* p, int64_t n, uint32_t seed, cudaStream_t stream) {
  if (n <= 0) return;
  fill_hashed<<<1024, 256, 0, stream>>>(p, n, seed);
  MODA_LAUNCH_CHECK();
}

std::unique_ptr<DeviceBuffer> random_buffer(size_t bytes, uint32_t seed, cudaStream_t stream) {
  auto buffer = std::make_unique<DeviceBuffer>(bytes);
  fill_random_bf16(buffer->as<bf16>(), static_cast<int64_t>(bytes / 2), seed, stream);
  return buffer;
}

}  // namespace moda::cuda
