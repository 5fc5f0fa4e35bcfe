// The backend interface: every op the model graph calls. The model is written once against this
// interface; the CPU backend (src/backend_cpu/) is the fp32/fp64 oracle, the CUDA backend
// (kernels/) stores bf16 and accumulates in fp32. Ops are cut at fused steps (residual add + norm,
// QK-norm + RoPE, SwiGLU, LM head + cross-entropy, MoDA attention) so a backend can fuse freely.
//
// Conventions
// - Matrices are row-major. A weight of a linear layer is [out_features, in_features] (PyTorch's
//   nn.Linear layout), so y = x W^T.
// - Rows R = B * T; row r is token t = r % T of sequence b = r / T.
// - "accumulate" means out += result; otherwise out = result.
// - Tensors are untyped device pointers with a dtype tag. The backend decides the dtype of each
//   buffer role (see Backend::dtype_of) and each op checks what it receives.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace moda {

enum class DType { f32, f64, bf16, i32 };
size_t dtype_size(DType dtype);
std::string to_string(DType dtype);

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::f32;
  int64_t numel = 0;

  bool empty() const { return data == nullptr; }
  // A view of `count` elements starting at element `offset`.
  Tensor slice(int64_t offset, int64_t count) const;
  template <class T>
  T* as() const {
    return static_cast<T*>(data);
  }
};

// What a buffer holds; the backend maps each role to a dtype.
enum class Role {
  weight,      // compute copy of the parameters (bf16 on CUDA)
  master,      // master parameters, gradients of parameters, Adam moments (fp32 on CUDA)
  activation,  // activations and their gradients (bf16 on CUDA)
  accum,       // fp32 accumulation: depth-slot gradients, attention input gradients
  stat,        // per-row statistics: rstd, log-sum-exp, losses (fp32 on CUDA)
  index,       // token ids (int32)
};

enum class ResidualNorm {
  add_then_norm,  // sum = x + branch; out = RMSNorm(sum) * w        (pre: next input; post: h)
  norm_then_add,  // out = x + RMSNorm(branch) * w                   (reordered, OLMo2's own)
};

struct AttentionShape {
  int64_t batch = 0;     // B
  int64_t seq_len = 0;   // T
  int64_t q_heads = 0;   // Hq
  int64_t kv_heads = 0;  // Hk
  int64_t head_dim = 0;  // d
  int64_t slots = 0;     // S: depth slots read by this layer (0 = plain causal attention)
  // Elements between consecutive depth slots; slot s of row r, head h starts at
  // s * slot_stride + r * Hk * d + h * d.
  int64_t slot_stride = 0;
};

struct AdamWArgs {
  double lr = 0;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0;
  int64_t step = 1;         // 1-based, for bias correction
  double grad_scale = 1.0;  // multiplies the gradient first (clipping)
};

// Timestamps on a backend's timeline, for per-op profiles (moda/profiling.hpp). The CPU backend's
// ops run synchronously, so its timeline is the wall clock; the CUDA backend records events on its
// stream, which time the GPU work itself rather than the host's launch calls.
class Timeline {
 public:
  virtual ~Timeline() = default;
  // Records a point after all work issued so far; returns its index since the last reset().
  virtual size_t mark() = 0;
  // Milliseconds between two marks; waits until the later one has been reached.
  virtual double elapsed_ms(size_t from, size_t to) = 0;
  // Forgets the marks; their resources (events) are reused by the next ones.
  virtual void reset() = 0;
};

// Device memory as the backend sees it, for the trainer's memory check and report.
struct DeviceMemory {
  std::string device;          // the device's name; empty for host backends
  int64_t allocated = 0;       // bytes the backend holds now: buffers, workspaces, tables
  int64_t allocated_peak = 0;  // the most it held at once, short-lived buffers included
  int64_t free = 0;            // cudaMemGetInfo
  int64_t total = 0;           // 0 for host backends
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual DType dtype_of(Role role) const = 0;
  // Peak dense FLOP/s of the device at the compute dtype, for MFU; 0 when unknown.
  virtual double peak_flops() const { return 0.0; }
  // Host backends: nothing to report (total = 0).
  virtual DeviceMemory device_memory() const { return {}; }
  // The wall clock unless overridden (right for backends whose ops return when done).
  virtual std::unique_ptr<Timeline> make_timeline();

  // ---- memory ----
  virtual Tensor alloc(Role role, int64_t numel) = 0;  // zero-filled
  virtual void release(Tensor& tensor) = 0;
  virtual void zero(const Tensor& tensor) = 0;
  virtual void copy(const Tensor& dst, const Tensor& src) = 0;  // converts dtype if they differ
  virtual void upload(const Tensor& dst, std::span<const double> host) = 0;
  virtual void upload_tokens(const Tensor& dst, std::span<const int32_t> host) = 0;
  virtual void download(const Tensor& src, std::span<double> host) = 0;
  // Into float32, the checkpoints' type. The default goes through download() a bounded chunk at a
  // time (kDownloadChunk elements), never a float64 copy of the whole tensor; a backend that holds
  // float32 overrides it with a plain copy.
  virtual void download_f32(const Tensor& src, std::span<float> host);
  static constexpr int64_t kDownloadChunk = int64_t{1} << 20;
  virtual void synchronize() = 0;
  // The CUDA stream (a cudaStream_t) this backend queues its device work on, so that other
  // device work (NCCL collectives) can be ordered after it without blocking the host; nullptr
  // for host backends.
  virtual void* device_stream() const { return nullptr; }

  // Builds the RoPE cos/sin table used by qkv_norm_rope_* (NeoX/HF "rotate_half" pairing).
  virtual void init_rope(int64_t max_seq_len, int64_t head_dim, double theta) = 0;

  // ---- ops ----
  // out[r, :] = table[tokens[r], :]
  virtual void embedding_forward(const Tensor& tokens, const Tensor& table, const Tensor& out,
                                 int64_t rows, int64_t dim) = 0;
  // dtable[tokens[r], :] += dout[r, :]
  virtual void embedding_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dtable,
                                  int64_t rows, int64_t dim) = 0;

  // out[M, N] (+)= in[M, K] W[N, K]^T
  virtual void matmul(const Tensor& out, const Tensor& in, const Tensor& weight, int64_t m,
                      int64_t n, int64_t k, bool accumulate) = 0;
  // din (+)= dout W (skipped when din is empty); dweight += dout^T in.
  virtual void matmul_backward(const Tensor& dout, const Tensor& in, const Tensor& weight,
                               const Tensor& din, const Tensor& dweight, int64_t m, int64_t n,
                               int64_t k, bool accumulate_din) = 0;

  // out = RMSNorm(in) * w over rows of `cols`; rstd[r] = 1 / sqrt(mean(in^2) + eps).
  virtual void rmsnorm_forward(const Tensor& in, const Tensor& weight, const Tensor& out,
                               const Tensor& rstd, int64_t rows, int64_t cols, double eps) = 0;
  // din (+)= d/d in; dweight += d/d w.
  virtual void rmsnorm_backward(const Tensor& dout, const Tensor& in, const Tensor& weight,
                                const Tensor& rstd, const Tensor& din, const Tensor& dweight,
                                int64_t rows, int64_t cols, bool accumulate_din) = 0;

  // add_then_norm: sum = x + branch, out = RMSNorm(sum) * w, rstd of sum.
  // norm_then_add: out = x + RMSNorm(branch) * w, rstd of branch; `sum` unused (may be empty).
  virtual void residual_norm_forward(ResidualNorm kind, const Tensor& x, const Tensor& branch,
                                     const Tensor& weight, const Tensor& sum, const Tensor& out,
                                     const Tensor& rstd, int64_t rows, int64_t cols,
                                     double eps) = 0;
  // add_then_norm: dsum (+)= RMSNorm'(sum)^T dout; the gradient of x and of branch both equal
  //   dsum (accumulate_dsum adds to what dsum holds: the residual's gradient under pre-norm).
  // norm_then_add: dbranch = RMSNorm'(branch)^T dout (x's gradient is dout itself).
  // `normed` is sum (add_then_norm) or branch (norm_then_add): the tensor that was normalized.
  virtual void residual_norm_backward(ResidualNorm kind, const Tensor& dout, const Tensor& normed,
                                      const Tensor& weight, const Tensor& rstd,
                                      const Tensor& dnormed, const Tensor& dweight, int64_t rows,
                                      int64_t cols, bool accumulate) = 0;

  // From a projection row raw[r, col0 : col0 + (nq + 2 nk) d] laid out [q | k | v] (row stride
  // ld): q = RoPE(RMSNorm(q_raw) * q_w) over all nq heads jointly, k likewise with k_w over nk
  // heads, v copied. nq may be 0 (depth projections). Position of row r is r % seq_len.
  struct QkvLayout {
    int64_t rows, seq_len, ld, col0, q_heads, kv_heads, head_dim;
    double eps;
  };
  virtual void qkv_norm_rope_forward(const QkvLayout& layout, const Tensor& raw,
                                     const Tensor& q_weight, const Tensor& k_weight,
                                     const Tensor& q_out, const Tensor& k_out, const Tensor& v_out,
                                     const Tensor& q_rstd, const Tensor& k_rstd) = 0;
  // dq, dk, dv (accum dtype) -> draw[r, col0 : ...] (overwritten), dq_weight, dk_weight (+=).
  // dv may be empty: the v columns of draw then hold their gradient already and are left as they
  // are (depth_slot_backward's last_dv).
  virtual void qkv_norm_rope_backward(const QkvLayout& layout, const Tensor& raw,
                                      const Tensor& q_weight, const Tensor& k_weight,
                                      const Tensor& q_rstd, const Tensor& k_rstd, const Tensor& dq,
                                      const Tensor& dk, const Tensor& dv, const Tensor& draw,
                                      const Tensor& dq_weight, const Tensor& dk_weight) = 0;

  // MoDA attention. q [R, Hq d]; k, v [R, Hk d]; depth_k, depth_v hold slots [0, S) at
  // slot_stride. Query head h of token t attends under one softmax to keys 0..t of kv head
  // h / G and to the S depth slots of token t for that kv head; scale 1/sqrt(d).
  // out [R, Hq d]; lse [R, Hq] (natural log of the softmax denominator of the scaled scores).
  virtual void attention_forward(const AttentionShape& shape, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const Tensor& depth_k, const Tensor& depth_v,
                                 const Tensor& out, const Tensor& lse) = 0;
  // dq (accum) is overwritten; dk, dv (accum) are accumulated into. With depth slots it also
  // writes, for slot j, row r and query head h (of KV head h / G), S R Hq values (accum) at
  // depth_stats_index(S, R Hk, G, j, r Hk + h / G, h % G) (moda/depth_stats_layout.hpp):
  //   depth_probs   = p, the slot's probability under the joint softmax,
  //   depth_dscores = p (dout . v_j - dout . out) / sqrt(d), the gradient of the product q . k_j.
  // The slots' own gradients are formed from these by depth_slot_backward once every layer that
  // reads them is done: summing them in place here would read and write the fp32 slot gradients
  // once per reading layer, most of the depth part's bytes (docs/kernels/moda_attention.md).
  virtual void attention_backward(const AttentionShape& shape, const Tensor& dout, const Tensor& q,
                                  const Tensor& k, const Tensor& v, const Tensor& depth_k,
                                  const Tensor& depth_v, const Tensor& out, const Tensor& lse,
                                  const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                  const Tensor& depth_probs, const Tensor& depth_dscores) = 0;
  // attention_backward for a layer that is the only reader of its depth slots, a MoDA attention
  // on its own (the interface of the paper's kernel; `moda bench attention`): the gradients of the
  // S slots, as depth_slot_backward forms them from this one reader, are written (overwritten,
  // accum dtype, slot j at j shape.slot_stride) into d_depth_k, d_depth_v, and no probabilities
  // or score gradients are kept. The model does not call it: its slots have many readers.
  virtual void attention_backward_sole_reader(const AttentionShape& shape, const Tensor& dout,
                                              const Tensor& q, const Tensor& k, const Tensor& v,
                                              const Tensor& depth_k, const Tensor& depth_v,
                                              const Tensor& out, const Tensor& lse,
                                              const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                              const Tensor& d_depth_k, const Tensor& d_depth_v) = 0;
  // A layer's attention as a reader of depth slots: its q and dout [R, Hq d] (activation), the
  // whole depth_probs and depth_dscores its attention_backward wrote, and how many slots it reads.
  struct DepthReader {
    Tensor q, dout, probs, dscores;
    int64_t slots = 0;
  };
  // Gradients of the depth slots [first, first + count) into d_depth_k, d_depth_v (accum), which
  // hold slot first + c at c shape.slot_stride, overwritten or, with accumulate, added to: for
  // slot j, row r and KV head h,
  //   d_depth_k[j - first, r, h] = sum over readers and the query heads g of h of
  //                                dscores[j, r, g] q[r, g],
  //   d_depth_v[j - first, r, h] = the same with probs and dout.
  // Every reader must read these slots (slots >= first + count); with no readers they are zero.
  // shape.slots is not used.
  // With last_dv.rows, the value gradient of the last slot (first + count - 1), formed as above,
  // goes instead to last_dv (activation dtype; row r's Hk d values at r last_dv.ld), and that
  // slot of d_depth_v is scratch: partial sums or its old values. This is for a slot whose
  // gradient is final after this op and is next read as activation-dtype columns of a
  // projection's output gradient (the model's FFN KV slot): written there directly, it skips an
  // fp32 write and read of the slot (qkv_norm_rope_backward then takes no dv).
  struct SlotValueGradient {
    Tensor rows;
    int64_t ld = 0;
  };
  virtual void depth_slot_backward(const AttentionShape& shape, int64_t first, int64_t count,
                                   std::span<const DepthReader> readers, const Tensor& d_depth_k,
                                   const Tensor& d_depth_v, bool accumulate,
                                   const SlotValueGradient& last_dv) = 0;

  // out[r, :] = silu(in[r, 0:F]) * in[r, F:2F], row stride ld of `in`.
  virtual void swiglu_forward(const Tensor& in, const Tensor& out, int64_t rows, int64_t hidden,
                              int64_t ld) = 0;
  // din[r, 0:2F] = gradients (overwritten), row stride ld.
  virtual void swiglu_backward(const Tensor& dout, const Tensor& in, const Tensor& din,
                               int64_t rows, int64_t hidden, int64_t ld) = 0;

  // LM head + softmax cross-entropy over all `vocab` logits (the padded vocabulary, as HF does).
  // ce[r] = lse[r] - logit[r, target[r]], lse[r] = logsumexp of row r (stat dtype).
  // When dx is non-empty: loss = scale * sum_r (ce[r] + z_loss * lse[r]^2); dx = d loss / dx
  // (overwritten) and dweight += d loss / dW. No logits tensor is kept.
  virtual void lm_head_cross_entropy(const Tensor& x, const Tensor& weight, const Tensor& targets,
                                     const Tensor& ce, const Tensor& lse, const Tensor& dx,
                                     const Tensor& dweight, int64_t rows, int64_t dim,
                                     int64_t vocab, double z_loss, double scale) = 0;
  // logits[R, vocab] (stat dtype) for tests and sampling.
  virtual void lm_head_logits(const Tensor& x, const Tensor& weight, const Tensor& logits,
                              int64_t rows, int64_t dim, int64_t vocab) = 0;

  // Sum of squares of each [offset, offset + count) range of `values`, in double.
  virtual std::vector<double> segment_sum_squares(
      const Tensor& values, std::span<const std::pair<int64_t, int64_t>> segments) = 0;
  // AdamW on the range [offset, offset + count) of the flat buffers (master, grad, m, v, all
  // master role); also refreshes the compute copy `weights` (weight role) of that range.
  virtual void adamw(const Tensor& master, const Tensor& grad, const Tensor& m, const Tensor& v,
                     const Tensor& weights, int64_t offset, int64_t count,
                     const AdamWArgs& args) = 0;
};

// Creates the backend named by `kind` ("cpu", "cpu64" for the float64 test oracle, "cuda").
// Throws with a clear message when the kind is not available in this build or on this machine.
std::unique_ptr<Backend> make_backend(const std::string& kind, int threads);
// True when this build has the CUDA backend and a GPU is visible.
bool cuda_available();

}  // namespace moda
