// The CPU backend: plain loops + OpenMP, written for clarity; it is the oracle the CUDA backend
// is tested against. Templated on the scalar so that gradient checks can run the whole model in
// float64 ("cpu64"); training uses float32 ("cpu"). Every buffer role has the scalar's dtype.
#pragma once

#include <memory>
#include <unordered_map>
#include <vector>

#include "moda/backend.hpp"

namespace moda {

template <class T>
class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads);
  ~CpuBackend() override;

  std::string name() const override;
  DType dtype_of(Role role) const override;
  // Nominal: threads x 2.5 GHz x 32 FLOP/cycle (two AVX2 FMA units on 8 floats); halved for
  // float64.
  double peak_flops() const override;

  Tensor alloc(Role role, int64_t numel) override;
  void release(Tensor& tensor) override;
  void zero(const Tensor& tensor) override;
  void copy(const Tensor& dst, const Tensor& src) override;
  void upload(const Tensor& dst, std::span<const double> host) override;
  void upload_tokens(const Tensor& dst, std::span<const int32_t> host) override;
  void download(const Tensor& src, std::span<double> host) override;
  void download_f32(const Tensor& src, std::span<float> host) override;
  void synchronize() override {}
  void init_rope(int64_t max_seq_len, int64_t head_dim, double theta) override;

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
  T* ptr(const Tensor& t) const;  // checks the dtype
  int threads_;
  std::unordered_map<void*, std::unique_ptr<std::byte[]>> allocations_;
  std::vector<T> rope_cos_, rope_sin_;  // [max_seq_len, head_dim / 2]
  int64_t rope_half_ = 0, rope_len_ = 0;
};

extern template class CpuBackend<float>;
extern template class CpuBackend<double>;

}  // namespace moda
