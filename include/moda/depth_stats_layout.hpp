// Where a depth slot's probability and score gradient live in the arrays that attention_backward
// writes and depth_slot_backward reads (Backend, moda/backend.hpp).
//
// A reader of S slots over `units` (row, KV head) pairs (unit = row Hk + KV head) with G query
// heads per KV head keeps S units G values. The slots are cut into chunks of kDepthStatsChunk
// (the last one shorter); within a chunk each unit's values of its slots and heads are adjacent:
//   [chunk][unit][slot within the chunk][query head of the group]
// Chunks of 2 hold the two slots a MoDA layer with FFN KV writes: depth_slot_backward, which
// forms the slots of a pair of producing layers, reads just their values, in one stream over the
// units, and the CUDA backward writes 16-byte pieces (G = 2) where the slot-major layout before
// ([slot][unit][head]) took scattered 8-byte ones. Chunks of 16 (the backward's MMA tile: whole
// 128-byte lines written) made the slot gradients slower by more than the backward gained
// (docs/kernels/moda_attention.md, "Depth statistics by chunks of slots").
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MODA_HOST_DEVICE __host__ __device__
#else
#define MODA_HOST_DEVICE
#endif

namespace moda {

inline constexpr int64_t kDepthStatsChunk = 2;

// Index of slot j's value for query head g of `unit` (g < group_size), for a reader of `slots`
// slots.
MODA_HOST_DEVICE constexpr int64_t depth_stats_index(int64_t slots, int64_t units,
                                                     int64_t group_size, int64_t j, int64_t unit,
                                                     int64_t g) {
  const int64_t chunk0 = j / kDepthStatsChunk * kDepthStatsChunk;
  const int64_t width = slots - chunk0 < kDepthStatsChunk ? slots - chunk0 : kDepthStatsChunk;
  return ((chunk0 * units + unit * width) + (j - chunk0)) * group_size + g;
}

}  // namespace moda

#undef MODA_HOST_DEVICE
