// The OLMo2 / MoDA model: parameter layout over one flat buffer, the activation arena, and the
// forward and backward written once as explicit op calls against a Backend.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "moda/backend.hpp"
#include "moda/config.hpp"

namespace moda {

// Derived sizes of a config, and the depth-stream slot numbering of design.md section 3.
struct ModelShape {
  int64_t d_model, n_layers, q_heads, kv_heads, head_dim, mlp_hidden, vocab, padded_vocab;
  NormPlacement placement;
  bool tied, moda, ffn_kv, attn_kv_proj;

  explicit ModelShape(const Config& config);
  int64_t q_width() const { return q_heads * head_dim; }
  int64_t kv_width() const { return kv_heads * head_dim; }
  // Does layer l write an attention slot through its own projections / an FFN slot? The last
  // layer writes neither: nothing reads them.
  bool has_attn_slot_proj(int64_t l) const { return attn_kv_proj && l + 1 < n_layers; }
  bool has_ffn_slot(int64_t l) const { return ffn_kv && l + 1 < n_layers; }
  // With MoDA and no attn_kv_proj, a layer's sequence K/V live in its attention slot.
  bool kv_in_slot() const { return moda && !attn_kv_proj; }
  int64_t attn_slot(int64_t l) const { return ffn_kv ? 2 * l : l; }
  int64_t ffn_slot(int64_t l) const { return 2 * l + 1; }
  int64_t slots_read(int64_t l) const { return moda ? (ffn_kv ? 2 * l : l) : 0; }
  int64_t slot_buffers() const;  // slots stored per token
  int64_t qkv_rows(int64_t l) const {
    return q_width() + 2 * kv_width() + (has_attn_slot_proj(l) ? 2 * kv_width() : 0);
  }
  int64_t mlp_in_rows(int64_t l) const {
    return 2 * mlp_hidden + (has_ffn_slot(l) ? 2 * kv_width() : 0);
  }
};

struct ParamInfo {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;
  int64_t numel = 0;
  bool decay = false;  // weight decay applies (matrices other than the embedding)
};

// Offsets of one layer's tensors in the flat buffer (-1 when absent).
struct LayerParams {
  int64_t qkv = -1, out = -1, mlp_in = -1, down = -1;
  int64_t q_norm = -1, k_norm = -1, attn_slot_k_norm = -1, ffn_slot_k_norm = -1;
  int64_t attn_norm = -1, mlp_norm = -1;
};

// Decayed tensors come first, so weight decay is one contiguous range [0, decay_end).
class ParamLayout {
 public:
  explicit ParamLayout(const ModelShape& shape);
  const std::vector<ParamInfo>& params() const { return params_; }
  const ParamInfo& find(const std::string& name) const;
  int64_t total() const { return total_; }
  int64_t decay_end() const { return decay_end_; }
  const LayerParams& layer(int64_t l) const { return layers_[static_cast<size_t>(l)]; }
  int64_t embedding() const { return embedding_; }
  int64_t lm_head() const { return lm_head_; }        // == embedding() when tied
  int64_t final_norm() const { return final_norm_; }  // -1 under post-norm

 private:
  int64_t add(const std::string& name, std::vector<int64_t> shape, bool decay);
  std::vector<ParamInfo> params_;
  std::vector<LayerParams> layers_;
  int64_t total_ = 0, decay_end_ = 0, embedding_ = -1, lm_head_ = -1, final_norm_ = -1;
};

// Parameter counts under the conventions people quote.
struct ParamCounts {
  int64_t total = 0;          // every tensor, embedding and LM head both (when untied)
  int64_t embedding = 0;      // padded rows
  int64_t non_embedding = 0;  // total - embedding - lm_head
  int64_t paper = 0;          // the paper's convention: embedding counted once, unpadded vocab
};
ParamCounts count_params(const ModelShape& shape);

// Bytes of each buffer family, for `moda info` and the out-of-memory check.
struct MemoryPlan {
  int64_t params = 0;       // master weights + gradients + 2 Adam moments
  int64_t weights = 0;      // compute copy
  int64_t activations = 0;  // activation arena (saved activations + backward scratch)
  int64_t total() const { return params + weights + activations; }
};
MemoryPlan plan_memory(const Config& config, int64_t micro_batch, int64_t seq_len,
                       DType weight_dtype, DType master_dtype, DType activation_dtype,
                       DType accum_dtype, DType stat_dtype);

// Training FLOPs per token: 6 x (non-embedding params + LM head) plus causal attention over the
// sequence and the depth slots (forward + backward = 3 x forward).
double flops_per_token(const Config& config, int64_t seq_len);
// Model FLOPs utilization of a run whose `tokens_per_s` counts the tokens of all `devices` (data
// parallel ranks), each of peak `device_peak_flops`; NaN when the peak is unknown (0).
double model_flops_utilization(double tokens_per_s, double flops_per_token,
                               double device_peak_flops, int devices);

struct LossSums {
  double ce = 0;      // sum over target tokens of cross-entropy (nats)
  double lse_sq = 0;  // sum of logsumexp^2 (the z-loss before its weight)
  int64_t tokens = 0;
};

struct ModelBuffers;  // the activation arena (src/model/model.cpp)

// Called by the backward with a range [begin, end) of the flat gradient buffer that nothing later
// in that backward adds to (the values may still be queued on the device).
using GradientsReady = std::function<void(int64_t begin, int64_t end)>;

class Model {
 public:
  // Allocates parameters, optimizer state and the activation arena for micro-batches of
  // [micro_batch, seq_len]. The flat buffers are padded to a multiple of `shards` x 64 elements
  // so they split into equal data-parallel shards (ZeRO-1). With own_shard >= 0 (ZeRO-1) the
  // master weights and Adam moments are allocated for that shard only: the update of the other
  // shards is other ranks' work, and the compute copy of the weights, which every rank needs
  // whole, is what they all-gather.
  Model(const Config& config, Backend& backend, int64_t micro_batch, int64_t seq_len,
        int64_t shards = 1, int64_t own_shard = -1);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelShape& shape() const { return shape_; }
  const ParamLayout& layout() const { return layout_; }
  Backend& backend() { return backend_; }
  int64_t micro_batch() const { return batch_; }
  int64_t seq_len() const { return seq_len_; }

  // Normal(0, init_std) matrices and embedding (truncated at 3 std), norm weights 1.
  void init_parameters(uint64_t seed);
  // The master copy on the host; throws when this model holds one shard of it only.
  std::vector<double> parameters();
  // Writes parameters [offset, offset + values.size()): the compute copy, and the master weights
  // of the part this model holds.
  void set_parameters(std::span<const double> values, int64_t offset = 0);
  std::vector<double> gradients();
  void zero_gradients();

  // tokens: [micro_batch, seq_len + 1] on the host. Accumulates into the gradients the
  // gradient of loss_scale * sum(ce + z_loss * lse^2) and returns the sums. `ready`, when given,
  // receives an untied LM head right after its gradient, each layer's matrices as soon as that
  // layer's backward is done (top layer first), and the rest (embedding, norm weights) at the
  // end: ranges that cover [0, layout().total()) once, so that their reduction over ranks can
  // overlap with the backward.
  LossSums forward_backward(std::span<const int32_t> tokens, double loss_scale,
                            const GradientsReady& ready = {});
  // Forward only (validation).
  LossSums forward(std::span<const int32_t> tokens);
  // Logits [micro_batch * seq_len, padded_vocab] of the inputs tokens[b, 0..seq_len).
  std::vector<double> logits(std::span<const int32_t> tokens);

  // Elements of the flat buffers, padded to split into equal shards.
  int64_t padded_size() const { return grads_.numel; }
  // Elements per data-parallel shard of the flat buffers (their padded size / shards).
  int64_t shard_size() const { return padded_size() / shards_; }
  // The flat buffers (master role) for the optimizer and checkpoints. grads() and weights()
  // cover all padded_size() elements; master(), adam_m() and adam_v() hold elements
  // [state_offset(), state_offset() + master().numel): all of them, or this rank's ZeRO-1 shard.
  int64_t state_offset() const { return state_offset_; }
  bool state_sharded() const { return master_.numel < padded_size(); }
  const Tensor& master() const { return master_; }
  const Tensor& grads() const { return grads_; }
  const Tensor& adam_m() const { return adam_m_; }
  const Tensor& adam_v() const { return adam_v_; }
  const Tensor& weights() const { return weights_; }

 private:
  void forward_pass(std::span<const int32_t> tokens);
  void backward_pass(double loss_scale, const GradientsReady& ready);
  LossSums read_loss();
  Tensor w(int64_t offset, int64_t numel) const { return weights_.slice(offset, numel); }
  Tensor g(int64_t offset, int64_t numel) const { return grads_.slice(offset, numel); }

  Config config_;
  ModelShape shape_;
  ParamLayout layout_;
  Backend& backend_;
  int64_t batch_, seq_len_, rows_, shards_, state_offset_ = 0;
  Tensor master_, grads_, adam_m_, adam_v_, weights_;
  std::unique_ptr<ModelBuffers> buf_;
};

}  // namespace moda
