// QK-norm + RoPE + V copy, straight from the fused projection row [q | k | v]. A group of L lanes
// per row (a warp, or a quarter or half of one for narrow rows): it normalizes q over all its
// heads (one RMS over Hq*d), rotates each head, then does the same for k, and copies v. RoPE pairs
// element i of a head with element i + d/2 ("rotate_half"), so a lane works on V elements of the
// first half and the V matching ones of the second half; V = 8 (16-byte accesses) when d/2 is a
// multiple of 8 and the addresses allow, else V = 1. L (8 to 32) gives each lane two such units of
// k in the forward, where narrower groups keep more rows in flight, and one in the backward, whose
// groups each keep a row of partial sums in shared memory, so that narrower ones cost it resident
// blocks (measurements in docs/kernels/cuda_backend.md).
//
// Backward: the output gradient is rotated back (R^T), then goes through the RMSNorm backward;
// the weight gradients are column sums kept per group of lanes in shared memory, as in rmsnorm.cu.
#include <algorithm>
#include <bit>
#include <type_traits>

#include "ops.cuh"

namespace moda::cuda {

namespace {

constexpr int kFwdWarps = 8;
constexpr int kBwdWarps = 4;

// One normalized and rotated part (q or k) of a row.
template <int V, int L>
__device__ void norm_rope_part(const bf16* in, const bf16* w, bf16* out, int width, int d,
                               float eps, const float* cs, const float* sn, float* rstd_out) {
  const int lane = threadIdx.x % L, half = d / 2, units_per_head = half / V;
  float ss = 0;
  for (int c = lane * V; c < width; c += L * V) {
    float v[V];
    load_vec<V>(in + c, v);
#pragma unroll
    for (int i = 0; i < V; ++i) ss += v[i] * v[i];
  }
  const float r = rsqrtf(group_sum<L>(ss) / static_cast<float>(width) + eps);
  const int units = (width / d) * units_per_head;
  for (int u = lane; u < units; u += L) {
    const int i0 = (u % units_per_head) * V;
    const int a = (u / units_per_head) * d + i0, b = a + half;
    float xa[V], xb[V], wa[V], wb[V], c[V], s[V], ya[V], yb[V];
    load_vec<V>(in + a, xa);
    load_vec<V>(in + b, xb);
    load_vec<V>(w + a, wa);
    load_vec<V>(w + b, wb);
    load_vec<V>(cs + i0, c);
    load_vec<V>(sn + i0, s);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const float na = xa[i] * r * wa[i], nb = xb[i] * r * wb[i];
      ya[i] = na * c[i] - nb * s[i];
      yb[i] = nb * c[i] + na * s[i];
    }
    store_vec<V>(out + a, ya);
    store_vec<V>(out + b, yb);
  }
  if (lane == 0) *rstd_out = r;
}

template <int V, int L>
__global__ void __launch_bounds__(kFwdWarps * 32)
    qkv_forward_kernel(QkvArgs args, const bf16* __restrict__ raw, const bf16* __restrict__ qw,
                       const bf16* __restrict__ kw, bf16* __restrict__ q_out,
                       bf16* __restrict__ k_out, bf16* __restrict__ v_out,
                       float* __restrict__ q_rstd, float* __restrict__ k_rstd) {
  const int64_t row = (blockIdx.x * int64_t{kFwdWarps * 32} + threadIdx.x) / L;
  if (row >= args.rows) return;
  const int d = static_cast<int>(args.head_dim), half = d / 2;
  const int q_width = static_cast<int>(args.q_heads) * d;
  const int kv_width = static_cast<int>(args.kv_heads) * d;
  const bf16* src = raw + row * args.ld + args.col0;
  const int64_t t = row % args.seq_len;
  const float* cs = args.rope_cos + t * half;
  const float* sn = args.rope_sin + t * half;
  if (q_width > 0) {
    norm_rope_part<V, L>(src, qw, q_out + row * q_width, q_width, d, args.eps, cs, sn,
                         q_rstd + row);
  }
  norm_rope_part<V, L>(src + q_width, kw, k_out + row * kv_width, kv_width, d, args.eps, cs, sn,
                       k_rstd + row);
  const bf16* vs = src + q_width + kv_width;
  bf16* vd = v_out + row * kv_width;
  for (int c = (threadIdx.x % L) * V; c < kv_width; c += L * V) {
    float v[V];
    load_vec<V>(vs + c, v);
    store_vec<V>(vd + c, v);
  }
}

// Backward of one part: gradient g (fp32, rotated space) -> dx (bf16), weight-gradient partials.
// A lane's first kCached units stay in registers between the two passes (all of them at the 700M
// shape); further units are loaded again in the second pass.
template <int V, int L>
__device__ void norm_rope_part_backward(const bf16* x, const bf16* w, float r, const float* g,
                                        bf16* dx, float* dw_partial, int width, int d,
                                        const float* cs, const float* sn) {
  const int lane = threadIdx.x % L, half = d / 2, units_per_head = half / V;
  const int units = (width / d) * units_per_head;
  // V elements of a head's first half (at a) and the V matching ones of its second half; dn is
  // R^T g, the gradient with respect to the normalized (unrotated) values.
  struct Unit {
    int i0, a;
    float dna[V], dnb[V], xa[V], xb[V];
  };
  const auto load = [&](int u, Unit& t) {
    t.i0 = (u % units_per_head) * V;
    t.a = (u / units_per_head) * d + t.i0;
    float ga[V], gb[V], c[V], s[V];
    load_vec<V>(g + t.a, ga);
    load_vec<V>(g + t.a + half, gb);
    load_vec<V>(cs + t.i0, c);
    load_vec<V>(sn + t.i0, s);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      t.dna[i] = ga[i] * c[i] + gb[i] * s[i];
      t.dnb[i] = gb[i] * c[i] - ga[i] * s[i];
    }
    load_vec<V>(x + t.a, t.xa);
    load_vec<V>(x + t.a + half, t.xb);
  };
  const auto dot_of = [&](const Unit& t) {
    float wa[V], wb[V], dot = 0;
    load_vec<V>(w + t.a, wa);
    load_vec<V>(w + t.a + half, wb);
#pragma unroll
    for (int i = 0; i < V; ++i) dot += t.dna[i] * wa[i] * t.xa[i] + t.dnb[i] * wb[i] * t.xb[i];
    return dot;
  };
  const auto finish = [&](const Unit& t, float coef) {
    float wa[V], wb[V], oa[V], ob[V], pa[V], pb[V];
    load_vec<V>(w + t.a, wa);
    load_vec<V>(w + t.a + half, wb);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      oa[i] = r * (t.dna[i] * wa[i] - t.xa[i] * coef);
      ob[i] = r * (t.dnb[i] * wb[i] - t.xb[i] * coef);
      pa[i] = t.dna[i] * t.xa[i] * r;
      pb[i] = t.dnb[i] * t.xb[i] * r;
    }
    add_partial<V>(dw_partial + t.a, pa);
    add_partial<V>(dw_partial + t.a + half, pb);
    store_vec<V>(dx + t.a, oa);
    store_vec<V>(dx + t.a + half, ob);
  };
  constexpr int kCached = 2;
  Unit cached[kCached];
  float dot = 0;
#pragma unroll
  for (int k = 0; k < kCached; ++k) {
    if (lane + L * k < units) {
      load(lane + L * k, cached[k]);
      dot += dot_of(cached[k]);
    }
  }
  for (int u = lane + L * kCached; u < units; u += L) {
    Unit t;
    load(u, t);
    dot += dot_of(t);
  }
  const float coef = group_sum<L>(dot) / static_cast<float>(width) * r * r;
#pragma unroll
  for (int k = 0; k < kCached; ++k) {
    if (lane + L * k < units) finish(cached[k], coef);
  }
  for (int u = lane + L * kCached; u < units; u += L) {
    Unit t;
    load(u, t);
    finish(t, coef);
  }
}

template <int V, int L>
__global__ void __launch_bounds__(kBwdWarps * 32)
    qkv_backward_kernel(QkvArgs args, const bf16* __restrict__ raw, const bf16* __restrict__ qw,
                        const bf16* __restrict__ kw, const float* __restrict__ q_rstd,
                        const float* __restrict__ k_rstd, const float* __restrict__ dq,
                        const float* __restrict__ dk, const float* __restrict__ dv, bf16* draw,
                        float* dqw, float* dkw) {
  // [groups][q_width + kv_width]: each group of L lanes adds into its own partial row, since two
  // groups of a warp add to the same columns in the same instruction.
  extern __shared__ float partial[];
  constexpr int kGroups = kBwdWarps * 32 / L;
  const int d = static_cast<int>(args.head_dim), half = d / 2;
  const int q_width = static_cast<int>(args.q_heads) * d;
  const int kv_width = static_cast<int>(args.kv_heads) * d;
  const int width = q_width + kv_width;
  const int lane = threadIdx.x % L, group = threadIdx.x / L;
  float* mine = partial + group * width;
  for (int c = lane; c < width; c += L) mine[c] = 0.0f;
  __syncwarp();
  for (int64_t row = blockIdx.x * int64_t{kGroups} + group; row < args.rows;
       row += int64_t{gridDim.x} * kGroups) {
    const bf16* src = raw + row * args.ld + args.col0;
    bf16* dst = draw + row * args.ld + args.col0;
    const int64_t t = row % args.seq_len;
    const float* cs = args.rope_cos + t * half;
    const float* sn = args.rope_sin + t * half;
    if (q_width > 0) {
      norm_rope_part_backward<V, L>(src, qw, q_rstd[row], dq + row * q_width, dst, mine, q_width, d,
                                    cs, sn);
    }
    norm_rope_part_backward<V, L>(src + q_width, kw, k_rstd[row], dk + row * kv_width,
                                  dst + q_width, mine + q_width, kv_width, d, cs, sn);
    if (dv != nullptr) {
      const float* dvr = dv + row * kv_width;
      for (int c = lane * V; c < kv_width; c += L * V) {
        float v[V];
        load_vec<V>(dvr + c, v);
        store_vec<V>(dst + width + c, v);
      }
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < width; c += blockDim.x) {
    float total = 0;
#pragma unroll
    for (int k = 0; k < kGroups; ++k) total += partial[k * width + c];
    if (c < q_width) {
      atomicAdd(dqw + c, total);
    } else {
      atomicAdd(dkw + c - q_width, total);
    }
  }
}

// V = 8 needs whole 8-vectors within each half-head and 16-byte aligned rows of every buffer.
bool vectorizable(const QkvArgs& a, std::initializer_list<const void*> ptrs) {
  if ((a.head_dim / 2) % 8 != 0 || a.ld % 8 != 0 || a.col0 % 8 != 0) return false;
  for (const void* p : ptrs) {
    if (p != nullptr && !aligned16(p)) return false;
  }
  return true;
}

// Calls kernel_for(std::integral_constant<int, V>{}, std::integral_constant<int, L>{}) with the
// vector width and the lanes per row of these arguments: units_per_lane units of k per lane. The
// backward keeps a row of partial weight-gradient sums per group of lanes (bytes_per_group), so
// it takes wider groups where narrow ones would not fit in shared memory.
template <typename KernelFor>
void dispatch(const QkvArgs& a, bool vector, int units_per_lane, size_t bytes_per_group,
              int threads, KernelFor kernel_for) {
  if (!vector) {
    return kernel_for(std::integral_constant<int, 1>{}, std::integral_constant<int, 32>{});
  }
  const int64_t k_units = a.kv_heads * (a.head_dim / 2 / 8);
  int lanes = static_cast<int>(std::clamp<int64_t>(k_units / units_per_lane, 8, 32));
  lanes = static_cast<int>(std::bit_ceil(static_cast<unsigned>(lanes)));
  while (lanes < 32 &&
         bytes_per_group * static_cast<size_t>(threads / lanes) > smem_per_block_limit()) {
    lanes *= 2;
  }
  with_lanes(lanes, [&](auto l) { kernel_for(std::integral_constant<int, 8>{}, l); });
}

}  // namespace

void qkv_norm_rope_forward(const QkvArgs& a, const bf16* raw, const bf16* q_weight,
                           const bf16* k_weight, bf16* q_out, bf16* k_out, bf16* v_out,
                           float* q_rstd, float* k_rstd, cudaStream_t stream) {
  if (a.rows == 0) return;
  const bool vector =
      vectorizable(a, {raw, q_weight, k_weight, q_out, k_out, v_out, a.rope_cos, a.rope_sin});
  dispatch(a, vector, 2, 0, kFwdWarps * 32, [&](auto v, auto lanes) {
    constexpr int kRowsPerBlock = kFwdWarps * 32 / decltype(lanes)::value;
    const int blocks = static_cast<int>(ceil_div(a.rows, kRowsPerBlock));
    qkv_forward_kernel<decltype(v)::value, decltype(lanes)::value>
        <<<blocks, kFwdWarps * 32, 0, stream>>>(a, raw, q_weight, k_weight, q_out, k_out, v_out,
                                                q_rstd, k_rstd);
    MODA_LAUNCH_CHECK();
  });
}

void qkv_norm_rope_backward(const QkvArgs& a, const bf16* raw, const bf16* q_weight,
                            const bf16* k_weight, const float* q_rstd, const float* k_rstd,
                            const float* dq, const float* dk, const float* dv, bf16* draw,
                            float* dq_weight, float* dk_weight, cudaStream_t stream) {
  if (a.rows == 0) return;
  const bool vector =
      vectorizable(a, {raw, q_weight, k_weight, dq, dk, dv, draw, a.rope_cos, a.rope_sin});
  const size_t partial_row =
      sizeof(float) * static_cast<size_t>((a.q_heads + a.kv_heads) * a.head_dim);
  dispatch(a, vector, 1, partial_row, kBwdWarps * 32, [&](auto v, auto lanes) {
    constexpr int kGroups = kBwdWarps * 32 / decltype(lanes)::value;
    const auto kernel = qkv_backward_kernel<decltype(v)::value, decltype(lanes)::value>;
    const size_t smem = partial_row * kGroups;
    allow_smem(kernel, smem);
    const int blocks = resident_grid(kernel, kBwdWarps * 32, smem, ceil_div(a.rows, kGroups));
    kernel<<<blocks, kBwdWarps * 32, smem, stream>>>(a, raw, q_weight, k_weight, q_rstd, k_rstd, dq,
                                                     dk, dv, draw, dq_weight, dk_weight);
    MODA_LAUNCH_CHECK();
  });
}

}  // namespace moda::cuda
