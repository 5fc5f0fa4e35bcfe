// Per-op profile of one training step (runtime.profile_step): a Backend that times every op call
// on the inner backend's Timeline, and the table that groups the calls by layer family.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "moda/backend.hpp"
#include "moda/model.hpp"

namespace moda {

// One timed call.
struct OpRecord {
  std::string op;        // the Backend method ("matmul", "attention_backward", ...) or a region
  int64_t n = 0, k = 0;  // matmul / matmul_backward: output width and inner size; 0 otherwise
  double ms = 0;
};

// Forwards every call to `inner`; between start() and stop() it also records each op call with
// a mark of the inner backend's timeline before and after it. The trainer builds one only when
// runtime.profile_step is set, so runs without profiling do not pass through it at all.
class ProfilingBackend final : public Backend {
 public:
  explicit ProfilingBackend(Backend& inner);

  void start();
  // Waits for the device; the records of the calls since start(), in call order.
  std::vector<OpRecord> stop();
  // Brackets work that is not an op of this backend (communication) as one record named `name`.
  void begin_region(const std::string& name);
  void end_region();

  std::string name() const override { return inner_.name(); }
  DType dtype_of(Role role) const override { return inner_.dtype_of(role); }
  double peak_flops() const override { return inner_.peak_flops(); }
  DeviceMemory device_memory() const override { return inner_.device_memory(); }
  std::unique_ptr<Timeline> make_timeline() override { return inner_.make_timeline(); }

  Tensor alloc(Role role, int64_t numel) override { return inner_.alloc(role, numel); }
  void release(Tensor& tensor) override { inner_.release(tensor); }
  void zero(const Tensor& tensor) override;
  void copy(const Tensor& dst, const Tensor& src) override;
  void upload(const Tensor& dst, std::span<const double> host) override;
  void upload_tokens(const Tensor& dst, std::span<const int32_t> host) override;
  void download(const Tensor& src, std::span<double> host) override;
  void download_f32(const Tensor& src, std::span<float> host) override;
  void synchronize() override { inner_.synchronize(); }
  void* device_stream() const override { return inner_.device_stream(); }
  void init_rope(int64_t max_seq_len, int64_t head_dim, double theta) override {
    inner_.init_rope(max_seq_len, head_dim, theta);
  }

  void embedding_forward(const Tensor& tokens, const Tensor& table, const Tensor& out, int64_t rows,
                         int64_t dim) override;
  void embedding_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dtable,
                          int64_t rows, int64_t dim) override;
  void matmul(const Tensor& out, const Tensor& in, const Tensor& weight, int64_t m, int64_t n,
              int64_t k, bool accumulate) override;
  void matmul_backward(const Tensor& dout, const Tensor& in, const Tensor& weight,
                       const Tensor& din, const Tensor& dweight, int64_t m, int64_t n, int64_t k,
                       bool accumulate_din) override;
  void rmsnorm_forward(const Tensor& in, const Tensor& weight, const Tensor& out,
                       const Tensor& rstd, int64_t rows, int64_t cols, double eps) override;
  void rmsnorm_backward(const Tensor& dout, const Tensor& in, const Tensor& weight,
                        const Tensor& rstd, const Tensor& din, const Tensor& dweight, int64_t rows,
                        int64_t cols, bool accumulate_din) override;
  void residual_norm_forward(ResidualNorm kind, const Tensor& x, const Tensor& branch,
                             const Tensor& weight, const Tensor& sum, const Tensor& out,
                             const Tensor& rstd, int64_t rows, int64_t cols, double eps) override;
  void residual_norm_backward(ResidualNorm kind, const Tensor& dout, const Tensor& normed,
                              const Tensor& weight, const Tensor& rstd, const Tensor& dnormed,
                              const Tensor& dweight, int64_t rows, int64_t cols,
                              bool accumulate) override;
  void qkv_norm_rope_forward(const QkvLayout& layout, const Tensor& raw, const Tensor& q_weight,
                             const Tensor& k_weight, const Tensor& q_out, const Tensor& k_out,
                             const Tensor& v_out, const Tensor& q_rstd,
                             const Tensor& k_rstd) override;
  void qkv_norm_rope_backward(const QkvLayout& layout, const Tensor& raw, const Tensor& q_weight,
                              const Tensor& k_weight, const Tensor& q_rstd, const Tensor& k_rstd,
                              const Tensor& dq, const Tensor& dk, const Tensor& dv,
                              const Tensor& draw, const Tensor& dq_weight,
                              const Tensor& dk_weight) override;
  void attention_forward(const AttentionShape& shape, const Tensor& q, const Tensor& k,
                         const Tensor& v, const Tensor& depth_k, const Tensor& depth_v,
                         const Tensor& out, const Tensor& lse) override;
  void attention_backward(const AttentionShape& shape, const Tensor& dout, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& depth_k,
                          const Tensor& depth_v, const Tensor& out, const Tensor& lse,
                          const Tensor& dq, const Tensor& dk, const Tensor& dv,
                          const Tensor& depth_probs, const Tensor& depth_dscores) override;
  void attention_backward_sole_reader(const AttentionShape& shape, const Tensor& dout,
                                      const Tensor& q, const Tensor& k, const Tensor& v,
                                      const Tensor& depth_k, const Tensor& depth_v,
                                      const Tensor& out, const Tensor& lse, const Tensor& dq,
                                      const Tensor& dk, const Tensor& dv, const Tensor& d_depth_k,
                                      const Tensor& d_depth_v) override;
  void depth_slot_backward(const AttentionShape& shape, int64_t first, int64_t count,
                           std::span<const DepthReader> readers, const Tensor& d_depth_k,
                           const Tensor& d_depth_v, bool accumulate,
                           const SlotValueGradient& last_dv) override;
  void swiglu_forward(const Tensor& in, const Tensor& out, int64_t rows, int64_t hidden,
                      int64_t ld) override;
  void swiglu_backward(const Tensor& dout, const Tensor& in, const Tensor& din, int64_t rows,
                       int64_t hidden, int64_t ld) override;
  void lm_head_cross_entropy(const Tensor& x, const Tensor& weight, const Tensor& targets,
                             const Tensor& ce, const Tensor& lse, const Tensor& dx,
                             const Tensor& dweight, int64_t rows, int64_t dim, int64_t vocab,
                             double z_loss, double scale) override;
  void lm_head_logits(const Tensor& x, const Tensor& weight, const Tensor& logits, int64_t rows,
                      int64_t dim, int64_t vocab) override;
  std::vector<double> segment_sum_squares(
      const Tensor& values, std::span<const std::pair<int64_t, int64_t>> segments) override;
  void adamw(const Tensor& master, const Tensor& grad, const Tensor& m, const Tensor& v,
             const Tensor& weights, int64_t offset, int64_t count, const AdamWArgs& args) override;

 private:
  struct Pending {
    std::string op;
    int64_t n, k;
    size_t from, to;  // timeline marks
  };
  // Runs `call`, bracketed by two marks while recording.
  template <class Call>
  auto timed(const char* op, int64_t n, int64_t k, Call&& call);

  Backend& inner_;
  std::unique_ptr<Timeline> timeline_;
  bool recording_ = false;
  std::vector<Pending> pending_;
  std::string region_;
  size_t region_from_ = 0;
};

// Calls of one layer family within the profiled step.
struct ProfileRow {
  std::string family;
  int64_t calls = 0;
  double ms = 0;
};

// Groups records by family, largest total first. GEMMs are named by the layer their (n, k) shape
// belongs to in `shape` ("gemm mlp.in fwd", "gemm attn.out bwd"; layers of equal shape share a
// row, "gemm attn.out/mlp.down fwd"), else "gemm NxK fwd". The other families: embedding,
// attention fwd, attention bwd, norms, qkv_norm_rope, swiglu, lm_head+CE, adamw, grad norm,
// communication (regions of that name), other (zero, copy, uploads, downloads).
std::vector<ProfileRow> group_profile(std::span<const OpRecord> records, const ModelShape& shape);

// The logged table: family, calls, total ms and share of the step's wall time, the five largest
// marked with '*', then the time outside every op (host work, launch gaps).
std::string format_profile(std::span<const ProfileRow> rows, int64_t step, double step_ms,
                           const std::string& timing);

}  // namespace moda
