// The CUDA backend: memory, host transfers, dtype checks and dispatch to the kernel families.
// Everything runs on one stream owned by the backend; download() and synchronize() wait for it.
// (The attention backward runs its depth part on a side stream forked from it and joined back
// before the op returns, so that stream order holds between ops.) Scratch for ops that need it
// (attention's fp32 partial output and deltas, the LM head's logit chunk, the segment table) comes
// from one grow-only workspace: ops run in stream order, so one buffer serves them all. Every
// cudaMalloc is counted (current and peak bytes) so the trainer can compare the device memory with
// its prediction, and profiles time ops with events on the stream.
#include <cmath>
#include <unordered_map>
#include <vector>

#include "moda/cuda_backend.hpp"
#include "ops.cuh"

namespace moda {

namespace {

using cuda::bf16;

__global__ void convert_kernel_f32_bf16(const float* src, bf16* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = __float2bfloat16(src[i]);
  }
}

__global__ void convert_kernel_bf16_f32(const bf16* src, float* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = __bfloat162float(src[i]);
  }
}

// CUDA events recorded on the backend's stream: each mark is reached when the GPU has finished
// the work issued before it, so the time between two marks is the GPU time of what lies between.
class EventTimeline final : public Timeline {
 public:
  explicit EventTimeline(cudaStream_t stream) : stream_(stream) {}
  ~EventTimeline() override {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  EventTimeline(const EventTimeline&) = delete;
  EventTimeline& operator=(const EventTimeline&) = delete;

  size_t mark() override {
    if (used_ == events_.size()) {
      cudaEvent_t e = nullptr;
      MODA_CUDA_CHECK(cudaEventCreate(&e));
      events_.push_back(e);
    }
    MODA_CUDA_CHECK(cudaEventRecord(events_[used_], stream_));
    return used_++;
  }

  double elapsed_ms(size_t from, size_t to) override {
    if (from >= used_ || to >= used_) throw std::logic_error("cuda timeline: no such mark");
    MODA_CUDA_CHECK(cudaEventSynchronize(events_[to]));
    float ms = 0;
    MODA_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[from], events_[to]));
    return ms;
  }

  void reset() override { used_ = 0; }

 private:
  cudaStream_t stream_;
  std::vector<cudaEvent_t> events_;
  size_t used_ = 0;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaBackendOptions& options) : options_(options) {
    MODA_CUDA_CHECK(cudaGetDevice(&device_));
    MODA_CUDA_CHECK(cudaGetDeviceProperties(&props_, device_));
    MODA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    side_ = std::make_unique<cuda::SideStream>();
    priority_side_ = std::make_unique<cuda::SideStream>(true);
    gemm_ = std::make_unique<cuda::Gemm>(stream_, counter_);
  }

  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    gemm_.reset();
    side_.reset();
    priority_side_.reset();
    for (const auto& [p, bytes] : allocations_) cudaFree(p);
    cudaFree(workspace_);
    cudaFree(rope_cos_);
    cudaFree(rope_sin_);
    cudaStreamDestroy(stream_);
  }

  // The peak bandwidth is named because it picks attention's depth placements (beside_bounds).
  std::string name() const override {
    return cuda::concat("cuda (", props_.name, ", ", props_.multiProcessorCount, " SMs, ",
                        props_.totalGlobalMem >> 30, " GiB, ",
                        std::round(cuda::peak_memory_tb_per_s() * 100) / 100, " TB/s)");
  }

  DType dtype_of(Role role) const override {
    switch (role) {
      case Role::weight:
      case Role::activation:
        return DType::bf16;
      case Role::master:
      case Role::accum:
      case Role::stat:
        return DType::f32;
      case Role::index:
        return DType::i32;
    }
    throw std::logic_error("cuda backend: unknown role");
  }

  // Dense bf16 tensor-core peak: 4096 FLOP per clock per SM on Hopper at the 1.83 GHz the
  // datasheets quote (989 TFLOP/s on 132 SMs); 0 (unknown) elsewhere.
  double peak_flops() const override {
    if (props_.major == 9) return 4096.0 * 1.83e9 * props_.multiProcessorCount;
    return 0.0;
  }

  DeviceMemory device_memory() const override {
    size_t free_bytes = 0, total_bytes = 0;
    MODA_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    return {props_.name, static_cast<int64_t>(counter_.current),
            static_cast<int64_t>(counter_.peak), static_cast<int64_t>(free_bytes),
            static_cast<int64_t>(total_bytes)};
  }

  std::unique_ptr<Timeline> make_timeline() override {
    return std::make_unique<EventTimeline>(stream_);
  }

  // ---- memory ----
  Tensor alloc(Role role, int64_t numel) override {
    if (numel < 0) throw std::invalid_argument("cuda backend: negative allocation");
    Tensor t;
    t.dtype = dtype_of(role);
    t.numel = numel;
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(numel, 1)) * dtype_size(t.dtype);
    const cudaError_t err = cudaMalloc(&t.data, bytes);
    if (err != cudaSuccess) {
      cudaGetLastError();
      size_t free_bytes = 0, total_bytes = 0;
      cudaMemGetInfo(&free_bytes, &total_bytes);
      throw std::runtime_error(cuda::concat("cuda backend: cannot allocate ", bytes >> 20, " MiB (",
                                            free_bytes >> 20, " MiB free of ", total_bytes >> 20,
                                            " MiB): ", cudaGetErrorString(err)));
    }
    allocations_.emplace(t.data, bytes);
    counter_.add(bytes);
    MODA_CUDA_CHECK(cudaMemsetAsync(t.data, 0, bytes, stream_));
    return t;
  }

  void release(Tensor& tensor) override {
    if (tensor.data == nullptr) return;
    const auto found = allocations_.find(tensor.data);
    if (found == allocations_.end()) {
      throw std::logic_error("cuda backend: release of a tensor it did not allocate");
    }
    const size_t bytes = found->second;
    allocations_.erase(found);
    MODA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    MODA_CUDA_CHECK(cudaFree(tensor.data));
    counter_.remove(bytes);
    tensor = Tensor{};
  }

  void zero(const Tensor& tensor) override {
    if (tensor.numel == 0) return;
    MODA_CUDA_CHECK(cudaMemsetAsync(tensor.data, 0, bytes_of(tensor), stream_));
  }

  void copy(const Tensor& dst, const Tensor& src) override {
    if (dst.numel != src.numel) {
      throw std::logic_error(
          cuda::concat("cuda backend: copy of ", src.numel, " elements into ", dst.numel));
    }
    if (src.numel == 0) return;
    if (dst.dtype == src.dtype) {
      MODA_CUDA_CHECK(
          cudaMemcpyAsync(dst.data, src.data, bytes_of(src), cudaMemcpyDeviceToDevice, stream_));
    } else {
      cuda::convert(src.data, src.dtype, dst.data, dst.dtype, src.numel, stream_);
    }
  }

  void upload(const Tensor& dst, std::span<const double> host) override {
    check_host_size(dst, host.size(), "upload");
    if (host.empty()) return;
    switch (dst.dtype) {
      case DType::f32:
        put(dst, std::vector<float>(host.begin(), host.end()));
        break;
      case DType::bf16: {
        std::vector<bf16> v(host.size());
        for (size_t i = 0; i < host.size(); ++i)
          v[i] = __float2bfloat16(static_cast<float>(host[i]));
        put(dst, v);
        break;
      }
      case DType::i32: {
        std::vector<int32_t> v(host.size());
        for (size_t i = 0; i < host.size(); ++i) v[i] = static_cast<int32_t>(host[i]);
        put(dst, v);
        break;
      }
      case DType::f64:
        throw std::logic_error("cuda backend: no float64 buffers");
    }
  }

  void upload_tokens(const Tensor& dst, std::span<const int32_t> host) override {
    expect(dst, DType::i32, "upload_tokens", "dst");
    check_host_size(dst, host.size(), "upload_tokens");
    if (host.empty()) return;
    MODA_CUDA_CHECK(
        cudaMemcpyAsync(dst.data, host.data(), host.size_bytes(), cudaMemcpyHostToDevice, stream_));
    MODA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void download(const Tensor& src, std::span<double> host) override {
    check_host_size(src, host.size(), "download");
    if (host.empty()) {
      synchronize();
      return;
    }
    switch (src.dtype) {
      case DType::f32: {
        const auto v = get<float>(src, host.size());
        std::copy(v.begin(), v.end(), host.begin());
        break;
      }
      case DType::bf16: {
        const auto v = get<bf16>(src, host.size());
        for (size_t i = 0; i < v.size(); ++i) host[i] = static_cast<double>(__bfloat162float(v[i]));
        break;
      }
      case DType::i32: {
        const auto v = get<int32_t>(src, host.size());
        std::copy(v.begin(), v.end(), host.begin());
        break;
      }
      case DType::f64:
        throw std::logic_error("cuda backend: no float64 buffers");
    }
  }

  void synchronize() override { MODA_CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  void* device_stream() const override { return stream_; }

  void init_rope(int64_t max_seq_len, int64_t head_dim, double theta) override {
    const int64_t half = head_dim / 2;
    std::vector<float> c(static_cast<size_t>(max_seq_len * half));
    std::vector<float> s(c.size());
    for (int64_t t = 0; t < max_seq_len; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        const double inv_freq = std::pow(theta, -2.0 * static_cast<double>(i) / head_dim);
        const double angle = static_cast<double>(t) * inv_freq;
        c[static_cast<size_t>(t * half + i)] = static_cast<float>(std::cos(angle));
        s[static_cast<size_t>(t * half + i)] = static_cast<float>(std::sin(angle));
      }
    }
    synchronize();
    cudaFree(rope_cos_);
    cudaFree(rope_sin_);
    rope_cos_ = rope_sin_ = nullptr;
    counter_.remove(2 * rope_bytes_);
    rope_bytes_ = 0;
    const size_t bytes = std::max<size_t>(c.size(), 1) * sizeof(float);
    MODA_CUDA_CHECK(cudaMalloc(&rope_cos_, bytes));
    MODA_CUDA_CHECK(cudaMalloc(&rope_sin_, bytes));
    rope_bytes_ = bytes;
    counter_.add(2 * bytes);
    MODA_CUDA_CHECK(
        cudaMemcpy(rope_cos_, c.data(), c.size() * sizeof(float), cudaMemcpyHostToDevice));
    MODA_CUDA_CHECK(
        cudaMemcpy(rope_sin_, s.data(), s.size() * sizeof(float), cudaMemcpyHostToDevice));
    rope_len_ = max_seq_len;
    rope_half_ = half;
  }

  // ---- ops ----
  void embedding_forward(const Tensor& tokens, const Tensor& table, const Tensor& out, int64_t rows,
                         int64_t dim) override {
    const char* op = "embedding_forward";
    expect(tokens, DType::i32, op, "tokens", rows);
    expect(table, DType::bf16, op, "table");
    expect(out, DType::bf16, op, "out", rows * dim);
    cuda::embedding_forward(tokens.as<int32_t>(), table.as<bf16>(), out.as<bf16>(), rows, dim,
                            stream_);
  }

  void embedding_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dtable,
                          int64_t rows, int64_t dim) override {
    const char* op = "embedding_backward";
    expect(tokens, DType::i32, op, "tokens", rows);
    expect(dout, DType::bf16, op, "dout", rows * dim);
    expect(dtable, DType::f32, op, "dtable");
    cuda::embedding_backward(tokens.as<int32_t>(), dout.as<bf16>(), dtable.as<float>(), rows, dim,
                             stream_);
  }

  void matmul(const Tensor& out, const Tensor& in, const Tensor& weight, int64_t m, int64_t n,
              int64_t k, bool accumulate) override {
    const char* op = "matmul";
    expect(in, DType::bf16, op, "in", m * k);
    expect(weight, DType::bf16, op, "weight", n * k);
    expect_float(out, op, "out", m * n);
    if (m == 0 || n == 0) return;
    gemm_->linear(out.data, cuda_type(out.dtype), in.as<bf16>(), weight.as<bf16>(), m, n, k,
                  accumulate);
  }

  void matmul_backward(const Tensor& dout, const Tensor& in, const Tensor& weight,
                       const Tensor& din, const Tensor& dweight, int64_t m, int64_t n, int64_t k,
                       bool accumulate_din) override {
    const char* op = "matmul_backward";
    expect(dout, DType::bf16, op, "dout", m * n);
    expect(in, DType::bf16, op, "in", m * k);
    expect(weight, DType::bf16, op, "weight", n * k);
    expect(dweight, DType::f32, op, "dweight", n * k);
    if (m == 0 || n == 0 || k == 0) return;
    if (!din.empty()) {
      expect_float(din, op, "din", m * k);
      gemm_->linear_dinput(din.data, cuda_type(din.dtype), dout.as<bf16>(), weight.as<bf16>(), m, n,
                           k, accumulate_din);
    }
    gemm_->linear_dweight(dweight.as<float>(), dout.as<bf16>(), in.as<bf16>(), m, n, k);
  }

  void rmsnorm_forward(const Tensor& in, const Tensor& weight, const Tensor& out,
                       const Tensor& rstd, int64_t rows, int64_t cols, double eps) override {
    const char* op = "rmsnorm_forward";
    expect(in, DType::bf16, op, "in", rows * cols);
    expect(weight, DType::bf16, op, "weight", cols);
    expect(out, DType::bf16, op, "out", rows * cols);
    expect(rstd, DType::f32, op, "rstd", rows);
    cuda::rmsnorm_forward(cuda::NormKind::plain, in.as<bf16>(), nullptr, weight.as<bf16>(), nullptr,
                          out.as<bf16>(), rstd.as<float>(), rows, cols, static_cast<float>(eps),
                          stream_);
  }

  void rmsnorm_backward(const Tensor& dout, const Tensor& in, const Tensor& weight,
                        const Tensor& rstd, const Tensor& din, const Tensor& dweight, int64_t rows,
                        int64_t cols, bool accumulate_din) override {
    const char* op = "rmsnorm_backward";
    expect(dout, DType::bf16, op, "dout", rows * cols);
    expect(in, DType::bf16, op, "in", rows * cols);
    expect(weight, DType::bf16, op, "weight", cols);
    expect(rstd, DType::f32, op, "rstd", rows);
    expect(din, DType::bf16, op, "din", rows * cols);
    expect(dweight, DType::f32, op, "dweight", cols);
    cuda::rmsnorm_backward(dout.as<bf16>(), in.as<bf16>(), weight.as<bf16>(), rstd.as<float>(),
                           din.as<bf16>(), dweight.as<float>(), rows, cols, accumulate_din,
                           stream_);
  }

  void residual_norm_forward(ResidualNorm kind, const Tensor& x, const Tensor& branch,
                             const Tensor& weight, const Tensor& sum, const Tensor& out,
                             const Tensor& rstd, int64_t rows, int64_t cols, double eps) override {
    const char* op = "residual_norm_forward";
    const int64_t n = rows * cols;
    expect(x, DType::bf16, op, "x", n);
    expect(branch, DType::bf16, op, "branch", n);
    expect(weight, DType::bf16, op, "weight", cols);
    expect(out, DType::bf16, op, "out", n);
    expect(rstd, DType::f32, op, "rstd", rows);
    const bool add_first = kind == ResidualNorm::add_then_norm;
    if (add_first) expect(sum, DType::bf16, op, "sum", n);
    cuda::rmsnorm_forward(add_first ? cuda::NormKind::add_then_norm : cuda::NormKind::norm_then_add,
                          x.as<bf16>(), branch.as<bf16>(), weight.as<bf16>(),
                          add_first ? sum.as<bf16>() : nullptr, out.as<bf16>(), rstd.as<float>(),
                          rows, cols, static_cast<float>(eps), stream_);
  }

  void residual_norm_backward(ResidualNorm, const Tensor& dout, const Tensor& normed,
                              const Tensor& weight, const Tensor& rstd, const Tensor& dnormed,
                              const Tensor& dweight, int64_t rows, int64_t cols,
                              bool accumulate) override {
    // Both kinds differentiate one RMSNorm of `normed`; the residual identity is the model's.
    rmsnorm_backward(dout, normed, weight, rstd, dnormed, dweight, rows, cols, accumulate);
  }

  void qkv_norm_rope_forward(const QkvLayout& l, const Tensor& raw, const Tensor& q_weight,
                             const Tensor& k_weight, const Tensor& q_out, const Tensor& k_out,
                             const Tensor& v_out, const Tensor& q_rstd,
                             const Tensor& k_rstd) override {
    const char* op = "qkv_norm_rope_forward";
    const cuda::QkvArgs a = qkv_args(l, op);
    const int64_t qw = l.q_heads * l.head_dim, kw = l.kv_heads * l.head_dim;
    expect(raw, DType::bf16, op, "raw", (l.rows - 1) * l.ld + l.col0 + qw + 2 * kw);
    expect(k_weight, DType::bf16, op, "k_weight", kw);
    expect(k_out, DType::bf16, op, "k_out", l.rows * kw);
    expect(v_out, DType::bf16, op, "v_out", l.rows * kw);
    expect(k_rstd, DType::f32, op, "k_rstd", l.rows);
    if (qw > 0) {
      expect(q_weight, DType::bf16, op, "q_weight", qw);
      expect(q_out, DType::bf16, op, "q_out", l.rows * qw);
      expect(q_rstd, DType::f32, op, "q_rstd", l.rows);
    }
    cuda::qkv_norm_rope_forward(a, raw.as<bf16>(), q_weight.as<bf16>(), k_weight.as<bf16>(),
                                q_out.as<bf16>(), k_out.as<bf16>(), v_out.as<bf16>(),
                                q_rstd.as<float>(), k_rstd.as<float>(), stream_);
  }

  void qkv_norm_rope_backward(const QkvLayout& l, const Tensor& raw, const Tensor& q_weight,
                              const Tensor& k_weight, const Tensor& q_rstd, const Tensor& k_rstd,
                              const Tensor& dq, const Tensor& dk, const Tensor& dv,
                              const Tensor& draw, const Tensor& dq_weight,
                              const Tensor& dk_weight) override {
    const char* op = "qkv_norm_rope_backward";
    const cuda::QkvArgs a = qkv_args(l, op);
    const int64_t qw = l.q_heads * l.head_dim, kw = l.kv_heads * l.head_dim;
    const int64_t raw_size = (l.rows - 1) * l.ld + l.col0 + qw + 2 * kw;
    expect(raw, DType::bf16, op, "raw", raw_size);
    expect(draw, DType::bf16, op, "draw", raw_size);
    expect(k_weight, DType::bf16, op, "k_weight", kw);
    expect(k_rstd, DType::f32, op, "k_rstd", l.rows);
    expect(dk, DType::f32, op, "dk", l.rows * kw);
    if (!dv.empty()) expect(dv, DType::f32, op, "dv", l.rows * kw);
    expect(dk_weight, DType::f32, op, "dk_weight", kw);
    if (qw > 0) {
      expect(q_weight, DType::bf16, op, "q_weight", qw);
      expect(q_rstd, DType::f32, op, "q_rstd", l.rows);
      expect(dq, DType::f32, op, "dq", l.rows * qw);
      expect(dq_weight, DType::f32, op, "dq_weight", qw);
    }
    cuda::qkv_norm_rope_backward(a, raw.as<bf16>(), q_weight.as<bf16>(), k_weight.as<bf16>(),
                                 q_rstd.as<float>(), k_rstd.as<float>(), dq.as<float>(),
                                 dk.as<float>(), dv.as<float>(), draw.as<bf16>(),
                                 dq_weight.as<float>(), dk_weight.as<float>(), stream_);
  }

  void attention_forward(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                         const Tensor& depth_k, const Tensor& depth_v, const Tensor& out,
                         const Tensor& lse) override {
    const char* op = "attention_forward";
    const int64_t rows = s.batch * s.seq_len;
    const int64_t qn = rows * s.q_heads * s.head_dim, kn = rows * s.kv_heads * s.head_dim;
    expect(q, DType::bf16, op, "q", qn);
    expect(k, DType::bf16, op, "k", kn);
    expect(v, DType::bf16, op, "v", kn);
    expect(out, DType::bf16, op, "out", qn);
    expect(lse, DType::f32, op, "lse", rows * s.q_heads);
    if (s.slots > 0) {
      const int64_t slots_extent = (s.slots - 1) * s.slot_stride + kn;
      expect(depth_k, DType::bf16, op, "depth_k", slots_extent);
      expect(depth_v, DType::bf16, op, "depth_v", slots_extent);
    }
    float* ws = workspace<float>(moda::attention_forward_workspace(s));
    cuda::attention_forward(s, q.as<bf16>(), k.as<bf16>(), v.as<bf16>(), depth_k.as<bf16>(),
                            depth_v.as<bf16>(), out.as<bf16>(), lse.as<float>(), ws, stream_,
                            depth_streams());
  }

  // The operands both forms of attention's backward take.
  static void expect_backward_operands(const char* op, const AttentionShape& s, const Tensor& dout,
                                       const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& depth_k, const Tensor& depth_v,
                                       const Tensor& out, const Tensor& lse, const Tensor& dq,
                                       const Tensor& dk, const Tensor& dv) {
    const int64_t rows = s.batch * s.seq_len;
    const int64_t qn = rows * s.q_heads * s.head_dim, kn = rows * s.kv_heads * s.head_dim;
    expect(dout, DType::bf16, op, "dout", qn);
    expect(q, DType::bf16, op, "q", qn);
    expect(k, DType::bf16, op, "k", kn);
    expect(v, DType::bf16, op, "v", kn);
    expect(out, DType::bf16, op, "out", qn);
    expect(lse, DType::f32, op, "lse", rows * s.q_heads);
    expect(dq, DType::f32, op, "dq", qn);
    expect(dk, DType::f32, op, "dk", kn);
    expect(dv, DType::f32, op, "dv", kn);
    if (s.slots > 0) {
      const int64_t slots_extent = (s.slots - 1) * s.slot_stride + kn;
      expect(depth_k, DType::bf16, op, "depth_k", slots_extent);
      expect(depth_v, DType::bf16, op, "depth_v", slots_extent);
    }
  }

  void attention_backward(const AttentionShape& s, const Tensor& dout, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& depth_k,
                          const Tensor& depth_v, const Tensor& out, const Tensor& lse,
                          const Tensor& dq, const Tensor& dk, const Tensor& dv,
                          const Tensor& depth_probs, const Tensor& depth_dscores) override {
    const char* op = "attention_backward";
    expect_backward_operands(op, s, dout, q, k, v, depth_k, depth_v, out, lse, dq, dk, dv);
    if (s.slots > 0) {
      const int64_t rows = s.batch * s.seq_len;
      expect(depth_probs, DType::f32, op, "depth_probs", s.slots * rows * s.q_heads);
      expect(depth_dscores, DType::f32, op, "depth_dscores", s.slots * rows * s.q_heads);
    }
    float* ws = workspace<float>(moda::attention_backward_workspace(s));
    cuda::attention_backward(s, dout.as<bf16>(), q.as<bf16>(), k.as<bf16>(), v.as<bf16>(),
                             depth_k.as<bf16>(), depth_v.as<bf16>(), out.as<bf16>(),
                             lse.as<float>(), dq.as<float>(), dk.as<float>(), dv.as<float>(),
                             {depth_probs.as<float>(), depth_dscores.as<float>()}, ws, stream_,
                             depth_streams());
  }

  void attention_backward_sole_reader(const AttentionShape& s, const Tensor& dout, const Tensor& q,
                                      const Tensor& k, const Tensor& v, const Tensor& depth_k,
                                      const Tensor& depth_v, const Tensor& out, const Tensor& lse,
                                      const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                      const Tensor& d_depth_k, const Tensor& d_depth_v) override {
    const char* op = "attention_backward_sole_reader";
    expect_backward_operands(op, s, dout, q, k, v, depth_k, depth_v, out, lse, dq, dk, dv);
    const int64_t rows = s.batch * s.seq_len;
    if (s.slots > 0) {
      const int64_t slots_extent = (s.slots - 1) * s.slot_stride + rows * s.kv_heads * s.head_dim;
      expect(d_depth_k, DType::f32, op, "d_depth_k", slots_extent);
      expect(d_depth_v, DType::f32, op, "d_depth_v", slots_extent);
    }
    // delta, then the probabilities and score gradients of the kernels that leave them
    // (attention_backward forms the slots' gradients from them there), 16-byte aligned.
    const int64_t base = (moda::attention_backward_workspace(s) + 3) / 4 * 4;
    const int64_t stats = (s.slots * rows * s.q_heads + 3) / 4 * 4;
    float* ws = workspace<float>(base + 2 * stats);
    cuda::attention_backward(
        s, dout.as<bf16>(), q.as<bf16>(), k.as<bf16>(), v.as<bf16>(), depth_k.as<bf16>(),
        depth_v.as<bf16>(), out.as<bf16>(), lse.as<float>(), dq.as<float>(), dk.as<float>(),
        dv.as<float>(),
        {ws + base, ws + base + stats, s.slots > 0 ? d_depth_k.as<float>() : nullptr,
         s.slots > 0 ? d_depth_v.as<float>() : nullptr},
        ws, stream_, depth_streams());
  }

  void depth_slot_backward(const AttentionShape& s, int64_t first, int64_t count,
                           std::span<const DepthReader> readers, const Tensor& d_depth_k,
                           const Tensor& d_depth_v, bool accumulate,
                           const SlotValueGradient& last_dv) override {
    const char* op = "depth_slot_backward";
    const int64_t rows = s.batch * s.seq_len;
    const int64_t qn = rows * s.q_heads * s.head_dim, kn = rows * s.kv_heads * s.head_dim;
    if (first < 0 || count < 0) throw std::invalid_argument("depth_slot_backward: negative slot");
    if (count == 0) return;
    const int64_t extent = (count - 1) * s.slot_stride + kn;
    expect(d_depth_k, DType::f32, op, "d_depth_k", extent);
    expect(d_depth_v, DType::f32, op, "d_depth_v", extent);
    std::vector<cuda::DepthReaderPtrs> ptrs;
    for (const DepthReader& r : readers) {
      if (r.slots < first + count) {
        throw std::invalid_argument(
            "depth_slot_backward: a reader reads fewer slots than asked for");
      }
      expect(r.q, DType::bf16, op, "q", qn);
      expect(r.dout, DType::bf16, op, "dout", qn);
      expect(r.probs, DType::f32, op, "probs", r.slots * rows * s.q_heads);
      expect(r.dscores, DType::f32, op, "dscores", r.slots * rows * s.q_heads);
      ptrs.push_back(
          {r.q.as<bf16>(), r.dout.as<bf16>(), r.probs.as<float>(), r.dscores.as<float>(), r.slots});
    }
    const int64_t width = s.kv_heads * s.head_dim;
    if (!last_dv.rows.empty()) {
      if (last_dv.ld < width) {
        throw std::logic_error(cuda::concat("cuda backend: ", op, ": last_dv.ld ", last_dv.ld,
                                            " is below a row's ", width, " values"));
      }
      expect(last_dv.rows, DType::bf16, op, "last_dv", (rows - 1) * last_dv.ld + width);
    }
    cuda::depth_slot_backward(s, first, count, ptrs, d_depth_k.as<float>(), d_depth_v.as<float>(),
                              accumulate, stream_, last_dv.rows.as<bf16>(), last_dv.ld);
  }

  void swiglu_forward(const Tensor& in, const Tensor& out, int64_t rows, int64_t hidden,
                      int64_t ld) override {
    const char* op = "swiglu_forward";
    if (rows == 0) return;
    expect(in, DType::bf16, op, "in", (rows - 1) * ld + 2 * hidden);
    expect(out, DType::bf16, op, "out", rows * hidden);
    cuda::swiglu_forward(in.as<bf16>(), out.as<bf16>(), rows, hidden, ld, stream_);
  }

  void swiglu_backward(const Tensor& dout, const Tensor& in, const Tensor& din, int64_t rows,
                       int64_t hidden, int64_t ld) override {
    const char* op = "swiglu_backward";
    if (rows == 0) return;
    expect(dout, DType::bf16, op, "dout", rows * hidden);
    expect(in, DType::bf16, op, "in", (rows - 1) * ld + 2 * hidden);
    expect(din, DType::bf16, op, "din", (rows - 1) * ld + 2 * hidden);
    cuda::swiglu_backward(dout.as<bf16>(), in.as<bf16>(), din.as<bf16>(), rows, hidden, ld,
                          stream_);
  }

  void lm_head_cross_entropy(const Tensor& x, const Tensor& weight, const Tensor& targets,
                             const Tensor& ce, const Tensor& lse, const Tensor& dx,
                             const Tensor& dweight, int64_t rows, int64_t dim, int64_t vocab,
                             double z_loss, double scale) override {
    const char* op = "lm_head_cross_entropy";
    expect(x, DType::bf16, op, "x", rows * dim);
    expect(weight, DType::bf16, op, "weight", vocab * dim);
    expect(targets, DType::i32, op, "targets", rows);
    expect(ce, DType::f32, op, "ce", rows);
    expect(lse, DType::f32, op, "lse", rows);
    if (!dx.empty()) {
      expect(dx, DType::bf16, op, "dx", rows * dim);
      expect(dweight, DType::f32, op, "dweight", vocab * dim);
    }
    if (rows == 0) return;
    const int64_t chunk = moda::lm_head_chunk_rows(rows, vocab, options_.lm_head_workspace_bytes);
    void* ws = workspace<char>(static_cast<int64_t>(moda::lm_head_workspace_bytes(chunk, vocab)));
    cuda::lm_head_cross_entropy(
        *gemm_, x.as<bf16>(), weight.as<bf16>(), targets.as<int32_t>(), ce.as<float>(),
        lse.as<float>(), dx.empty() ? nullptr : dx.as<bf16>(),
        dx.empty() ? nullptr : dweight.as<float>(), rows, dim, vocab, static_cast<float>(z_loss),
        static_cast<float>(scale), chunk, ws, stream_);
  }

  void lm_head_logits(const Tensor& x, const Tensor& weight, const Tensor& logits, int64_t rows,
                      int64_t dim, int64_t vocab) override {
    const char* op = "lm_head_logits";
    expect(x, DType::bf16, op, "x", rows * dim);
    expect(weight, DType::bf16, op, "weight", vocab * dim);
    expect(logits, DType::f32, op, "logits", rows * vocab);
    if (rows == 0) return;
    gemm_->linear(logits.data, CUDA_R_32F, x.as<bf16>(), weight.as<bf16>(), rows, vocab, dim,
                  false);
  }

  std::vector<double> segment_sum_squares(
      const Tensor& values, std::span<const std::pair<int64_t, int64_t>> segments) override {
    const char* op = "segment_sum_squares";
    int64_t extent = 0;
    for (const auto& [offset, count] : segments) extent = std::max(extent, offset + count);
    expect(values, DType::f32, op, "values", extent);
    void* ws =
        workspace<char>(static_cast<int64_t>(moda::segment_sum_squares_workspace(segments.size())));
    return cuda::segment_sum_squares(values.as<float>(), segments, ws, stream_);
  }

  void adamw(const Tensor& master, const Tensor& grad, const Tensor& m, const Tensor& v,
             const Tensor& weights, int64_t offset, int64_t count, const AdamWArgs& args) override {
    const char* op = "adamw";
    const int64_t extent = offset + count;
    expect(master, DType::f32, op, "master", extent);
    expect(grad, DType::f32, op, "grad", extent);
    expect(m, DType::f32, op, "m", extent);
    expect(v, DType::f32, op, "v", extent);
    if (!weights.empty()) expect(weights, DType::bf16, op, "weights", extent);
    cuda::adamw(master.as<float>() + offset, grad.as<float>() + offset, m.as<float>() + offset,
                v.as<float>() + offset, weights.empty() ? nullptr : weights.as<bf16>() + offset,
                count, args, stream_);
  }

 private:
  static size_t bytes_of(const Tensor& t) {
    return static_cast<size_t>(t.numel) * dtype_size(t.dtype);
  }

  static cudaDataType_t cuda_type(DType d) { return d == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F; }

  // Throws unless `t` is non-empty, of dtype `d` and (when given) holds at least `min_numel`.
  static void expect(const Tensor& t, DType d, const char* op, const char* name,
                     int64_t min_numel = 0) {
    if (t.data == nullptr) {
      throw std::logic_error(cuda::concat("cuda backend: ", op, ": ", name, " is empty"));
    }
    if (t.dtype != d) {
      throw std::logic_error(cuda::concat("cuda backend: ", op, ": ", name, " is ",
                                          to_string(t.dtype), ", expected ", to_string(d)));
    }
    if (t.numel < min_numel) {
      throw std::logic_error(cuda::concat("cuda backend: ", op, ": ", name, " has ", t.numel,
                                          " elements, needs ", min_numel));
    }
  }

  // Outputs of GEMMs may be bf16 (activations) or fp32 (accumulators, logits).
  static void expect_float(const Tensor& t, const char* op, const char* name, int64_t min_numel) {
    expect(t, t.dtype == DType::f32 ? DType::f32 : DType::bf16, op, name, min_numel);
  }

  static void check_host_size(const Tensor& t, size_t n, const char* op) {
    if (static_cast<int64_t>(n) > t.numel) {
      throw std::logic_error(
          cuda::concat("cuda backend: ", op, " of ", n, " values into a tensor of ", t.numel));
    }
  }

  cuda::QkvArgs qkv_args(const QkvLayout& l, const char* op) const {
    if (rope_cos_ == nullptr || l.seq_len > rope_len_ || l.head_dim / 2 != rope_half_) {
      throw std::logic_error(cuda::concat("cuda backend: ", op,
                                          ": RoPE table not initialised for seq_len ", l.seq_len,
                                          " and head_dim ", l.head_dim));
    }
    return {l.rows,    l.seq_len,  l.ld,       l.col0,
            l.q_heads, l.kv_heads, l.head_dim, static_cast<float>(l.eps),
            rope_cos_, rope_sin_};
  }

  template <class T>
  void put(const Tensor& dst, const std::vector<T>& v) {
    MODA_CUDA_CHECK(
        cudaMemcpyAsync(dst.data, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice, stream_));
    // The host vector dies on return: wait for the copy.
    MODA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  template <class T>
  std::vector<T> get(const Tensor& src, size_t n) {
    std::vector<T> v(n);
    MODA_CUDA_CHECK(
        cudaMemcpyAsync(v.data(), src.data, n * sizeof(T), cudaMemcpyDeviceToHost, stream_));
    MODA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return v;
  }

  // Scratch of at least `n` elements of T, valid until the next call.
  template <class T>
  T* workspace(int64_t n) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T);
    if (bytes > workspace_bytes_) {
      // Kernels still queued may read the old buffer.
      synchronize();
      MODA_CUDA_CHECK(cudaFree(workspace_));
      counter_.remove(workspace_bytes_);
      workspace_ = nullptr;
      workspace_bytes_ = 0;
      MODA_CUDA_CHECK(cudaMalloc(&workspace_, bytes));
      workspace_bytes_ = bytes;
      counter_.add(bytes);
    }
    return static_cast<T*>(workspace_);
  }

  cuda::DepthStreams depth_streams() const {
    return {*side_, *priority_side_, options_.depth_forward, options_.depth_backward,
            props_.multiProcessorCount};
  }

  CudaBackendOptions options_;
  int device_ = 0;
  cudaDeviceProp props_{};
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::SideStream> side_;           // attention_backward's depth part (d 128)
  std::unique_ptr<cuda::SideStream> priority_side_;  // and beside the sequence kernel (d 64)
  cuda::AllocationCounter counter_;                  // before gemm_, which counts into it
  std::unique_ptr<cuda::Gemm> gemm_;
  std::unordered_map<void*, size_t> allocations_;  // bytes of each alloc()
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  float* rope_cos_ = nullptr;
  float* rope_sin_ = nullptr;
  size_t rope_bytes_ = 0;  // of each table
  int64_t rope_len_ = 0, rope_half_ = 0;
};

}  // namespace

namespace cuda {

void convert(const void* src, DType src_type, void* dst, DType dst_type, int64_t n,
             cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int blocks = elementwise_grid(n, kThreads);
  if (src_type == DType::f32 && dst_type == DType::bf16) {
    convert_kernel_f32_bf16<<<blocks, kThreads, 0, stream>>>(static_cast<const float*>(src),
                                                             static_cast<bf16*>(dst), n);
  } else if (src_type == DType::bf16 && dst_type == DType::f32) {
    convert_kernel_bf16_f32<<<blocks, kThreads, 0, stream>>>(static_cast<const bf16*>(src),
                                                             static_cast<float*>(dst), n);
  } else {
    throw std::logic_error("cuda backend: no conversion from " + to_string(src_type) + " to " +
                           to_string(dst_type));
  }
  MODA_LAUNCH_CHECK();
}

}  // namespace cuda

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the error so later calls do not see it
    return 0;
  }
  return n;
}

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options) {
  if (cuda_device_count() == 0) throw std::runtime_error("cuda backend: no CUDA device visible");
  return std::make_unique<CudaBackend>(options);
}

}  // namespace moda
