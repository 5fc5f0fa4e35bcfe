// The model graph: forward and backward of OLMo2 / MoDA as explicit backend op calls.
//
// Residual stream buffers res[0..2N]: res[2l] enters layer l, res[2l+1] leaves its attention,
// res[2N] leaves the last layer. Under pre-norm these are the sums x + branch; under reordered
// and post they are the sublayer outputs. Backward walks the layers top-down: a reader of depth
// slots keeps its q, dout and the slots' probabilities and score gradients, and the slots'
// gradients are formed from them (Backend::depth_slot_backward) per pair of producing layers: when
// the backward reaches the upper layer of a pair, from all the readers above it for both layers'
// slots, and at the lower layer from the one reader left, before the producer consumes them.
#include "moda/model.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <stdexcept>

namespace moda {

namespace {

// Buffers are requested by role and size, then carved from one allocation per role.
class ArenaPlan {
 public:
  void take(Tensor& target, Role role, int64_t numel) {
    // Keep every slice 64-element aligned so vectorized kernels can use wide loads.
    const int64_t aligned = (numel + 63) / 64 * 64;
    requests_.push_back({&target, role, numel, totals_[role]});
    totals_[role] += aligned;
  }
  void allocate(Backend& backend) {
    for (auto& [role, total] : totals_) bases_[role] = backend.alloc(role, total);
    for (const Request& r : requests_) *r.target = bases_[r.role].slice(r.offset, r.numel);
  }
  void release(Backend& backend) {
    for (auto& [role, base] : bases_) backend.release(base);
  }
  int64_t bytes(const std::map<Role, DType>& dtypes) const {
    int64_t b = 0;
    for (const auto& [role, total] : totals_)
      b += total * static_cast<int64_t>(dtype_size(dtypes.at(role)));
    return b;
  }

 private:
  struct Request {
    Tensor* target;
    Role role;
    int64_t numel, offset;
  };
  std::vector<Request> requests_;
  std::map<Role, int64_t> totals_;
  std::map<Role, Tensor> bases_;
};

}  // namespace

struct LayerActs {
  Tensor attn_in_norm, attn_rstd;  // pre-norm: RMSNorm(res[2l]); rstd of the attention norm
  Tensor qkv_raw, q, k_seq, v_seq, q_rstd, k_rstd, attn_slot_rstd;
  Tensor attn_out, lse, attn_proj, sum_attn;
  Tensor mlp_in_norm, mlp_rstd, mlp_raw, ffn_slot_rstd, act, mlp_proj, sum_mlp;
  // Readers of depth slots only: the gradient of attn_out and the slots' [S, R, Hq] probabilities
  // and score gradients, kept until the producers of the slots form their gradients.
  Tensor d_attn_out, depth_probs, depth_dscores;
};

struct ModelBuffers {
  ArenaPlan arena;
  Tensor inputs, targets;
  std::vector<Tensor> res;
  std::vector<LayerActs> layers;
  Tensor slot_k, slot_v;
  Tensor final_out, final_rstd, ce, ce_lse;
  Tensor branch_scratch;
  Tensor d_res, d_branch, d_top, d_normed, d_attn_out, d_q, d_k_seq, d_v_seq, d_qkv_raw, d_act,
      d_mlp_raw, d_pair_slot_k, d_pair_slot_v;

  ModelBuffers(const ModelShape& s, int64_t batch, int64_t seq_len) {
    const int64_t R = batch * seq_len, D = s.d_model, N = s.n_layers, kvw = s.kv_width();
    const bool pre = s.placement == NormPlacement::pre;
    const bool reordered = s.placement == NormPlacement::reordered;
    const bool post = s.placement == NormPlacement::post;
    res.resize(static_cast<size_t>(2 * N + 1));
    layers.resize(static_cast<size_t>(N));
    arena.take(inputs, Role::index, R);
    arena.take(targets, Role::index, R);
    for (Tensor& t : res) arena.take(t, Role::activation, R * D);
    const int64_t slot_elems = R * kvw;
    if (s.slot_buffers() > 0) {
      arena.take(slot_k, Role::activation, s.slot_buffers() * slot_elems);
      arena.take(slot_v, Role::activation, s.slot_buffers() * slot_elems);
      // The gradients of the slots of a pair of layers (each layer's attention, then FFN slot;
      // layer_slot_offset): formed when the backward reaches the pair's upper layer, consumed
      // within each layer's backward.
      arena.take(d_pair_slot_k, Role::accum, 2 * layer_slots(s) * slot_elems);
      arena.take(d_pair_slot_v, Role::accum, 2 * layer_slots(s) * slot_elems);
    }
    int64_t qkv_max = 0, mlp_max = 0;
    for (int64_t l = 0; l < N; ++l) {
      LayerActs& a = layers[static_cast<size_t>(l)];
      if (pre) arena.take(a.attn_in_norm, Role::activation, R * D);
      arena.take(a.attn_rstd, Role::stat, R);
      arena.take(a.qkv_raw, Role::activation, R * s.qkv_rows(l));
      arena.take(a.q, Role::activation, R * s.q_width());
      if (!s.kv_in_slot()) {
        arena.take(a.k_seq, Role::activation, slot_elems);
        arena.take(a.v_seq, Role::activation, slot_elems);
      }
      arena.take(a.q_rstd, Role::stat, R);
      arena.take(a.k_rstd, Role::stat, R);
      if (s.has_attn_slot_proj(l)) arena.take(a.attn_slot_rstd, Role::stat, R);
      arena.take(a.attn_out, Role::activation, R * s.q_width());
      arena.take(a.lse, Role::stat, R * s.q_heads);
      if (s.slots_read(l) > 0) {
        arena.take(a.d_attn_out, Role::activation, R * s.q_width());
        arena.take(a.depth_probs, Role::accum, s.slots_read(l) * R * s.q_heads);
        arena.take(a.depth_dscores, Role::accum, s.slots_read(l) * R * s.q_heads);
      }
      if (reordered) {
        arena.take(a.attn_proj, Role::activation, R * D);
        arena.take(a.mlp_proj, Role::activation, R * D);
      }
      if (post) {
        arena.take(a.sum_attn, Role::activation, R * D);
        arena.take(a.sum_mlp, Role::activation, R * D);
      }
      if (pre) arena.take(a.mlp_in_norm, Role::activation, R * D);
      arena.take(a.mlp_rstd, Role::stat, R);
      arena.take(a.mlp_raw, Role::activation, R * s.mlp_in_rows(l));
      if (s.has_ffn_slot(l)) arena.take(a.ffn_slot_rstd, Role::stat, R);
      arena.take(a.act, Role::activation, R * s.mlp_hidden);
      qkv_max = std::max(qkv_max, s.qkv_rows(l));
      mlp_max = std::max(mlp_max, s.mlp_in_rows(l));
    }
    if (!post) arena.take(final_out, Role::activation, R * D);
    arena.take(final_rstd, Role::stat, R);
    arena.take(ce, Role::stat, R);
    arena.take(ce_lse, Role::stat, R);
    if (!reordered) arena.take(branch_scratch, Role::activation, R * D);
    // Backward scratch, shared by all layers.
    arena.take(d_res, Role::activation, R * D);
    arena.take(d_branch, Role::activation, R * D);
    arena.take(d_top, Role::activation, R * D);
    arena.take(d_normed, Role::activation, R * D);
    arena.take(d_attn_out, Role::activation, R * s.q_width());
    arena.take(d_q, Role::accum, R * s.q_width());
    if (!s.kv_in_slot()) {
      arena.take(d_k_seq, Role::accum, slot_elems);
      arena.take(d_v_seq, Role::accum, slot_elems);
    }
    arena.take(d_qkv_raw, Role::activation, R * qkv_max);
    arena.take(d_act, Role::activation, R * s.mlp_hidden);
    arena.take(d_mlp_raw, Role::activation, R * mlp_max);
  }

  Tensor slot(const Tensor& base, int64_t index, int64_t slot_elems) const {
    return base.slice(index * slot_elems, slot_elems);
  }
  // Slots a layer writes at most: its attention slot and, with FFN KV, its FFN slot.
  static int64_t layer_slots(const ModelShape& s) { return s.ffn_kv ? 2 : 1; }
  // Layers pair up from the top below the last one: (N - 2, N - 3), (N - 4, N - 5), ...; the upper
  // layer of a pair has its slots' gradients in the upper half of d_pair_slot_*, the lower layer
  // (and the last layer, N - 1) in the lower half.
  static bool pair_upper(const ModelShape& s, int64_t l) { return (s.n_layers - 1 - l) % 2 == 1; }
  static int64_t layer_slot_offset(const ModelShape& s, int64_t l, int64_t slot_elems) {
    return pair_upper(s, l) ? layer_slots(s) * slot_elems : 0;
  }
};

MemoryPlan plan_memory(const Config& config, int64_t micro_batch, int64_t seq_len,
                       DType weight_dtype, DType master_dtype, DType activation_dtype,
                       DType accum_dtype, DType stat_dtype) {
  const ModelShape shape(config);
  const ParamLayout layout(shape);
  MemoryPlan plan;
  plan.params = 4 * layout.total() * static_cast<int64_t>(dtype_size(master_dtype));
  plan.weights = layout.total() * static_cast<int64_t>(dtype_size(weight_dtype));
  const ModelBuffers probe(shape, micro_batch, seq_len);
  plan.activations = probe.arena.bytes({{Role::index, DType::i32},
                                        {Role::activation, activation_dtype},
                                        {Role::accum, accum_dtype},
                                        {Role::stat, stat_dtype}});
  return plan;
}

Model::Model(const Config& config, Backend& backend, int64_t micro_batch, int64_t seq_len,
             int64_t shards, int64_t own_shard)
    : config_(config),
      shape_(config),
      layout_(shape_),
      backend_(backend),
      batch_(micro_batch),
      seq_len_(seq_len),
      rows_(micro_batch * seq_len),
      shards_(shards) {
  if (seq_len > config.model.max_seq_len) {
    throw std::invalid_argument(fmt::format("sequence length {} exceeds model.max_seq_len {}",
                                            seq_len, config.model.max_seq_len));
  }
  if (own_shard >= shards) {
    throw std::invalid_argument(fmt::format("shard {} of {} shards", own_shard, shards));
  }
  const int64_t unit = 64 * shards;
  const int64_t padded = (layout_.total() + unit - 1) / unit * unit;
  const int64_t state = own_shard >= 0 ? padded / shards : padded;
  state_offset_ = own_shard >= 0 ? own_shard * state : 0;
  master_ = backend_.alloc(Role::master, state);
  grads_ = backend_.alloc(Role::master, padded);
  adam_m_ = backend_.alloc(Role::master, state);
  adam_v_ = backend_.alloc(Role::master, state);
  weights_ = backend_.alloc(Role::weight, padded);
  buf_ = std::make_unique<ModelBuffers>(shape_, batch_, seq_len_);
  buf_->arena.allocate(backend_);
  backend_.init_rope(config.model.max_seq_len, shape_.head_dim, config.model.rope_theta);
}

Model::~Model() {
  buf_->arena.release(backend_);
  for (Tensor* t : {&master_, &grads_, &adam_m_, &adam_v_, &weights_}) backend_.release(*t);
}

void Model::init_parameters(uint64_t seed) {
  // Blocks of kInitBlock values of the flat parameter vector, each from its own generator seeded
  // with (seed, block): the same values for any thread count, drawn in parallel and uploaded a
  // span at a time. One generator over all of them took about a minute at 1.5B parameters and
  // held them all in host memory as doubles (12 GB).
  constexpr int64_t kInitBlock = int64_t{1} << 20;
  constexpr int64_t kInitSpan = 64 * kInitBlock;
  const int64_t total = layout_.total();
  const double std_dev = config_.model.init_std;
  std::vector<double> values;
  for (int64_t start = 0; start < total; start += kInitSpan) {
    const int64_t n = std::min(kInitSpan, total - start);
    values.resize(static_cast<size_t>(n));
    const int64_t blocks = (n + kInitBlock - 1) / kInitBlock;
#pragma omp parallel for schedule(dynamic)
    for (int64_t b = 0; b < blocks; ++b) {
      const auto block = static_cast<uint64_t>(start / kInitBlock + b);
      std::seed_seq seeds{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                          static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32)};
      std::mt19937_64 rng(seeds);
      std::normal_distribution<double> normal(0.0, 1.0);
      const int64_t hi = std::min(n, (b + 1) * kInitBlock);
      for (int64_t i = b * kInitBlock; i < hi; ++i) {
        double x = 0;
        do {
          x = normal(rng);
        } while (std::abs(x) > 3.0);
        values[static_cast<size_t>(i)] = x * std_dev;
      }
    }
    // Norm weights (the one-dimensional parameters) start at 1.
    for (const ParamInfo& p : layout_.params()) {
      if (p.shape.size() != 1) continue;
      const int64_t lo = std::max(p.offset, start), hi = std::min(p.offset + p.numel, start + n);
      for (int64_t i = lo; i < hi; ++i) values[static_cast<size_t>(i - start)] = 1.0;
    }
    set_parameters(values, start);
  }
}

std::vector<double> Model::parameters() {
  if (state_sharded()) {
    throw std::logic_error("Model::parameters: this model holds the master weights of one shard");
  }
  std::vector<double> out(static_cast<size_t>(layout_.total()));
  backend_.download(master_.slice(0, layout_.total()), out);
  return out;
}

void Model::set_parameters(std::span<const double> values, int64_t offset) {
  const int64_t count = static_cast<int64_t>(values.size());
  if (offset < 0 || offset + count > layout_.total()) {
    throw std::invalid_argument(
        fmt::format("set_parameters: [{}, {}) is not inside the {} parameters", offset,
                    offset + count, layout_.total()));
  }
  // The part of [offset, offset + count) whose master weights this model holds.
  const int64_t lo = std::max(offset, state_offset_);
  const int64_t hi = std::min(offset + count, state_offset_ + master_.numel);
  if (hi > lo) {
    backend_.upload(master_.slice(lo - state_offset_, hi - lo),
                    values.subspan(static_cast<size_t>(lo - offset), static_cast<size_t>(hi - lo)));
  }
  if (lo == offset && hi == offset + count) {
    // The compute copy is the master rounded to its dtype, as after an optimizer step.
    backend_.copy(weights_.slice(offset, count), master_.slice(offset - state_offset_, count));
  } else {
    backend_.upload(weights_.slice(offset, count), values);
  }
}

std::vector<double> Model::gradients() {
  std::vector<double> out(static_cast<size_t>(layout_.total()));
  backend_.download(grads_.slice(0, layout_.total()), out);
  return out;
}

void Model::zero_gradients() { backend_.zero(grads_); }

void Model::forward_pass(std::span<const int32_t> tokens) {
  ModelBuffers& b = *buf_;
  const ModelShape& s = shape_;
  const int64_t R = rows_, D = s.d_model, N = s.n_layers, T = seq_len_;
  const int64_t slot_elems = R * s.kv_width();
  const double eps = config_.model.norm_eps;
  if (static_cast<int64_t>(tokens.size()) != batch_ * (T + 1)) {
    throw std::invalid_argument(fmt::format("expected {} tokens ({} x {}), got {}",
                                            batch_ * (T + 1), batch_, T + 1, tokens.size()));
  }
  std::vector<int32_t> inputs(static_cast<size_t>(R)), targets(static_cast<size_t>(R));
  for (int64_t bi = 0; bi < batch_; ++bi) {
    for (int64_t t = 0; t < T; ++t) {
      inputs[static_cast<size_t>(bi * T + t)] = tokens[static_cast<size_t>(bi * (T + 1) + t)];
      targets[static_cast<size_t>(bi * T + t)] = tokens[static_cast<size_t>(bi * (T + 1) + t + 1)];
    }
  }
  backend_.upload_tokens(b.inputs, inputs);
  backend_.upload_tokens(b.targets, targets);

  const bool pre = s.placement == NormPlacement::pre;
  const int64_t Vp = s.padded_vocab;
  backend_.embedding_forward(b.inputs, w(layout_.embedding(), Vp * D), b.res[0], R, D);
  if (pre) {
    const LayerParams& p0 = layout_.layer(0);
    backend_.rmsnorm_forward(b.res[0], w(p0.attn_norm, D), b.layers[0].attn_in_norm,
                             b.layers[0].attn_rstd, R, D, eps);
  }
  for (int64_t l = 0; l < N; ++l) {
    const LayerParams& p = layout_.layer(l);
    LayerActs& a = b.layers[static_cast<size_t>(l)];
    const Tensor& x = b.res[static_cast<size_t>(2 * l)];
    const Tensor& h = b.res[static_cast<size_t>(2 * l + 1)];
    const Tensor& x_next = b.res[static_cast<size_t>(2 * l + 2)];
    if (s.kv_in_slot()) {
      a.k_seq = b.slot(b.slot_k, s.attn_slot(l), slot_elems);
      a.v_seq = b.slot(b.slot_v, s.attn_slot(l), slot_elems);
    }
    // ---- attention ----
    const Tensor& attn_in = pre ? a.attn_in_norm : x;
    const int64_t qkv_rows = s.qkv_rows(l);
    backend_.matmul(a.qkv_raw, attn_in, w(p.qkv, qkv_rows * D), R, qkv_rows, D, false);
    const Backend::QkvLayout qkv{R, T, qkv_rows, 0, s.q_heads, s.kv_heads, s.head_dim, eps};
    backend_.qkv_norm_rope_forward(qkv, a.qkv_raw, w(p.q_norm, s.q_width()),
                                   w(p.k_norm, s.kv_width()), a.q, a.k_seq, a.v_seq, a.q_rstd,
                                   a.k_rstd);
    if (s.has_attn_slot_proj(l)) {
      const Backend::QkvLayout slot{R, T,          qkv_rows,   s.q_width() + 2 * s.kv_width(),
                                    0, s.kv_heads, s.head_dim, eps};
      backend_.qkv_norm_rope_forward(slot, a.qkv_raw, Tensor{}, w(p.attn_slot_k_norm, s.kv_width()),
                                     Tensor{}, b.slot(b.slot_k, s.attn_slot(l), slot_elems),
                                     b.slot(b.slot_v, s.attn_slot(l), slot_elems), Tensor{},
                                     a.attn_slot_rstd);
    }
    const AttentionShape shape{batch_,          T,         s.q_heads, s.kv_heads, s.head_dim,
                               s.slots_read(l), slot_elems};
    backend_.attention_forward(shape, a.q, a.k_seq, a.v_seq, b.slot_k, b.slot_v, a.attn_out, a.lse);
    const Tensor& attn_branch = a.attn_proj.empty() ? b.branch_scratch : a.attn_proj;
    backend_.matmul(attn_branch, a.attn_out, w(p.out, D * s.q_width()), R, D, s.q_width(), false);
    switch (s.placement) {
      case NormPlacement::pre:
        backend_.residual_norm_forward(ResidualNorm::add_then_norm, x, attn_branch,
                                       w(p.mlp_norm, D), h, a.mlp_in_norm, a.mlp_rstd, R, D, eps);
        break;
      case NormPlacement::reordered:
        backend_.residual_norm_forward(ResidualNorm::norm_then_add, x, attn_branch,
                                       w(p.attn_norm, D), Tensor{}, h, a.attn_rstd, R, D, eps);
        break;
      case NormPlacement::post:
        backend_.residual_norm_forward(ResidualNorm::add_then_norm, x, attn_branch,
                                       w(p.attn_norm, D), a.sum_attn, h, a.attn_rstd, R, D, eps);
        break;
    }
    // ---- MLP ----
    const Tensor& mlp_in = pre ? a.mlp_in_norm : h;
    const int64_t mlp_rows = s.mlp_in_rows(l), F = s.mlp_hidden;
    backend_.matmul(a.mlp_raw, mlp_in, w(p.mlp_in, mlp_rows * D), R, mlp_rows, D, false);
    if (s.has_ffn_slot(l)) {
      const Backend::QkvLayout slot{R, T, mlp_rows, 2 * F, 0, s.kv_heads, s.head_dim, eps};
      backend_.qkv_norm_rope_forward(slot, a.mlp_raw, Tensor{}, w(p.ffn_slot_k_norm, s.kv_width()),
                                     Tensor{}, b.slot(b.slot_k, s.ffn_slot(l), slot_elems),
                                     b.slot(b.slot_v, s.ffn_slot(l), slot_elems), Tensor{},
                                     a.ffn_slot_rstd);
    }
    backend_.swiglu_forward(a.mlp_raw, a.act, R, F, mlp_rows);
    const Tensor& mlp_branch = a.mlp_proj.empty() ? b.branch_scratch : a.mlp_proj;
    backend_.matmul(mlp_branch, a.act, w(p.down, D * F), R, D, F, false);
    switch (s.placement) {
      case NormPlacement::pre: {
        const bool last = l + 1 == N;
        const int64_t next_norm = last ? layout_.final_norm() : layout_.layer(l + 1).attn_norm;
        LayerActs* next = last ? nullptr : &b.layers[static_cast<size_t>(l + 1)];
        backend_.residual_norm_forward(ResidualNorm::add_then_norm, h, mlp_branch, w(next_norm, D),
                                       x_next, last ? b.final_out : next->attn_in_norm,
                                       last ? b.final_rstd : next->attn_rstd, R, D, eps);
        break;
      }
      case NormPlacement::reordered:
        backend_.residual_norm_forward(ResidualNorm::norm_then_add, h, mlp_branch, w(p.mlp_norm, D),
                                       Tensor{}, x_next, a.mlp_rstd, R, D, eps);
        break;
      case NormPlacement::post:
        backend_.residual_norm_forward(ResidualNorm::add_then_norm, h, mlp_branch, w(p.mlp_norm, D),
                                       a.sum_mlp, x_next, a.mlp_rstd, R, D, eps);
        break;
    }
  }
  if (s.placement == NormPlacement::reordered) {
    backend_.rmsnorm_forward(b.res[static_cast<size_t>(2 * N)], w(layout_.final_norm(), D),
                             b.final_out, b.final_rstd, R, D, eps);
  }
}

namespace {

// The normalized output of the last layer that the LM head reads (post-norm has no final norm).
const Tensor& final_hidden(const ModelShape& s, const std::vector<Tensor>& res,
                           const Tensor& final_out) {
  return s.placement == NormPlacement::post ? res.back() : final_out;
}

}  // namespace

void Model::backward_pass(double loss_scale, const GradientsReady& ready) {
  ModelBuffers& b = *buf_;
  const ModelShape& s = shape_;
  const int64_t R = rows_, D = s.d_model, N = s.n_layers, T = seq_len_, Vp = s.padded_vocab;
  const int64_t slot_elems = R * s.kv_width();
  const bool pre = s.placement == NormPlacement::pre;
  const bool post = s.placement == NormPlacement::post;
  const Tensor& top = final_hidden(s, b.res, b.final_out);

  backend_.lm_head_cross_entropy(top, w(layout_.lm_head(), Vp * D), b.targets, b.ce, b.ce_lse,
                                 post ? b.d_res : b.d_top, g(layout_.lm_head(), Vp * D), R, D, Vp,
                                 config_.optimizer.z_loss, loss_scale);
  // An untied LM head's gradient is complete already: its reduction can overlap with the rest.
  if (ready && !s.tied) ready(layout_.lm_head(), layout_.lm_head() + Vp * D);
  // d_res becomes the gradient of res[2N].
  if (s.placement == NormPlacement::reordered) {
    backend_.rmsnorm_backward(b.d_top, b.res.back(), w(layout_.final_norm(), D), b.final_rstd,
                              b.d_res, g(layout_.final_norm(), D), R, D, false);
  } else if (pre) {
    backend_.residual_norm_backward(ResidualNorm::add_then_norm, b.d_top, b.res.back(),
                                    w(layout_.final_norm(), D), b.final_rstd, b.d_res,
                                    g(layout_.final_norm(), D), R, D, false);
  }
  Tensor d_res = b.d_res, d_branch = b.d_branch;
  for (int64_t l = N - 1; l >= 0; --l) {
    const LayerParams& p = layout_.layer(l);
    LayerActs& a = b.layers[static_cast<size_t>(l)];
    const Tensor& x = b.res[static_cast<size_t>(2 * l)];
    const Tensor& h = b.res[static_cast<size_t>(2 * l + 1)];
    const int64_t F = s.mlp_hidden, mlp_rows = s.mlp_in_rows(l), qkv_rows = s.qkv_rows(l);
    const AttentionShape shape{batch_,          T,         s.q_heads, s.kv_heads, s.head_dim,
                               s.slots_read(l), slot_elems};
    // This layer's half of the pair's slot gradients (none without depth slots).
    const auto layer_part = [&](const Tensor& pair) {
      return pair.empty() ? Tensor{}
                          : pair.slice(ModelBuffers::layer_slot_offset(s, l, slot_elems),
                                       ModelBuffers::layer_slots(s) * slot_elems);
    };
    const Tensor d_layer_slot_k = layer_part(b.d_pair_slot_k);
    const Tensor d_layer_slot_v = layer_part(b.d_pair_slot_v);
    // ---- the gradients of this layer's depth slots ----
    // Whether the op below wrote the FFN KV slot's value gradient into the v columns of
    // d_mlp_raw, where the slot projection's backward would otherwise copy it from fp32.
    bool ffn_dv_in_place = false;
    // Layers l+1.. read this layer's slots [attn_slot(l), slots_read(l+1)); the op's first slot's
    // gradient lands in d_pair_slot_* at that slot's layer's half. The upper layer of a pair
    // forms the slots of both layers from the readers above it, reading each reader's q and dout
    // (most of the op's bytes) once for both layers; the lower layer then adds the one reader in
    // between, the upper layer.
    if (s.moda && l + 1 < N) {
      const bool upper = ModelBuffers::pair_upper(s, l);
      const int64_t lowest = upper && l > 0 ? l - 1 : l, first = s.attn_slot(lowest);
      std::vector<Backend::DepthReader> readers;
      for (int64_t r = l + 1; r < (upper ? N : l + 2); ++r) {
        const LayerActs& ra = b.layers[static_cast<size_t>(r)];
        readers.push_back({ra.q, ra.d_attn_out, ra.depth_probs, ra.depth_dscores, s.slots_read(r)});
      }
      const int64_t count = s.slots_read(l + 1) - first;
      const int64_t at = ModelBuffers::layer_slot_offset(s, lowest, slot_elems);
      // This layer's FFN KV slot is the op's last, and its gradient final after it.
      Backend::SlotValueGradient ffn_dv;
      if (s.has_ffn_slot(l) && s.ffn_slot(l) == first + count - 1) {
        const int64_t kvw = s.kv_width();
        ffn_dv = {b.d_mlp_raw.slice(2 * F + kvw, (R - 1) * mlp_rows + kvw), mlp_rows};
        ffn_dv_in_place = true;
      }
      backend_.depth_slot_backward(shape, first, count, readers,
                                   b.d_pair_slot_k.slice(at, count * slot_elems),
                                   b.d_pair_slot_v.slice(at, count * slot_elems), !upper, ffn_dv);
    } else if (s.kv_in_slot()) {
      // The last layer's slot holds only its sequence K, V, whose gradients are added below.
      backend_.zero(b.slot(d_layer_slot_k, 0, slot_elems));
      backend_.zero(b.slot(d_layer_slot_v, 0, slot_elems));
    }
    // ---- MLP ----
    // Gradient of the MLP branch output.
    Tensor d_mlp_branch = d_res;
    if (s.placement == NormPlacement::reordered) {
      backend_.residual_norm_backward(ResidualNorm::norm_then_add, d_res, a.mlp_proj,
                                      w(p.mlp_norm, D), a.mlp_rstd, d_branch, g(p.mlp_norm, D), R,
                                      D, false);
      d_mlp_branch = d_branch;
    } else if (post) {
      backend_.residual_norm_backward(ResidualNorm::add_then_norm, d_res, a.sum_mlp,
                                      w(p.mlp_norm, D), a.mlp_rstd, d_branch, g(p.mlp_norm, D), R,
                                      D, false);
      d_mlp_branch = d_branch;
    }
    backend_.matmul_backward(d_mlp_branch, a.act, w(p.down, D * F), b.d_act, g(p.down, D * F), R, D,
                             F, false);
    backend_.swiglu_backward(b.d_act, a.mlp_raw, b.d_mlp_raw, R, F, mlp_rows);
    if (s.has_ffn_slot(l)) {
      const Backend::QkvLayout slot{R, T,          mlp_rows,   2 * F,
                                    0, s.kv_heads, s.head_dim, config_.model.norm_eps};
      backend_.qkv_norm_rope_backward(
          slot, a.mlp_raw, Tensor{}, w(p.ffn_slot_k_norm, s.kv_width()), Tensor{}, a.ffn_slot_rstd,
          Tensor{}, b.slot(d_layer_slot_k, 1, slot_elems),
          ffn_dv_in_place ? Tensor{} : b.slot(d_layer_slot_v, 1, slot_elems), b.d_mlp_raw, Tensor{},
          g(p.ffn_slot_k_norm, s.kv_width()));
    }
    if (pre) {
      backend_.matmul_backward(b.d_mlp_raw, a.mlp_in_norm, w(p.mlp_in, mlp_rows * D), b.d_normed,
                               g(p.mlp_in, mlp_rows * D), R, mlp_rows, D, false);
      backend_.residual_norm_backward(ResidualNorm::add_then_norm, b.d_normed, h, w(p.mlp_norm, D),
                                      a.mlp_rstd, d_res, g(p.mlp_norm, D), R, D, true);
    } else if (post) {
      // d_branch holds the gradient of the pre-norm sum = gradient of h through the residual.
      backend_.matmul_backward(b.d_mlp_raw, h, w(p.mlp_in, mlp_rows * D), d_branch,
                               g(p.mlp_in, mlp_rows * D), R, mlp_rows, D, true);
      std::swap(d_res, d_branch);
    } else {
      backend_.matmul_backward(b.d_mlp_raw, h, w(p.mlp_in, mlp_rows * D), d_res,
                               g(p.mlp_in, mlp_rows * D), R, mlp_rows, D, true);
    }
    // ---- attention ---- (d_res is the gradient of h)
    Tensor d_attn_branch = d_res;
    if (s.placement == NormPlacement::reordered) {
      backend_.residual_norm_backward(ResidualNorm::norm_then_add, d_res, a.attn_proj,
                                      w(p.attn_norm, D), a.attn_rstd, d_branch, g(p.attn_norm, D),
                                      R, D, false);
      d_attn_branch = d_branch;
    } else if (post) {
      backend_.residual_norm_backward(ResidualNorm::add_then_norm, d_res, a.sum_attn,
                                      w(p.attn_norm, D), a.attn_rstd, d_branch, g(p.attn_norm, D),
                                      R, D, false);
      d_attn_branch = d_branch;
    }
    const Tensor& d_attn_out = a.d_attn_out.empty() ? b.d_attn_out : a.d_attn_out;
    backend_.matmul_backward(d_attn_branch, a.attn_out, w(p.out, D * s.q_width()), d_attn_out,
                             g(p.out, D * s.q_width()), R, D, s.q_width(), false);
    Tensor d_k = b.d_k_seq, d_v = b.d_v_seq;
    if (s.kv_in_slot()) {
      d_k = b.slot(d_layer_slot_k, 0, slot_elems);
      d_v = b.slot(d_layer_slot_v, 0, slot_elems);
    } else {
      backend_.zero(d_k);
      backend_.zero(d_v);
    }
    backend_.attention_backward(shape, d_attn_out, a.q, a.k_seq, a.v_seq, b.slot_k, b.slot_v,
                                a.attn_out, a.lse, b.d_q, d_k, d_v, a.depth_probs, a.depth_dscores);
    const double eps = config_.model.norm_eps;
    if (s.has_attn_slot_proj(l)) {
      const Backend::QkvLayout slot{R, T,          qkv_rows,   s.q_width() + 2 * s.kv_width(),
                                    0, s.kv_heads, s.head_dim, eps};
      backend_.qkv_norm_rope_backward(
          slot, a.qkv_raw, Tensor{}, w(p.attn_slot_k_norm, s.kv_width()), Tensor{},
          a.attn_slot_rstd, Tensor{}, b.slot(d_layer_slot_k, 0, slot_elems),
          b.slot(d_layer_slot_v, 0, slot_elems), b.d_qkv_raw, Tensor{},
          g(p.attn_slot_k_norm, s.kv_width()));
    }
    const Backend::QkvLayout qkv{R, T, qkv_rows, 0, s.q_heads, s.kv_heads, s.head_dim, eps};
    backend_.qkv_norm_rope_backward(
        qkv, a.qkv_raw, w(p.q_norm, s.q_width()), w(p.k_norm, s.kv_width()), a.q_rstd, a.k_rstd,
        b.d_q, d_k, d_v, b.d_qkv_raw, g(p.q_norm, s.q_width()), g(p.k_norm, s.kv_width()));
    if (pre) {
      backend_.matmul_backward(b.d_qkv_raw, a.attn_in_norm, w(p.qkv, qkv_rows * D), b.d_normed,
                               g(p.qkv, qkv_rows * D), R, qkv_rows, D, false);
      backend_.residual_norm_backward(ResidualNorm::add_then_norm, b.d_normed, x, w(p.attn_norm, D),
                                      a.attn_rstd, d_res, g(p.attn_norm, D), R, D, true);
    } else if (post) {
      backend_.matmul_backward(b.d_qkv_raw, x, w(p.qkv, qkv_rows * D), d_branch,
                               g(p.qkv, qkv_rows * D), R, qkv_rows, D, true);
      std::swap(d_res, d_branch);
    } else {
      backend_.matmul_backward(b.d_qkv_raw, x, w(p.qkv, qkv_rows * D), d_res,
                               g(p.qkv, qkv_rows * D), R, qkv_rows, D, true);
    }
    // The layout puts a layer's four matrices next to each other, qkv first and down last; no
    // other layer writes them. Its norm weights live with the other vectors after the embedding.
    if (ready) ready(p.qkv, p.down + D * F);
  }
  backend_.embedding_backward(b.inputs, d_res, g(layout_.embedding(), Vp * D), R, D);
  // The embedding (the tied LM head too) and every norm weight: all the rest of the layout.
  if (ready) ready(layout_.embedding(), layout_.total());
}

LossSums Model::read_loss() {
  std::vector<double> ce(static_cast<size_t>(rows_)), lse(static_cast<size_t>(rows_));
  backend_.download(buf_->ce, ce);
  backend_.download(buf_->ce_lse, lse);
  LossSums sums;
  for (size_t i = 0; i < ce.size(); ++i) {
    sums.ce += ce[i];
    sums.lse_sq += lse[i] * lse[i];
  }
  sums.tokens = rows_;
  return sums;
}

LossSums Model::forward_backward(std::span<const int32_t> tokens, double loss_scale,
                                 const GradientsReady& ready) {
  forward_pass(tokens);
  backward_pass(loss_scale, ready);
  return read_loss();
}

LossSums Model::forward(std::span<const int32_t> tokens) {
  forward_pass(tokens);
  const ModelShape& s = shape_;
  const Tensor& top = final_hidden(s, buf_->res, buf_->final_out);
  backend_.lm_head_cross_entropy(top, w(layout_.lm_head(), s.padded_vocab * s.d_model),
                                 buf_->targets, buf_->ce, buf_->ce_lse, Tensor{}, Tensor{}, rows_,
                                 s.d_model, s.padded_vocab, config_.optimizer.z_loss, 1.0);
  return read_loss();
}

std::vector<double> Model::logits(std::span<const int32_t> tokens) {
  forward_pass(tokens);
  const ModelShape& s = shape_;
  const Tensor& top = final_hidden(s, buf_->res, buf_->final_out);
  Tensor out = backend_.alloc(Role::stat, rows_ * s.padded_vocab);
  backend_.lm_head_logits(top, w(layout_.lm_head(), s.padded_vocab * s.d_model), out, rows_,
                          s.d_model, s.padded_vocab);
  std::vector<double> host(static_cast<size_t>(out.numel));
  backend_.download(out, host);
  backend_.release(out);
  return host;
}

}  // namespace moda
