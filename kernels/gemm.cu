// cuBLASLt for every GEMM of the model. A row-major [r, c] matrix is a column-major [c, r] one, so
// each row-major product is issued as its transpose:
//   y  = x W^T   ->  y^T  = W_cm^T x_cm     (A = W, op T; B = x, op N)   "TN", the fastest form
//   dx = dy W    ->  dx^T = W_cm dy_cm      (A = W, op N; B = dy, op N)
//   dW = dy^T x  ->  dW^T = x_cm dy_cm^T    (A = x, op N; B = dy, op T)
// where M_cm is the column-major view of a row-major M's storage. Operands are bf16 with fp32
// compute; outputs bf16 (activations) or fp32 (weight gradients, logits).
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "event_timing.cuh"
#include "gemm.cuh"
#include "moda/cuda_backend.hpp"
#include "random_operands.cuh"

namespace moda::cuda {

namespace {

// Largest power of two (up to 256) dividing the address: what cuBLASLt may assume of a pointer.
int64_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  int64_t align = 256;
  while (align > 1 && (a % static_cast<uintptr_t>(align)) != 0) align /= 2;
  return align;
}

}  // namespace

Gemm::Gemm(cudaStream_t stream, AllocationCounter& counter) : stream_(stream), counter_(counter) {
  MODA_CUBLAS_CHECK(cublasLtCreate(&handle_));
  MODA_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
  counter_.add(kWorkspaceBytes);
}

Gemm::~Gemm() {
  for (auto& [key, p] : plans_) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
  }
  cudaFree(workspace_);
  counter_.remove(kWorkspaceBytes);
  cublasLtDestroy(handle_);
}

Gemm::Plan& Gemm::plan(const Call& call) {
  const Key key{call.op_a,
                call.op_b,
                call.rows,
                call.cols,
                call.inner,
                call.lda,
                call.ldb,
                call.ldc,
                call.c_type,
                call.accumulate,
                alignment_of(call.a),
                alignment_of(call.b),
                alignment_of(call.c)};
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;

  Plan p;
  MODA_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  MODA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &call.op_a,
                                                   sizeof(call.op_a)));
  MODA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &call.op_b,
                                                   sizeof(call.op_b)));
  // Layouts describe the stored matrices, before op().
  const bool ta = call.op_a == CUBLAS_OP_T, tb = call.op_b == CUBLAS_OP_T;
  MODA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, ta ? call.inner : call.rows,
                                               ta ? call.rows : call.inner, call.lda));
  MODA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, tb ? call.cols : call.inner,
                                               tb ? call.inner : call.cols, call.ldb));
  MODA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, call.c_type, call.rows, call.cols, call.ldc));

  cublasLtMatmulPreference_t pref = nullptr;
  MODA_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kWorkspaceBytes;
  const uint32_t align_a = static_cast<uint32_t>(alignment_of(call.a));
  const uint32_t align_b = static_cast<uint32_t>(alignment_of(call.b));
  const uint32_t align_c = static_cast<uint32_t>(alignment_of(call.c));
  const auto set_pref = [&](cublasLtMatmulPreferenceAttributes_t attr, const void* value,
                            size_t size) {
    MODA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, value, size));
  };
  set_pref(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(align_c));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof(align_c));
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.c, p.c,
                                                           pref, kMaxAlgos, p.algos, &p.count);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || p.count == 0) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
    throw std::runtime_error(
        "cuBLASLt has no algorithm for a GEMM of " + std::to_string(call.rows) + " x " +
        std::to_string(call.cols) + " x " + std::to_string(call.inner) + " (" +
        (st == CUBLAS_STATUS_SUCCESS ? std::string("no candidates")
                                     : std::string(cublasLtGetStatusString(st))) +
        ")");
  }
  return plans_.emplace(key, p).first->second;
}

cublasStatus_t Gemm::launch(const Call& call, const Plan& p, int candidate) {
  const float alpha = 1.0f, beta = call.accumulate ? 1.0f : 0.0f;
  return cublasLtMatmul(handle_, p.desc, &alpha, call.a, p.a, call.b, p.b, &beta, call.c, p.c,
                        call.c, p.c, &p.algos[candidate].algo, workspace_, kWorkspaceBytes,
                        stream_);
}

// Times the candidates on the call's own operands: a warm-up and the median of 3 runs each,
// then the three fastest (and the heuristic's first choice) again, round-robin over 5 rounds so
// that clock drift hits them alike. An accumulating output is saved first and restored after;
// when there is no memory for the copy, the heuristic's first choice stays.
void Gemm::tune(const Call& call, Plan& p) {
  p.tuned = true;
  if (p.count < 2) return;
  const size_t c_bytes = static_cast<size_t>(call.ldc) * static_cast<size_t>(call.cols) *
                         (call.c_type == CUDA_R_32F ? sizeof(float) : sizeof(bf16));
  void* saved = nullptr;
  if (call.accumulate) {
    if (cudaMalloc(&saved, c_bytes) != cudaSuccess) {
      cudaGetLastError();
      return;
    }
    counter_.add(c_bytes);
    MODA_CUDA_CHECK(cudaMemcpyAsync(saved, call.c, c_bytes, cudaMemcpyDeviceToDevice, stream_));
  }
  cudaEvent_t start, stop;
  MODA_CUDA_CHECK(cudaEventCreate(&start));
  MODA_CUDA_CHECK(cudaEventCreate(&stop));
  const auto timed = [&](int i) {
    float ms = 0;
    MODA_CUDA_CHECK(cudaEventRecord(start, stream_));
    MODA_CUBLAS_CHECK(launch(call, p, i));
    MODA_CUDA_CHECK(cudaEventRecord(stop, stream_));
    MODA_CUDA_CHECK(cudaEventSynchronize(stop));
    MODA_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    return ms;
  };
  std::vector<std::pair<float, int>> first;  // (median ms, candidate)
  for (int i = 0; i < p.count; ++i) {
    if (launch(call, p, i) != CUBLAS_STATUS_SUCCESS) continue;  // a candidate may refuse
    float ms[3] = {timed(i), timed(i), timed(i)};
    std::sort(ms, ms + 3);
    first.emplace_back(ms[1], i);
  }
  std::sort(first.begin(), first.end());
  std::vector<int> finalists;
  for (size_t i = 0; i < first.size() && finalists.size() < 3; ++i) {
    finalists.push_back(first[i].second);
  }
  if (std::find(finalists.begin(), finalists.end(), 0) == finalists.end() && !first.empty() &&
      std::any_of(first.begin(), first.end(), [](const auto& f) { return f.second == 0; })) {
    finalists.push_back(0);
  }
  std::vector<float> total(finalists.size(), 0.0f);
  for (int round = 0; round < 5; ++round) {
    for (size_t f = 0; f < finalists.size(); ++f) total[f] += timed(finalists[f]);
  }
  if (!finalists.empty()) {
    p.choice = finalists[std::min_element(total.begin(), total.end()) - total.begin()];
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (saved != nullptr) {
    MODA_CUDA_CHECK(cudaMemcpyAsync(call.c, saved, c_bytes, cudaMemcpyDeviceToDevice, stream_));
    MODA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    MODA_CUDA_CHECK(cudaFree(saved));
    counter_.remove(c_bytes);
  }
}

void Gemm::run(const Call& call) {
  Plan& p = plan(call);
  if (!p.tuned) tune(call, p);
  MODA_CUBLAS_CHECK(launch(call, p, p.choice));
}

bool Gemm::run_candidate(const Call& call, int candidate) {
  const Plan& p = plan(call);
  return candidate < p.count && launch(call, p, candidate) == CUBLAS_STATUS_SUCCESS;
}

void Gemm::linear(void* y, cudaDataType_t out_type, const bf16* x, const bf16* w, int64_t m,
                  int64_t n, int64_t k, bool accumulate) {
  run({CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, w, k, x, k, y, out_type, n, accumulate});
}

void Gemm::linear_dinput(void* dx, cudaDataType_t out_type, const bf16* dy, const bf16* w,
                         int64_t m, int64_t n, int64_t k, bool accumulate) {
  run({CUBLAS_OP_N, CUBLAS_OP_N, k, m, n, w, k, dy, n, dx, out_type, k, accumulate});
}

void Gemm::linear_dweight(float* dw, const bf16* dy, const bf16* x, int64_t m, int64_t n,
                          int64_t k) {
  run({CUBLAS_OP_N, CUBLAS_OP_T, k, n, m, x, k, dy, n, dw, CUDA_R_32F, k, true});
}

namespace {

// Median of 15 timed runs of candidate `candidate` (-1: the tuned choice), after two warm-ups;
// negative when the candidate refuses the problem.
double time_candidate(Gemm& gemm, const Gemm::Call& call, int candidate, cudaStream_t stream) {
  constexpr int kReps = 15;
  const auto once = [&] {
    if (candidate < 0) {
      gemm.run(call);
      return true;
    }
    return gemm.run_candidate(call, candidate);
  };
  if (!once() || !once()) return -1.0;
  return median_event_ms(stream, kReps, once);
}

}  // namespace

}  // namespace moda::cuda

namespace moda {

std::vector<GemmAlgoTiming> cuda_time_gemm_algorithms(int64_t m, int64_t n, int64_t k) {
  using namespace cuda;
  cudaStream_t stream;
  MODA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::vector<GemmAlgoTiming> out;
  {
    AllocationCounter counter;
    Gemm gemm(stream, counter);
    const auto bf16_bytes = [](int64_t elems) { return static_cast<size_t>(elems) * sizeof(bf16); };
    const auto x_buf = random_buffer(bf16_bytes(m * k), 1, stream),
               w_buf = random_buffer(bf16_bytes(n * k), 2, stream),
               dy_buf = random_buffer(bf16_bytes(m * n), 3, stream);
    const DeviceBuffer y_buf(bf16_bytes(m * n)), dx_buf(bf16_bytes(m * k)),
        dw_buf(static_cast<size_t>(n * k) * sizeof(float));
    const bf16 *x = x_buf->as<bf16>(), *w = w_buf->as<bf16>(), *dy = dy_buf->as<bf16>();
    const std::pair<const char*, Gemm::Call> calls[] = {
        {"forward",
         {CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, w, k, x, k, y_buf.as<bf16>(), CUDA_R_16BF, n, false}},
        {"input grad",
         {CUBLAS_OP_N, CUBLAS_OP_N, k, m, n, w, k, dy, n, dx_buf.as<bf16>(), CUDA_R_16BF, k,
          false}},
        {"weight grad",
         {CUBLAS_OP_N, CUBLAS_OP_T, k, n, m, x, k, dy, n, dw_buf.as<float>(), CUDA_R_32F, k, true}},
    };
    for (const auto& [name, call] : calls) {
      GemmAlgoTiming t;
      t.op = name;
      t.chosen_ms = time_candidate(gemm, call, -1, stream);  // tunes on its first call
      t.chosen = gemm.chosen(call);
      t.heuristic_ms = time_candidate(gemm, call, 0, stream);
      t.best_ms = t.chosen_ms;
      for (int c = 0; c < Gemm::kMaxAlgos; ++c) {
        const double ms = time_candidate(gemm, call, c, stream);
        if (ms < 0) continue;
        t.best_ms = std::min(t.best_ms, ms);
        ++t.candidates;
      }
      t.tflops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) /
                 (t.chosen_ms * 1e9);
      out.push_back(t);
    }
    MODA_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  cudaStreamDestroy(stream);
  return out;
}

}  // namespace moda
