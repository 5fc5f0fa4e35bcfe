// Timing of the MoDA attention kernels on synthetic operands (`moda bench attention`): CUDA
// events around each call, medians over repetitions. The backward includes the gradients of all S
// slots with this one layer as their only reader, the whole of one layer's work: formed in the
// backward itself (the sole reader's form) or pulled after it by depth_slot_backward, as the
// model forms the gradients of slots that many layers read.
// Operands are filled on the device with hashed pseudo-random values, so multi-gigabyte depth
// buffers cost no host time.
#include <algorithm>
#include <memory>
#include <vector>

#include "event_timing.cuh"
#include "moda/cuda_backend.hpp"
#include "ops.cuh"
#include "random_operands.cuh"

namespace moda {

using cuda::bf16;
using cuda::DeviceBuffer;

using cuda::median;

AttentionTiming cuda_time_attention(const AttentionShape& shape, int reps,
                                    DepthBackwardPlacement placement, DepthForwardPlacement forward,
                                    SlotGradientTiming slot_gradients) {
  if (reps < 1) throw std::invalid_argument("cuda_time_attention: reps must be at least 1");
  const int64_t rows = shape.batch * shape.seq_len;
  const int64_t qn = rows * shape.q_heads * shape.head_dim;
  const int64_t kn = rows * shape.kv_heads * shape.head_dim;
  AttentionShape s = shape;
  s.slot_stride = kn;  // slot-major, no gaps: the model's layout
  const int64_t depth_n = s.slots * kn;
  DeviceBuffer q(qn * 2), k(kn * 2), v(kn * 2), out(qn * 2), dout(qn * 2);
  DeviceBuffer lse(rows * shape.q_heads * 4);
  DeviceBuffer dq(qn * 4), dk(kn * 4), dv(kn * 4);
  DeviceBuffer depth_k(depth_n * 2), depth_v(depth_n * 2), d_depth_k(depth_n * 4),
      d_depth_v(depth_n * 4);
  DeviceBuffer probs(s.slots * rows * s.q_heads * 4), dscores(s.slots * rows * s.q_heads * 4);
  const cuda::DepthReaderPtrs reader{q.as<bf16>(), dout.as<bf16>(), probs.as<float>(),
                                     dscores.as<float>(), s.slots};
  const bool pulled = slot_gradients == SlotGradientTiming::pulled;
  const cuda::DepthBackwardOut slot_out{probs.as<float>(), dscores.as<float>(),
                                        pulled ? nullptr : d_depth_k.as<float>(),
                                        pulled ? nullptr : d_depth_v.as<float>()};
  const int64_t work =
      std::max(moda::attention_forward_workspace(s), moda::attention_backward_workspace(s));
  DeviceBuffer workspace(std::max<int64_t>(work, 1) * 4);
  cudaStream_t stream = nullptr;
  MODA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  // As the backend runs attention.
  const cuda::SideStream streaming, priority(true);
  const int sm_count = cuda::sm_count();
  uint32_t seed = 1;
  for (const auto& [buf, n] : {std::pair{&q, qn},
                               {&k, kn},
                               {&v, kn},
                               {&dout, qn},
                               {&depth_k, depth_n},
                               {&depth_v, depth_n}}) {
    cuda::fill_random_bf16(buf->as<bf16>(), n, seed++, stream);
  }
  cudaEvent_t start = nullptr, mid = nullptr, slots = nullptr, stop = nullptr;
  for (cudaEvent_t* e : {&start, &mid, &slots, &stop}) MODA_CUDA_CHECK(cudaEventCreate(e));
  std::vector<float> fwd, bwd, slot_grads;
  for (int i = 0; i <= reps; ++i) {  // the first round warms up and is not counted
    MODA_CUDA_CHECK(cudaEventRecord(start, stream));
    cuda::attention_forward(s, q.as<bf16>(), k.as<bf16>(), v.as<bf16>(), depth_k.as<bf16>(),
                            depth_v.as<bf16>(), out.as<bf16>(), lse.as<float>(),
                            workspace.as<float>(), stream,
                            {streaming, priority, forward, placement, sm_count});
    MODA_CUDA_CHECK(cudaEventRecord(mid, stream));
    cuda::attention_backward(s, dout.as<bf16>(), q.as<bf16>(), k.as<bf16>(), v.as<bf16>(),
                             depth_k.as<bf16>(), depth_v.as<bf16>(), out.as<bf16>(),
                             lse.as<float>(), dq.as<float>(), dk.as<float>(), dv.as<float>(),
                             slot_out, workspace.as<float>(), stream,
                             {streaming, priority, forward, placement, sm_count});
    MODA_CUDA_CHECK(cudaEventRecord(slots, stream));
    if (pulled) {
      cuda::depth_slot_backward(s, 0, s.slots, {&reader, 1}, d_depth_k.as<float>(),
                                d_depth_v.as<float>(), false, stream);
    }
    MODA_CUDA_CHECK(cudaEventRecord(stop, stream));
    MODA_CUDA_CHECK(cudaEventSynchronize(stop));
    float f = 0, b = 0, g = 0;
    MODA_CUDA_CHECK(cudaEventElapsedTime(&f, start, mid));
    MODA_CUDA_CHECK(cudaEventElapsedTime(&b, mid, stop));
    MODA_CUDA_CHECK(cudaEventElapsedTime(&g, slots, stop));
    if (i > 0) {
      fwd.push_back(f);
      bwd.push_back(b);
      slot_grads.push_back(pulled ? g : 0.0f);
    }
  }
  for (cudaEvent_t e : {start, mid, slots, stop}) cudaEventDestroy(e);
  cudaStreamDestroy(stream);
  std::vector<float> total(fwd.size());
  for (size_t i = 0; i < fwd.size(); ++i) total[i] = fwd[i] + bwd[i];
  return {median(fwd), median(bwd), median(slot_grads), median(total)};
}

double cuda_time_depth_slot_gradients(const AttentionShape& shape, int readers, int reps) {
  if (reps < 1 || readers < 0 || shape.slots < 2) {
    throw std::invalid_argument(
        "cuda_time_depth_slot_gradients: reps >= 1, readers >= 0 and slots >= 2 are required");
  }
  const int64_t rows = shape.batch * shape.seq_len;
  const int64_t qn = rows * shape.q_heads * shape.head_dim;
  const int64_t kn = rows * shape.kv_heads * shape.head_dim;
  const int64_t pn = shape.slots * rows * shape.q_heads;
  AttentionShape s = shape;
  s.slot_stride = kn;
  cudaStream_t stream = nullptr;
  MODA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  // bf16 operands are filled as bf16; the fp32 probabilities and score gradients as pairs of
  // bf16 bit patterns, which are finite floats of modest size.
  std::vector<std::unique_ptr<DeviceBuffer>> owned;
  std::vector<cuda::DepthReaderPtrs> table;
  uint32_t seed = 1;
  for (int i = 0; i < readers; ++i) {
    for (int64_t n : {qn * 2, qn * 2, pn * 4, pn * 4}) {
      owned.push_back(cuda::random_buffer(static_cast<size_t>(n), seed++, stream));
    }
    const size_t at = owned.size() - 4;
    table.push_back({owned[at]->as<bf16>(), owned[at + 1]->as<bf16>(), owned[at + 2]->as<float>(),
                     owned[at + 3]->as<float>(), shape.slots});
  }
  DeviceBuffer d_depth_k(2 * kn * 4), d_depth_v(2 * kn * 4);
  const auto pull = [&] {
    cuda::depth_slot_backward(s, 0, 2, table, d_depth_k.as<float>(), d_depth_v.as<float>(), false,
                              stream);
  };
  pull();  // warm-up, not counted
  const double ms = cuda::median_event_ms(stream, reps, pull);
  cudaStreamDestroy(stream);
  return ms;
}

}  // namespace moda
