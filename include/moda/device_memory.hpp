// Device memory of a training run on the CUDA backend: a prediction counted from the buffers the
// code allocates, the check before step 1 that the run fits, and the report after it; the host
// backend's check against the machine's available memory.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "moda/backend.hpp"
#include "moda/config.hpp"

namespace moda {

// What the process holds beyond the backend's own allocations: the CUDA context, kernel images,
// cuBLASLt's handle and cudaMalloc's rounding of each allocation to 2 MiB pages. An estimate;
// the trainer's memory line after step 1 shows the measured value (device used - allocated).
inline constexpr int64_t kCudaContextBytes = int64_t{512} << 20;
// Of that, what still comes after the trainer's check (kernel images loaded at their first
// launch, the rounding of the allocations to come): kept free on top of the allocations.
inline constexpr int64_t kFitSlackBytes = int64_t{256} << 20;

struct CudaMemoryPrediction {
  int64_t parameters = 0;        // flat fp32 master, gradients, Adam m and v + bf16 weights
  int64_t activations = 0;       // the activation arena (one allocation per buffer role)
  int64_t rope = 0;              // fp32 cos and sin tables
  int64_t cublas_workspace = 0;  // cuBLASLt's
  int64_t op_workspace = 0;      // grow-only scratch: LM-head chunk, attention, grad-norm table
  int64_t gemm_tuning = 0;       // copy of the largest accumulating GEMM output while autotuning
  int64_t context = 0;           // kCudaContextBytes
  int64_t workspaces() const { return rope + cublas_workspace + op_workspace + gemm_tuning; }
  // The peak of the backend's allocation counter (the autotuning copy lives only in step 1).
  int64_t allocated() const { return parameters + activations + workspaces(); }
  int64_t total() const { return allocated() + context; }
};

// For micro-batches of [micro_batch, seq_len] with the flat buffers split into `shards`
// (data-parallel ranks), on the CUDA backend with its default options.
CudaMemoryPrediction predict_cuda_memory(const Config& config, int64_t micro_batch, int64_t seq_len,
                                         int64_t shards);

// Empty when the run of `config` on `shards` ranks fits the device as `device` reports it (with
// the backend's own allocations so far in device.allocated); otherwise the error: the predicted
// peak and its parts, the free memory, and the largest micro-batch that fits, if any.
std::string memory_fit_error(const Config& config, int64_t shards, const DeviceMemory& device);

// The host backend's counterpart: empty when plan_memory's total for one rank's run (all
// float32) fits `available` bytes (0: unknown, nothing checked); otherwise the error with the
// plan, the available memory and the largest micro-batch that fits, if any. The plan counts the
// model's buffers, not the process around them (on the build machine a run of a 3.33 GiB plan
// peaked at 3.72 GiB resident), so a refused run would not have fit.
std::string host_memory_fit_error(const Config& config, int64_t shards, int64_t available);
// /proc/meminfo's MemAvailable (what the kernel says can be taken without swapping), 0 where
// unknown.
int64_t host_available_bytes();

// The trainer's check before its large allocations: throws std::runtime_error with
// memory_fit_error's text when the run cannot fit, else returns the prediction. Host backends
// (device_memory().total == 0) are checked by host_memory_fit_error instead: nullopt.
std::optional<CudaMemoryPrediction> check_memory_fit(const Config& config, const Backend& backend,
                                                     int64_t shards);

// "memory: predicted A GiB, allocated peak B GiB (...), device used C GiB (cudaMemGetInfo...)".
std::string memory_report(const CudaMemoryPrediction& predicted, const DeviceMemory& device);

}  // namespace moda
