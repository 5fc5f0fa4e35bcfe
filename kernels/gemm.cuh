// cuBLASLt GEMMs of the row-major linear layer y = x W^T and its two gradients. Plans (descriptors
// and the chosen algorithm) are cached per shape, dtype and alignment. The heuristic's first
// choice was measured up to 19% slower than its best candidate at 700M training shapes, so the
// first call of each plan times the candidates on the real operands and keeps the fastest.
#pragma once

#include <array>
#include <map>

#include "common.cuh"
#include "moda/cuda_backend.hpp"

namespace moda::cuda {

class Gemm {
 public:
  // Device memory it allocates (its workspace, autotuning copies) is counted in `counter`.
  Gemm(cudaStream_t stream, AllocationCounter& counter);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Row-major, all with bf16 operands and fp32 accumulation; `out_type` is the output's dtype
  // (CUDA_R_16BF or CUDA_R_32F) and `accumulate` adds to what the output holds.
  // y[m, n] (+)= x[m, k] W[n, k]^T
  void linear(void* y, cudaDataType_t out_type, const bf16* x, const bf16* w, int64_t m, int64_t n,
              int64_t k, bool accumulate);
  // dx[m, k] (+)= dy[m, n] W[n, k]
  void linear_dinput(void* dx, cudaDataType_t out_type, const bf16* dy, const bf16* w, int64_t m,
                     int64_t n, int64_t k, bool accumulate);
  // dW[n, k] += dy[m, n]^T x[m, k], fp32 dW.
  void linear_dweight(float* dw, const bf16* dy, const bf16* x, int64_t m, int64_t n, int64_t k);

  // Column-major cuBLAS semantics: C[rows, cols] (+)= op(A) op(B).
  struct Call {
    cublasOperation_t op_a, op_b;
    int64_t rows, cols, inner;
    const void* a;
    int64_t lda;
    const void* b;
    int64_t ldb;
    void* c;
    cudaDataType_t c_type;
    int64_t ldc;
    bool accumulate;
  };
  void run(const Call& call);
  // With the heuristic's candidate `candidate` (0 = its first choice) instead of the tuned one;
  // false when there is no such candidate or it refuses the problem.
  bool run_candidate(const Call& call, int candidate);
  int chosen(const Call& call) { return plan(call).choice; }
  static constexpr int kMaxAlgos = 8;
  static constexpr size_t kWorkspaceBytes = kCublasWorkspaceBytes;

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulHeuristicResult_t algos[kMaxAlgos];
    int count = 0;
    int choice = 0;
    bool tuned = false;
  };
  using Key = std::array<int64_t, 13>;
  Plan& plan(const Call& call);
  cublasStatus_t launch(const Call& call, const Plan& p, int candidate);
  void tune(const Call& call, Plan& p);

  cudaStream_t stream_;
  AllocationCounter& counter_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::map<Key, Plan> plans_;
};

}  // namespace moda::cuda
