// ProfilingBackend: times each op call on the inner backend's timeline while recording, and the
// wall-clock Timeline that backends with synchronous ops (the CPU backend) use.
#include <chrono>
#include <stdexcept>
#include <type_traits>

#include "moda/profiling.hpp"

namespace moda {

namespace {

class WallClockTimeline final : public Timeline {
 public:
  size_t mark() override {
    marks_.push_back(std::chrono::steady_clock::now());
    return marks_.size() - 1;
  }
  double elapsed_ms(size_t from, size_t to) override {
    return std::chrono::duration<double, std::milli>(marks_.at(to) - marks_.at(from)).count();
  }
  void reset() override { marks_.clear(); }

 private:
  std::vector<std::chrono::steady_clock::time_point> marks_;
};

}  // namespace

std::unique_ptr<Timeline> Backend::make_timeline() { return std::make_unique<WallClockTimeline>(); }

ProfilingBackend::ProfilingBackend(Backend& inner)
    : inner_(inner), timeline_(inner.make_timeline()) {}

template <class Call>
auto ProfilingBackend::timed(const char* op, int64_t n, int64_t k, Call&& call) {
  if (!recording_) return call();
  const size_t from = timeline_->mark();
  // A throwing op ends the run; its record does not matter.
  if constexpr (std::is_void_v<decltype(call())>) {
    call();
    pending_.push_back({op, n, k, from, timeline_->mark()});
  } else {
    auto result = call();
    pending_.push_back({op, n, k, from, timeline_->mark()});
    return result;
  }
}

void ProfilingBackend::start() {
  timeline_->reset();
  pending_.clear();
  recording_ = true;
}

std::vector<OpRecord> ProfilingBackend::stop() {
  recording_ = false;
  std::vector<OpRecord> records;
  records.reserve(pending_.size());
  for (const Pending& p : pending_) {
    records.push_back({p.op, p.n, p.k, timeline_->elapsed_ms(p.from, p.to)});
  }
  pending_.clear();
  return records;
}

void ProfilingBackend::begin_region(const std::string& name) {
  if (!recording_) return;
  if (!region_.empty()) throw std::logic_error("profiling: region '" + region_ + "' still open");
  region_ = name;
  region_from_ = timeline_->mark();
}

void ProfilingBackend::end_region() {
  if (!recording_) return;
  if (region_.empty()) throw std::logic_error("profiling: end_region without begin_region");
  pending_.push_back({region_, 0, 0, region_from_, timeline_->mark()});
  region_.clear();
}

void ProfilingBackend::zero(const Tensor& tensor) {
  timed("zero", 0, 0, [&] { inner_.zero(tensor); });
}

void ProfilingBackend::copy(const Tensor& dst, const Tensor& src) {
  timed("copy", 0, 0, [&] { inner_.copy(dst, src); });
}

void ProfilingBackend::upload(const Tensor& dst, std::span<const double> host) {
  timed("upload", 0, 0, [&] { inner_.upload(dst, host); });
}

void ProfilingBackend::upload_tokens(const Tensor& dst, std::span<const int32_t> host) {
  timed("upload_tokens", 0, 0, [&] { inner_.upload_tokens(dst, host); });
}

void ProfilingBackend::download(const Tensor& src, std::span<double> host) {
  timed("download", 0, 0, [&] { inner_.download(src, host); });
}

void ProfilingBackend::download_f32(const Tensor& src, std::span<float> host) {
  timed("download", 0, 0, [&] { inner_.download_f32(src, host); });
}

void ProfilingBackend::embedding_forward(const Tensor& tokens, const Tensor& table,
                                         const Tensor& out, int64_t rows, int64_t dim) {
  timed("embedding_forward", 0, 0,
        [&] { inner_.embedding_forward(tokens, table, out, rows, dim); });
}

void ProfilingBackend::embedding_backward(const Tensor& tokens, const Tensor& dout,
                                          const Tensor& dtable, int64_t rows, int64_t dim) {
  timed("embedding_backward", 0, 0,
        [&] { inner_.embedding_backward(tokens, dout, dtable, rows, dim); });
}

void ProfilingBackend::matmul(const Tensor& out, const Tensor& in, const Tensor& weight, int64_t m,
                              int64_t n, int64_t k, bool accumulate) {
  timed("matmul", n, k, [&] { inner_.matmul(out, in, weight, m, n, k, accumulate); });
}

void ProfilingBackend::matmul_backward(const Tensor& dout, const Tensor& in, const Tensor& weight,
                                       const Tensor& din, const Tensor& dweight, int64_t m,
                                       int64_t n, int64_t k, bool accumulate_din) {
  timed("matmul_backward", n, k,
        [&] { inner_.matmul_backward(dout, in, weight, din, dweight, m, n, k, accumulate_din); });
}

void ProfilingBackend::rmsnorm_forward(const Tensor& in, const Tensor& weight, const Tensor& out,
                                       const Tensor& rstd, int64_t rows, int64_t cols, double eps) {
  timed("rmsnorm_forward", 0, 0,
        [&] { inner_.rmsnorm_forward(in, weight, out, rstd, rows, cols, eps); });
}

void ProfilingBackend::rmsnorm_backward(const Tensor& dout, const Tensor& in, const Tensor& weight,
                                        const Tensor& rstd, const Tensor& din,
                                        const Tensor& dweight, int64_t rows, int64_t cols,
                                        bool accumulate_din) {
  timed("rmsnorm_backward", 0, 0, [&] {
    inner_.rmsnorm_backward(dout, in, weight, rstd, din, dweight, rows, cols, accumulate_din);
  });
}

void ProfilingBackend::residual_norm_forward(ResidualNorm kind, const Tensor& x,
                                             const Tensor& branch, const Tensor& weight,
                                             const Tensor& sum, const Tensor& out,
                                             const Tensor& rstd, int64_t rows, int64_t cols,
                                             double eps) {
  timed("residual_norm_forward", 0, 0, [&] {
    inner_.residual_norm_forward(kind, x, branch, weight, sum, out, rstd, rows, cols, eps);
  });
}

void ProfilingBackend::residual_norm_backward(ResidualNorm kind, const Tensor& dout,
                                              const Tensor& normed, const Tensor& weight,
                                              const Tensor& rstd, const Tensor& dnormed,
                                              const Tensor& dweight, int64_t rows, int64_t cols,
                                              bool accumulate) {
  timed("residual_norm_backward", 0, 0, [&] {
    inner_.residual_norm_backward(kind, dout, normed, weight, rstd, dnormed, dweight, rows, cols,
                                  accumulate);
  });
}

void ProfilingBackend::qkv_norm_rope_forward(const QkvLayout& layout, const Tensor& raw,
                                             const Tensor& q_weight, const Tensor& k_weight,
                                             const Tensor& q_out, const Tensor& k_out,
                                             const Tensor& v_out, const Tensor& q_rstd,
                                             const Tensor& k_rstd) {
  timed("qkv_norm_rope_forward", 0, 0, [&] {
    inner_.qkv_norm_rope_forward(layout, raw, q_weight, k_weight, q_out, k_out, v_out, q_rstd,
                                 k_rstd);
  });
}

void ProfilingBackend::qkv_norm_rope_backward(const QkvLayout& layout, const Tensor& raw,
                                              const Tensor& q_weight, const Tensor& k_weight,
                                              const Tensor& q_rstd, const Tensor& k_rstd,
                                              const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                              const Tensor& draw, const Tensor& dq_weight,
                                              const Tensor& dk_weight) {
  timed("qkv_norm_rope_backward", 0, 0, [&] {
    inner_.qkv_norm_rope_backward(layout, raw, q_weight, k_weight, q_rstd, k_rstd, dq, dk, dv, draw,
                                  dq_weight, dk_weight);
  });
}

void ProfilingBackend::attention_forward(const AttentionShape& shape, const Tensor& q,
                                         const Tensor& k, const Tensor& v, const Tensor& depth_k,
                                         const Tensor& depth_v, const Tensor& out,
                                         const Tensor& lse) {
  timed("attention_forward", 0, 0,
        [&] { inner_.attention_forward(shape, q, k, v, depth_k, depth_v, out, lse); });
}

void ProfilingBackend::attention_backward(const AttentionShape& shape, const Tensor& dout,
                                          const Tensor& q, const Tensor& k, const Tensor& v,
                                          const Tensor& depth_k, const Tensor& depth_v,
                                          const Tensor& out, const Tensor& lse, const Tensor& dq,
                                          const Tensor& dk, const Tensor& dv,
                                          const Tensor& depth_probs, const Tensor& depth_dscores) {
  timed("attention_backward", 0, 0, [&] {
    inner_.attention_backward(shape, dout, q, k, v, depth_k, depth_v, out, lse, dq, dk, dv,
                              depth_probs, depth_dscores);
  });
}

void ProfilingBackend::attention_backward_sole_reader(
    const AttentionShape& shape, const Tensor& dout, const Tensor& q, const Tensor& k,
    const Tensor& v, const Tensor& depth_k, const Tensor& depth_v, const Tensor& out,
    const Tensor& lse, const Tensor& dq, const Tensor& dk, const Tensor& dv,
    const Tensor& d_depth_k, const Tensor& d_depth_v) {
  timed("attention_backward", 0, 0, [&] {
    inner_.attention_backward_sole_reader(shape, dout, q, k, v, depth_k, depth_v, out, lse, dq, dk,
                                          dv, d_depth_k, d_depth_v);
  });
}

void ProfilingBackend::depth_slot_backward(const AttentionShape& shape, int64_t first,
                                           int64_t count, std::span<const DepthReader> readers,
                                           const Tensor& d_depth_k, const Tensor& d_depth_v,
                                           bool accumulate, const SlotValueGradient& last_dv) {
  timed("depth_slot_backward", 0, 0, [&] {
    inner_.depth_slot_backward(shape, first, count, readers, d_depth_k, d_depth_v, accumulate,
                               last_dv);
  });
}

void ProfilingBackend::swiglu_forward(const Tensor& in, const Tensor& out, int64_t rows,
                                      int64_t hidden, int64_t ld) {
  timed("swiglu_forward", 0, 0, [&] { inner_.swiglu_forward(in, out, rows, hidden, ld); });
}

void ProfilingBackend::swiglu_backward(const Tensor& dout, const Tensor& in, const Tensor& din,
                                       int64_t rows, int64_t hidden, int64_t ld) {
  timed("swiglu_backward", 0, 0, [&] { inner_.swiglu_backward(dout, in, din, rows, hidden, ld); });
}

void ProfilingBackend::lm_head_cross_entropy(const Tensor& x, const Tensor& weight,
                                             const Tensor& targets, const Tensor& ce,
                                             const Tensor& lse, const Tensor& dx,
                                             const Tensor& dweight, int64_t rows, int64_t dim,
                                             int64_t vocab, double z_loss, double scale) {
  timed("lm_head_cross_entropy", 0, 0, [&] {
    inner_.lm_head_cross_entropy(x, weight, targets, ce, lse, dx, dweight, rows, dim, vocab, z_loss,
                                 scale);
  });
}

void ProfilingBackend::lm_head_logits(const Tensor& x, const Tensor& weight, const Tensor& logits,
                                      int64_t rows, int64_t dim, int64_t vocab) {
  timed("lm_head_logits", 0, 0,
        [&] { inner_.lm_head_logits(x, weight, logits, rows, dim, vocab); });
}

std::vector<double> ProfilingBackend::segment_sum_squares(
    const Tensor& values, std::span<const std::pair<int64_t, int64_t>> segments) {
  return timed("segment_sum_squares", 0, 0,
               [&] { return inner_.segment_sum_squares(values, segments); });
}

void ProfilingBackend::adamw(const Tensor& master, const Tensor& grad, const Tensor& m,
                             const Tensor& v, const Tensor& weights, int64_t offset, int64_t count,
                             const AdamWArgs& args) {
  timed("adamw", 0, 0, [&] { inner_.adamw(master, grad, m, v, weights, offset, count, args); });
}

}  // namespace moda
