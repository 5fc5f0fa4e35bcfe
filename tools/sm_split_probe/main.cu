// Feasibility probe for splitting the SMs between a GEMM and memory-bound work: a cuBLASLt GEMM
// of the 700M `mlp.in` + FFN KV forward's shape (16384 x 9216 x 1024, bf16) told to plan for
// fewer SMs (CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET), alone and beside a streaming read kernel of
// a limited grid started after it (docs/kernels/moda_attention.md, "The backward's depth part on
// SMs of its own"). The GEMM's operands are constant (every bf16 0x3c3c), so it runs faster than
// on training data (less power): compare its times with each other, not with the model's GEMMs.
// Build: scripts/build_sm_split_probe.sh OUT; run OUT on the GPU machine (no arguments).
#include <cublasLt.h>
#include <cuda_bf16.h>

#include <cstdio>
#include <cstdlib>

// Any nonzero CUDA or cuBLAS status ends the probe.
#define CK(x)                                                  \
  do {                                                         \
    auto e = (x);                                              \
    if (e != 0) {                                              \
      printf("err %d at %s:%d\n", (int)e, __FILE__, __LINE__); \
      exit(1);                                                 \
    }                                                          \
  } while (0)
// Reads n 16-byte words, four loads in flight per thread; the sum is stored only in a case that
// never happens, so that the loads are not optimized away. "N SMs' worth" below is 4 N blocks of
// 512 threads: alone they spread over all SMs; beside the GEMM they get the SMs it leaves free.
__global__ void stream_read(const uint4* __restrict__ p, long n, float* out) {
  float acc = 0;
  long i = blockIdx.x * (long)blockDim.x + threadIdx.x, step = (long)gridDim.x * blockDim.x;
  for (; i + 3 * step < n; i += 4 * step) {
    uint4 a = p[i], b = p[i + step], c = p[i + 2 * step], d = p[i + 3 * step];
    acc += __uint_as_float(a.x ^ b.y ^ c.z ^ d.w);
  }
  for (; i < n; i += step) acc += __uint_as_float(p[i].x);
  if (acc == 1.2345f) *out = acc;
}
int main() {
  const int M = 16384, K = 1024, N = 9216;
  __nv_bfloat16 *A, *B, *C;
  CK(cudaMalloc(&A, (size_t)M * K * 2));
  CK(cudaMalloc(&B, (size_t)K * N * 2));
  CK(cudaMalloc(&C, (size_t)M * N * 2));
  CK(cudaMemset(A, 0x3c, (size_t)M * K * 2));
  CK(cudaMemset(B, 0x3c, (size_t)K * N * 2));
  const size_t buf_bytes = 8ull << 30;
  uint4* buf;
  CK(cudaMalloc(&buf, buf_bytes));
  CK(cudaMemset(buf, 1, buf_bytes));
  float* out;
  CK(cudaMalloc(&out, 4));
  void* ws;
  const size_t wsb = 64 << 20;
  CK(cudaMalloc(&ws, wsb));
  cublasLtHandle_t h;
  CK(cublasLtCreate(&h));
  cudaStream_t s1, s2;
  CK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  cudaEvent_t e0, e1, e2, e3;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaEventCreate(&e2);
  cudaEventCreate(&e3);
  int sms;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  const long n16 = buf_bytes / 16;
  auto time_stream = [&](int blocks, int threads, long n) {
    cudaEventRecord(e0, s2);
    stream_read<<<blocks, threads, 0, s2>>>(buf, n, out);
    cudaEventRecord(e1, s2);
    cudaEventSynchronize(e1);
    float ms;
    cudaEventElapsedTime(&ms, e0, e1);
    return ms;
  };
  time_stream(sms * 4, 512, n16);
  printf("stream, whole GPU (%d x 4 blocks of 512): %.3f ms for 8 GiB = %.0f GB/s\n", sms,
         time_stream(sms * 4, 512, n16), buf_bytes / 1e6 / time_stream(sms * 4, 512, n16));
  for (int free_sms : {8, 16, 24, 32}) {
    float ms = time_stream(free_sms * 4, 512, n16 / 4);
    printf("stream alone on %d SMs' worth (%d blocks of 512): %.0f GB/s\n", free_sms, free_sms * 4,
           buf_bytes / 4 / 1e6 / ms);
  }
  for (int target : {0, 124, 116, 108, 100}) {
    cublasLtMatmulDesc_t desc;
    CK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (target > 0) {
      int32_t t = target;
      CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &t, sizeof t));
    }
    cublasLtMatrixLayout_t la, lb, lc;
    CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, K, N, K));
    CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, K, M, K));
    CK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, N, M, N));
    cublasLtMatmulPreference_t pref;
    CK(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t w = wsb;
    CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &w,
                                            sizeof w));
    cublasLtMatmulHeuristicResult_t res[8];
    int cnt = 0;
    CK(cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, lc, lc, pref, 8, res, &cnt));
    float alpha = 1, beta = 0;
    auto gemm = [&](int a, cudaStream_t st) {
      CK(cublasLtMatmul(h, desc, &alpha, B, la, A, lb, &beta, C, lc, C, lc, &res[a].algo, ws, wsb,
                        st));
    };
    const int reps = 20;
    // best of the candidates alone
    int best = 0;
    float best_ms = 1e9;
    for (int a = 0; a < cnt; ++a) {
      gemm(a, s1);
      cudaEventRecord(e0, s1);
      for (int r = 0; r < reps; ++r) gemm(a, s1);
      cudaEventRecord(e1, s1);
      cudaEventSynchronize(e1);
      float ms;
      cudaEventElapsedTime(&ms, e0, e1);
      if (ms < best_ms) {
        best_ms = ms;
        best = a;
      }
    }
    const double flop = 2.0 * M * N * K * reps;
    printf("target %3d: %d candidates, best alone %.3f ms per GEMM (%.0f TFLOP/s)\n", target, cnt,
           best_ms / reps, flop / best_ms / 1e9);
    for (int free_sms : {8, 16, 24, 32}) {
      if (target == 0 && free_sms > 8) continue;
      // Both at once: GEMMs on s1, the stream kernel (a quarter of the buffer) on s2 after them.
      cudaDeviceSynchronize();
      cudaEventRecord(e0, s1);
      for (int r = 0; r < reps; ++r) gemm(best, s1);
      cudaEventRecord(e1, s1);
      cudaStreamWaitEvent(s2, e0);
      cudaEventRecord(e2, s2);
      stream_read<<<free_sms * 4, 512, 0, s2>>>(buf, n16 / 4, out);
      cudaEventRecord(e3, s2);
      cudaDeviceSynchronize();
      float g_ms, s_ms;
      cudaEventElapsedTime(&g_ms, e0, e1);
      cudaEventElapsedTime(&s_ms, e2, e3);
      printf(
          "  beside a stream kernel of %2d x 4 blocks: GEMMs %.3f ms each (%.2fx alone), stream "
          "%.3f ms = %.0f GB/s\n",
          free_sms, g_ms / reps, g_ms / best_ms, s_ms, buf_bytes / 4 / 1e6 / s_ms);
    }
  }
  return 0;
}
