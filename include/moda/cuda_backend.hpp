// The CUDA backend (kernels/): bf16 storage, fp32 accumulation, cuBLASLt GEMMs. This header is
// plain C++ so that code built without nvcc can name the backend; CUDA types stay in kernels/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moda/backend.hpp"

namespace moda {

// Number of CUDA devices visible to this process; 0 when there is no driver or no GPU. Never
// throws.
int cuda_device_count();

struct CudaBackendOptions {
  // Upper bound of the LM head's scratch (fp32 logits + bf16 logit gradients of one chunk of
  // rows). Larger chunks re-read the weight gradient less often; tests shrink it to force chunks.
  size_t lm_head_workspace_bytes = size_t{1} << 30;
};

// A backend on the current CUDA device with its own stream. Throws when no GPU is usable.
std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options = {});

// The three GEMMs of a linear layer x[m, k] W[n, k]^T (forward, input gradient, weight gradient)
// timed with the algorithm the backend tunes to (median of 15 runs), with cuBLASLt's first
// heuristic choice and with the fastest of all its candidates.
struct GemmAlgoTiming {
  std::string op;
  double chosen_ms = 0;     // the backend's (tuned) choice
  int chosen = 0;           // its index among the heuristic's candidates
  double heuristic_ms = 0;  // the heuristic's first candidate
  double best_ms = 0;       // the fastest candidate
  int candidates = 0;
  double tflops = 0;  // of the chosen algorithm
};
std::vector<GemmAlgoTiming> cuda_time_gemm_algorithms(int64_t m, int64_t n, int64_t k);

}  // namespace moda
