// MoDA attention on the CPU: for each query, the causal sequence scores and the depth-slot scores
// of the same token go through one softmax (paper Algorithm 1, without tiling). Work is split by
// (batch, kv head): every key, value and depth slot a thread writes a gradient to belongs to its
// own (batch, kv head), so the backward needs no atomics and is deterministic.
#include <cmath>
#include <vector>

#include "backend_cpu/cpu_reference.hpp"

namespace moda {

namespace {

template <class T>
T dot(const T* a, const T* b, int64_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// Pointers to the keys (or values) a query of token t sees: sequence rows 0..t, then slots.
struct KeyIndex {
  const AttentionShape& s;
  int64_t b, kvh;
  template <class P>
  P* seq(P* base, int64_t pos) const {
    return base + ((b * s.seq_len + pos) * s.kv_heads + kvh) * s.head_dim;
  }
  template <class P>
  P* slot(P* base, int64_t j, int64_t t) const {
    return base + j * s.slot_stride + ((b * s.seq_len + t) * s.kv_heads + kvh) * s.head_dim;
  }
};

}  // namespace

template <class T>
void attention_forward_cpu(const AttentionShape& s, const T* qp, const T* kp, const T* vp,
                           const T* dkp, const T* dvp, T* op, T* lp) {
  const int64_t d = s.head_dim, group = s.q_heads / s.kv_heads;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(d)));
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t kvh = 0; kvh < s.kv_heads; ++kvh) {
      KeyIndex ix{s, b, kvh};
      std::vector<T> p(static_cast<size_t>(s.seq_len + s.slots));
      for (int64_t t = 0; t < s.seq_len; ++t) {
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
          const int64_t row = b * s.seq_len + t;
          const T* qv = qp + (row * s.q_heads + h) * d;
          T mx = -INFINITY;
          for (int64_t j = 0; j <= t; ++j)
            mx = std::max(mx, p[j] = dot(qv, ix.seq(kp, j), d) * scale);
          for (int64_t j = 0; j < s.slots; ++j) {
            mx = std::max(mx, p[t + 1 + j] = dot(qv, ix.slot(dkp, j, t), d) * scale);
          }
          const int64_t n = t + 1 + s.slots;
          T sum = 0;
          for (int64_t j = 0; j < n; ++j) sum += (p[j] = std::exp(p[j] - mx));
          T* o = op + (row * s.q_heads + h) * d;
          std::fill(o, o + d, T(0));
          for (int64_t j = 0; j < n; ++j) {
            const T* vv = j <= t ? ix.seq(vp, j) : ix.slot(dvp, j - t - 1, t);
            const T w = p[j] / sum;
            for (int64_t c = 0; c < d; ++c) o[c] += w * vv[c];
          }
          lp[row * s.q_heads + h] = mx + std::log(sum);
        }
      }
    }
  }
}

template <class T>
void attention_backward_cpu(const AttentionShape& s, const T* dop, const T* qp, const T* kp,
                            const T* vp, const T* sk, const T* sv, const T* op, const T* lp, T* dqp,
                            T* dkp, T* dvp, T* dsk, T* dsv) {
  const int64_t d = s.head_dim, group = s.q_heads / s.kv_heads;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(d)));
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t kvh = 0; kvh < s.kv_heads; ++kvh) {
      KeyIndex ix{s, b, kvh};
      for (int64_t t = 0; t < s.seq_len; ++t) {
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
          const int64_t row = b * s.seq_len + t, qi = (row * s.q_heads + h) * d;
          const T* qv = qp + qi;
          const T* go = dop + qi;
          const T l = lp[row * s.q_heads + h];
          const T delta = dot(go, op + qi, d);
          T* gq = dqp + qi;
          std::fill(gq, gq + d, T(0));
          auto visit = [&](const T* key, const T* val, T* gkey, T* gval) {
            const T p = std::exp(dot(qv, key, d) * scale - l);
            const T ds = p * (dot(go, val, d) - delta) * scale;
            for (int64_t c = 0; c < d; ++c) {
              gq[c] += ds * key[c];
              gkey[c] += ds * qv[c];
              gval[c] += p * go[c];
            }
          };
          for (int64_t j = 0; j <= t; ++j) {
            visit(ix.seq(kp, j), ix.seq(vp, j), ix.seq(dkp, j), ix.seq(dvp, j));
          }
          for (int64_t j = 0; j < s.slots; ++j) {
            visit(ix.slot(sk, j, t), ix.slot(sv, j, t), ix.slot(dsk, j, t), ix.slot(dsv, j, t));
          }
        }
      }
    }
  }
}

#define MODA_INSTANTIATE(T)                                                                     \
  template void attention_forward_cpu<T>(const AttentionShape&, const T*, const T*, const T*,   \
                                         const T*, const T*, T*, T*);                           \
  template void attention_backward_cpu<T>(const AttentionShape&, const T*, const T*, const T*,  \
                                          const T*, const T*, const T*, const T*, const T*, T*, \
                                          T*, T*, T*, T*);
MODA_INSTANTIATE(float)
MODA_INSTANTIATE(double)
#undef MODA_INSTANTIATE

}  // namespace moda
