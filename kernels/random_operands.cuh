// Device buffers of pseudo-random operands, for timing kernels on synthetic data (the GEMM
// candidates' timing of the [gpu_bench] tests, `moda bench attention`, the probes in tools/). The
// values are made on the device, so multi-gigabyte depth buffers cost no host time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "common.cuh"

namespace moda::cuda {

// `bytes` of device memory, zeroed.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
};

// n bf16 values uniform in [-1, 1) (scores of order one, as after QK-norm), hashed from the
// index and `seed`. An fp32 buffer filled with twice its count holds pairs of bf16 bit patterns:
// finite floats of modest size.
void fill_random_bf16(bf16* p, int64_t n, uint32_t seed, cudaStream_t stream);

// A buffer of `bytes` filled so (every byte, whatever type it is read as).
std::unique_ptr<DeviceBuffer> random_buffer(size_t bytes, uint32_t seed, cudaStream_t stream);

}  // namespace moda::cuda
