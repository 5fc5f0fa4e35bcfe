// MoDA attention. One softmax over the causal sequence keys 0..t of the query's KV head and the
// S depth slots of token t, computed in two parts that combine exactly through log-sum-exp:
//
// Forward
//   1. sequence part: causal GQA attention -> o_seq, lse_seq. Head sizes 64 and 128 run a
//      FlashAttention-style kernel on Hopper's warpgroup MMA (wgmma, bf16 operands from swizzled
//      shared memory, fp32 accumulate; 128 query rows per block, 64-key tiles double-buffered with
//      cp.async); any other even head size up to 256 runs a warp-per-query kernel. Without depth
//      slots it writes the output directly; with them it writes o_seq (fp32) to the workspace.
//   2. depth part (S > 0), per (token, KV head): scores of the S slots for each of the G query
//      heads, then lse = logaddexp(lse_seq, lse_depth) and
//      out = o_seq * exp(lse_seq - lse) + sum_j exp(s_j - lse) v_j. At head size 64 it runs inside
//      the tensor-core forward's steps (G <= 2; at head size 128 G = 2, a slot a step of its
//      own) or, 3 <= G <= 8, in a warp-per-pair tensor-core kernel, beside it from T = 4096 on,
//      taking the sequence kernel's tiles as they are
//      published (depth_forward_beside), else after it (depth_forward_tail, also at head size 128,
//      4 <= G <= 8); otherwise a streaming or warp kernel after it.
// Backward (dq overwritten; dk, dv accumulated)
//   1. depth part, one warp per (token, KV head): delta = rowsum(dout * out) per query head (kept
//      in the workspace), dq = the depth slots' contribution, and each slot's probability and
//      score gradient per query head (fp32, moda/depth_stats_layout.hpp). The streaming kernels
//      (head sizes 64 and 128) split this: a preparing pass writes delta and dq := 0, then the
//      depth pass adds its dq with atomics on a side stream, beside step 2, whose idle SMs and
//      issue slots its memory-bound loads fill.
//   2. sequence part: FlashAttention-2 style backward on wgmma (one warpgroup per 64 keys of a
//      KV head, looping over its G query heads and the query tiles at or after the keys, the next
//      tile's loads in flight; dK and dV stay in registers, dQ is added with fp32 atomics), or the
//      warp-per-query fallback.
// Slot gradients (depth_slot_backward, once every layer reading the slots is done): for each
// (token, KV head) the sum over the readers and their G heads of dscores * q and probs * dout,
// in registers, written once. A layer that is its slots' only reader (DepthBackwardOut with
// d_depth_k) gets them from the backward's depth part at head size 64, which then writes the
// slots' gradients instead of the probabilities and score gradients; elsewhere they are pulled
// from those after it.
#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <map>
#include <mutex>
#include <span>
#include <type_traits>

#include "moda/depth_stats_layout.hpp"
#include "ops.cuh"
#include "wgmma.cuh"

namespace moda::cuda {

namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct Dims {
  int B, T, Hq, Hk, d, S, G;
  int64_t slot_stride;
  float scale;
};

Dims dims_of(const AttentionShape& s) {
  return {static_cast<int>(s.batch),
          static_cast<int>(s.seq_len),
          static_cast<int>(s.q_heads),
          static_cast<int>(s.kv_heads),
          static_cast<int>(s.head_dim),
          static_cast<int>(s.slots),
          static_cast<int>(s.q_heads / s.kv_heads),
          s.slot_stride,
          static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.head_dim)))};
}

// =============================== warp-per-vector kernels ===============================
// A warp holds one head vector of d values: lane l owns the pairs at c = 2l + 64i, i < P.

template <int P>
__device__ __forceinline__ void load_head(const bf16* p, int d, float (&v)[P][2]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int i = 0; i < P; ++i) {
    const int c = 2 * lane + 64 * i;
    float2 f = make_float2(0.0f, 0.0f);
    if (c < d) f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p + c));
    v[i][0] = f.x;
    v[i][1] = f.y;
  }
}

template <int P>
__device__ __forceinline__ void load_head(const float* p, int d, float (&v)[P][2]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int i = 0; i < P; ++i) {
    const int c = 2 * lane + 64 * i;
    float2 f = make_float2(0.0f, 0.0f);
    if (c < d) f = *reinterpret_cast<const float2*>(p + c);
    v[i][0] = f.x;
    v[i][1] = f.y;
  }
}

template <int P>
__device__ __forceinline__ void store_head(bf16* p, int d, const float (&v)[P][2]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int i = 0; i < P; ++i) {
    const int c = 2 * lane + 64 * i;
    if (c < d) *reinterpret_cast<__nv_bfloat162*>(p + c) = __floats2bfloat162_rn(v[i][0], v[i][1]);
  }
}

template <int P>
__device__ __forceinline__ void store_head(float* p, int d, const float (&v)[P][2]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int i = 0; i < P; ++i) {
    const int c = 2 * lane + 64 * i;
    if (c < d) *reinterpret_cast<float2*>(p + c) = make_float2(v[i][0], v[i][1]);
  }
}

// p[c] += v (plain read-modify-write: the caller owns the vector).
template <int P>
__device__ __forceinline__ void add_head(float* p, int d, const float (&v)[P][2]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int i = 0; i < P; ++i) {
    const int c = 2 * lane + 64 * i;
    if (c < d) {
      float2* q = reinterpret_cast<float2*>(p + c);
      float2 x = *q;
      x.x += v[i][0];
      x.y += v[i][1];
      *q = x;
    }
  }
}

template <int P>
__device__ __forceinline__ void atomic_add_head(float* p, int d, const float (&v)[P][2]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int i = 0; i < P; ++i) {
    const int c = 2 * lane + 64 * i;
    if (c < d) atomic_add2(p + c, v[i][0], v[i][1]);
  }
}

// This lane's share of a . b; warp_sum completes it.
template <int P>
__device__ __forceinline__ float partial_dot(const float (&a)[P][2], const float (&b)[P][2]) {
  float s = 0;
#pragma unroll
  for (int i = 0; i < P; ++i) s += a[i][0] * b[i][0] + a[i][1] * b[i][1];
  return s;
}

constexpr int kWarpsPerBlock = 4;

// Shared floats per warp of the depth kernels, rounded up to 16 bytes so that every warp's
// region keeps the alignment of its float2 accesses.
__host__ __device__ inline int depth_forward_floats(const Dims& s) {
  return (s.G * (s.d + s.S) + 3) / 4 * 4;  // queries [G][d], scores [G][S]
}
__host__ __device__ inline int depth_backward_floats(const Dims& s) {
  return (3 * s.G * s.d + 2 * s.G + 3) / 4 * 4;  // q, dout, dq [G][d]; lse, delta [G]
}

// Sequence part, one warp per (row, query head), online softmax over keys 0..t.
template <int P>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    seq_forward_warp(Dims s, const bf16* __restrict__ q, const bf16* __restrict__ k,
                     const bf16* __restrict__ v, bf16* __restrict__ out, float* __restrict__ o_seq,
                     float* __restrict__ lse) {
  const int64_t w = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  if (w >= int64_t{s.B} * s.T * s.Hq) return;
  const int h = static_cast<int>(w % s.Hq);
  const int64_t row = w / s.Hq;
  const int t = static_cast<int>(row % s.T);
  const int64_t kv_stride = int64_t{s.Hk} * s.d;
  const int64_t kv0 = (row - t) * kv_stride + int64_t{h / s.G} * s.d;
  float qv[P][2], acc[P][2] = {};
  load_head<P>(q + w * s.d, s.d, qv);
  float m = -INFINITY, l = 0;
  for (int j = 0; j <= t; ++j) {
    float kj[P][2], vj[P][2];
    load_head<P>(k + kv0 + j * kv_stride, s.d, kj);
    load_head<P>(v + kv0 + j * kv_stride, s.d, vj);
    const float sc = warp_sum(partial_dot<P>(qv, kj)) * s.scale;
    const float m_new = fmaxf(m, sc);
    const float corr = __expf(m - m_new), p = __expf(sc - m_new);
    l = l * corr + p;
#pragma unroll
    for (int i = 0; i < P; ++i) {
      acc[i][0] = acc[i][0] * corr + p * vj[i][0];
      acc[i][1] = acc[i][1] * corr + p * vj[i][1];
    }
    m = m_new;
  }
  const float inv = 1.0f / l;
#pragma unroll
  for (int i = 0; i < P; ++i) {
    acc[i][0] *= inv;
    acc[i][1] *= inv;
  }
  if (o_seq != nullptr) {
    store_head<P>(o_seq + w * s.d, s.d, acc);
  } else {
    store_head<P>(out + w * s.d, s.d, acc);
  }
  if (threadIdx.x % 32 == 0) lse[w] = m + logf(l);
}

// Sequence part of the backward, one warp per (row, query head); dk, dv by atomics, dq += .
template <int P>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    seq_backward_warp(Dims s, const bf16* __restrict__ dout, const bf16* __restrict__ q,
                      const bf16* __restrict__ k, const bf16* __restrict__ v,
                      const float* __restrict__ lse, const float* __restrict__ delta,
                      float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ dv) {
  const int64_t w = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  if (w >= int64_t{s.B} * s.T * s.Hq) return;
  const int h = static_cast<int>(w % s.Hq);
  const int64_t row = w / s.Hq;
  const int t = static_cast<int>(row % s.T);
  const int64_t kv_stride = int64_t{s.Hk} * s.d;
  const int64_t kv0 = (row - t) * kv_stride + int64_t{h / s.G} * s.d;
  float qv[P][2], go[P][2], gq[P][2] = {};
  load_head<P>(q + w * s.d, s.d, qv);
  load_head<P>(dout + w * s.d, s.d, go);
  const float l = lse[w], dl = delta[w];
  for (int j = 0; j <= t; ++j) {
    float kj[P][2], vj[P][2];
    load_head<P>(k + kv0 + j * kv_stride, s.d, kj);
    load_head<P>(v + kv0 + j * kv_stride, s.d, vj);
    float sc = partial_dot<P>(qv, kj), dp = partial_dot<P>(go, vj);
    warp_sum2(sc, dp);
    const float p = __expf(sc * s.scale - l);
    const float ds = p * (dp - dl) * s.scale;
    float gk[P][2], gv[P][2];
#pragma unroll
    for (int i = 0; i < P; ++i) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        gq[i][e] += ds * kj[i][e];
        gk[i][e] = ds * qv[i][e];
        gv[i][e] = p * go[i][e];
      }
    }
    atomic_add_head<P>(dk + kv0 + j * kv_stride, s.d, gk);
    atomic_add_head<P>(dv + kv0 + j * kv_stride, s.d, gv);
  }
  add_head<P>(dq + w * s.d, s.d, gq);
}

// Depth part of the forward: one warp per (row, KV head), for its G query heads. Scores: lane j
// computes slot j's dot products itself (slot rows are read whole, 16 bytes at a time when `vec`),
// so no shuffle chain sits between a load and the next; then lanes go over dimensions to add
// the slots' values. Shared memory per warp: the scaled queries [G][d] and scores [G][S].
template <int P>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    depth_forward_warp(Dims s, bool vec, const bf16* __restrict__ q,
                       const bf16* __restrict__ depth_k, const bf16* __restrict__ depth_v,
                       const float* __restrict__ o_seq, bf16* __restrict__ out,
                       float* __restrict__ lse) {
  extern __shared__ float depth_fwd_smem[];
  const int64_t w = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  if (w >= int64_t{s.B} * s.T * s.Hk) return;
  const int lane = threadIdx.x % 32;
  float* sq = depth_fwd_smem + (threadIdx.x / 32) * depth_forward_floats(s);
  float* sc = sq + s.G * s.d;
  const int kvh = static_cast<int>(w % s.Hk);
  const int64_t row = w / s.Hk;
  const int64_t slot0 = w * s.d;  // (row * Hk + kvh) * d
  const int64_t qh0 = row * s.Hq + int64_t{kvh} * s.G;
  for (int g = 0; g < s.G; ++g) {
    float qv[P][2];
    load_head<P>(q + (qh0 + g) * s.d, s.d, qv);
#pragma unroll
    for (int i = 0; i < P; ++i) {
      qv[i][0] *= s.scale;
      qv[i][1] *= s.scale;
    }
    store_head<P>(sq + g * s.d, s.d, qv);
  }
  __syncwarp();
  for (int j = lane; j < s.S; j += 32) {
    const bf16* kj = depth_k + j * s.slot_stride + slot0;
    for (int g = 0; g < s.G; ++g) {
      const float* qg = sq + g * s.d;
      float acc = 0;
      if (vec) {
        for (int c = 0; c < s.d; c += 8) {
          float kk[8];
          load8(kj + c, kk);
#pragma unroll
          for (int i = 0; i < 8; ++i) acc += qg[c + i] * kk[i];
        }
      } else {
        for (int c = 0; c < s.d; c += 2) {
          const float2 kk = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(kj + c));
          acc += qg[c] * kk.x + qg[c + 1] * kk.y;
        }
      }
      sc[g * s.S + j] = acc;
    }
  }
  __syncwarp();
  for (int g = 0; g < s.G; ++g) {
    const int64_t qh = qh0 + g;
    const float* scg = sc + g * s.S;
    const float l_seq = lse[qh];
    float m = l_seq;
    for (int j = lane; j < s.S; j += 32) m = fmaxf(m, scg[j]);
    m = warp_max(m);
    float part = 0;
    for (int j = lane; j < s.S; j += 32) part += __expf(scg[j] - m);
    const float l = m + logf(warp_sum(part) + __expf(l_seq - m));
    float acc[P][2];
    load_head<P>(o_seq + qh * s.d, s.d, acc);
    const float keep = __expf(l_seq - l);
#pragma unroll
    for (int i = 0; i < P; ++i) {
      acc[i][0] *= keep;
      acc[i][1] *= keep;
    }
#pragma unroll 4
    for (int j = 0; j < s.S; ++j) {
      float vj[P][2];
      load_head<P>(depth_v + j * s.slot_stride + slot0, s.d, vj);
      const float p = __expf(scg[j] - l);
#pragma unroll
      for (int i = 0; i < P; ++i) {
        acc[i][0] += p * vj[i][0];
        acc[i][1] += p * vj[i][1];
      }
    }
    store_head<P>(out + qh * s.d, s.d, acc);
    if (lane == 0) lse[qh] = l;
  }
}

// Depth part of the backward and the backward's preprocessing: delta, dq := depth contribution,
// the slots' probabilities and score gradients. Shared memory per warp: q, dout and dq of the G
// heads (fp32), lse and delta.
template <int P>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    depth_backward_warp(Dims s, const bf16* __restrict__ dout, const bf16* __restrict__ q,
                        const bf16* __restrict__ out, const float* __restrict__ lse,
                        const bf16* __restrict__ depth_k, const bf16* __restrict__ depth_v,
                        float* __restrict__ dq, float* __restrict__ probs,
                        float* __restrict__ dscores, float* __restrict__ delta) {
  extern __shared__ float warp_smem[];
  const int64_t w = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  if (w >= int64_t{s.B} * s.T * s.Hk) return;
  const int gd = s.G * s.d;
  float* sq = warp_smem + (threadIdx.x / 32) * depth_backward_floats(s);
  float* sgo = sq + gd;
  float* sdq = sgo + gd;
  float* slse = sdq + gd;
  float* sdelta = slse + s.G;
  const int kvh = static_cast<int>(w % s.Hk);
  const int64_t row = w / s.Hk;
  const int64_t slot0 = w * s.d;
  const bool leader = threadIdx.x % 32 == 0;
  for (int g = 0; g < s.G; ++g) {
    const int64_t qh = row * s.Hq + int64_t{kvh} * s.G + g;
    float qv[P][2], go[P][2], ov[P][2], zero[P][2] = {};
    load_head<P>(q + qh * s.d, s.d, qv);
    load_head<P>(dout + qh * s.d, s.d, go);
    load_head<P>(out + qh * s.d, s.d, ov);
    const float dl = warp_sum(partial_dot<P>(go, ov));
    store_head<P>(sq + g * s.d, s.d, qv);
    store_head<P>(sgo + g * s.d, s.d, go);
    store_head<P>(sdq + g * s.d, s.d, zero);
    if (leader) {
      delta[qh] = dl;
      sdelta[g] = dl;
      slse[g] = lse[qh];
    }
  }
  __syncwarp();
  const int64_t units = int64_t{s.B} * s.T * s.Hk;
  for (int j = 0; j < s.S; ++j) {
    float kj[P][2], vj[P][2];
    load_head<P>(depth_k + j * s.slot_stride + slot0, s.d, kj);
    load_head<P>(depth_v + j * s.slot_stride + slot0, s.d, vj);
    for (int g = 0; g < s.G; ++g) {
      float qv[P][2], go[P][2], gq[P][2];
      load_head<P>(sq + g * s.d, s.d, qv);
      load_head<P>(sgo + g * s.d, s.d, go);
      float sc = partial_dot<P>(qv, kj), dp = partial_dot<P>(go, vj);
      warp_sum2(sc, dp);
      const float p = __expf(sc * s.scale - slse[g]);
      const float ds = p * (dp - sdelta[g]) * s.scale;
#pragma unroll
      for (int i = 0; i < P; ++i) {
#pragma unroll
        for (int e = 0; e < 2; ++e) gq[i][e] = ds * kj[i][e];
      }
      add_head<P>(sdq + g * s.d, s.d, gq);
      if (leader) {
        const int64_t at = depth_stats_index(s.S, units, s.G, j, w, g);
        probs[at] = p;
        dscores[at] = ds;
      }
    }
  }
  for (int g = 0; g < s.G; ++g) {
    const int64_t qh = row * s.Hq + int64_t{kvh} * s.G + g;
    float gq[P][2];
    load_head<P>(sdq + g * s.d, s.d, gq);
    store_head<P>(dq + qh * s.d, s.d, gq);
  }
}

// ============================ streaming depth kernels ============================
// The depth part moves S slot rows of K and V per (row, KV head) in each direction: it is bound by
// bytes. These kernels (head sizes 64 and 128, G in {1, 2, 3, 4, 8},
// 16-byte aligned operands) give each lane one 16-byte piece (8 values) of a slot row, so
// D / 8 lanes cover a row and a warp step covers 32 / (D / 8) whole rows with coalesced 16-byte
// accesses, and they issue the loads of several steps before using any of them, so each
// lane keeps several loads in flight. Dot products are completed by shuffles among a row's lanes.

// Warp steps whose loads are issued together. The backward's per-head registers (q, dout, dq)
// grow with G, and more steps at G = 4 or 8 spill (ptxas -v), even with K and V kept packed until
// used. The forward at head size 64 and G <= 3 issues 2, as measured with its earlier two-pass
// form: Table 6's (64, 1024, 6, 2), S = 47, took 0.78 instead of 0.89 ms, the 700M shape at
// S = 36 0.84 instead of 0.86; G = 8 was slower. In one pass at head size 128 and G = 2, 8 steps
// were slower than 4 (96 -> 127 registers): (2, 4096, 16, 8), S = 32, 0.657 -> 0.784 ms.
//
// At head size 128 and G = 2 (MoDA-1.5B) the forward issues 2 steps, the first with the pair's head
// rows, before anything waits on those (with few slots one round trip to memory a pair instead of
// two): 80 registers and 6 blocks of 4 warps an SM against 96 and 5. fwd ms at (2, 4096, 16, 8,
// 128) on the H100: S 2 0.434 -> 0.414, S 8 0.488 -> 0.473, S 16 0.577 -> 0.567, S 30 0.742 ->
// 0.726. The early first step raised the registers of every other instantiation (G = 8 spilled),
// which were not timed with it, so it is taken only there.
template <int D, int G>
constexpr int kDepthForwardUnroll = (D == 64 && G <= 3) || (D == 128 && G == 2) ? 2 : 4;
template <int D, int G>
constexpr bool kDepthForwardEarlyStep = D == 128 && G == 2;
template <int G>
constexpr int kDepthBackwardUnroll = G <= 3 ? 4 : (G == 4 ? 2 : 1);

__device__ __forceinline__ float dot8(const float (&a)[8], const float (&b)[8]) {
  float s = 0;
#pragma unroll
  for (int e = 0; e < 8; ++e) s += a[e] * b[e];
  return s;
}

// Sum over the L lanes that share a slot row (L a power of two, lanes contiguous).
template <int L>
__device__ __forceinline__ float row_sum(float x) {
#pragma unroll
  for (int o = 1; o < L; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Sum over the slot groups of a warp (lanes l, l + L, l + 2L, ...).
template <int L>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
  for (int o = L; o < 32; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// The lane's pieces of the K and V rows of slots j0 + u kRows + group (u < U), zero past the last
// slot: one warp step of the streaming kernels.
template <int U, int kRows>
__device__ __forceinline__ void load_slot_rows(const Dims& s, int j0, int group, int64_t slot0,
                                               const bf16* __restrict__ depth_k,
                                               const bf16* __restrict__ depth_v, uint4 (&k_raw)[U],
                                               uint4 (&v_raw)[U]) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int j = j0 + u * kRows + group;
    if (j < s.S) {
      const int64_t at = j * s.slot_stride + slot0;
      k_raw[u] = *reinterpret_cast<const uint4*>(depth_k + at);
      v_raw[u] = *reinterpret_cast<const uint4*>(depth_v + at);
    } else {
      k_raw[u] = v_raw[u] = make_uint4(0, 0, 0, 0);
    }
  }
}

// Forward depth part, one pass over the slots with an online softmax that starts from the
// sequence part's (o_seq, lse): each warp step issues the K and V loads of its rows together, so a
// unit takes one memory round trip per step instead of one per step of a K pass and again of a V
// pass, and no scores go through shared memory (which also left S unbounded).
template <int D, int G>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    depth_forward_stream(Dims s, const bf16* __restrict__ q, const bf16* __restrict__ depth_k,
                         const bf16* __restrict__ depth_v, const float* __restrict__ o_seq,
                         bf16* __restrict__ out, float* __restrict__ lse) {
  constexpr int L = D / 8;
  constexpr int kRows = 32 / L;
  constexpr int U = kDepthForwardUnroll<D, G>;
  const int64_t w = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  if (w >= int64_t{s.B} * s.T * s.Hk) return;
  const int lane = threadIdx.x % 32;
  const int piece = lane % L;
  const int group = lane / L;
  const int kvh = static_cast<int>(w % s.Hk);
  const int64_t row = w / s.Hk;
  const int64_t slot0 = w * D + piece * 8;
  const int64_t qh0 = row * s.Hq + int64_t{kvh} * G;
  const float to_log2 = s.scale * kLog2e;
  uint4 k_raw[U], v_raw[U];
  if constexpr (kDepthForwardEarlyStep<D, G>) {
    load_slot_rows<U, kRows>(s, 0, group, slot0, depth_k, depth_v, k_raw, v_raw);
  }
  // Per head, in log2 units: the running maximum m (the sequence part's lse to start with), the
  // sum l of 2^(score - m) with the sequence part's 2^(lse - m), and the lane's piece of the sum
  // of 2^(score - m) v over its rows. Every lane of the warp holds the same m and l.
  float qv[G][8], seq2[G], m[G], l[G], acc[G][8] = {};
#pragma unroll
  for (int g = 0; g < G; ++g) {
    load8(q + (qh0 + g) * D + piece * 8, qv[g]);
#pragma unroll
    for (int e = 0; e < 8; ++e) qv[g][e] *= to_log2;
    seq2[g] = lse[qh0 + g] * kLog2e;
    m[g] = seq2[g];
    l[g] = 1.0f;
  }
  for (int j0 = 0; j0 < s.S; j0 += kRows * U) {
    if (!kDepthForwardEarlyStep<D, G> || j0 > 0) {
      load_slot_rows<U, kRows>(s, j0, group, slot0, depth_k, depth_v, k_raw, v_raw);
    }
    float sc[G][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kk[8];
      unpack8(k_raw[u], kk);
      const bool valid = j0 + u * kRows + group < s.S;
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float x = row_sum<L>(dot8(qv[g], kk));
        sc[g][u] = valid ? x : -INFINITY;
      }
    }
    float p_sum[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float mx = sc[g][0];
#pragma unroll
      for (int u = 1; u < U; ++u) mx = fmaxf(mx, sc[g][u]);
#pragma unroll
      for (int o = L; o < 32; o <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_new = fmaxf(m[g], mx);
      const float rescale = exp2f(m[g] - m_new);
      m[g] = m_new;
      l[g] *= rescale;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] *= rescale;
      p_sum[g] = 0.0f;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float vv[8];
      unpack8(v_raw[u], vv);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float p = exp2f(sc[g][u] - m[g]);  // 0 past the last slot (score -inf)
        p_sum[g] += p;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] += p * vv[e];
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) l[g] += group_sum<L>(p_sum[g]);
  }
#pragma unroll
  for (int g = 0; g < G; ++g) {
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = group_sum<L>(acc[g][e]);
  }
  if (group == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int64_t at = (qh0 + g) * D + piece * 8;
      const float4* os = reinterpret_cast<const float4*>(o_seq + at);
      const float4 o0 = os[0], o1 = os[1];
      const float o[8] = {o0.x, o0.y, o0.z, o0.w, o1.x, o1.y, o1.z, o1.w};
      const float inv = 1.0f / l[g], keep = exp2f(seq2[g] - m[g]) * inv;
      float r[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) r[e] = o[e] * keep + acc[g][e] * inv;
      store8(out + at, r);
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g) lse[qh0 + g] = (m[g] + log2f(l[g])) * kLn2;
  }
}

// Before the streaming depth part and the sequence part of the backward, which both add into dq
// and may run side by side: delta = rowsum(dout * out) per (row, query head) and dq := 0. D / 8
// lanes per head row, one 16-byte piece each.
template <int D>
__global__ void __launch_bounds__(256)
    backward_prepare(int64_t head_rows, const bf16* __restrict__ dout, const bf16* __restrict__ out,
                     float* __restrict__ dq, float* __restrict__ delta) {
  constexpr int L = D / 8;
  const int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t head_row = t / L;
  const int piece = static_cast<int>(t % L);
  // No early return: every lane takes part in the row sum's shuffles.
  const bool valid = head_row < head_rows;
  float go[8] = {}, ov[8] = {};
  if (valid) {
    load8(dout + head_row * D + piece * 8, go);
    load8(out + head_row * D + piece * 8, ov);
  }
  const float dlt = row_sum<L>(dot8(go, ov));
  if (!valid) return;
  if (piece == 0) delta[head_row] = dlt;
  float4* p = reinterpret_cast<float4*>(dq + head_row * D + piece * 8);
  p[0] = make_float4(0, 0, 0, 0);
  p[1] = make_float4(0, 0, 0, 0);
}

// Backward depth part: each slot's probability and score gradient per query head, stored by the
// first lane of the slot's row, and the slots' part of dq. After backward_prepare (kPrepare
// false) it adds into dq with atomics, since the sequence part may add at the same time. With
// kPrepare it is backward_prepare too, and runs before the sequence kernel: it forms delta from
// dout and out itself and stores dq, so dq is neither zeroed first nor read back by atomics, and
// dout is read once for both.
template <int D, int G, bool kPrepare>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    depth_backward_stream(Dims s, const bf16* __restrict__ dout, const bf16* __restrict__ q,
                          const bf16* __restrict__ out, const float* __restrict__ lse,
                          float* __restrict__ delta, const bf16* __restrict__ depth_k,
                          const bf16* __restrict__ depth_v, float* __restrict__ dq,
                          float* __restrict__ probs, float* __restrict__ dscores) {
  constexpr int L = D / 8;
  constexpr int kRows = 32 / L;
  constexpr int U = kDepthBackwardUnroll<G>;
  const int64_t w = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  if (w >= int64_t{s.B} * s.T * s.Hk) return;
  const int lane = threadIdx.x % 32;
  const int piece = lane % L;
  const int group = lane / L;
  const int kvh = static_cast<int>(w % s.Hk);
  const int64_t row = w / s.Hk;
  const int64_t slot0 = w * D + piece * 8;
  const int64_t qh0 = row * s.Hq + int64_t{kvh} * G;
  const float to_log2 = s.scale * kLog2e;
  // q and dout stay packed (bf16) in registers and are widened at each use, which keeps G = 8
  // free of spills.
  uint4 q_raw[G], go_raw[G];
  float lse2[G], dlt[G];
  if constexpr (kPrepare) {
    uint4 out_raw[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int64_t at = (qh0 + g) * D + piece * 8;
      q_raw[g] = *reinterpret_cast<const uint4*>(q + at);
      go_raw[g] = *reinterpret_cast<const uint4*>(dout + at);
      out_raw[g] = *reinterpret_cast<const uint4*>(out + at);
      lse2[g] = lse[qh0 + g] * kLog2e;
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float go[8], ov[8];
      unpack8(go_raw[g], go);
      unpack8(out_raw[g], ov);
      dlt[g] = row_sum<L>(dot8(go, ov));
    }
    if (lane == 0) {
#pragma unroll
      for (int g = 0; g < G; ++g) delta[qh0 + g] = dlt[g];
    }
  } else {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int64_t at = (qh0 + g) * D + piece * 8;
      q_raw[g] = *reinterpret_cast<const uint4*>(q + at);
      go_raw[g] = *reinterpret_cast<const uint4*>(dout + at);
      dlt[g] = delta[qh0 + g];
      lse2[g] = lse[qh0 + g] * kLog2e;
    }
  }
  const int64_t units = int64_t{s.B} * s.T * s.Hk;
  float dqa[G][8] = {};
  for (int j0 = 0; j0 < s.S; j0 += kRows * U) {
    uint4 k_raw[U], v_raw[U];
    load_slot_rows<U, kRows>(s, j0, group, slot0, depth_k, depth_v, k_raw, v_raw);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = j0 + u * kRows + group;
      float kk[8], vv[8];
      unpack8(k_raw[u], kk);
      unpack8(v_raw[u], vv);
      float p_group[G], ds_group[G];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float qv[8], go[8];
        unpack8(q_raw[g], qv);
        unpack8(go_raw[g], go);
        const float sc = row_sum<L>(dot8(qv, kk));
        const float dp = row_sum<L>(dot8(go, vv));
        // Past the last slot k and v are zero; p is zeroed so that no inf * 0 can arise.
        const float p = j < s.S ? exp2f(sc * to_log2 - lse2[g]) : 0.0f;
        const float ds = p * (dp - dlt[g]) * s.scale;
#pragma unroll
        for (int e = 0; e < 8; ++e) dqa[g][e] += ds * kk[e];
        p_group[g] = p;
        ds_group[g] = ds;
      }
      if (piece == 0 && j < s.S) {  // one access per head group (G = 2, 4, 8)
        const int64_t at = depth_stats_index(s.S, units, G, j, w, 0);
        store_vec<G>(probs + at, p_group);
        store_vec<G>(dscores + at, ds_group);
      }
    }
  }
#pragma unroll
  for (int g = 0; g < G; ++g) {
#pragma unroll
    for (int e = 0; e < 8; ++e) dqa[g][e] = group_sum<L>(dqa[g][e]);
  }
  // The stores of head g's dq by the lanes of row group g % kRows; the atomics all by group 0:
  // split over the groups they measured slower at G = 4, (2, 4096, 32, 8, 128) S 32 3.46 ms
  // against 3.36-3.42.
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (kPrepare ? g % kRows == group : group == 0) {
      float* p = dq + (qh0 + g) * D + piece * 8;
      if constexpr (kPrepare) {
        float4* p4 = reinterpret_cast<float4*>(p);
        p4[0] = make_float4(dqa[g][0], dqa[g][1], dqa[g][2], dqa[g][3]);
        p4[1] = make_float4(dqa[g][4], dqa[g][5], dqa[g][6], dqa[g][7]);
      } else {
        atomic_add4(p, dqa[g][0], dqa[g][1], dqa[g][2], dqa[g][3]);
        atomic_add4(p + 4, dqa[g][4], dqa[g][5], dqa[g][6], dqa[g][7]);
      }
    }
  }
}

// ============================ depth slot gradients ============================
// d_depth_k and d_depth_v of up to C slots (the model passes both layers' slots of a pair of
// producing layers, so that each reader is read once for them), summed over the layers that read
// them: one thread owns V values of one (row, KV head) row in each slot, keeps the sums in
// registers across all readers and writes them once. Per reader it reads the q and dout rows of
// the group's query heads (bf16) and a probability and score gradient per head and slot. A launch
// forms C consecutive slots of the readers (given by where their statistics lie) into d_depth_k
// and d_depth_v, which point at the first one's gradient.
constexpr int kMaxPullReaders = 32;
constexpr int kMaxPullSlots = 4;
constexpr int kPullThreads = 256;

struct PullReaders {
  const bf16* q[kMaxPullReaders];
  const bf16* dout[kMaxPullReaders];
  const float* probs[kMaxPullReaders];
  const float* dscores[kMaxPullReaders];
  // Where the launch's slot c of the unit u's heads starts in reader i's probs and dscores:
  // stats_at[i][c] + u stats_step[i][c] (moda/depth_stats_layout.hpp), formed on the host: the
  // index arithmetic per slot and reader cost the kernel a tenth of its time at G = 3.
  int64_t stats_at[kMaxPullReaders][kMaxPullSlots];
  int stats_step[kMaxPullReaders][kMaxPullSlots];
  int count;
};

// GT is the group size G when it is a compile-time constant (the loads of a reader's heads are then
// issued together), 0 for the run-time s.G.
template <int V, int C, int GT>
__global__ void __launch_bounds__(kPullThreads)
    depth_slot_backward_kernel(Dims s, bool accumulate, const __grid_constant__ PullReaders readers,
                               float* __restrict__ d_depth_k, float* __restrict__ d_depth_v,
                               bf16* __restrict__ last_dv, int64_t last_dv_ld) {
  const int G = GT > 0 ? GT : s.G;
  const int lanes = s.d / V;
  const int64_t thread = blockIdx.x * int64_t{kPullThreads} + threadIdx.x;
  const int64_t unit = thread / lanes;  // row * Hk + KV head
  if (unit >= int64_t{s.B} * s.T * s.Hk) return;
  const int piece = static_cast<int>(thread % lanes);
  const int64_t qh0 = unit / s.Hk * s.Hq + unit % s.Hk * G;
  float gk[C][V] = {}, gv[C][V] = {};
  // Two readers' loads in flight pay at G >= 4 and cost at G <= 3 (measured, moda_attention.md).
  constexpr int kReaderUnroll = GT >= 4 ? 2 : 1;
#pragma unroll kReaderUnroll
  for (int i = 0; i < readers.count; ++i) {
    const bf16* q = readers.q[i] + qh0 * s.d + piece * V;
    const bf16* dout = readers.dout[i] + qh0 * s.d + piece * V;
    // The launch's slot c's values of the unit's heads are adjacent.
    const auto stats = [&](int c) {
      return readers.stats_at[i][c] + unit * readers.stats_step[i][c];
    };
    if constexpr (GT > 0) {
      // The group's probabilities and score gradients in one access per slot.
      float p[C][GT], ds[C][GT];
#pragma unroll
      for (int c = 0; c < C; ++c) {
        load_vec<GT>(readers.probs[i] + stats(c), p[c]);
        load_vec<GT>(readers.dscores[i] + stats(c), ds[c]);
      }
#pragma unroll
      for (int g = 0; g < GT; ++g) {
        float qv[V], go[V];
        load_vec<V>(q + g * s.d, qv);
        load_vec<V>(dout + g * s.d, go);
#pragma unroll
        for (int c = 0; c < C; ++c) {
#pragma unroll
          for (int e = 0; e < V; ++e) {
            gk[c][e] += ds[c][g] * qv[e];
            gv[c][e] += p[c][g] * go[e];
          }
        }
      }
    } else {
      for (int g = 0; g < s.G; ++g) {
        float qv[V], go[V];
        load_vec<V>(q + g * s.d, qv);
        load_vec<V>(dout + g * s.d, go);
#pragma unroll
        for (int c = 0; c < C; ++c) {
          const float p = readers.probs[i][stats(c) + g];
          const float ds = readers.dscores[i][stats(c) + g];
#pragma unroll
          for (int e = 0; e < V; ++e) {
            gk[c][e] += ds * qv[e];
            gv[c][e] += p * go[e];
          }
        }
      }
    }
  }
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int64_t at = int64_t{c} * s.slot_stride + unit * s.d + piece * V;
    if (accumulate) {
      float old_k[V], old_v[V];
      load_vec<V>(d_depth_k + at, old_k);
      load_vec<V>(d_depth_v + at, old_v);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        gk[c][e] += old_k[e];
        gv[c][e] += old_v[e];
      }
    }
    // Whole 16-byte stores: scalar ones would cost the L2 one partial-sector write per value.
    store_vec<V>(d_depth_k + at, gk[c]);
    if (c == C - 1 && last_dv != nullptr) {
      store_vec<V>(last_dv + unit / s.Hk * last_dv_ld + unit % s.Hk * s.d + piece * V, gv[c]);
    } else {
      store_vec<V>(d_depth_v + at, gv[c]);
    }
  }
}

// =============================== tensor-core kernels ===============================
// Hopper warpgroup MMA (wgmma.cuh). Fragment layouts, per warp (g = lane / 4, t4 = lane % 4):
//   accumulator, 16 x N: c[n][0..1] (g, 8n + 2t4..+1)  c[n][2..3] (g+8, 8n + 2t4..+1)
//   A from registers, 16 x 16: a0 (g, 2t4..+1)  a1 (g+8, 2t4..)  a2 (g, 2t4+8..)  a3 (g+8, 2t4+8..)
// so two adjacent accumulator tiles of P (16 x 16 keys) are exactly an A fragment, as in
// FlashAttention-2: P and dS go from the score accumulators to the next MMA without shared memory.

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// A fragment of k-step kk from the C fragments of n-tiles 2kk and 2kk+1.
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&lo)[4],
                                       const float (&hi)[4]) {
  a[0] = pack_bf16(lo[0], lo[1]);
  a[1] = pack_bf16(lo[2], lo[3]);
  a[2] = pack_bf16(hi[0], hi[1]);
  a[3] = pack_bf16(hi[2], hi[3]);
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(wgmma::smem_addr(dst)),
               "l"(src), "r"(valid ? 16 : 0));
}
// An L2 policy that evicts the lines it marks first, and a 16-byte store under it: for output
// written once and not read again by the kernel, so that it does not push out the lines that other
// blocks read again.
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
__device__ __forceinline__ void store16_evict_first(float* dst, float4 x, uint64_t policy) {
  asm volatile("st.global.L2::cache_hint.v4.f32 [%0], {%1, %2, %3, %4}, %5;\n" ::"l"(dst), "f"(x.x),
               "f"(x.y), "f"(x.z), "f"(x.w), "l"(policy)
               : "memory");
}
// A slot row's 16-byte pieces of K and V copied under an L2 evict-first policy (read once: they
// should not push out the q, dout and dq lines that the sequence blocks read again). Not inlined on
// purpose: inlined into the sole reader's kernels, ptxas 13.0 gave these copies a cache-policy
// descriptor in a uniform register it never set (desc[UR1]) or overwrote after setting it, and
// they faulted with an illegal instruction, whether the policy came from createpolicy, an
// immediate or a kernel parameter; in a function of its own the descriptor is set where it is used
// (docs/kernels/moda_attention.md, twentieth session). The policy is createpolicy.fractional
// .L2::evict_first's with fraction 1.0 (as read back on the H200).
__device__ __noinline__ void cp_async16_pair_evict_first(uint32_t dst_k, uint32_t dst_v,
                                                         const void* src_k, const void* src_v,
                                                         int src_bytes) {
  constexpr uint64_t kEvictFirst = 0x12F0000000000000ull;
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(dst_k),
               "l"(src_k), "r"(src_bytes), "l"(kEvictFirst));
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(dst_v),
               "l"(src_v), "r"(src_bytes), "l"(kEvictFirst));
}
// The smallest group size at which the sole reader's beside kernel takes these copies
// (attention_backward: measured faster at G = 8, slower at G = 2).
constexpr int kMinEvictFirstLoadGroup = 8;
// 4-byte copy (through L1: the 16-byte .cg form is the only one that bypasses it).
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(wgmma::smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

constexpr int kTile = 64;  // keys per tile (forward) and per warpgroup (backward)

// Epilogue of the tensor-core forward kernels: the thread's rows row_lo and row_lo + 8 (C-fragment
// layout), normalized by their complete row sums, to out (bf16) or, with depth slots left to the
// streaming kernel, o_seq (fp32); lse in natural-log units.
template <int D>
__device__ __forceinline__ void store_forward_rows(const Dims& s, int b, int h, int row_lo,
                                                   const float (&o)[D / 8][4], const float (&m)[2],
                                                   const float (&l)[2], bf16* out, float* o_seq,
                                                   float* lse) {
  const int t4 = threadIdx.x % 4;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = row_lo + 8 * i;
    if (row >= s.T) continue;
    const float inv = 1.0f / l[i];
    const int64_t at = ((int64_t{b} * s.T + row) * s.Hq + h) * D;
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) {
      const int col = dn * 8 + t4 * 2;
      const float x0 = o[dn][2 * i] * inv, x1 = o[dn][2 * i + 1] * inv;
      if (o_seq != nullptr) {
        *reinterpret_cast<float2*>(o_seq + at + col) = make_float2(x0, x1);
      } else {
        *reinterpret_cast<__nv_bfloat162*>(out + at + col) = __floats2bfloat162_rn(x0, x1);
      }
    }
    if (t4 == 0) lse[at / D] = (m[i] + log2f(l[i])) * kLn2;
  }
}

// The tile and group (a (b, heads) of the forward, a (b, KV head, head block) of the backward) of
// block `at` of a 1D grid of n_tiles x n_groups blocks. In work order the tiles come in order of
// their work (tile 0, the most, of every group first); otherwise the tiles of one group are
// adjacent, so that the blocks running together read the same tiles of the other operand.
struct BlockTile {
  int tile, group;
};
__device__ __forceinline__ BlockTile block_tile(int at, int n_tiles, int n_groups,
                                                bool work_order) {
  return work_order ? BlockTile{at / n_groups, at % n_groups}
                    : BlockTile{at % n_tiles, at / n_tiles};
}

// ---- Hopper forward: wgmma with operands read from swizzled shared memory ----
// A block of two warpgroups takes 128 query rows (64 per warpgroup) and walks 64-key tiles;
// S = Q K^T reads both operands from shared memory, O += P V takes P from registers (the score
// accumulators are already in the A-fragment layout) and V as an MN-major operand of the same
// tile. K and V are double-buffered with cp.async. At head size 64 the softmax's instructions
// outnumber the tensor cores' time, so its per-score work is one FFMA, one EX2, one FMNMX, one
// FADD and half a conversion.
//
// With depth slots (kDepth) the block also takes the S slots of its tokens, one slot per step:
// the slot's K and V for the block's tokens are staged by cp.async with the step's key tile and
// added to the online softmax at the start of the step (add_depth_slot), while other warps' MMAs
// and softmax run. The slots' loads thus run under the sequence part's math instead of in a
// memory-bound pass of their own, and no partial output goes through global memory. Blocks with
// fewer key tiles than slots take the remaining slots in steps of their own. With an even group
// size (kHeads = 2) a block takes 64 tokens of two heads of one group, a warpgroup each, so that a
// slot row is read once for both: with one head per block every slot row was read G times from
// L2, and that bound the fused forward (at S = 72 it was no faster than the two passes).
//
// At head size 128 (kHeads = 2 only) a slot's K and V for the block's 64 tokens are as large as a
// key tile's, and stages of their own would take the block to 161 KB, one block an SM. There a
// slot takes a step of its own in the key tiles' ring (kSlotsInRing), the steps alternating key
// tile and slot while both remain: 97 KB, two blocks an SM, as without slots.
constexpr int kForwardRows = 128;
constexpr int kForwardThreads = 256;

// Stages of the cp.async ring (loads are issued kForwardStages - 1 steps ahead). With depth slots
// a block needs 113 KB (one head) or 81 KB (two heads), so that two blocks fit on an SM and
// overlap each other's loads and barriers. Measured: four stages at one block per SM (209 KB) made
// the forward slower than the separate depth pass, mostly because the sequence part alone lost
// 0.2 ms at one block per SM; three stages with two heads per block gained nothing.
constexpr int kForwardStages = 2;
template <int D>
constexpr size_t forward_wgmma_smem(bool depth, int heads) {
  // Q, the stages of K and V, at head size 64 with depth slots the stages of one slot's K and V
  // for the block's tokens (at 128 a slot takes a stage of the K and V ring: kSlotsInRing), and
  // room to align the tiles to the 1024-byte swizzle period.
  const int slot_rows = depth && D == 64 ? kForwardRows / heads : 0;
  return sizeof(bf16) * (kForwardRows + 2 * kForwardStages * (kTile + slot_rows)) * D +
         wgmma::kAtomBytes;
}

// Rows [r0, r0 + ROWS) of a [T, D] view into a swizzled tile (wgmma.cuh) by THREADS threads;
// rows at or past T are zero-filled. Each thread keeps one 16-byte column chunk and steps down the
// rows by a multiple of 8, so its swizzled offset is fixed plus a constant per step: the generic
// loop (run-time thread count, index division) cost about 35 instructions per copy, a third of
// the backward's instructions.
template <int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile_swizzled(bf16* dst, const bf16* src, int64_t stride,
                                                   int r0, int T, int thread) {
  constexpr int kChunks = D / 8;
  constexpr int kRowStep = THREADS / kChunks;
  static_assert(THREADS % kChunks == 0 && kRowStep % 8 == 0 && ROWS % kRowStep == 0,
                "each thread must keep its chunk and its rows' swizzle phase");
  const int c = thread % kChunks, r_first = thread / kChunks;
  unsigned char* to =
      reinterpret_cast<unsigned char*>(dst) + wgmma::swizzled_offset(ROWS, r_first, c * 8);
  const bf16* from = src + int64_t{r0 + r_first} * stride + c * 8;
  const int64_t from_step = kRowStep * stride;
#pragma unroll
  for (int j = 0; j < ROWS / kRowStep; ++j) {
    const bool valid = r0 + r_first + j * kRowStep < T;
    cp_async16(to + j * kRowStep * wgmma::kSwizzleBytes, valid ? from + j * from_step : src, valid);
  }
}

// 2^x on the special-function unit; inputs here are <= 0 or -inf, results flush to zero below
// 2^-126 (as exp2f's slow path would only refine).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// ---- the depth slots inside the tensor-core forward ----
// Per token the depth part is a vector-matrix product (one query row against its own S slots), so
// a warp forms its 16 rows' scores for one slot as the diagonal of Q K_slot^T with mma.sync
// m16n8k16 (two 8-token n-tiles, one useful score per column: 8 of 128 products used), and adds
// the values as diag(p) V_slot (k = the 16 tokens). That wastes products but not issue slots: 16
// MMAs and 8 ldmatrix per slot and warp against about 200 instructions per thread on the CUDA
// cores (measured: those made the fused forward slower than the separate streaming pass), and the
// sums land in the C-fragment layout of o (rows g, g + 8, columns 8 dn + 2 t4 and the next).

__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8 x 8 bf16 matrices; lane l gives the address of row l % 8 of matrix l / 8.
template <bool kTranspose>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  if constexpr (kTranspose) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  }
}

// The maximum is moved only when a slot's score exceeds it by more than kDepthRescaleSlack (log2
// units), so most slots skip the rescale; the probabilities stay below 2^slack, and the result is
// the same softmax.
constexpr float kDepthRescaleSlack = 8.0f;

// One slot added to the 16 rows of a warp in the sequence part's own online softmax: o, m (log2
// units), and l, the thread's partial row sums, to which lane t4 = 0 adds the slot's probability
// once for its quad. The warp's queries are the 16 rows at q_rows (shared address inside a
// swizzled [rows][64] Q tile, 8-row aligned), its tokens rows r0 .. r0 + 15 of the slot's K and V,
// staged in swizzled [kTokens][D] tiles. Called between steps, when no MMA of the sequence part
// is in flight on o.
template <int D, int kTokens, int kQRows>
__device__ __forceinline__ void add_depth_slot(float (&o)[D / 8][4], float (&m)[2], float (&l)[2],
                                               uint32_t q_rows, uint32_t k_tile, uint32_t v_tile,
                                               int r0, float sl2) {
  const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4, mat = lane / 8;
  // A fragment's shared address at column c (a multiple of 8) of the rows of one at column 0: in
  // the 128-byte swizzle (tiles and rows 128-byte aligned) the column's chunk is XORed into
  // address bits 4-6, and each further 64 columns are a [rows][64] block on. One base register a
  // matrix rather than an offset a column hoisted out of the steps' loop: at head size 128 the
  // fused forward spilled 104 bytes with those, 92 with these.
  const auto at_column = [](uint32_t base, int rows, int c) {
    return (base ^ static_cast<uint32_t>((c % 64) / 8 * 16)) +
           static_cast<uint32_t>(c / 64 * rows * wgmma::kSwizzleBytes);
  };
  // A: matrices rows 0.. / 8.. of the warp's, columns 16 ks.. / 16 ks + 8.. (the fragment's
  // order). B: matrices columns 16 ks.. and 16 ks + 8.. of the tokens of n-tiles 0 and 1.
  const uint32_t q_base =
      q_rows + wgmma::swizzled_offset(kQRows, (mat % 2) * 8 + lane % 8, (mat / 2) * 8);
  const uint32_t k_base =
      k_tile + wgmma::swizzled_offset(kTokens, r0 + (mat / 2) * 8 + lane % 8, (mat % 2) * 8);
  // Scores: n-tile nt holds the keys of tokens r0 + 8 nt .. r0 + 8 nt + 7.
  float c[2][4] = {};
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    uint32_t qa[4], kf[4];
    ldmatrix_x4<false>(qa, at_column(q_base, kQRows, 16 * ks));
    ldmatrix_x4<false>(kf, at_column(k_base, kTokens, 16 * ks));
    mma_16816(c[0], qa, kf[0], kf[1]);
    mma_16816(c[1], qa, kf[2], kf[3]);
  }
  // Row g's score is C[g][g] of n-tile 0, row g + 8's C[g + 8][g] of n-tile 1: both in lane
  // 4 g + g / 2 of the row's quad.
  const int src = 4 * g + g / 2;
  const bool odd = g % 2 == 1;
  const float sc[2] = {__shfl_sync(0xffffffffu, odd ? c[0][1] : c[0][0], src) * sl2,
                       __shfl_sync(0xffffffffu, odd ? c[1][3] : c[1][2], src) * sl2};
  const bool grow = sc[0] > m[0] + kDepthRescaleSlack || sc[1] > m[1] + kDepthRescaleSlack;
  if (__any_sync(0xffffffffu, grow)) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float m_new = fmaxf(m[i], sc[i]);
      const float alpha = fast_exp2(m[i] - m_new);  // 0 while m is -inf
      m[i] = m_new;
      l[i] *= alpha;
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn) {
        o[dn][2 * i] *= alpha;
        o[dn][2 * i + 1] *= alpha;
      }
    }
  }
  const float p_lo = fast_exp2(sc[0] - m[0]), p_hi = fast_exp2(sc[1] - m[1]);
  if (t4 == 0) {
    l[0] += p_lo;
    l[1] += p_hi;
  }
  // A = diag(p) over the 16 tokens: A[g][g] and A[g + 8][g + 8] sit in lane 4 g + g / 2.
  const bool owner = t4 == g / 2;
  const uint32_t pa[4] = {owner ? pack_bf16(odd ? 0.0f : p_lo, odd ? p_lo : 0.0f) : 0u, 0u, 0u,
                          owner ? pack_bf16(odd ? 0.0f : p_hi, odd ? p_hi : 0.0f) : 0u};
  const uint32_t v_base =
      v_tile +
      wgmma::swizzled_offset(kTokens, r0 + ((lane / 8) % 2) * 8 + lane % 8, (lane / 16) * 8);
#pragma unroll
  for (int dn = 0; dn < D / 8; dn += 2) {
    // B (transposed): matrices tokens r0.., r0 + 8.. of columns 8 dn.., then of 8 dn + 8...
    uint32_t vb[4];
    ldmatrix_x4<true>(vb, at_column(v_base, kTokens, 8 * dn));
    mma_16816(o[dn], pa, vb[0], vb[1]);
    mma_16816(o[dn + 1], pa, vb[2], vb[3]);
  }
}

// The forward's tiles as the per-token depth kernel beside the sequence kernel takes them
// (DepthForwardPlacement::beside): the block of the last head of a (b, tile, KV head) to finish
// publishes it, the depth kernel's warps take runs of its tokens in the order published. In the
// workspace after the sequence part's rows and lse (moda::attention_forward_workspace), zeroed
// before each forward.
static_assert(kForwardRows == moda::kForwardTileTokens, "the workspace's tiles are the blocks'");
struct ForwardQueue {
  unsigned long long next_run;  // the first run of kFollowRunTokens tokens not yet taken
  unsigned long long pickup;    // nonzero once a block of the launch after the sequence kernel ran
  unsigned int published;       // tiles published
  unsigned int unused[3];
  // Then per tile (b, tile, KV head) its heads done, then the tiles in published order (tile + 1;
  // 0 while not yet published).
  __device__ int* arrived() { return reinterpret_cast<int*>(this + 1); }
  __device__ int* order(int64_t tiles) { return arrived() + tiles; }
};
static_assert(sizeof(ForwardQueue) == 8 * sizeof(float), "attention_forward_workspace's room");

// After a block's rows of head h are stored: the last of the G heads of its (b, tile, KV head)
// publishes the tile. The block's stores, after its barrier, are fenced before the count, the
// count before the tile's place in the order (as cooperative groups' grid barrier orders them).
__device__ __forceinline__ void publish_forward_tile(const Dims& s, int b, int qt, int h, int n_qt,
                                                     ForwardQueue* queue) {
  __syncthreads();
  if (threadIdx.x != 0) return;
  __threadfence();
  const int64_t tiles = int64_t{s.B} * n_qt * s.Hk;
  const int tile = (b * n_qt + qt) * s.Hk + h / s.G;
  if (atomicAdd(queue->arrived() + tile, 1) == s.G - 1) {
    __threadfence();
    const unsigned int at = atomicAdd(&queue->published, 1u);
    atomicExch(queue->order(tiles) + at, tile + 1);
  }
}

// kPublish: no slots here; the rows (o_seq, lse: the depth kernel beside combines them) are
// published per tile (publish_forward_tile).
template <int D, bool kDepth, int kHeads, bool kPublish>
__device__ __forceinline__ void seq_forward_body(
    Dims s, const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
    const bf16* __restrict__ depth_k, const bf16* __restrict__ depth_v, bf16* __restrict__ out,
    float* __restrict__ o_seq, float* __restrict__ lse, ForwardQueue* queue, bool work_order) {
  static_assert(!(kDepth && kPublish), "slots are added here or beside, not both");
  static_assert(D == 64 || kHeads == 2 || !kDepth, "slots at head size 128 take two heads a block");
  constexpr int kTokens = kForwardRows / kHeads;
  constexpr bool kSlotsInRing = kDepth && D == 128;
  static_assert(!kSlotsInRing || kTokens == kTile, "a slot's rows fill a key tile's stage");
  // Rows of a warpgroup's Q tile: with two heads each head's [64][D] tile is one of its own.
  constexpr int kQRows = kHeads == 2 ? kTokens : kForwardRows;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = wgmma::smem_addr(smem_raw);
  bf16* sq = reinterpret_cast<bf16*>(
      smem_raw + (((raw + wgmma::kAtomBytes - 1) & ~uint32_t{wgmma::kAtomBytes - 1}) - raw));
  bf16* sk = sq + kForwardRows * D;
  bf16* sv = sk + kForwardStages * kTile * D;
  // With kDepth: one slot's K rows per stage, and its V rows.
  bf16* sdk = kSlotsInRing ? sk : sv + kForwardStages * kTile * D;
  bf16* sdv = kSlotsInRing ? sv : sdk + kForwardStages * kTokens * D;
  // The block's query tile (counted from the last, with the most keys) and (b, heads).
  const int n_qt = (s.T + kTokens - 1) / kTokens;
  const BlockTile bt = block_tile(blockIdx.x, n_qt, s.B * (s.Hq / kHeads), work_order);
  const int qt = n_qt - 1 - bt.tile, bh = bt.group;
  const int h0 = bh % (s.Hq / kHeads) * kHeads, b = bh / (s.Hq / kHeads);
  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int g = lane / 4, t4 = lane % 4;
  const int t0 = qt * kTokens;
  // Warpgroup wg: 64 tokens of one head (the block's 128 tokens of head h0 split in two, or the
  // block's 64 tokens of heads h0 and h0 + 1).
  const int head = h0 + (kHeads == 2 ? wg : 0);
  const int wg_row0 = t0 + (kHeads == 2 ? 0 : wg * 64);
  const int64_t q_stride = int64_t{s.Hq} * D, kv_stride = int64_t{s.Hk} * D;
  const int64_t kv_base = (int64_t{b} * s.T * s.Hk + h0 / s.G) * D;
  const bf16* kb = k + kv_base;
  const bf16* vb = v + kv_base;
  // Key tiles the block needs, slots, and steps: one key tile and one slot each, or with
  // kSlotsInRing one of them, alternating while both remain.
  const int n_kt = (min(t0 + kTokens, s.T) - 1) / kTile + 1;
  const int n_slots = kDepth ? s.S : 0;
  const int n_alternating = kSlotsInRing ? min(n_kt, n_slots) : 0;
  const int n_steps = kSlotsInRing ? n_kt + n_slots : kDepth ? max(n_kt, n_slots) : n_kt;
  // Step j's key tile and slot (-1: none).
  const auto key_of = [&](int j) {
    if constexpr (kSlotsInRing) {
      if (j < 2 * n_alternating) return j % 2 == 0 ? j / 2 : -1;
      return n_kt > n_alternating ? j - n_alternating : -1;
    }
    return !kDepth || j < n_kt ? j : -1;
  };
  const auto slot_of = [&](int j) {
    if constexpr (kSlotsInRing) {
      if (j < 2 * n_alternating) return j % 2 == 1 ? j / 2 : -1;
      return n_slots > n_alternating ? j - n_alternating : -1;
    }
    return j < n_slots ? j : -1;
  };
  // Step j's key tile and slot into stage j % kForwardStages, as one cp.async group.
  const auto load_step = [&](int j) {
    const int stage = j % kForwardStages;
    if (const int kt = key_of(j); kt >= 0) {
      load_tile_swizzled<D, kTile, kForwardThreads>(sk + stage * kTile * D, kb, kv_stride,
                                                    kt * kTile, s.T, tid);
      load_tile_swizzled<D, kTile, kForwardThreads>(sv + stage * kTile * D, vb, kv_stride,
                                                    kt * kTile, s.T, tid);
    }
    if (const int slot = slot_of(j); slot >= 0) {
      load_tile_swizzled<D, kTokens, kForwardThreads>(sdk + stage * kTokens * D,
                                                      depth_k + slot * s.slot_stride + kv_base,
                                                      kv_stride, t0, s.T, tid);
      load_tile_swizzled<D, kTokens, kForwardThreads>(sdv + stage * kTokens * D,
                                                      depth_v + slot * s.slot_stride + kv_base,
                                                      kv_stride, t0, s.T, tid);
    }
  };
#pragma unroll
  for (int hh = 0; hh < kHeads; ++hh) {
    load_tile_swizzled<D, kTokens, kForwardThreads>(
        sq + hh * kTokens * D, q + (int64_t{b} * s.T * s.Hq + h0 + hh) * D, q_stride, t0, s.T, tid);
  }
  // Groups: steps 0 .. kForwardStages - 2 ahead (Q with step 0), then one per step, empty ones
  // too, so that step kt's group is complete when at most kForwardStages - 1 newer ones are
  // pending.
#pragma unroll
  for (int j = 0; j < kForwardStages - 1; ++j) {
    if (j < n_steps) load_step(j);
    cp_async_commit();
  }

  const float sl2 = s.scale * kLog2e;          // scores to log2 units
  const int row_lo = wg_row0 + warp * 16 + g;  // this thread's rows: row_lo and row_lo + 8
  // The last key tile this warpgroup's rows can see.
  const int wg_last_kt = (min(wg_row0 + 63, s.T - 1)) / kTile;
  const uint32_t q_tile = wgmma::smem_addr(sq) + wg * (kHeads == 2 ? kTokens * D * sizeof(bf16)
                                                                   : 64 * wgmma::kSwizzleBytes);
  float o[D / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // m in log2 units
  for (int step = 0; step < n_steps; ++step) {
    const int buf = step % kForwardStages;
    if (step + kForwardStages - 1 < n_steps) load_step(step + kForwardStages - 1);
    cp_async_commit();
    cp_async_wait<kForwardStages - 1>();
    wgmma::fence_shared_for_async();
    __syncthreads();
    if constexpr (kDepth) {
      // The slot's scores and values (mma.sync); other warps' wgmma and softmax run meanwhile.
      if (slot_of(step) >= 0) {
        add_depth_slot<D, kTokens, kQRows>(o, m, l, q_tile + warp * 16 * wgmma::kSwizzleBytes,
                                           wgmma::smem_addr(sdk + buf * kTokens * D),
                                           wgmma::smem_addr(sdv + buf * kTokens * D),
                                           row_lo - g - t0, sl2);
      }
    }
    if (const int kt = key_of(step); kt >= 0 && kt <= wg_last_kt && wg_row0 < s.T) {
      const uint32_t k_tile = wgmma::smem_addr(sk + buf * kTile * D);
      const uint32_t v_tile = wgmma::smem_addr(sv + buf * kTile * D);
      float sc[kTile / 8][4];
      wgmma::fence();
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        wgmma::mma_64x64_ss<false, false>(sc, wgmma::k_major(q_tile, kQRows, ks),
                                          wgmma::k_major(k_tile, kTile, ks), ks > 0);
      }
      wgmma::commit();
      wgmma::wait<0>();
      if (kt * kTile + kTile - 1 > wg_row0) {  // keys past some of the warpgroup's rows
#pragma unroll
        for (int nt = 0; nt < kTile / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            if (kt * kTile + nt * 8 + t4 * 2 + (e & 1) > row_lo + (e >> 1) * 8)
              sc[nt][e] = -INFINITY;
          }
        }
      }
      float alpha[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < kTile / 8; ++nt)
          mx = fmaxf(mx, fmaxf(sc[nt][2 * i], sc[nt][2 * i + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // Finite from the first tile on: key 0 is visible to every row.
        const float m_new = fmaxf(m[i], mx * sl2);
        alpha[i] = fast_exp2(m[i] - m_new);
        m[i] = m_new;
        float row_sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < kTile / 8; ++nt) {
          sc[nt][2 * i] = fast_exp2(fmaf(sc[nt][2 * i], sl2, -m_new));
          sc[nt][2 * i + 1] = fast_exp2(fmaf(sc[nt][2 * i + 1], sl2, -m_new));
          row_sum += sc[nt][2 * i] + sc[nt][2 * i + 1];
        }
        l[i] = l[i] * alpha[i] + row_sum;
      }
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn) {
        o[dn][0] *= alpha[0];
        o[dn][1] *= alpha[0];
        o[dn][2] *= alpha[1];
        o[dn][3] *= alpha[1];
      }
      uint32_t pa[kTile / 16][4];
#pragma unroll
      for (int kk = 0; kk < kTile / 16; ++kk) c_to_a(pa[kk], sc[2 * kk], sc[2 * kk + 1]);
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < kTile / 16; ++kk) {
        if constexpr (D == 64) {
          wgmma::mma_64x64_rs(o, pa[kk], wgmma::mn_major(v_tile, kTile, kk));
        } else {
          wgmma::mma_64x128_rs(o, pa[kk], wgmma::mn_major(v_tile, kTile, kk));
        }
      }
      wgmma::commit();
      wgmma::wait<0>();
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
  }
  store_forward_rows<D>(s, b, head, row_lo, o, m, l, out, o_seq, lse);
  if constexpr (kPublish) publish_forward_tile(s, b, qt, head, n_qt, queue);
}

template <int D, bool kDepth, int kHeads>
__global__ void __launch_bounds__(kForwardThreads, kDepth ? 2 : 0)
    seq_forward_wgmma(Dims s, const bf16* __restrict__ q, const bf16* __restrict__ k,
                      const bf16* __restrict__ v, const bf16* __restrict__ depth_k,
                      const bf16* __restrict__ depth_v, bf16* __restrict__ out,
                      float* __restrict__ o_seq, float* __restrict__ lse, bool work_order) {
  seq_forward_body<D, kDepth, kHeads, false>(s, q, k, v, depth_k, depth_v, out, o_seq, lse, nullptr,
                                             work_order);
}

// The sequence part beside depth_forward_beside (DepthForwardPlacement::beside), its registers
// bounded so that two of its blocks and the depth kernel's block of kFwdBesideWarps warps at
// kFwdBesideRegisters fit on an SM: 2 x 256 x 104 + 128 x 96 = 65,536 (116 unbounded).
constexpr int kSeqBesideRegisters = 104;
__global__ void __maxnreg__(kSeqBesideRegisters)
    seq_forward_publish(Dims s, const bf16* __restrict__ q, const bf16* __restrict__ k,
                        const bf16* __restrict__ v, float* __restrict__ o_seq,
                        float* __restrict__ seq_lse, ForwardQueue* queue, bool work_order) {
  seq_forward_body<64, false, 1, true>(s, q, k, v, nullptr, nullptr, nullptr, o_seq, seq_lse, queue,
                                       work_order);
}

// Epilogue of the backward kernel: adds the block's dK, dV (C-fragment layout, the thread's keys
// key_lo and key_lo + 8) to the fp32 accumulators, with atomics when several blocks share the
// keys (a group of query heads split over blocks).
template <int D>
__device__ __forceinline__ void store_key_gradients(const Dims& s, int64_t kv_base, int key_lo,
                                                    int64_t kv_stride, bool shared_keys,
                                                    const float (&dk_acc)[D / 8][4],
                                                    const float (&dv_acc)[D / 8][4], float* dk,
                                                    float* dv) {
  const int t4 = threadIdx.x % 4;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int key = key_lo + 8 * i;
    if (key >= s.T) continue;
    const int64_t at = kv_base + int64_t{key} * kv_stride;
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) {
      const int col = nt * 8 + t4 * 2;
      if (shared_keys) {
        atomic_add2(dk + at + col, dk_acc[nt][2 * i], dk_acc[nt][2 * i + 1]);
        atomic_add2(dv + at + col, dv_acc[nt][2 * i], dv_acc[nt][2 * i + 1]);
        continue;
      }
      float2* pk = reinterpret_cast<float2*>(dk + at + col);
      float2* pv = reinterpret_cast<float2*>(dv + at + col);
      float2 xk = *pk, xv = *pv;
      xk.x += dk_acc[nt][2 * i];
      xk.y += dk_acc[nt][2 * i + 1];
      xv.x += dv_acc[nt][2 * i];
      xv.y += dv_acc[nt][2 * i + 1];
      *pk = xk;
      *pv = xv;
    }
  }
}

// ---- Hopper backward: wgmma, two warpgroups per 128 keys ----
// The block owns keys [128 kb, 128 kb + 128) of one KV head, warpgroup w the 64 keys from 64 w
// (warp: 16 of them, the rows of the wgmma fragments), for G / head_blocks of the group's query
// heads, and walks the (query head, 64-query tile) pairs at or after its keys, loading the next
// pair's Q, dO, lse and delta (shared by both warpgroups) while it computes the current one:
//   S^T = K Q^T, dP^T = V dO^T           per warpgroup; both operands K-major in shared memory
//   dV += P^T dO, dK += dS^T Q           P^T, dS^T from registers, dO and Q N-major
//   dQ  = dS K                           over all 128 keys: both warpgroups' dS^T stored to shared
//                                        memory, read M-major; warpgroup w computes half of the
//                                        head's columns, K read N-major
// dK and dV stay in registers; dQ is added with fp32 atomics, once per 128 keys (the atomics of
// the one-warpgroup, 64-key design cost 0.41 of its 1.72 ms at (4, 4096, 16, 8), d 64). dQ runs
// one step behind: its MMA is issued with the next step's S^T and its atomics are issued while
// S^T and dP^T run, so a step has one barrier (dS^T is double-buffered); 5% of the backward.
constexpr int kBackwardQueries = 64;
constexpr int kBackwardKeys = 2 * kTile;
constexpr int kBackwardThreads = 256;

template <int D>
constexpr size_t backward_wgmma_smem() {
  // K, V, two buffers each of Q, dO, dS^T (128 x 64), lse and delta, and alignment room.
  return sizeof(bf16) * (2 * kBackwardKeys * D + 4 * kBackwardQueries * D +
                         2 * kBackwardKeys * kBackwardQueries) +
         sizeof(float) * 4 * kBackwardQueries + wgmma::kAtomBytes;
}

// ---- the depth part at the end of the tensor-core backward ----
// Once a block's sequence part is done (its dK, dV stored, its shared memory free), the block takes
// the depth part of the same tokens: per token, the S slots against the group's G query heads.
// Since a token's slots are its own, the MMAs run per token, with the slots as M (16 per item) and
// the heads as N (8; G <= 8 of them used) instead of the forward's diagonal products, which waste
// 15 of 16 products in each of G passes:
//   scores^T = K_slot q^T, dP^T = V_slot dO^T    A: slot rows (ldmatrix), B: the token's q, dO rows
//   dq^T    += K_slot^T dS^T                      A: slot rows transposed (ldmatrix.trans), B: dS^T
// 12 mma.sync and 12 ldmatrix per 16 slots of a token for all G heads. Each warp streams its
// (token, KV head) pairs' items of 16 slots through a ring of kStages cp.async stages, so its
// loads run ahead of its math. Blocks reach the tail at different times, so one SM's tail loads
// while other SMs run their sequence parts; the streaming pass beside this kernel overlapped only
// partly. In the tail the code forms about 36 GB/s of slot rows per SM; Nsight's stall sampling
// there (S 72) found its 2 warps per scheduler waiting on their own instruction chains (fixed-
// latency waits and issue 62% of its samples, memory 2%), which is why the same code in a kernel
// beside the sequence kernel (depth_backward_beside, 4 warps on every SM) is faster: its latency
// hides under the sequence part's math (moda_attention.md, "The backward's depth part beside the
// sequence kernel on every SM"). At head size 128
// the streaming pass stays: a tail there (2 stages of 12 KB per warp) was slower at the 1.5B
// shapes, (2, 4096, 16, 8) S 16 1.60 -> 1.78 ms (the pass beside the sequence kernel cost almost
// nothing there: 1.60 against 1.09 ms at S 0 with 0.50 of slot gradients), and MoDA-1.5B ran at
// 0.889x of OLMo2-1.5B (0.896x to 0.917x before).
constexpr int kTailSlots = 16;
// Four stages, three with kSlotGrads: its slot-gradient rows (depth_smem) leave no room for four.
template <bool kSlotGrads>
constexpr int kTailStages = kSlotGrads ? 3 : 4;
constexpr int kTailHeads = 8;  // the N of the MMAs: G <= 8
template <int D>
struct TailStage {
  // Byte offsets in a stage: the item's K and V slot rows ([16][D], swizzled as a wgmma tile),
  // with a pair's first item its q and dout rows ([8][D], rows < G loaded), lse and delta.
  static constexpr int k = 0;
  static constexpr int v = k + kTailSlots * D * 2;
  static constexpr int q = v + kTailSlots * D * 2;
  static constexpr int dout = q + kTailHeads * D * 2;
  static constexpr int lse = dout + kTailHeads * D * 2;
  static constexpr int delta = lse + kTailHeads * 4;
  static constexpr int bytes = delta + kTailHeads * 4;
  static_assert(D == 64, "rows of one 128-byte swizzle block");
  static_assert(kTailHeads * D * 4 <= 2 * kTailHeads * D * 2, "dq^T fits where q and dout were");
};
// With kSlotGrads a warp's [16][D] floats of slot gradients, rows padded by 8 floats: a fragment
// store (rows g, columns 8 nt + 2 t4) then meets each bank twice, 256 bytes in the fewest
// wavefronts, and a row's 16-byte reads are contiguous. An XOR swizzle of the 8-value groups
// needs no padding, but its per-lane addresses spilled 56 bytes at the beside kernel's 112
// registers, where the padded rows spill none.
template <int D>
constexpr int kSlotRowFloats = D + 8;
// The shared memory of kWarps warps of the depth part: their rings of stages, and with kSlotGrads
// their slot-gradient rows.
template <int D, int kWarps, int kStages, bool kSlotGrads>
constexpr size_t depth_smem() {
  return size_t{kWarps} *
         (kStages * TailStage<D>::bytes + (kSlotGrads ? kTailSlots * kSlotRowFloats<D> * 4 : 0));
}
// The tail's: at most the 227 KB a block may have.
template <int D, bool kSlotGrads>
constexpr size_t depth_tail_smem() {
  constexpr size_t bytes =
      depth_smem<D, kBackwardThreads / 32, kTailStages<kSlotGrads>, kSlotGrads>();
  static_assert(bytes <= 227 * 1024);
  return bytes;
}

// Byte offset of 16-byte chunk c of row r in a [rows][64] bf16 tile with the 128-byte swizzle:
// wgmma::swizzled_offset(rows, r, 8 c) without its term for columns past 64, which ptxas did not
// fold away here (6 more registers and 8 more instructions in the kernel).
__device__ __forceinline__ uint32_t tail_offset(int r, int c) {
  return static_cast<uint32_t>(r * wgmma::kSwizzleBytes + ((c ^ (r % 8)) * 16));
}

// A C fragment of [16 slots] x [8 heads] (rows the slots) as the B operand of an MMA whose k is
// the slots and n the heads: lane (g, t4) needs slots 2 t4, 2 t4 + 1 (and + 8) of head g, which
// lanes 8 t4 + g / 2 and 8 t4 + 4 + g / 2 hold as the (g % 2)-th half of a packed pair of heads.
__device__ __forceinline__ void slots_c_to_b(const float (&x)[4], uint32_t& b0, uint32_t& b1) {
  const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const uint32_t lo = pack_bf16(x[0], x[1]), hi = pack_bf16(x[2], x[3]);
  const int src = 8 * t4 + g / 2;
  const uint32_t lo_a = __shfl_sync(0xffffffffu, lo, src);
  const uint32_t lo_b = __shfl_sync(0xffffffffu, lo, src + 4);
  const uint32_t hi_a = __shfl_sync(0xffffffffu, hi, src);
  const uint32_t hi_b = __shfl_sync(0xffffffffu, hi, src + 4);
  const uint32_t sel = g % 2 == 1 ? 0x7632u : 0x5410u;
  b0 = __byte_perm(lo_a, lo_b, sel);
  b1 = __byte_perm(hi_a, hi_b, sel);
}

// Lane (g, t4) of an 8 x 8 bf16 matrix held as A, B or C fragments (row g, columns 2 t4 and
// 2 t4 + 1) gets row g of its transpose.
__device__ __forceinline__ uint32_t transpose_8x8(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

__device__ __forceinline__ void mma_1688(float (&c)[4], const uint32_t (&a)[2], uint32_t b) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(b));
}

// ---- the forward's depth part per token, after or beside the sequence kernel ----
// DepthForwardPlacement::after (head sizes 64 and 128, G <= 8): a warp takes (token, KV head)
// pairs in turn, 16 slots of a pair at a time, with the group's G heads as the MMA's N, the
// backward tail's form: scores^T = K_slots q^T, an online softmax per head, o^T += V_slots^T P.
// Each slot row is read once for all G heads, where the fused forward's blocks (two heads each)
// read it G / 2 times at head size 64; at G = 8 that is 4 times the bytes. After a pair's last
// slots the warp combines its rows with the sequence part's (o_seq, lse) as depth_forward_stream
// does. A warp keeps the loads of kFwdTailStages - 1 items ahead in flight across pairs; an item
// that ends a pair also brings the pair's o_seq rows and lse. Stages per warp: 3 of 7.2 KB at
// head size 64, 2 of 14.4 KB at 128 (6 warps an SM rather than 4).
// DepthForwardPlacement::beside (head size 64): the same warps in a block of kFwdBesideWarps on
// every SM beside seq_forward_publish's two blocks, taking runs of kFollowRunTokens tokens of the
// tiles that kernel has published (ForwardQueue), so that the slot rows stream under the sequence
// math; a second launch after the sequence kernel takes the runs left on every warp the SMs hold.
template <int D>
constexpr int kFwdTailStages = D == 64 ? 3 : 2;
constexpr int kFwdTailWarps = 2;  // small blocks: the SM takes as many as its shared memory holds
// Beside: 4 warps at 96 registers, one per scheduler, next to two sequence blocks at 104
// (registers_fit); 2 warps beside blocks at 106-112 or 1 beside 118 left room for one sequence
// block on the schedulers that held them, and the forward was slower than after the kernel.
constexpr int kFwdBesideWarps = 4;
constexpr int kFwdBesideRegisters = 96;
constexpr int kFollowRunTokens = 16;
template <int D>
struct FwdTailStage {
  // Byte offsets in a stage: the item's K and V slot rows ([16][D], swizzled), with a pair's
  // first item its q rows ([8][D], rows < G loaded), with its last the sequence part's rows
  // (fp32 [8][D]) and lse (fp32: beside, the 16-byte pieces that hold the pair's G), and the
  // item's pair. The K rows, once used, hold the depth part's fp32 rows.
  static constexpr int k = 0;
  static constexpr int v = k + kTailSlots * D * 2;
  static constexpr int q = v + kTailSlots * D * 2;
  static constexpr int o_seq = q + kTailHeads * D * 2;
  static constexpr int lse = o_seq + kTailHeads * D * 4;
  static constexpr int pair = lse + 3 * 16;
  static constexpr int bytes = (pair + 8 + 15) / 16 * 16;
  static_assert(kTailHeads * D * 4 <= kTailSlots * D * 2, "the depth rows fit in K's place");
};
template <int D, int kWarps>
constexpr size_t depth_forward_tail_smem() {
  return size_t{kWarps} * kFwdTailStages<D> * FwdTailStage<D>::bytes;
}

// Byte offset of 16-byte chunk c of row r in a [rows][D] bf16 tile: each 128-byte half of a row
// swizzled as tail_offset's rows, so that the 8 rows of an ldmatrix hit 8 different banks' lines.
template <int D>
__device__ __forceinline__ uint32_t row_offset(int r, int c) {
  return static_cast<uint32_t>(r * D * 2 + (c / 8) * 128 + (((c % 8) ^ (r % 8)) * 16));
}

// A warp's pairs. After the sequence kernel: the block's pairs [lo, hi) in turn of its warps.
// Beside it (kFollow): runs of kFollowRunTokens tokens of one KV head taken from the queue, each
// once its tile is published; lane 0 takes and waits, the warp shares the result. The blocks of
// the launch beside the sequence kernel stop taking once the launch after it has started, whose
// blocks then fill those SMs too. next() is -1 once no pairs are left.
template <bool kFollow>
struct ForwardPairs {
  int64_t pair = 0, hi = 0;  // the next pair, and (beside) the end of its run
  int step = 0;              // between a warp's pairs: kWarps, or (beside) Hk
  ForwardQueue* queue = nullptr;
  bool pickup = false;
  __device__ int64_t next(const Dims& s, int lane) {
    if constexpr (kFollow) {
      while (pair >= hi) {
        const int n_qt = (s.T + kForwardRows - 1) / kForwardRows;
        const int64_t tiles = int64_t{s.B} * n_qt * s.Hk;
        constexpr int kRuns = kForwardRows / kFollowRunTokens;  // runs per tile
        long long run = tiles * kRuns;
        int tile = 0;
        if (lane == 0) {
          const bool leave =
              !pickup && *reinterpret_cast<volatile unsigned long long*>(&queue->pickup) != 0;
          if (!leave) run = static_cast<long long>(atomicAdd(&queue->next_run, 1ull));
          if (run < tiles * kRuns) {
            const volatile int* published = queue->order(tiles) + run / kRuns;
            for (unsigned int ns = 64; (tile = *published) == 0; ns = min(2 * ns, 8192u)) {
              __nanosleep(ns);
            }
            __threadfence();  // the tile's rows are read after its place in the order
          }
        }
        __syncwarp();
        run = __shfl_sync(0xffffffffu, run, 0);
        tile = __shfl_sync(0xffffffffu, tile, 0) - 1;
        if (run >= tiles * kRuns) {
          pair = hi = 0;
          return -1;
        }
        const int kvh = tile % s.Hk, qt = tile / s.Hk % n_qt, b = tile / s.Hk / n_qt;
        const int t0 = qt * kForwardRows + static_cast<int>(run % kRuns) * kFollowRunTokens;
        const int t1 = min(t0 + kFollowRunTokens, s.T);
        pair = (int64_t{b} * s.T + t0) * s.Hk + kvh;
        hi = (int64_t{b} * s.T + t1) * s.Hk + kvh;
      }
    } else {
      if (pair >= hi) return -1;
    }
    const int64_t p = pair;
    pair += step;
    return p;
  }
};

// One warp's pairs, from `pairs` (ForwardPairs), through its stages in shared memory. The
// sequence part's lse is read from seq_lse and the result's written to lse: after the sequence
// kernel the same array, so neither is __restrict__.
template <int D, bool kFollow>
__device__ __forceinline__ void depth_forward_pairs(
    const Dims& s, ForwardPairs<kFollow>& pairs, unsigned char* stages, const bf16* __restrict__ q,
    const bf16* __restrict__ depth_k, const bf16* __restrict__ depth_v,
    const float* __restrict__ o_seq, const float* seq_lse, bf16* __restrict__ out, float* lse) {
  constexpr int kStages = kFwdTailStages<D>, kChunks = D / 8;
  using L = FwdTailStage<D>;
  const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int n_chunks = (s.S + kTailSlots - 1) / kTailSlots;
  const int G = s.G;
  int64_t issue_pair = -1;
  int issue_chunk = 0, chunk = 0;
  // Issues item `item` (the next of the warp's pairs' items) and says whether there was one.
  const auto issue = [&](int item) {
    if (issue_chunk == 0) {
      issue_pair = pairs.next(s, lane);
      if (issue_pair < 0) return false;
    }
    unsigned char* st = stages + (item % kStages) * L::bytes;
    const int64_t row = issue_pair * D;
#pragma unroll
    for (int u = 0; u < kTailSlots * kChunks / 32; ++u) {
      const int piece = lane + 32 * u, r = piece / kChunks, c = piece % kChunks;
      const int j = issue_chunk * kTailSlots + r;
      const bool valid = j < s.S;
      const int64_t at = valid ? j * s.slot_stride + row + c * 8 : 0;
      cp_async16(st + L::k + row_offset<D>(r, c), depth_k + at, valid);
      cp_async16(st + L::v + row_offset<D>(r, c), depth_v + at, valid);
    }
    const int64_t head_row = issue_pair * G;
    if (issue_chunk == 0) {
      for (int piece = lane; piece < G * kChunks; piece += 32) {
        const int h = piece / kChunks, c = piece % kChunks;
        cp_async16(st + L::q + row_offset<D>(h, c), q + (head_row + h) * D + c * 8, true);
      }
    }
    if (issue_chunk == n_chunks - 1) {
      for (int piece = lane; piece < G * D / 4; piece += 32) {
        cp_async16(st + L::o_seq + piece * 16, o_seq + head_row * D + piece * 4, true);
      }
      if constexpr (kFollow) {
        // 16-byte pieces through L2 (cp.async.cg): other warps' tiles share these lines, and the
        // SM's L1 may hold them from before they were written.
        const int64_t first = head_row / 4, last = (head_row + G - 1) / 4;
        if (lane <= last - first)
          cp_async16(st + L::lse + lane * 16, seq_lse + (first + lane) * 4, true);
      } else {
        if (lane < G) cp_async4(st + L::lse + lane * 4, seq_lse + head_row + lane);
      }
    }
    if (lane == 0) *reinterpret_cast<int64_t*>(st + L::pair) = issue_pair;
    if (++issue_chunk == n_chunks) issue_chunk = 0;
    return true;
  };
  int issued = 0;
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (issued == i && issue(i)) ++issued;
    cp_async_commit();
  }
  const float sl2 = s.scale * kLog2e;
  const int m = lane / 8;
  uint32_t qb[D / 16][2];
  // Per head (columns 2 t4 + e of the C fragments), in log2 units: the running maximum mx of the
  // scaled scores and the lane's part of the sum l of 2^(score - mx); o^T, rows d = 16 mt + g
  // (+ 8), columns the heads 2 t4 (+ 1), the sum of 2^(score - mx) v.
  float ot[D / 16][4] = {};
  float mx[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  for (int i = 0; i < issued; ++i) {
    __syncwarp();
    if (issued == i + kStages - 1 && issue(i + kStages - 1)) ++issued;
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    __syncwarp();
    unsigned char* st = stages + (i % kStages) * L::bytes;
    const uint32_t sa = wgmma::smem_addr(st);
    if (chunk == 0) {
      // Rows past G repeat head G - 1; their columns are never stored.
      const int h = min(lane % 8, G - 1);
#pragma unroll
      for (int kp = 0; kp < D / 32; ++kp) {
        uint32_t r[4];
        ldmatrix_x4<false>(r, sa + L::q + row_offset<D>(h, 4 * kp + m));
        qb[2 * kp][0] = r[0];
        qb[2 * kp][1] = r[1];
        qb[2 * kp + 1][0] = r[2];
        qb[2 * kp + 1][1] = r[3];
      }
    }
    float sc[4] = {};
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t a[4];
      ldmatrix_x4<false>(a, sa + L::k + row_offset<D>((m % 2) * 8 + lane % 8, 2 * ks + m / 2));
      mma_16816(sc, a, qb[ks][0], qb[ks][1]);
    }
    // Slots g and g + 8 of the item; the maximum over the 16 is shared by the lanes of a column.
    const int j0 = chunk * kTailSlots + g;
    float alpha[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float cm = fmaxf(j0 < s.S ? sc[e] : -INFINITY, j0 + 8 < s.S ? sc[e + 2] : -INFINITY);
      cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, 4));
      cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, 8));
      cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, 16));
      const float m_new = fmaxf(mx[e], cm * sl2);
      alpha[e] = fast_exp2(mx[e] - m_new);  // 0 while mx is -inf
      mx[e] = m_new;
    }
    float p[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      p[e] = j0 + (e / 2) * 8 < s.S ? fast_exp2(fmaf(sc[e], sl2, -mx[e % 2])) : 0.0f;
    }
#pragma unroll
    for (int e = 0; e < 2; ++e) l[e] = l[e] * alpha[e] + p[e] + p[e + 2];
#pragma unroll
    for (int mt = 0; mt < D / 16; ++mt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) ot[mt][e] *= alpha[e % 2];
    }
    // P from the C layout (rows slots, columns heads) to the B operand's (k the slots).
    uint32_t pb0, pb1;
    slots_c_to_b(p, pb0, pb1);
#pragma unroll
    for (int mt = 0; mt < D / 16; ++mt) {
      uint32_t a[4];
      ldmatrix_x4<true>(a, sa + L::v + row_offset<D>((m / 2) * 8 + lane % 8, 2 * mt + m % 2));
      mma_16816(ot[mt], a, pb0, pb1);
    }
    if (++chunk < n_chunks) continue;
    // The pair is done: with the sequence part's lse (natural log) as seq2 (log2), the combined
    // lse is M + log2(2^(seq2 - M) + l 2^(mx - M)), M = max(seq2, mx), and each part's rows are
    // weighted by their share of it.
    const int64_t pair = *reinterpret_cast<const int64_t*>(st + L::pair);
    const float* pair_lse =
        reinterpret_cast<const float*>(st + L::lse) + (kFollow ? pair * G % 4 : 0);
    float keep_seq[2], keep_depth[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float lt = l[e];
      lt += __shfl_xor_sync(0xffffffffu, lt, 4);
      lt += __shfl_xor_sync(0xffffffffu, lt, 8);
      lt += __shfl_xor_sync(0xffffffffu, lt, 16);
      const int head = min(2 * t4 + e, G - 1);
      const float seq2 = pair_lse[head] * kLog2e;
      const float top = fmaxf(seq2, mx[e]);
      const float a_seq = exp2f(seq2 - top), a_depth = exp2f(mx[e] - top);
      const float total_sum = a_seq + lt * a_depth;
      keep_seq[e] = a_seq / total_sum;
      keep_depth[e] = a_depth / total_sum;
      if (g == 0 && 2 * t4 + e < G) lse[pair * G + 2 * t4 + e] = (top + log2f(total_sum)) * kLn2;
    }
    // The depth rows, weighted, through the stage's K rows (done with) to [8][64] floats.
    float* depth_rows = reinterpret_cast<float*>(st + L::k);
    __syncwarp();
#pragma unroll
    for (int mt = 0; mt < D / 16; ++mt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        depth_rows[(2 * t4 + e % 2) * D + 16 * mt + g + (e / 2) * 8] =
            ot[mt][e] * keep_depth[e % 2];
        ot[mt][e] = 0.0f;
      }
    }
    __syncwarp();
    // Pieces of 8 values, lane + 32 u (G <= 8 heads of D / 8 pieces): head h's weight is held
    // by the lanes of column h, lane h / 2 (g = 0) in its half h % 2.
    const float* seq_rows = reinterpret_cast<const float*>(st + L::o_seq);
#pragma unroll
    for (int u = 0; u < kTailHeads * kChunks / 32; ++u) {
      const int piece = lane + 32 * u, head = piece / kChunks;
      const float w0 = __shfl_sync(0xffffffffu, keep_seq[0], (head / 2) % 4);
      const float w1 = __shfl_sync(0xffffffffu, keep_seq[1], (head / 2) % 4);
      if (piece >= G * kChunks) continue;
      const float w = head % 2 == 0 ? w0 : w1;
      float r[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) r[e] = seq_rows[piece * 8 + e] * w + depth_rows[piece * 8 + e];
      store8(out + pair * G * D + piece * 8, r);
    }
    mx[0] = mx[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
    chunk = 0;
  }
  cp_async_wait<0>();
}

template <int D>
__global__ void __launch_bounds__(kFwdTailWarps * 32)
    depth_forward_tail(Dims s, const bf16* __restrict__ q, const bf16* __restrict__ depth_k,
                       const bf16* __restrict__ depth_v, const float* __restrict__ o_seq,
                       bf16* __restrict__ out, float* __restrict__ lse) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int warp = threadIdx.x / 32;
  // The block's pairs [lo, hi), pair p = row Hk + kvh, taken by its warps in turn: the slot rows
  // of pair p start at p D, its query heads' rows at p G.
  const int64_t total = int64_t{s.B} * s.T * s.Hk;
  ForwardPairs<false> pairs;
  pairs.pair = total * blockIdx.x / gridDim.x + warp;
  pairs.hi = total * (blockIdx.x + 1) / gridDim.x;
  pairs.step = kFwdTailWarps;
  depth_forward_pairs<D, false>(s, pairs,
                                smem_raw + warp * kFwdTailStages<D> * FwdTailStage<D>::bytes, q,
                                depth_k, depth_v, o_seq, lse, out, lse);
}

// DepthForwardPlacement::beside; `pickup` for the launch after the sequence kernel.
__global__ void __maxnreg__(kFwdBesideRegisters)
    depth_forward_beside(Dims s, const bf16* __restrict__ q, const bf16* __restrict__ depth_k,
                         const bf16* __restrict__ depth_v, const float* __restrict__ o_seq,
                         const float* __restrict__ seq_lse, bf16* __restrict__ out,
                         float* __restrict__ lse, ForwardQueue* queue, bool pickup) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  if (pickup && threadIdx.x == 0) atomicExch(&queue->pickup, 1ull);
  const int warp = threadIdx.x / 32;
  ForwardPairs<true> pairs;
  pairs.step = s.Hk;
  pairs.queue = queue;
  pairs.pickup = pickup;
  depth_forward_pairs<64, true>(s, pairs,
                                smem_raw + warp * kFwdTailStages<64> * FwdTailStage<64>::bytes, q,
                                depth_k, depth_v, o_seq, seq_lse, out, lse);
}

// The depth part of (token, KV head) pairs [pair_lo, pair_hi) of batch row b (pair t Hk + kvh),
// for all G heads of a pair's group: dq += the slots' contribution (atomics: the sequence part of
// other blocks adds to the same rows), and each slot's probability and score gradient per head,
// or with kSlotGrads (the layer its slots' only reader) each slot's gradients. `ring` is the
// block's shared memory, free of the sequence part. Pairs, not one KV head's tokens: the warps of
// a block then read a slot's rows of all KV heads of a token, which are adjacent in memory, and
// write the adjacent probabilities of all its heads.
template <int D, int kWarps, int kStages, bool kSlotGrads, bool kEvictFirstLoads = false>
__device__ __forceinline__ void depth_backward_tail(
    const Dims& s, int b, int pair_lo, int pair_hi, const bf16* __restrict__ dout,
    const bf16* __restrict__ q, const float* __restrict__ lse, const float* __restrict__ delta,
    const bf16* __restrict__ depth_k, const bf16* __restrict__ depth_v, float* __restrict__ dq,
    const DepthBackwardOut& slot_out, unsigned char* ring) {
  using L = TailStage<D>;
  constexpr int kChunks = D / 8;  // 16-byte chunks of a row
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  unsigned char* stages = ring + warp * kStages * L::bytes;
  // With kSlotGrads each warp's [16][D] floats of slot gradients follow the stages (depth_smem).
  float* slot_rows = reinterpret_cast<float*>(ring + kWarps * kStages * L::bytes);
  // Made once: asm volatile, inside the loop it would also pin the order of the loads around it.
  const uint64_t store_policy = kSlotGrads ? evict_first_policy() : 0;
  const int first = pair_lo + warp;
  const int n_pairs = first < pair_hi ? (pair_hi - first + kWarps - 1) / kWarps : 0;
  const int n_chunks = (s.S + kTailSlots - 1) / kTailSlots;
  const int n_items = n_pairs * n_chunks;
  const int G = s.G;
  // The pair's slot row (of [B][T][Hk] rows) and its first query head row (of [B][T][Hq]).
  const auto kv_row = [&](int pair) { return int64_t{b} * s.T * s.Hk + pair; };
  const auto head_row = [&](int pair) { return kv_row(pair) * G; };
  // The items in order: (pair, chunk) of the next one to issue and of the next one to compute.
  int issue_pair = first, issue_chunk = 0, pair = first, chunk = 0;
  const auto issue = [&](int item) {
    unsigned char* st = stages + (item % kStages) * L::bytes;
    const int64_t row = kv_row(issue_pair) * D;
#pragma unroll
    for (int u = 0; u < kTailSlots * kChunks / 32; ++u) {
      const int piece = lane + 32 * u, r = piece / kChunks, c = piece % kChunks;
      const int j = issue_chunk * kTailSlots + r;
      const bool valid = j < s.S;  // past the last slot: zero-filled, nothing read
      const int64_t at = valid ? j * s.slot_stride + row + c * 8 : 0;
      if constexpr (kEvictFirstLoads) {
        cp_async16_pair_evict_first(wgmma::smem_addr(st + L::k + tail_offset(r, c)),
                                    wgmma::smem_addr(st + L::v + tail_offset(r, c)), depth_k + at,
                                    depth_v + at, valid ? 16 : 0);
      } else {
        cp_async16(st + L::k + tail_offset(r, c), depth_k + at, valid);
        cp_async16(st + L::v + tail_offset(r, c), depth_v + at, valid);
      }
    }
    if (issue_chunk == 0) {
      const int64_t hr = head_row(issue_pair);
      for (int piece = lane; piece < G * kChunks; piece += 32) {
        const int h = piece / kChunks, c = piece % kChunks;
        cp_async16(st + L::q + tail_offset(h, c), q + (hr + h) * D + c * 8, true);
        cp_async16(st + L::dout + tail_offset(h, c), dout + (hr + h) * D + c * 8, true);
      }
      if (lane < G) {
        cp_async4(st + L::lse + lane * 4, lse + hr + lane);
        cp_async4(st + L::delta + lane * 4, delta + hr + lane);
      }
    }
    if (++issue_chunk == n_chunks) {
      issue_chunk = 0;
      issue_pair += kWarps;
    }
  };
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < n_items) issue(i);
    cp_async_commit();
  }
  const float sl2 = s.scale * kLog2e;
  const int m = lane / 8;
  // The pair's B fragments (k = d, n = head): q and dout rows, k-steps 0 .. D / 16 - 1.
  uint32_t qb[D / 16][2], ob[D / 16][2];
  float lse2[2], dlt[2];      // heads 2 t4 and 2 t4 + 1 (lse in log2 units; +inf past G: p = 0)
  float dqt[D / 16][4] = {};  // dq^T: rows d = 16 mt + g (+ 8), columns heads 2 t4 (+ 1)
  for (int i = 0; i < n_items; ++i) {
    __syncwarp();  // every lane is done with the stage the next issue overwrites
    if (i + kStages - 1 < n_items) issue(i + kStages - 1);
    cp_async_commit();  // empty past the last item: the wait below keeps its count
    cp_async_wait<kStages - 1>();
    __syncwarp();
    unsigned char* st = stages + (i % kStages) * L::bytes;
    const uint32_t sa = wgmma::smem_addr(st);
    if (chunk == 0) {
      // Rows past G repeat row G - 1 (no uninitialized shared memory is read); their lse is +inf.
      const int h = min(lane % 8, G - 1);
#pragma unroll
      for (int kp = 0; kp < D / 32; ++kp) {
        uint32_t r[4];
        ldmatrix_x4<false>(r, sa + L::q + tail_offset(h, 4 * kp + m));
        qb[2 * kp][0] = r[0];
        qb[2 * kp][1] = r[1];
        qb[2 * kp + 1][0] = r[2];
        qb[2 * kp + 1][1] = r[3];
        ldmatrix_x4<false>(r, sa + L::dout + tail_offset(h, 4 * kp + m));
        ob[2 * kp][0] = r[0];
        ob[2 * kp][1] = r[1];
        ob[2 * kp + 1][0] = r[2];
        ob[2 * kp + 1][1] = r[3];
      }
      const float* stats_lse = reinterpret_cast<const float*>(st + L::lse);
      const float* stats_delta = reinterpret_cast<const float*>(st + L::delta);
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int head = 2 * t4 + e;
        lse2[e] = head < G ? stats_lse[head] * kLog2e : INFINITY;
        dlt[e] = head < G ? stats_delta[head] : 0.0f;
      }
    }
    // scores^T and dP^T: rows = slots g and g + 8 of the item, columns = heads 2 t4 and 2 t4 + 1.
    float sc[4] = {}, dp[4] = {};
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      const uint32_t at = tail_offset((m % 2) * 8 + lane % 8, 2 * ks + m / 2);
      uint32_t a[4];
      ldmatrix_x4<false>(a, sa + L::k + at);
      mma_16816(sc, a, qb[ks][0], qb[ks][1]);
      ldmatrix_x4<false>(a, sa + L::v + at);
      mma_16816(dp, a, ob[ks][0], ob[ks][1]);
    }
    const int j0 = chunk * kTailSlots + g;
    float p[4], ds[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      // Zero-filled slots past S would otherwise get exp2(-lse).
      p[e] = j0 + (e / 2) * 8 < s.S ? fast_exp2(fmaf(sc[e], sl2, -lse2[e % 2])) : 0.0f;
      ds[e] = p[e] * (dp[e] - dlt[e % 2]) * s.scale;
    }
    const int64_t hr = head_row(pair);
    if constexpr (kSlotGrads) {
      // This reader's gradients of the chunk's slots: dK = dS^T Q and dV = P^T dO, [16 slots] x
      // [G heads] x [G][D], k = the heads (m16n8k8: G <= 8). dS and P go in as bf16, as in the
      // sequence part's dK and dV; the sums are fp32. A is the C fragment as it is (rows the
      // slots, columns the heads); B, an n-tile of 8 columns of the heads' rows, is the transpose
      // of the score MMAs' B fragment of those columns. Rows past G hold row G - 1, against
      // columns of dS and P that are zero. The [16][D] sums go through the warp's slot rows in
      // shared memory so that the stores write whole rows, 16 bytes a lane: the C fragments
      // stored directly (8 rows of 32 bytes a store) took the (4, 4096, 16, 8) backward to 3.26
      // ms at S 72 and 2.00 at S 36 instead of 2.82 and 1.90 (kSlotRowFloats<D>). The rows are
      // stored evict-first: S 72 2.89 -> 2.76 ms, (1, 4096, 64, 8) S 64 1.43 -> 1.37, S 36 1.81 ->
      // 1.83. (Evict-first stores of the C fragments, each a part of 8 rows, were slower.)
      float* rows = slot_rows + warp * (kTailSlots * kSlotRowFloats<D>);
      const int first_slot = chunk * kTailSlots;
      constexpr int kRowPieces = D / 4;  // 16-byte pieces of a row
      const int piece = lane % kRowPieces;
      const int64_t row = kv_row(pair) * D + piece * 4;
      const auto slot_gradient = [&](const float(&c)[4], const uint32_t(&b)[D / 16][2],
                                     float* gradient) {
        const uint32_t a[2] = {pack_bf16(c[0], c[1]), pack_bf16(c[2], c[3])};
#pragma unroll
        for (int nt = 0; nt < D / 8; ++nt) {
          float sum[4] = {};
          mma_1688(sum, a, transpose_8x8(b[nt / 2][nt % 2]));
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int r = g + 8 * half;
            *reinterpret_cast<float2*>(rows + r * kSlotRowFloats<D> + nt * 8 + 2 * t4) =
                make_float2(sum[2 * half], sum[2 * half + 1]);
          }
        }
        __syncwarp();
#pragma unroll
        for (int i = 0; i < kTailSlots * kRowPieces / 32; ++i) {
          const int r = i * (32 / kRowPieces) + lane / kRowPieces;
          if (first_slot + r >= s.S) continue;
          const float4 x =
              *reinterpret_cast<const float4*>(rows + r * kSlotRowFloats<D> + piece * 4);
          store16_evict_first(gradient + (first_slot + r) * s.slot_stride + row, x, store_policy);
        }
        __syncwarp();  // every lane is done reading the rows the next call writes
      };
      slot_gradient(ds, qb, slot_out.d_depth_k);
      slot_gradient(p, ob, slot_out.d_depth_v);
    } else {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int j = j0 + half * 8, head = 2 * t4;
        if (j >= s.S || head >= G) continue;
        // A unit's slots of a chunk are adjacent (moda/depth_stats_layout.hpp).
        const int64_t units = int64_t{s.B} * s.T * s.Hk;
        const int64_t at = depth_stats_index(s.S, units, G, j, kv_row(pair), head);
        float* pp = slot_out.probs + at;
        float* pd = slot_out.dscores + at;
        if (G % 2 == 0) {  // head even, the row's heads start at an even index: 8-byte aligned
          *reinterpret_cast<float2*>(pp) = make_float2(p[2 * half], p[2 * half + 1]);
          *reinterpret_cast<float2*>(pd) = make_float2(ds[2 * half], ds[2 * half + 1]);
        } else {
          pp[0] = p[2 * half];
          pd[0] = ds[2 * half];
          if (head + 1 < G) {
            pp[1] = p[2 * half + 1];
            pd[1] = ds[2 * half + 1];
          }
        }
      }
    }
    // dS^T (rows = slots) into the B fragment of dq^T (k = slots, n = heads).
    uint32_t db0, db1;
    slots_c_to_b(ds, db0, db1);
#pragma unroll
    for (int mt = 0; mt < D / 16; ++mt) {
      uint32_t a[4];
      ldmatrix_x4<true>(a, sa + L::k + tail_offset((m / 2) * 8 + lane % 8, 2 * mt + m % 2));
      mma_16816(dqt[mt], a, db0, db1);
    }
    if (++chunk == n_chunks) {
      // dq^T through the stage's q and dout rows (read at the pair's first item, or unused) to
      // [8][D] floats, then one 16-byte atomic per 4 values.
      float* scratch = reinterpret_cast<float*>(st + L::q);
      __syncwarp();
#pragma unroll
      for (int mt = 0; mt < D / 16; ++mt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          scratch[(2 * t4 + e % 2) * D + 16 * mt + g + (e / 2) * 8] = dqt[mt][e];
          dqt[mt][e] = 0.0f;
        }
      }
      __syncwarp();
      for (int piece = lane; piece < G * D / 4; piece += 32) {
        const int head = piece / (D / 4), c = piece % (D / 4);
        const float4 x = reinterpret_cast<const float4*>(scratch)[head * (D / 4) + c];
        atomic_add4(dq + (hr + head) * D + c * 4, x.x, x.y, x.z, x.w);
      }
      chunk = 0;
      pair += kWarps;
    }
  }
  cp_async_wait<0>();
}

// One block of 8 warps per SM (195 registers at head size 64, 254 at 128): against three blocks
// of one warpgroup per SM, measured before dQ ran a step behind, equal at head size 64 and G = 2,
// 0.80x the time at 128 and at G = 8.
// With kDepth the block then takes the depth part of its keys' tokens (depth_backward_tail, with
// kSlotGrads its slot gradients).
template <int D, bool kDepth, bool kSlotGrads = false>
__global__ void __launch_bounds__(kBackwardThreads, 1)
    seq_backward_wgmma(Dims s, const bf16* __restrict__ dout, const bf16* __restrict__ q,
                       const bf16* __restrict__ k, const bf16* __restrict__ v,
                       const float* __restrict__ lse, const float* __restrict__ delta,
                       const bf16* __restrict__ depth_k, const bf16* __restrict__ depth_v,
                       float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ dv,
                       DepthBackwardOut slot_out, int head_blocks, bool work_order) {
  constexpr int BQ = kBackwardQueries, BK = kBackwardKeys;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = wgmma::smem_addr(smem_raw);
  bf16* sk = reinterpret_cast<bf16*>(
      smem_raw + (((raw + wgmma::kAtomBytes - 1) & ~uint32_t{wgmma::kAtomBytes - 1}) - raw));
  bf16* sv = sk + BK * D;
  bf16* sq_buf = sv + BK * D;  // [2][BQ][D], swizzled
  bf16* sdo_buf = sq_buf + 2 * BQ * D;
  bf16* sds_buf = sdo_buf + 2 * BQ * D;  // dS^T: [2][BK keys][BQ queries], swizzled
  float* slse_buf = reinterpret_cast<float*>(sds_buf + 2 * BK * BQ);  // [2][BQ]
  float* sdelta_buf = slse_buf + 2 * BQ;
  // The block's key block kb (kb = 0 has the most query tiles), batch row b, and y: its KV head
  // and which of its head_blocks groups of query heads.
  const int n_y = s.Hk * head_blocks;
  const BlockTile bt = block_tile(blockIdx.x, (s.T + BK - 1) / BK, s.B * n_y, work_order);
  const int kb = bt.tile, b = bt.group / n_y, y = bt.group % n_y;
  const int hb = y % head_blocks, kvh = y / head_blocks;
  const int heads = s.G / head_blocks, head0 = kvh * s.G + hb * heads;
  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int g = lane / 4, t4 = lane % 4;
  const int k0 = kb * BK, wg_k0 = k0 + wg * kTile;
  const int64_t q_stride = int64_t{s.Hq} * D, kv_stride = int64_t{s.Hk} * D;
  const int64_t kv_base = (int64_t{b} * s.T * s.Hk + kvh) * D;
  load_tile_swizzled<D, BK, kBackwardThreads>(sk, k + kv_base, kv_stride, k0, s.T, tid);
  load_tile_swizzled<D, BK, kBackwardThreads>(sv, v + kv_base, kv_stride, k0, s.T, tid);

  // A step's (query head, first query): the query tiles at or after the key tile, head by head
  // (the first one is all in warpgroup 1's future, p = 0 there).
  struct Step {
    int head, q0;
  };
  const int q0_first = k0 / BQ * BQ;
  const int n_steps = heads * ((s.T - q0_first + BQ - 1) / BQ);
  const auto next_step = [&](Step at) {
    at.q0 += BQ;
    if (at.q0 >= s.T) return Step{at.head + 1, q0_first};
    return at;
  };
  const auto q_base_of = [&](Step at) { return (int64_t{b} * s.T * s.Hq + at.head) * D; };
  // Issues the step's Q and dO loads; returns its lse (log2 units, infinite past T so p = 0
  // there) and delta (times the softmax scale) for query row `tid`, staged into shared memory
  // after the current step's math.
  const auto prefetch = [&](Step at, int buf, float& row_lse, float& row_delta) {
    const int64_t q_base = q_base_of(at);
    load_tile_swizzled<D, BQ, kBackwardThreads>(sq_buf + buf * BQ * D, q + q_base, q_stride, at.q0,
                                                s.T, tid);
    load_tile_swizzled<D, BQ, kBackwardThreads>(sdo_buf + buf * BQ * D, dout + q_base, q_stride,
                                                at.q0, s.T, tid);
    cp_async_commit();
    const int row = at.q0 + tid;
    const bool valid = tid < BQ && row < s.T;
    const int64_t at_row = (int64_t{b} * s.T + row) * s.Hq + at.head;
    row_lse = valid ? lse[at_row] * kLog2e : INFINITY;
    row_delta = valid ? delta[at_row] * s.scale : 0.0f;
  };
  const auto stage_stats = [&](int buf, float row_lse, float row_delta) {
    if (tid < BQ) {
      slse_buf[buf * BQ + tid] = row_lse;
      sdelta_buf[buf * BQ + tid] = row_delta;
    }
  };
  float next_lse = 0.0f, next_delta = 0.0f;
  Step current{head0, q0_first};
  prefetch(current, 0, next_lse, next_delta);
  stage_stats(0, next_lse, next_delta);

  const float sl2 = s.scale * kLog2e;
  const int key_lo = wg_k0 + warp * 16 + g;  // this thread's keys: key_lo and key_lo + 8
  const uint32_t k_all = wgmma::smem_addr(sk);
  const uint32_t k_tile = k_all + wg * kTile * wgmma::kSwizzleBytes;
  const uint32_t v_tile = wgmma::smem_addr(sv) + wg * kTile * wgmma::kSwizzleBytes;
  // dQ of the step whose dS^T is in buffer `buf`: rows = the BQ queries (warp w: 16w..16w+15),
  // k = the 128 keys, the warpgroup's half of the columns. The MMAs are issued, not committed.
  constexpr int kHalf = D / 2;
  const auto issue_dq = [&](int buf, float(&dqa)[kHalf / 8][4]) {
    const uint32_t ds_tile = wgmma::smem_addr(sds_buf + buf * BK * BQ);
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      const uint64_t ds_op = wgmma::mn_major(ds_tile, BK, kk);
      if constexpr (D == 64) {
        wgmma::mma_64x32_ss<true, true>(
            dqa, ds_op, wgmma::mn_major(k_all + wg * kHalf * sizeof(bf16), BK, kk), kk > 0);
      } else {
        wgmma::mma_64x64_ss<true, true>(
            dqa, ds_op, wgmma::mn_major(k_all + wg * BK * wgmma::kSwizzleBytes, BK, kk), kk > 0);
      }
    }
  };
  const auto add_dq = [&](Step at, const float(&dqa)[kHalf / 8][4]) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = at.q0 + warp * 16 + g + 8 * i;
      if (row >= s.T) continue;
      float* dst = dq + q_base_of(at) + int64_t{row} * q_stride + wg * kHalf;
#pragma unroll
      for (int nt = 0; nt < kHalf / 8; ++nt) {
        atomic_add2(dst + nt * 8 + t4 * 2, dqa[nt][2 * i], dqa[nt][2 * i + 1]);
      }
    }
  };
  // c (the warpgroup's 64 keys x BQ queries) = A B^T over the head dimension: S^T = K Q^T,
  // dP^T = V dO^T.
  const auto issue_scores = [&](float(&c)[BQ / 8][4], uint32_t a_tile, uint32_t b_tile) {
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      wgmma::mma_64x64_ss<false, false>(c, wgmma::k_major(a_tile, BK, ks),
                                        wgmma::k_major(b_tile, BQ, ks), ks > 0);
    }
  };
  Step previous = current;
  float dk_acc[D / 8][4] = {}, dv_acc[D / 8][4] = {};
  for (int step = 0; step < n_steps; ++step) {
    const int buf = step & 1;
    const bool has_next = step + 1 < n_steps;
    const Step next = next_step(current);
    // One barrier per step: the current step's loads and the previous step's dS^T are visible,
    // and every thread is done with the buffers the next step's loads overwrite.
    cp_async_wait<0>();
    wgmma::fence_shared_for_async();
    __syncthreads();
    if (has_next) prefetch(next, buf ^ 1, next_lse, next_delta);
    const int q0 = current.q0;
    const uint32_t q_tile = wgmma::smem_addr(sq_buf + buf * BQ * D);
    const uint32_t do_tile = wgmma::smem_addr(sdo_buf + buf * BQ * D);
    const float* slse = slse_buf + buf * BQ;
    const float* sdelta = sdelta_buf + buf * BQ;

    // In flight at once: the previous step's dQ with S^T, then S^T with dP^T; each wait retires
    // the older group, whose results are used while the newer one runs. Every step issues the
    // same MMAs, without branches: step 0 runs dQ on the unused dS^T buffer and drops the result.
    // With the first step's MMAs in their own branch, the merged accumulators took register moves
    // between MMAs, for which ptxas serialized every wgmma of the kernel (warning C7514): the
    // backward took 1.340 ms instead of 1.140 at (4, 4096, 16, 8), d 64.
    float st[BQ / 8][4], dpt[BQ / 8][4], dqa[kHalf / 8][4];
    wgmma::fence();
    issue_dq(buf ^ 1, dqa);
    wgmma::commit();
    issue_scores(st, k_tile, q_tile);
    wgmma::commit();
    wgmma::wait<1>();
    wgmma::fence_operand(dqa);
    if (step > 0) add_dq(previous, dqa);
    wgmma::fence();
    issue_scores(dpt, v_tile, do_tile);
    wgmma::commit();
    wgmma::wait<1>();
    wgmma::fence_operand(st);
    // P^T, then dS^T = P^T (dP^T - delta) * scale (delta staged times scale); causal: key > query
    // gives p = 0, which only query tiles that start before the key tile's end can have. The
    // thread's queries come in adjacent pairs: one 8-byte load of a statistic per pair.
    const bool diagonal = q0 < wg_k0 + kTile;
#pragma unroll
    for (int nt = 0; nt < BQ / 8; ++nt) {
      const int qi = nt * 8 + t4 * 2;
      const float2 row_lse = *reinterpret_cast<const float2*>(slse + qi);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key_lo + (e >> 1) * 8;
        st[nt][e] = diagonal && key > q0 + qi + (e & 1)
                        ? 0.0f
                        : fast_exp2(fmaf(st[nt][e], sl2, -((e & 1) ? row_lse.y : row_lse.x)));
      }
    }
    wgmma::wait<0>();
    wgmma::fence_operand(dpt);
#pragma unroll
    for (int nt = 0; nt < BQ / 8; ++nt) {
      const int qi = nt * 8 + t4 * 2;
      const float2 row_delta = *reinterpret_cast<const float2*>(sdelta + qi);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        dpt[nt][e] = st[nt][e] * fmaf(dpt[nt][e], s.scale, -((e & 1) ? row_delta.y : row_delta.x));
      }
    }
    uint32_t pa[BQ / 16][4], da[BQ / 16][4];
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {
      c_to_a(pa[kk], st[2 * kk], st[2 * kk + 1]);
      c_to_a(da[kk], dpt[2 * kk], dpt[2 * kk + 1]);
    }
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {
      if constexpr (D == 64) {
        wgmma::mma_64x64_rs(dv_acc, pa[kk], wgmma::mn_major(do_tile, BQ, kk));
        wgmma::mma_64x64_rs(dk_acc, da[kk], wgmma::mn_major(q_tile, BQ, kk));
      } else {
        wgmma::mma_64x128_rs(dv_acc, pa[kk], wgmma::mn_major(do_tile, BQ, kk));
        wgmma::mma_64x128_rs(dk_acc, da[kk], wgmma::mn_major(q_tile, BQ, kk));
      }
    }
    wgmma::commit();
    // dS^T to shared memory (bf16, swizzled, rows = keys) for dQ = dS K, from the packed A
    // fragments: n-tile nt of row r is register (nt % 2) * 2 of k-step nt / 2, row r + 8 the next.
    unsigned char* ds_bytes = reinterpret_cast<unsigned char*>(sds_buf + buf * BK * BQ);
    const int r = wg * kTile + warp * 16 + g;
#pragma unroll
    for (int nt = 0; nt < BQ / 8; ++nt) {
      *reinterpret_cast<uint32_t*>(ds_bytes + wgmma::swizzled_offset(BK, r, nt * 8) + t4 * 4) =
          da[nt / 2][(nt % 2) * 2];
      *reinterpret_cast<uint32_t*>(ds_bytes + wgmma::swizzled_offset(BK, r + 8, nt * 8) + t4 * 4) =
          da[nt / 2][(nt % 2) * 2 + 1];
    }
    // P^T and dS^T's registers are read by the MMAs until they retire.
    wgmma::wait<0>();
    // The other buffer's stats were last read before this step's barrier.
    if (has_next) stage_stats(buf ^ 1, next_lse, next_delta);
    previous = current;
    current = next;
  }
  // The last step's dQ.
  wgmma::fence_shared_for_async();
  __syncthreads();
  {
    float dqa[kHalf / 8][4];
    wgmma::fence();
    issue_dq((n_steps - 1) & 1, dqa);
    wgmma::commit();
    wgmma::wait<0>();
    wgmma::fence_operand(dqa);
    add_dq(previous, dqa);
  }
  wgmma::wait<0>();
  store_key_gradients<D>(s, kv_base, key_lo, kv_stride, head_blocks > 1, dk_acc, dv_acc, dk, dv);
  if constexpr (kDepth) {
    // The Hk head_blocks blocks of these keys split the (token, KV head) pairs of their tokens.
    __syncthreads();  // every warp is done with the sequence part's shared memory
    const int per = (BK + head_blocks - 1) / head_blocks;
    const int pair_lo = k0 * s.Hk + y * per;
    const int pair_hi = min(pair_lo + per, min(k0 + BK, s.T) * s.Hk);
    depth_backward_tail<D, kBackwardThreads / 32, kTailStages<kSlotGrads>, kSlotGrads>(
        s, b, pair_lo, pair_hi, dout, q, lse, delta, depth_k, depth_v, dq, slot_out, smem_raw);
  }
}

// The depth part of the backward in a kernel of its own beside seq_backward_wgmma<64, false> on
// every SM: one block of kBesideWarps warps of the tail's code per SM, launched first on a stream
// of the greatest priority, small enough in registers and shared memory that the sequence kernel's
// block still fits on the SM with it (beside_layout). The sequence block's warps keep
// the tensor cores busy while these stream the slot rows, so the depth part's bytes move under
// the sequence math instead of in the blocks' tails (where Nsight's stall sampling found the
// tail's 8 warps latency-bound on their own instruction chains, 2 per scheduler, the memory
// stalls 2% of its samples) or on SMs taken from the sequence kernel. A block takes a contiguous
// range of the (row, KV head) pairs of all batch rows. Measured (bwd ms with the slot gradients,
// (4, 4096, 16, 8), tail / SMs of its own / beside): S 8 1.491 / 1.435 / 1.382, S 36 2.551 / 2.432
// / 2.336, S 60 3.382 / 3.340 / 3.147, S 72 3.829 / 3.810 / 3.612 (moda_attention.md, "The
// backward's depth part beside the sequence kernel on every SM"). Four stages of 128 registers
// were slower at every shape, two stages about the same as three.
constexpr int kBesideWarps = 4;
constexpr int kBesideStages = 3;
// The sequence block's 8 warps take 189 registers a thread (24 units of 256 a warp), which leaves
// 16,384 of the SM's 65,536: 4 warps at up to 128. At 112 ptxas spills nothing.
constexpr int kBesideRegisters = 112;
template <int D, bool kSlotGrads>
constexpr size_t depth_beside_smem() {
  return depth_smem<D, kBesideWarps, kBesideStages, kSlotGrads>();
}
// Writing the slots' gradients (kSlotGrads) triples the depth part's bytes, and it outlasts the
// sequence kernel: its blocks then take kQueuePairs pairs at a time from a counter that the
// kernel's second launch, after the sequence kernel, shares, so that the pairs left run on the
// warps an SM holds once the sequence blocks are gone, not on the 4 beside them. Measured (bwd ms,
// (4, 4096, 16, 8)): S 36 2.026 -> 1.988-2.012, S 72 3.508-3.534 -> 3.247-3.259; with 64 pairs
// per warp instead of 16, 2.042-2.048 and 3.422-3.425. Without them the two kernels end together,
// and the counter, the second launch and the restarts of the loads were slower (S 36 2.327-2.329
// -> 2.357, S 72 3.627-3.641 -> 3.684): those blocks take a fixed share of the pairs.
// Once the second launch has started, the blocks beside leave at their next take, so that its
// blocks fill those SMs too (S 72 2.89 -> 2.83 ms).
constexpr int kQueuePairs = 16 * kBesideWarps;
struct DepthQueue {
  unsigned long long next_pair;  // the first pair not yet taken
  unsigned long long pickup;     // nonzero once a block of the second launch has started
};
static_assert(sizeof(DepthQueue) == 4 * sizeof(float), "attention_backward_workspace's room");
template <int D, bool kSlotGrads, bool kEvictFirstLoads = false>
__global__ void __maxnreg__(kBesideRegisters)
    depth_backward_beside(Dims s, const bf16* __restrict__ dout, const bf16* __restrict__ q,
                          const float* __restrict__ lse, const float* __restrict__ delta,
                          const bf16* __restrict__ depth_k, const bf16* __restrict__ depth_v,
                          float* __restrict__ dq, DepthBackwardOut slot_out,
                          DepthQueue* __restrict__ queue, bool pickup) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ unsigned long long taken;
  const int64_t per_row = int64_t{s.T} * s.Hk, total = per_row * s.B;
  const auto run = [&](int64_t lo, int64_t hi) {
    for (int64_t at = lo; at < hi;) {
      const int b = static_cast<int>(at / per_row);
      const int64_t end = min(hi, (b + 1) * per_row);
      depth_backward_tail<D, kBesideWarps, kBesideStages, kSlotGrads, kEvictFirstLoads>(
          s, b, static_cast<int>(at - b * per_row), static_cast<int>(end - b * per_row), dout, q,
          lse, delta, depth_k, depth_v, dq, slot_out, smem_raw);
      at = end;
    }
  };
  if constexpr (kSlotGrads) {
    if (pickup && threadIdx.x == 0) atomicExch(&queue->pickup, 1ull);
    for (;;) {
      if (threadIdx.x == 0) {
        const bool leave =
            !pickup && *reinterpret_cast<volatile unsigned long long*>(&queue->pickup) != 0;
        taken = leave ? total : atomicAdd(&queue->next_pair, kQueuePairs);
      }
      __syncthreads();
      const auto lo = static_cast<int64_t>(taken);
      __syncthreads();  // every thread has read `taken` before the next take writes it
      if (lo >= total) break;
      run(lo, min(lo + kQueuePairs, total));
    }
  } else {
    run(total * blockIdx.x / gridDim.x, total * (blockIdx.x + 1) / gridDim.x);
  }
}

// =============================== dispatch ===============================

template <class F>
void with_pairs(int d, F&& f) {
  if (d <= 64) {
    f(std::integral_constant<int, 1>{});
  } else if (d <= 128) {
    f(std::integral_constant<int, 2>{});
  } else {
    f(std::integral_constant<int, 4>{});
  }
}

void check_shape(const AttentionShape& s) {
  if (s.head_dim <= 0 || s.head_dim % 2 != 0 || s.head_dim > 256) {
    throw std::invalid_argument("cuda attention: head_dim must be even and at most 256, got " +
                                std::to_string(s.head_dim));
  }
  if (s.kv_heads <= 0 || s.q_heads % s.kv_heads != 0) {
    throw std::invalid_argument("cuda attention: q_heads must be a multiple of kv_heads");
  }
}

bool all_aligned16(std::initializer_list<const void*> ptrs) {
  return std::all_of(ptrs.begin(), ptrs.end(), aligned16);
}

bool use_mma(const AttentionShape& s, std::initializer_list<const void*> ptrs) {
  return (s.head_dim == 64 || s.head_dim == 128) && all_aligned16(ptrs);
}

// The forward's tensor-core depth paths (the fused forward, seq_forward_wgmma<D, true, kHeads>,
// and depth_forward_tail) copy slot rows in 16-byte pieces: they take slots whose rows are
// 16-byte aligned.
bool slots_aligned16(const AttentionShape& s, std::initializer_list<const void*> slots) {
  return s.slots > 0 && s.slot_stride % 8 == 0 && all_aligned16(slots);
}

// The streaming depth kernels take head sizes 64 and 128, G in {1, 2, 3, 4, 8}, 16-byte aligned
// operands and slot strides, any S; the warp kernels take the rest. In the backward the streaming
// path also decides how delta is computed (backward_prepare, even with S = 0; the warp kernels
// compute it in their pass over the slots).
bool use_depth_stream(const AttentionShape& s, std::initializer_list<const void*> ptrs) {
  if ((s.head_dim != 64 && s.head_dim != 128) || s.slot_stride % 8 != 0) {
    return false;
  }
  const int64_t g = s.q_heads / s.kv_heads;
  if (g != 1 && g != 2 && g != 3 && g != 4 && g != 8) return false;
  return all_aligned16(ptrs);
}

// The group sizes the depth kernels are compiled for, 1, 2, 3, 4 and 8, as a compile-time
// constant; any other G calls f with Other.
template <int Other, class F>
void with_group(int G, F&& f) {
  switch (G) {
    case 1:
      f(std::integral_constant<int, 1>{});
      break;
    case 2:
      f(std::integral_constant<int, 2>{});
      break;
    case 3:
      f(std::integral_constant<int, 3>{});
      break;
    case 4:
      f(std::integral_constant<int, 4>{});
      break;
    case 8:
      f(std::integral_constant<int, 8>{});
      break;
    default:
      f(std::integral_constant<int, Other>{});
      break;
  }
}

// use_depth_stream has checked G, so no other G reaches the streaming kernels.
template <class F>
void with_depth_stream(const Dims& s, F&& f) {
  const auto with_g = [&](auto dd) { with_group<8>(s.G, [&](auto gg) { f(dd, gg); }); };
  if (s.d == 64) {
    with_g(std::integral_constant<int, 64>{});
  } else {
    with_g(std::integral_constant<int, 128>{});
  }
}

unsigned warp_blocks(int64_t warps) {
  return static_cast<unsigned>(ceil_div(warps, kWarpsPerBlock));
}

}  // namespace

// Blocks of depth_forward_tail<D> per SM of the current device; the first call there also gives
// the kernel the SM's largest shared-memory configuration, which bounds its blocks.
template <int D>
int depth_forward_tail_blocks_per_sm() {
  return once_per_device([] {
    allow_smem(depth_forward_tail<D>, depth_forward_tail_smem<D, kFwdTailWarps>());
    MODA_CUDA_CHECK(cudaFuncSetAttribute(depth_forward_tail<D>,
                                         cudaFuncAttributePreferredSharedMemoryCarveout,
                                         cudaSharedmemCarveoutMaxShared));
    int blocks = 0;
    MODA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &blocks, depth_forward_tail<D>, kFwdTailWarps * 32,
        depth_forward_tail_smem<D, kFwdTailWarps>()));
    return std::max(blocks, 1);
  });
}

// Whether blocks of two kernels fit on an SM together by their registers: `blocks` blocks of
// warps_a warps at regs_a registers a thread and one block of warps_b at regs_b. An SM's register
// file is split over its 4 schedulers, a block's warps dealt out to them in turn, and a warp's
// registers are given in units of 256. Two depth warps beside two 8-warp sequence blocks at 106
// registers fit the SM's total (63,488) but not the two schedulers that hold them (17,408 of
// 16,384): the forward took 8.7 instead of 6.3 ms at (1, 16384, 64, 8) S 64, as if the sequence
// kernel had one block per SM.
bool registers_fit(const cudaDeviceProp& props, int blocks, int warps_a, int regs_a, int warps_b,
                   int regs_b) {
  constexpr int kSchedulers = 4;
  const auto warp_registers = [](int per_thread) { return (per_thread * 32 + 255) / 256 * 256; };
  const auto per_scheduler = [](int warps) { return (warps + kSchedulers - 1) / kSchedulers; };
  return blocks * per_scheduler(warps_a) * warp_registers(regs_a) +
             per_scheduler(warps_b) * warp_registers(regs_b) <=
         props.regsPerMultiprocessor / kSchedulers;
}

// A depth kernel's block beside the sequence kernel's blocks on every SM (the backward's beside
// placement: one sequence block; the forward's: two), on the current device: the depth block's
// shared memory, padded to more than half of the SM's, so that two of its blocks never share an SM
// (the block scheduler may put two on one SM, which then has no room for a sequence block, and
// none on another); whether the sequence blocks fit on the SM with it (registers_fit, shared
// memory, threads); and the depth blocks per SM of the launch after the sequence kernel
// (unpadded). Unpadded (74 KB) the backward's measured the same in the variant timers, but in the
// model the attention backward took 57.5 ms a MoDA-700M step against 55.5 with the depth part on
// SMs of its own; padded, 51.5. It also sets both kernels' launch attributes: their shared memory,
// and the SM's largest shared-memory configuration, so that whichever block reaches an SM first
// leaves room for the other.
struct BesideKernels {
  const void* seq;
  int seq_blocks, seq_threads;
  size_t seq_smem;
  const void* depth;
  int depth_threads;
  size_t depth_smem;
};
struct BesideLayout {
  size_t smem = 0;
  bool fits = false;
  int pickup_blocks = 0;  // per SM, of the launch after the sequence kernel (unpadded)
};
BesideLayout layout_beside(const BesideKernels& kernels) {
  int device = 0;
  MODA_CUDA_CHECK(cudaGetDevice(&device));
  cudaFuncAttributes seq{}, depth{};
  MODA_CUDA_CHECK(cudaFuncGetAttributes(&seq, kernels.seq));
  MODA_CUDA_CHECK(cudaFuncGetAttributes(&depth, kernels.depth));
  cudaDeviceProp props{};
  MODA_CUDA_CHECK(cudaGetDeviceProperties(&props, device));
  const size_t reserved = props.reservedSharedMemPerBlock;
  BesideLayout layout;
  layout.smem = std::max(kernels.depth_smem, props.sharedMemPerMultiprocessor / 2 - reserved -
                                                 depth.sharedSizeBytes + 16);
  const size_t smem = kernels.seq_blocks * (kernels.seq_smem + seq.sharedSizeBytes + reserved) +
                      layout.smem + depth.sharedSizeBytes + reserved;
  layout.fits = registers_fit(props, kernels.seq_blocks, kernels.seq_threads / 32, seq.numRegs,
                              kernels.depth_threads / 32, depth.numRegs) &&
                smem <= props.sharedMemPerMultiprocessor &&
                kernels.seq_blocks * kernels.seq_threads + kernels.depth_threads <=
                    props.maxThreadsPerMultiProcessor;
  allow_smem(kernels.depth, layout.smem);
  allow_smem(kernels.seq, kernels.seq_smem);
  MODA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &layout.pickup_blocks, kernels.depth, kernels.depth_threads, kernels.depth_smem));
  layout.pickup_blocks = std::max(layout.pickup_blocks, 1);
  for (const void* kernel : {kernels.depth, kernels.seq}) {
    MODA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                         cudaSharedmemCarveoutMaxShared));
  }
  return layout;
}

// The forward's, once per device. Where they do not fit, the forward takes `after`: the depth
// blocks wait for the sequence kernel's tiles, so they must never keep its blocks off every SM.
constexpr size_t kFwdBesideSmem = depth_forward_tail_smem<64, kFwdBesideWarps>();
BesideLayout forward_beside_layout() {
  return once_per_device([] {
    return layout_beside({reinterpret_cast<const void*>(seq_forward_publish), 2, kForwardThreads,
                          forward_wgmma_smem<64>(false, 1),
                          reinterpret_cast<const void*>(depth_forward_beside), kFwdBesideWarps * 32,
                          kFwdBesideSmem});
  });
}

void attention_forward(const AttentionShape& shape, const bf16* q, const bf16* k, const bf16* v,
                       const bf16* depth_k, const bf16* depth_v, bf16* out, float* lse,
                       float* workspace, cudaStream_t stream, const DepthStreams& depth) {
  check_shape(shape);
  const Dims s = dims_of(shape);
  const int64_t rows = int64_t{s.B} * s.T;
  if (rows == 0) return;
  if (use_mma(shape, {q, k, v, out})) {
    // Query tiles in order of their work at head size 64: (4, 4096, 16, 8) 0.410 -> 0.388 ms,
    // S 36 0.635 -> 0.609, (1, 4096, 64, 8) S 64 0.806 -> 0.767, Table 6 unchanged, (1, 16384,
    // 64, 8) 5.68 -> 5.74; at 128, (2, 4096, 16, 8) 0.333 -> 0.383, so there the tiles of one
    // (b, head) stay together.
    const bool work_order = s.d == 64;
    const auto launch = [&](auto kernel, int heads, size_t smem, float* o_seq) {
      const auto grid =
          static_cast<unsigned>(ceil_div(s.T, kForwardRows / heads) * (s.Hq / heads) * s.B);
      allow_smem(kernel, smem);
      kernel<<<grid, kForwardThreads, smem, stream>>>(s, q, k, v, depth_k, depth_v, out, o_seq, lse,
                                                      work_order);
      MODA_LAUNCH_CHECK();
    };
    const bool slots_aligned = slots_aligned16(shape, {depth_k, depth_v});
    const bool after = slots_aligned && attention_depth_forward_after(shape, depth.forward);
    if (s.d == 64 && slots_aligned && !after) {
      // Two heads of a group per block read each slot row once for both.
      if (s.G % 2 == 0) {
        launch(seq_forward_wgmma<64, true, 2>, 2, forward_wgmma_smem<64>(true, 2), nullptr);
      } else {
        launch(seq_forward_wgmma<64, true, 1>, 1, forward_wgmma_smem<64>(true, 1), nullptr);
      }
      return;
    }
    if (s.d == 128 && s.G % 2 == 0 && slots_aligned && !after) {
      launch(seq_forward_wgmma<128, true, 2>, 2, forward_wgmma_smem<128>(true, 2), nullptr);
      return;
    }
    float* o_seq = s.S > 0 ? workspace : nullptr;
    const bool beside_asked = after && attention_depth_forward_beside(shape, depth.forward);
    const BesideLayout layout = beside_asked ? forward_beside_layout() : BesideLayout{};
    if (layout.fits) {
      // The depth part beside the sequence kernel, following its tiles (depth_forward_beside).
      float* seq_lse = o_seq + rows * s.Hq * s.d;
      auto* queue = reinterpret_cast<ForwardQueue*>(seq_lse + (rows * s.Hq + 3) / 4 * 4 + 4);
      MODA_CUDA_CHECK(cudaMemsetAsync(
          queue, 0, sizeof(ForwardQueue) + sizeof(int) * 2 * moda::attention_forward_tiles(shape),
          stream));
      const cudaStream_t priority_stream = depth.priority.fork(stream);
      depth_forward_beside<<<static_cast<unsigned>(depth.sm_count), kFwdBesideWarps * 32,
                             layout.smem, priority_stream>>>(s, q, depth_k, depth_v, o_seq, seq_lse,
                                                             out, lse, queue, false);
      MODA_LAUNCH_CHECK();
      const auto grid = static_cast<unsigned>(ceil_div(s.T, kForwardRows) * int64_t{s.Hq} * s.B);
      seq_forward_publish<<<grid, kForwardThreads, forward_wgmma_smem<64>(false, 1), stream>>>(
          s, q, k, v, o_seq, seq_lse, queue, work_order);
      MODA_LAUNCH_CHECK();
      depth_forward_beside<<<static_cast<unsigned>(depth.sm_count * layout.pickup_blocks),
                             kFwdBesideWarps * 32, kFwdBesideSmem, stream>>>(
          s, q, depth_k, depth_v, o_seq, seq_lse, out, lse, queue, true);
      MODA_LAUNCH_CHECK();
      depth.priority.join(stream);
      return;
    }
    if (s.d == 64) {
      launch(seq_forward_wgmma<64, false, 1>, 1, forward_wgmma_smem<64>(false, 1), o_seq);
    } else {
      launch(seq_forward_wgmma<128, false, 1>, 1, forward_wgmma_smem<128>(false, 1), o_seq);
    }
    if (after) {
      const auto launch_after = [&](auto dd) {
        constexpr int D = decltype(dd)::value;
        const auto grid = static_cast<unsigned>(std::min<int64_t>(
            int64_t{depth.sm_count} * depth_forward_tail_blocks_per_sm<D>(), rows * s.Hk));
        depth_forward_tail<D>
            <<<grid, kFwdTailWarps * 32, depth_forward_tail_smem<D, kFwdTailWarps>(), stream>>>(
                s, q, depth_k, depth_v, o_seq, out, lse);
      };
      if (s.d == 64) {
        launch_after(std::integral_constant<int, 64>{});
      } else {
        launch_after(std::integral_constant<int, 128>{});
      }
      MODA_LAUNCH_CHECK();
      return;
    }
  } else {
    with_pairs(s.d, [&](auto p) {
      seq_forward_warp<decltype(p)::value>
          <<<warp_blocks(rows * s.Hq), kWarpsPerBlock * 32, 0, stream>>>(
              s, q, k, v, out, s.S > 0 ? workspace : nullptr, lse);
    });
    MODA_LAUNCH_CHECK();
  }
  if (s.S == 0) return;
  float* o_seq = workspace;
  if (use_depth_stream(shape, {q, depth_k, depth_v, out, o_seq})) {
    with_depth_stream(s, [&](auto dd, auto gg) {
      depth_forward_stream<decltype(dd)::value, decltype(gg)::value>
          <<<warp_blocks(rows * s.Hk), kWarpsPerBlock * 32, 0, stream>>>(s, q, depth_k, depth_v,
                                                                         o_seq, out, lse);
    });
    MODA_LAUNCH_CHECK();
    return;
  }
  const size_t smem = sizeof(float) * kWarpsPerBlock * static_cast<size_t>(depth_forward_floats(s));
  const bool vec = s.d % 8 == 0 && s.slot_stride % 8 == 0 && aligned16(depth_k);
  with_pairs(s.d, [&](auto p) {
    auto kernel = depth_forward_warp<decltype(p)::value>;
    allow_smem(kernel, smem);
    kernel<<<warp_blocks(rows * s.Hk), kWarpsPerBlock * 32, smem, stream>>>(
        s, vec, q, depth_k, depth_v, o_seq, out, lse);
  });
  MODA_LAUNCH_CHECK();
}

// The backward's, once per device (one layout per depth kernel).
template <bool kSlotGrads, bool kEvictFirstLoads = false>
BesideLayout beside_layout() {
  return once_per_device([] {
    return layout_beside(
        {reinterpret_cast<const void*>(seq_backward_wgmma<64, false>), 1, kBackwardThreads,
         backward_wgmma_smem<64>(),
         reinterpret_cast<const void*>(depth_backward_beside<64, kSlotGrads, kEvictFirstLoads>),
         kBesideWarps * 32, depth_beside_smem<64, kSlotGrads>()});
  });
}

void attention_backward(const AttentionShape& shape, const bf16* dout, const bf16* q, const bf16* k,
                        const bf16* v, const bf16* depth_k, const bf16* depth_v, const bf16* out,
                        const float* lse, float* dq, float* dk, float* dv,
                        const DepthBackwardOut& slot_out, float* workspace, cudaStream_t stream,
                        const DepthStreams& depth) {
  check_shape(shape);
  const Dims s = dims_of(shape);
  const int64_t rows = int64_t{s.B} * s.T;
  if (rows == 0) return;
  float* delta = workspace;
  float* const depth_probs = slot_out.probs;
  float* const depth_dscores = slot_out.dscores;
  const bool slot_grads = slot_out.d_depth_k != nullptr && s.S > 0;
  const bool streaming =
      use_depth_stream(shape, {dout, q, out, depth_k, depth_v, dq, depth_probs, depth_dscores});
  const bool mma = use_mma(shape, {dout, q, k, v});
  // At head size 64 the tensor-core backward takes the depth part itself (depth_backward_tail),
  // and with slot_grads writes the slots' gradients there (whole rows through shared memory).
  const bool fused =
      streaming && mma && s.d == 64 && s.S > 0 &&
      (!slot_grads || (aligned16(slot_out.d_depth_k) && aligned16(slot_out.d_depth_v)));
  // At head size 128 the sequence kernel's blocks take an SM's whole register file (254 a
  // thread), so a depth pass beside it runs mostly in its last wave and after it. At G <= 2 the
  // depth pass is then backward_prepare too and runs before it, which saves dq's zeroing and
  // atomics: bwd ms, (2, 4096, 16, 8, 128) S 2 1.074 -> 1.053, S 30 2.165 -> 2.139; G = 1 S 2
  // 1.253 -> 1.239, S 16 unchanged. At G = 4 and 8 with many slots the pass beside it is
  // faster: (2, 4096, 32, 8, 128) S 32 3.42 against 3.62, (1, 4096, 64, 8, 128) S 64 4.28
  // against 4.80 (docs/kernels/moda_attention.md, twenty-seventh session).
  const bool depth_prepares = streaming && mma && s.d == 128 && s.S > 0 && s.G <= 2;
  if (depth_prepares) {
    with_depth_stream(s, [&](auto dd, auto gg) {
      depth_backward_stream<decltype(dd)::value, decltype(gg)::value, true>
          <<<warp_blocks(rows * s.Hk), kWarpsPerBlock * 32, 0, stream>>>(
              s, dout, q, out, lse, delta, depth_k, depth_v, dq, depth_probs, depth_dscores);
    });
  } else if (streaming) {
    const int64_t head_rows = rows * s.Hq;
    const auto blocks = static_cast<unsigned>(ceil_div(head_rows * (s.d / 8), 256));
    if (s.d == 64) {
      backward_prepare<64><<<blocks, 256, 0, stream>>>(head_rows, dout, out, dq, delta);
    } else {
      backward_prepare<128><<<blocks, 256, 0, stream>>>(head_rows, dout, out, dq, delta);
    }
    MODA_LAUNCH_CHECK();
    if (s.S > 0 && !fused) {
      // The depth part beside the sequence part: the backward (slot gradients of all S included)
      // took 2.73 to 2.78 instead of 2.85 ms at (4, 4096, 16, 8), S = 36
      // (docs/kernels/moda_attention.md).
      const cudaStream_t depth_stream = depth.streaming.fork(stream);
      with_depth_stream(s, [&](auto dd, auto gg) {
        depth_backward_stream<decltype(dd)::value, decltype(gg)::value, false>
            <<<warp_blocks(rows * s.Hk), kWarpsPerBlock * 32, 0, depth_stream>>>(
                s, dout, q, nullptr, lse, delta, depth_k, depth_v, dq, depth_probs, depth_dscores);
      });
    }
  } else {
    const size_t smem =
        sizeof(float) * kWarpsPerBlock * static_cast<size_t>(depth_backward_floats(s));
    with_pairs(s.d, [&](auto p) {
      auto kernel = depth_backward_warp<decltype(p)::value>;
      allow_smem(kernel, smem);
      kernel<<<warp_blocks(rows * s.Hk), kWarpsPerBlock * 32, smem, stream>>>(
          s, dout, q, out, lse, depth_k, depth_v, dq, depth_probs, depth_dscores, delta);
    });
  }
  MODA_LAUNCH_CHECK();
  if (mma) {
    // Groups of more than two query heads are split into one block per head, which then add
    // their dK, dV with atomics: one block walking all 8 heads of a group serially was the
    // critical path of the launch (G = 8, T = 4096: 2.19 -> 1.69 ms in blocks of two heads).
    const int head_blocks = s.G > 2 ? s.G : 1;
    // Key blocks in order of their work when a block takes a whole group of heads: (4, 4096, 16,
    // 8) 1.140 -> 1.076 ms, d 128 (2, 4096, 16, 8) 1.090 -> 0.902, (2, 4096, 16, 16) and
    // (8, 2048, 16, 8) unchanged; with the group split over blocks the blocks of one (b, KV head)
    // together: in work order Table 6's (64, 1024, 6, 2) took 0.648 instead of 0.549 ms and
    // (1, 4096, 64, 8) 1.139 instead of 1.069 (probably: blocks that share query tiles no longer
    // run together). With the depth tail only while the tail is short: in work order the
    // blocks of a key block reach their tails together, so that their slot loads no longer
    // overlap other blocks' sequence math. (4, 4096, 16, 8) bwd with slots, old order against
    // work order: S 4 1.419 / 1.364, S 16 1.825 / 1.808, S 24 2.149 / 2.134, S 36 2.607 / 2.623,
    // S 48 3.007 / 3.103, S 72 3.948 / 4.112. Beside the side-stream pass (d 128) the old order
    // measured 1.608, 1.611 and 1.716 against 1.630, 1.627 and 1.630 at (2, 4096, 16, 8) S 16:
    // no clear gain, so the work order stays there.
    // Automatic placement takes the tail where the two kernels' blocks would not share an SM.
    const bool beside_asked =
        fused && attention_depth_backward_beside(shape, depth.backward, slot_grads,
                                                 beside_bounds(peak_memory_tb_per_s()));
    // The sole reader's beside kernel copies the slot rows evict-first from G = 8 on
    // (cp_async16_pair_evict_first), where q and dout are largest against the slots: bwd ms,
    // plain / evict-first, (1, T, 64, 8) S 64: T 4K 1.357 / 1.312, 8K 4.453 / 4.158, 16K 16.215 /
    // 16.035; at G = 2 slower, (4, 4096, 16, 8) S 36 1.833 / 2.139, S 72 2.749 / 3.311. On the
    // H100 (G = 8) by more: 4K 1.619 / 1.346, 16K 16.767 / 15.738.
    const bool evict_first_loads = slot_grads && s.G >= kMinEvictFirstLoadGroup;
    const BesideLayout layout = !beside_asked       ? BesideLayout{}
                                : evict_first_loads ? beside_layout<true, true>()
                                : slot_grads        ? beside_layout<true>()
                                                    : beside_layout<false>();
    const bool beside =
        beside_asked && (depth.backward == DepthBackwardPlacement::beside || layout.fits);
    const bool tail = fused && !beside;
    const bool work_order = head_blocks == 1 && (!tail || s.S < 32);
    const auto grid =
        static_cast<unsigned>(int64_t{s.B} * s.Hk * head_blocks * ceil_div(s.T, kBackwardKeys));
    const auto launch = [&](auto kernel, size_t smem_bytes) {
      allow_smem(kernel, smem_bytes);
      kernel<<<grid, kBackwardThreads, smem_bytes, stream>>>(s, dout, q, k, v, lse, delta, depth_k,
                                                             depth_v, dq, dk, dv, slot_out,
                                                             head_blocks, work_order);
    };
    if (beside) {
      // One depth block per SM (beside_layout, which set its launch attributes), on a stream
      // of its own; with the slots' gradients, after the sequence kernel the same kernel takes
      // the pairs left with as many blocks as an SM holds (kQueuePairs).
      auto* queue =
          reinterpret_cast<DepthQueue*>(workspace + (int64_t{s.B} * s.T * s.Hq + 1) / 2 * 2);
      if (slot_grads) MODA_CUDA_CHECK(cudaMemsetAsync(queue, 0, sizeof(*queue), stream));
      const cudaStream_t priority_stream = depth.priority.fork(stream);
      const auto beside_kernel = evict_first_loads ? depth_backward_beside<64, true, true>
                                 : slot_grads      ? depth_backward_beside<64, true>
                                                   : depth_backward_beside<64, false>;
      beside_kernel<<<static_cast<unsigned>(depth.sm_count), kBesideWarps * 32, layout.smem,
                      priority_stream>>>(s, dout, q, lse, delta, depth_k, depth_v, dq, slot_out,
                                         queue, false);
      MODA_LAUNCH_CHECK();
      launch(seq_backward_wgmma<64, false>, backward_wgmma_smem<64>());
      if (slot_grads) {
        MODA_LAUNCH_CHECK();
        beside_kernel<<<static_cast<unsigned>(depth.sm_count * layout.pickup_blocks),
                        kBesideWarps * 32, depth_beside_smem<64, true>(), stream>>>(
            s, dout, q, lse, delta, depth_k, depth_v, dq, slot_out, queue, true);
      }
      depth.priority.join(stream);
    } else if (tail) {
      if (slot_grads) {
        launch(seq_backward_wgmma<64, true, true>,
               std::max(backward_wgmma_smem<64>(), depth_tail_smem<64, true>()));
      } else {
        launch(seq_backward_wgmma<64, true>,
               std::max(backward_wgmma_smem<64>(), depth_tail_smem<64, false>()));
      }
    } else if (s.d == 64) {
      launch(seq_backward_wgmma<64, false>, backward_wgmma_smem<64>());
    } else {
      launch(seq_backward_wgmma<128, false>, backward_wgmma_smem<128>());
    }
  } else {
    with_pairs(s.d, [&](auto p) {
      seq_backward_warp<decltype(p)::value>
          <<<warp_blocks(rows * s.Hq), kWarpsPerBlock * 32, 0, stream>>>(s, dout, q, k, v, lse,
                                                                         delta, dq, dk, dv);
    });
  }
  MODA_LAUNCH_CHECK();
  if (streaming && s.S > 0 && !fused && !depth_prepares) depth.streaming.join(stream);
  if (slot_grads && !fused) {
    // The other depth kernels leave the probabilities and score gradients; the slots' gradients
    // follow from them with this layer as the only reader.
    const DepthReaderPtrs reader{q, dout, depth_probs, depth_dscores, s.S};
    depth_slot_backward(shape, 0, s.S, {&reader, 1}, slot_out.d_depth_k, slot_out.d_depth_v, false,
                        stream);
  }
}

void depth_slot_backward(const AttentionShape& shape, int64_t first, int64_t count,
                         std::span<const DepthReaderPtrs> readers, float* d_depth_k,
                         float* d_depth_v, bool accumulate, cudaStream_t stream, bf16* last_dv,
                         int64_t last_dv_ld) {
  check_shape(shape);
  const Dims s = dims_of(shape);
  const int64_t units = int64_t{s.B} * s.T * s.Hk;
  if (units == 0 || count == 0) return;
  bool vec = s.d % 8 == 0 && s.slot_stride % 8 == 0 && aligned16(d_depth_k) && aligned16(d_depth_v);
  if (last_dv != nullptr) vec = vec && aligned16(last_dv) && last_dv_ld % 8 == 0;
  for (const DepthReaderPtrs& r : readers) {
    vec = vec && aligned16(r.q) && aligned16(r.dout) && aligned16(r.probs) && aligned16(r.dscores);
  }
  // Readers beyond one launch's table are added by further launches; slots up to four at a time.
  for (int64_t slot = first; slot < first + count; slot += kMaxPullSlots) {
    const int slots = static_cast<int>(std::min<int64_t>(kMaxPullSlots, first + count - slot));
    size_t next = 0;
    do {
      PullReaders table{};
      while (next < readers.size() && table.count < kMaxPullReaders) {
        const DepthReaderPtrs& r = readers[next++];
        table.q[table.count] = r.q;
        table.dout[table.count] = r.dout;
        table.probs[table.count] = r.probs;
        table.dscores[table.count] = r.dscores;
        for (int c = 0; c < slots; ++c) {
          const int64_t at = depth_stats_index(r.slots, units, s.G, slot + c, 0, 0);
          table.stats_at[table.count][c] = at;
          table.stats_step[table.count][c] =
              static_cast<int>(depth_stats_index(r.slots, units, s.G, slot + c, 1, 0) - at);
        }
        ++table.count;
      }
      const bool add = accumulate || next > static_cast<size_t>(table.count);
      // The last slot's value gradient is final only in the launch of its last readers.
      const bool final_dv = slot + slots == first + count && next == readers.size();
      const auto launch = [&](auto v, auto c, auto g) {
        auto kernel =
            depth_slot_backward_kernel<decltype(v)::value, decltype(c)::value, decltype(g)::value>;
        const int64_t threads = units * (s.d / decltype(v)::value);
        const int64_t out = (slot - first) * s.slot_stride;
        kernel<<<static_cast<unsigned>(ceil_div(threads, kPullThreads)), kPullThreads, 0, stream>>>(
            s, add, table, d_depth_k + out, d_depth_v + out, final_dv ? last_dv : nullptr,
            last_dv_ld);
      };
      const auto with_slots = [&](auto v, auto g) {
        switch (slots) {
          case 4:
            launch(v, std::integral_constant<int, 4>{}, g);
            break;
          case 3:
            launch(v, std::integral_constant<int, 3>{}, g);
            break;
          case 2:
            launch(v, std::integral_constant<int, 2>{}, g);
            break;
          default:
            launch(v, std::integral_constant<int, 1>{}, g);
        }
      };
      if (vec) {  // other G: the run-time group size (GT = 0)
        with_group<0>(s.G, [&](auto g) { with_slots(std::integral_constant<int, 8>{}, g); });
      } else {
        with_slots(std::integral_constant<int, 1>{}, std::integral_constant<int, 0>{});
      }
      MODA_LAUNCH_CHECK();
    } while (next < readers.size());
  }
}

}  // namespace moda::cuda

namespace moda {

bool cuda_depth_backward_beside_fits() {
  return cuda::beside_layout<false>().fits && cuda::beside_layout<true>().fits &&
         cuda::beside_layout<true, true>().fits;
}

bool cuda_depth_forward_beside_fits() { return cuda::forward_beside_layout().fits; }

}  // namespace moda
