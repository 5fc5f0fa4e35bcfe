// C[M, N] (+)= A[M, K] B[K, N], all row-major. A register-blocked loop nest: 4 rows of C and 64
// columns are accumulated over the whole K in a small local array that the compiler keeps in
// vector registers, so the inner statement is a vectorized FMA over columns (no horizontal sums)
// and every loaded row chunk of B serves 4 rows of A. Each element of C is summed in the same
// order whatever the thread count, so results are reproducible.
#include <algorithm>

#include "backend_cpu/cpu_reference.hpp"

namespace moda {

template <class T>
void gemm_cpu(const T* a, const T* b, T* c, int64_t m, int64_t n, int64_t k, bool accumulate) {
  constexpr int64_t kRows = 4, kCols = 64;
  const int64_t row_blocks = (m + kRows - 1) / kRows, col_blocks = (n + kCols - 1) / kCols;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t rb = 0; rb < row_blocks; ++rb) {
    for (int64_t cb = 0; cb < col_blocks; ++cb) {
      const int64_t i0 = rb * kRows, j0 = cb * kCols;
      const int64_t rows = std::min(kRows, m - i0), cols = std::min(kCols, n - j0);
      T acc[kRows][kCols] = {};
      if (rows == kRows && cols == kCols) {
        for (int64_t p = 0; p < k; ++p) {
          const T* bp = b + p * n + j0;
          for (int64_t r = 0; r < kRows; ++r) {
            const T ar = a[(i0 + r) * k + p];
#pragma omp simd
            for (int64_t j = 0; j < kCols; ++j) acc[r][j] += ar * bp[j];
          }
        }
      } else {
        for (int64_t p = 0; p < k; ++p) {
          const T* bp = b + p * n + j0;
          for (int64_t r = 0; r < rows; ++r) {
            const T ar = a[(i0 + r) * k + p];
            for (int64_t j = 0; j < cols; ++j) acc[r][j] += ar * bp[j];
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        T* cr = c + (i0 + r) * n + j0;
        for (int64_t j = 0; j < cols; ++j) cr[j] = accumulate ? cr[j] + acc[r][j] : acc[r][j];
      }
    }
  }
}

template <class T>
void transpose_cpu(const T* in, T* out, int64_t rows, int64_t cols) {
  constexpr int64_t kTile = 32;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      for (int64_t r = r0; r < std::min(r0 + kTile, rows); ++r) {
        for (int64_t c = c0; c < std::min(c0 + kTile, cols); ++c)
          out[c * rows + r] = in[r * cols + c];
      }
    }
  }
}

template void gemm_cpu<float>(const float*, const float*, float*, int64_t, int64_t, int64_t, bool);
template void gemm_cpu<double>(const double*, const double*, double*, int64_t, int64_t, int64_t,
                               bool);
template void transpose_cpu<float>(const float*, float*, int64_t, int64_t);
template void transpose_cpu<double>(const double*, double*, int64_t, int64_t);

}  // namespace moda
