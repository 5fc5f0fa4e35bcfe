// Model shape, parameter layout, parameter counts and FLOPs per token.
#include <fmt/format.h>

#include <limits>
#include <stdexcept>

#include "moda/model.hpp"

namespace moda {

ModelShape::ModelShape(const Config& c)
    : d_model(c.model.d_model),
      n_layers(c.model.n_layers),
      q_heads(c.model.n_heads),
      kv_heads(c.model.n_kv_heads),
      head_dim(c.model.head_dim()),
      mlp_hidden(c.model.mlp_hidden),
      vocab(c.model.vocab_size),
      padded_vocab(c.model.padded_vocab()),
      placement(c.model.norm_placement),
      tied(c.model.tie_embeddings),
      moda(c.moda.enabled),
      ffn_kv(c.moda.enabled && c.moda.ffn_kv),
      attn_kv_proj(c.moda.enabled && c.moda.attn_kv_proj) {}

int64_t ModelShape::slot_buffers() const {
  if (!moda) return 0;
  if (kv_in_slot()) return ffn_kv ? 2 * n_layers - 1 : n_layers;
  return ffn_kv ? 2 * (n_layers - 1) : n_layers - 1;
}

int64_t ParamLayout::add(const std::string& name, std::vector<int64_t> shape, bool decay) {
  ParamInfo p;
  p.name = name;
  p.numel = 1;
  for (int64_t s : shape) p.numel *= s;
  p.shape = std::move(shape);
  p.offset = total_;
  p.decay = decay;
  total_ += p.numel;
  params_.push_back(p);
  return p.offset;
}

ParamLayout::ParamLayout(const ModelShape& s) {
  layers_.resize(static_cast<size_t>(s.n_layers));
  const int64_t D = s.d_model;
  for (int64_t l = 0; l < s.n_layers; ++l) {
    LayerParams& lp = layers_[static_cast<size_t>(l)];
    const std::string p = fmt::format("layers.{}.", l);
    lp.qkv = add(p + "attn.qkv", {s.qkv_rows(l), D}, true);
    lp.out = add(p + "attn.out", {D, s.q_width()}, true);
    lp.mlp_in = add(p + "mlp.in", {s.mlp_in_rows(l), D}, true);
    lp.down = add(p + "mlp.down", {D, s.mlp_hidden}, true);
  }
  if (!s.tied) lm_head_ = add("lm_head", {s.padded_vocab, D}, true);
  decay_end_ = total_;
  embedding_ = add("embed", {s.padded_vocab, D}, false);
  if (s.tied) lm_head_ = embedding_;
  for (int64_t l = 0; l < s.n_layers; ++l) {
    LayerParams& lp = layers_[static_cast<size_t>(l)];
    const std::string p = fmt::format("layers.{}.", l);
    lp.q_norm = add(p + "attn.q_norm", {s.q_width()}, false);
    lp.k_norm = add(p + "attn.k_norm", {s.kv_width()}, false);
    if (s.has_attn_slot_proj(l))
      lp.attn_slot_k_norm = add(p + "attn.slot_k_norm", {s.kv_width()}, false);
    if (s.has_ffn_slot(l)) lp.ffn_slot_k_norm = add(p + "mlp.slot_k_norm", {s.kv_width()}, false);
    lp.attn_norm = add(p + "attn_norm", {D}, false);
    lp.mlp_norm = add(p + "mlp_norm", {D}, false);
  }
  if (s.placement != NormPlacement::post) final_norm_ = add("final_norm", {D}, false);
}

const ParamInfo& ParamLayout::find(const std::string& name) const {
  for (const ParamInfo& p : params_) {
    if (p.name == name) return p;
  }
  throw std::out_of_range("no parameter named " + name);
}

ParamCounts count_params(const ModelShape& s) {
  const ParamLayout layout(s);
  ParamCounts c;
  c.total = layout.total();
  c.embedding = s.padded_vocab * s.d_model;
  const int64_t head = s.tied ? 0 : s.padded_vocab * s.d_model;
  c.non_embedding = c.total - c.embedding - head;
  c.paper = c.non_embedding + s.vocab * s.d_model;
  return c;
}

double model_flops_utilization(double tokens_per_s, double flops_per_token,
                               double device_peak_flops, int devices) {
  if (device_peak_flops <= 0 || devices <= 0) return std::numeric_limits<double>::quiet_NaN();
  return tokens_per_s * flops_per_token / (device_peak_flops * devices);
}

double flops_per_token(const Config& config, int64_t seq_len) {
  const ModelShape s(config);
  const ParamCounts c = count_params(s);
  const double matmul_params = static_cast<double>(c.non_embedding + s.padded_vocab * s.d_model);
  double attention = 0;
  for (int64_t l = 0; l < s.n_layers; ++l) {
    // Average keys seen by a token of a causal window, plus the depth slots; q.k and p.v each
    // cost 2 FLOPs per multiply-add.
    const double keys =
        static_cast<double>(seq_len + 1) / 2.0 + static_cast<double>(s.slots_read(l));
    attention += 4.0 * static_cast<double>(s.q_width()) * keys;
  }
  return 6.0 * matmul_params + 3.0 * attention;
}

}  // namespace moda
