// Medians of CUDA-event timings, for the timing code that runs kernels on synthetic operands (the
// GEMM timings of the [gpu_bench] tests, `moda bench attention`). The GEMM autotuner keeps its own
// loop: it sums single timings of several candidates in turn.
#pragma once

#include <algorithm>
#include <utility>
#include <vector>

#include "common.cuh"

namespace moda::cuda {

// The median of `ms` (the mean of the middle two for an even count); ms must not be empty.
inline double median(std::vector<float> ms) {
  std::sort(ms.begin(), ms.end());
  const size_t n = ms.size();
  return n % 2 == 1 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
}

// The median time in ms of `reps` runs of launch() on `stream`, each between two events and
// waited for before the next; warm-up runs are the caller's.
template <typename Launch>
double median_event_ms(cudaStream_t stream, int reps, Launch&& launch) {
  cudaEvent_t start = nullptr, stop = nullptr;
  MODA_CUDA_CHECK(cudaEventCreate(&start));
  MODA_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms(static_cast<size_t>(reps));
  for (float& t : ms) {
    MODA_CUDA_CHECK(cudaEventRecord(start, stream));
    launch();
    MODA_CUDA_CHECK(cudaEventRecord(stop, stream));
    MODA_CUDA_CHECK(cudaEventSynchronize(stop));
    MODA_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return median(std::move(ms));
}

}  // namespace moda::cuda
