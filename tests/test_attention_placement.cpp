// Where attention's backward places its depth part at head size 64
// (attention_depth_backward_beside, moda/cuda_backend.hpp): the choices the H200 measurements of
// docs/kernels/moda_attention.md
// ("The backward's depth part beside the sequence kernel on every SM") set, checked on the CPU.
#include <catch2/catch.hpp>

#include "moda/cuda_backend.hpp"

using namespace moda;

TEST_CASE(
    "attention backward: automatic placement puts the depth part beside where it measured faster") {
  using P = DepthBackwardPlacement;
  // Beside measured faster than the tail at every 700M layer (S 1 to 72) and at G = 8.
  for (int64_t slots : {1, 2, 4, 8, 36, 72}) {
    INFO("S = " << slots);
    CHECK(attention_depth_backward_beside({4, 4096, 16, 8, 64, slots, 0}, P::automatic));
  }
  CHECK(attention_depth_backward_beside({1, 4096, 64, 8, 64, 64, 0}, P::automatic));
  // Table 6's T = 1024: beside faster at S 4, equal at S 47, slower at S 94.
  CHECK(attention_depth_backward_beside({64, 1024, 6, 2, 64, 4, 0}, P::automatic));
  CHECK(attention_depth_backward_beside({64, 1024, 6, 2, 64, 47, 0}, P::automatic));
  CHECK_FALSE(attention_depth_backward_beside({64, 1024, 6, 2, 64, 94, 0}, P::automatic));
  // Without slots there is no depth part to place.
  CHECK_FALSE(attention_depth_backward_beside({4, 4096, 16, 8, 64, 0, 0}, P::automatic));
}

TEST_CASE("attention backward: a placement asked for is kept") {
  using P = DepthBackwardPlacement;
  CHECK_FALSE(attention_depth_backward_beside({4, 4096, 16, 8, 64, 36, 0}, P::tail));
  CHECK(attention_depth_backward_beside({64, 1024, 6, 2, 64, 94, 0}, P::beside));
  CHECK(attention_depth_backward_beside({2, 33, 4, 2, 64, 3, 0}, P::beside));
  CHECK_FALSE(attention_depth_backward_beside({4, 4096, 16, 8, 64, 0, 0}, P::beside));
}
