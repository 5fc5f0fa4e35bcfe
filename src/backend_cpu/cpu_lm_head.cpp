// LM head + softmax cross-entropy (+ z-loss) on the CPU. Rows are processed in blocks so that the
// logits of only one block exist at a time; the weight gradient of a block is reduced over its
// rows in order (parallel over vocabulary rows), which keeps the result deterministic.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend_cpu/cpu_reference.hpp"

namespace moda {

template <class T>
void lm_head_cross_entropy_cpu(const T* x, const T* weight, const int32_t* targets, T* ce, T* lse,
                               T* dx, T* dweight, int64_t rows, int64_t dim, int64_t vocab,
                               double z_loss, double scale) {
  constexpr int64_t kBlock = 256;
  std::vector<T> logits(static_cast<size_t>(std::min(rows, kBlock) * vocab));
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t nr = std::min(kBlock, rows - r0);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nr; ++i) {
      const int64_t r = r0 + i;
      const T* xr = x + r * dim;
      T* lg = logits.data() + i * vocab;
      T mx = -INFINITY;
      for (int64_t v = 0; v < vocab; ++v) {
        const T* wv = weight + v * dim;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t c = 0; c < dim; ++c) acc += xr[c] * wv[c];
        lg[v] = acc;
        mx = std::max(mx, acc);
      }
      double sum = 0;
      for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(lg[v] - mx));
      const T l = mx + static_cast<T>(std::log(sum));
      lse[r] = l;
      ce[r] = l - lg[targets[r]];
      if (dx == nullptr) continue;
      // d/dlogit of ce + z * lse^2 is softmax * (1 + 2 z lse) - onehot.
      const T coef = static_cast<T>(scale * (1.0 + 2.0 * z_loss * static_cast<double>(l)));
      for (int64_t v = 0; v < vocab; ++v) lg[v] = std::exp(lg[v] - l) * coef;
      lg[targets[r]] -= static_cast<T>(scale);
      T* dxr = dx + r * dim;
      std::fill(dxr, dxr + dim, T(0));
      for (int64_t v = 0; v < vocab; ++v) {
        const T g = lg[v];
        const T* wv = weight + v * dim;
#pragma omp simd
        for (int64_t c = 0; c < dim; ++c) dxr[c] += g * wv[c];
      }
    }
    if (dx == nullptr) continue;
#pragma omp parallel for schedule(static)
    for (int64_t v = 0; v < vocab; ++v) {
      T* dwv = dweight + v * dim;
      for (int64_t i = 0; i < nr; ++i) {
        const T g = logits[i * vocab + v];
        const T* xr = x + (r0 + i) * dim;
#pragma omp simd
        for (int64_t c = 0; c < dim; ++c) dwv[c] += g * xr[c];
      }
    }
  }
}

template void lm_head_cross_entropy_cpu<float>(const float*, const float*, const int32_t*, float*,
                                               float*, float*, float*, int64_t, int64_t, int64_t,
                                               double, double);
template void lm_head_cross_entropy_cpu<double>(const double*, const double*, const int32_t*,
                                                double*, double*, double*, double*, int64_t,
                                                int64_t, int64_t, double, double);

}  // namespace moda
