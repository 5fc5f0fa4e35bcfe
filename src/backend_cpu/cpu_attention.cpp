// MoDA attention on the CPU: for each query, the causal sequence scores and the depth-slot scores
// of the same token go through one softmax (paper Algorithm 1, without tiling). Work is split by
// (batch, kv head): every key and value a thread writes a gradient to belongs to its own
// (batch, kv head), so the backward needs no atomics and is deterministic. The backward writes
// each depth slot's probability and score gradient; depth_slot_backward_cpu sums them into the
// slot gradients over the layers that read the slot.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend_cpu/cpu_reference.hpp"
#include "moda/depth_stats_layout.hpp"

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
                            T* dkp, T* dvp, T* probs, T* dscores) {
  const int64_t rows = s.batch * s.seq_len;
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
          for (int64_t j = 0; j <= t; ++j) {
            const T* key = ix.seq(kp, j);
            const T p = std::exp(dot(qv, key, d) * scale - l);
            const T ds = p * (dot(go, ix.seq(vp, j), d) - delta) * scale;
            T* gkey = ix.seq(dkp, j);
            T* gval = ix.seq(dvp, j);
            for (int64_t c = 0; c < d; ++c) {
              gq[c] += ds * key[c];
              gkey[c] += ds * qv[c];
              gval[c] += p * go[c];
            }
          }
          for (int64_t j = 0; j < s.slots; ++j) {
            const T* key = ix.slot(sk, j, t);
            const T p = std::exp(dot(qv, key, d) * scale - l);
            const T ds = p * (dot(go, ix.slot(sv, j, t), d) - delta) * scale;
            for (int64_t c = 0; c < d; ++c) gq[c] += ds * key[c];
            const int64_t at = depth_stats_index(s.slots, rows * s.kv_heads, group, j,
                                                 row * s.kv_heads + kvh, h - kvh * group);
            probs[at] = p;
            dscores[at] = ds;
          }
        }
      }
    }
  }
}

template <class T>
void depth_slot_backward_cpu(const AttentionShape& s, int64_t first, int64_t count,
                             std::span<const DepthReaderView<T>> readers, T* d_depth_k,
                             T* d_depth_v, bool accumulate) {
  const int64_t rows = s.batch * s.seq_len, d = s.head_dim, group = s.q_heads / s.kv_heads;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = first; j < first + count; ++j) {
      for (int64_t kvh = 0; kvh < s.kv_heads; ++kvh) {
        const int64_t unit = r * s.kv_heads + kvh;
        const int64_t at = (j - first) * s.slot_stride + unit * d;
        T* gk = d_depth_k + at;
        T* gv = d_depth_v + at;
        if (!accumulate) {
          std::fill(gk, gk + d, T(0));
          std::fill(gv, gv + d, T(0));
        }
        for (const DepthReaderView<T>& reader : readers) {
          for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
            const int64_t qh = r * s.q_heads + h;
            const int64_t stat =
                depth_stats_index(reader.slots, rows * s.kv_heads, group, j, unit, h - kvh * group);
            const T ds = reader.dscores[stat];
            const T p = reader.probs[stat];
            const T* qv = reader.q + qh * d;
            const T* go = reader.dout + qh * d;
            for (int64_t c = 0; c < d; ++c) {
              gk[c] += ds * qv[c];
              gv[c] += p * go[c];
            }
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
                                          T*, T*, T*, T*);                                      \
  template void depth_slot_backward_cpu<T>(const AttentionShape&, int64_t, int64_t,             \
                                           std::span<const DepthReaderView<T>>, T*, T*, bool);
MODA_INSTANTIATE(float)
MODA_INSTANTIATE(double)
#undef MODA_INSTANTIATE

}  // namespace moda
