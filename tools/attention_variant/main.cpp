// A stand-alone timer of one build of the attention kernels (scripts/build_attention_variant.sh):
// cuda_time_attention at each shape given as B,T,Hq,Hk,d,S, medians of 20 forward+backward
// rounds; a shape with a seventh number R times instead depth_slot_backward forming two slots'
// gradients from R readers of S slots each (cuda_time_depth_slot_gradients). A shape may end in
// ":tail" or ":beside" to place the backward's depth part so (DepthBackwardPlacement; automatic
// otherwise), in ":fwd-inside", ":fwd-after" or ":fwd-beside" for the forward's
// (DepthForwardPlacement), and in ":pulled" to form the slot gradients after the backward
// (SlotGradientTiming; in it otherwise), e.g. 1,4096,64,8,64,64:beside:fwd-after:pulled. Small
// enough (1 MB) that several variants travel to the GPU machine in one call.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <string>

#include "moda/cuda_backend.hpp"

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    long long v[7];
    const int n = std::sscanf(argv[i], "%lld,%lld,%lld,%lld,%lld,%lld,%lld", &v[0], &v[1], &v[2],
                              &v[3], &v[4], &v[5], &v[6]);
    if (n != 6 && n != 7) {
      std::fprintf(stderr, "attention_variant: '%s' is not B,T,Hq,Hk,d,S[,R]\n", argv[i]);
      return 2;
    }
    moda::AttentionShape shape;
    shape.batch = v[0];
    shape.seq_len = v[1];
    shape.q_heads = v[2];
    shape.kv_heads = v[3];
    shape.head_dim = v[4];
    shape.slots = v[5];
    if (n == 7) {
      const double ms = moda::cuda_time_depth_slot_gradients(shape, static_cast<int>(v[6]), 20);
      std::printf("%-22s slot gradients %.3f\n", argv[i], ms);
      continue;
    }
    auto placement = moda::DepthBackwardPlacement::automatic;
    auto forward = moda::DepthForwardPlacement::automatic;
    auto slot_gradients = moda::SlotGradientTiming::sole_reader;
    for (const char* suffix = std::strchr(argv[i], ':'); suffix != nullptr;
         suffix = std::strchr(suffix + 1, ':')) {
      const char* end = std::strchr(suffix + 1, ':');
      const std::string name(suffix + 1, end == nullptr ? std::strlen(suffix + 1)
                                                        : static_cast<size_t>(end - suffix - 1));
      const auto* backward = std::find_if(std::begin(moda::kDepthBackwardPlacements),
                                          std::end(moda::kDepthBackwardPlacements),
                                          [&](const auto& p) { return name == p.name; });
      const auto* fwd = std::find_if(
          std::begin(moda::kDepthForwardPlacements), std::end(moda::kDepthForwardPlacements),
          [&](const auto& p) { return name == std::string("fwd-") + p.name; });
      const auto* slot_timing =
          std::find_if(std::begin(moda::kSlotGradientTimings), std::end(moda::kSlotGradientTimings),
                       [&](const auto& p) { return name == p.name; });
      if (backward != std::end(moda::kDepthBackwardPlacements)) {
        placement = backward->placement;
      } else if (fwd != std::end(moda::kDepthForwardPlacements)) {
        forward = fwd->placement;
      } else if (slot_timing != std::end(moda::kSlotGradientTimings)) {
        slot_gradients = slot_timing->placement;
      } else {
        std::fprintf(stderr,
                     "attention_variant: '%s': ':%s' is none of :automatic :tail :beside "
                     ":fwd-automatic :fwd-inside :fwd-after :fwd-beside :sole-reader :pulled\n",
                     argv[i], name.c_str());
        return 2;
      }
    }
    const moda::AttentionTiming t =
        moda::cuda_time_attention(shape, 20, placement, forward, slot_gradients);
    std::printf("%-22s fwd %.3f bwd %.3f (slots %.3f) total %.3f\n", argv[i], t.forward_ms,
                t.backward_ms, t.slot_gradients_ms, t.total_ms);
  }
  return 0;
}
