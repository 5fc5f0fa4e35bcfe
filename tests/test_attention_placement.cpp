// Where attention places its depth parts at head size 64 (attention_depth_backward_beside,
// attention_depth_forward_after; moda/cuda_backend.hpp): the choices the H200 and H100 measurements
// of docs/kernels/moda_attention.md ("The backward's depth part beside the sequence kernel on every
// SM", "The forward's depth part per token after the sequence kernel") set, checked on the CPU.
#include <catch2/catch.hpp>

#include "moda/cuda_backend.hpp"

using namespace moda;

namespace {
bool beside(const AttentionShape& s, DepthBackwardPlacement placement, bool slot_gradients,
            const BesideBounds& bounds = kBesideBoundsH200) {
  return attention_depth_backward_beside(s, placement, slot_gradients, bounds);
}
}  // namespace

TEST_CASE("attention backward: the device's memory bandwidth picks the measured bounds") {
  // The two devices' depth bounds are equal, so sole_reader alone tells which bounds came back.
  CHECK(beside_bounds(2.04).sole_reader == kBesideBoundsH100.sole_reader);   // H100 PCIe
  CHECK(beside_bounds(3.352).sole_reader == kBesideBoundsH100.sole_reader);  // H100 SXM
  CHECK(beside_bounds(3.99).sole_reader == kBesideBoundsH100.sole_reader);   // below the split
  CHECK(beside_bounds(4.01).sole_reader == kBesideBoundsH200.sole_reader);   // above the split
  CHECK(beside_bounds(4.8).sole_reader == kBesideBoundsH200.sole_reader);    // H200
  // A slower depth part loses beside sooner where it writes the slot gradients.
  CHECK(kBesideBoundsH100.sole_reader < kBesideBoundsH200.sole_reader);
}

TEST_CASE(
    "attention backward: automatic placement puts the depth part beside where it measured faster") {
  using P = DepthBackwardPlacement;
  // H200: beside measured faster than the tail at every 700M layer (S 1 to 72) and at G = 8.
  for (int64_t slots : {1, 2, 4, 8, 36, 72}) {
    INFO("S = " << slots);
    CHECK(beside({4, 4096, 16, 8, 64, slots, 0}, P::automatic, false));
  }
  CHECK(beside({1, 4096, 64, 8, 64, 64, 0}, P::automatic, false));
  // Table 6's T = 1024: beside faster at S 4, equal at S 47, slower at S 94.
  CHECK(beside({64, 1024, 6, 2, 64, 4, 0}, P::automatic, false));
  CHECK(beside({64, 1024, 6, 2, 64, 47, 0}, P::automatic, false));
  CHECK_FALSE(beside({64, 1024, 6, 2, 64, 94, 0}, P::automatic, false));
  // Without slots there is no depth part to place.
  CHECK_FALSE(beside({4, 4096, 16, 8, 64, 0, 0}, P::automatic, false));
}

TEST_CASE(
    "attention backward: on the H100 a sole reader's depth part goes to the tail from a smaller "
    "share, the model's keeps the H200's bound") {
  using P = DepthBackwardPlacement;
  const BesideBounds& h100 = kBesideBoundsH100;
  // The sole reader: beside faster at S 8 and at G = 8's (1, 4096, 64, 8) S 64, equal at S 24,
  // the tail faster at S 36 and 72 and at (1, 4096, 32, 8) S 64.
  CHECK(beside({4, 4096, 16, 8, 64, 8, 0}, P::automatic, true, h100));
  CHECK(beside({4, 4096, 16, 8, 64, 24, 0}, P::automatic, true, h100));
  CHECK(beside({1, 4096, 64, 8, 64, 64, 0}, P::automatic, true, h100));
  CHECK_FALSE(beside({4, 4096, 16, 8, 64, 36, 0}, P::automatic, true, h100));
  CHECK_FALSE(beside({4, 4096, 16, 8, 64, 72, 0}, P::automatic, true, h100));
  CHECK_FALSE(beside({1, 4096, 32, 8, 64, 64, 0}, P::automatic, true, h100));
  // MoDA-700M end to end was faster with every layer beside (S up to 70) than with the tail from
  // S 40 on, which the variant timer had measured faster.
  for (int64_t slots : {1, 8, 36, 44, 72}) {
    INFO("S = " << slots);
    CHECK(beside({4, 4096, 16, 8, 64, slots, 0}, P::automatic, false, h100));
  }
}

TEST_CASE(
    "attention backward: a sole reader's depth part, which writes the slot gradients, goes to the "
    "tail from a smaller depth share on") {
  using P = DepthBackwardPlacement;
  // H200: beside measured faster, or equal at S 72, at every 700M layer and at G = 8 and T = 16K.
  for (int64_t slots : {1, 8, 36, 72}) {
    INFO("S = " << slots);
    CHECK(beside({4, 4096, 16, 8, 64, slots, 0}, P::automatic, true));
  }
  CHECK(beside({1, 16384, 64, 8, 64, 64, 0}, P::automatic, true));
  // Table 6's T = 1024: beside faster at S 16, the tail faster by 6% at S 36 and 9% at S 47,
  // where the slots' pulled form keeps beside.
  CHECK(beside({64, 1024, 6, 2, 64, 16, 0}, P::automatic, true));
  CHECK_FALSE(beside({64, 1024, 6, 2, 64, 36, 0}, P::automatic, true));
  CHECK_FALSE(beside({64, 1024, 6, 2, 64, 47, 0}, P::automatic, true));
  CHECK(beside({64, 1024, 6, 2, 64, 47, 0}, P::automatic, false));
  CHECK(beside({64, 1024, 6, 2, 64, 47, 0}, P::beside, true));
}

TEST_CASE("attention backward: a placement asked for is kept") {
  using P = DepthBackwardPlacement;
  for (const BesideBounds& bounds : {kBesideBoundsH100, kBesideBoundsH200}) {
    CHECK_FALSE(beside({4, 4096, 16, 8, 64, 36, 0}, P::tail, false, bounds));
    CHECK(beside({64, 1024, 6, 2, 64, 94, 0}, P::beside, false, bounds));
    CHECK(beside({2, 33, 4, 2, 64, 3, 0}, P::beside, false, bounds));
    CHECK_FALSE(beside({4, 4096, 16, 8, 64, 0, 0}, P::beside, false, bounds));
  }
}

// The forward's depth part (attention_depth_forward_after): after the sequence kernel, per token,
// at head size 64 from 3 heads per KV head on (Table 6's G = 3, the paper's G = 8), at 128 from
// 4, and G <= 8 (the MMA's N) only; the 700M (d 64) and 1.5B (d 128) shapes' G = 2 keep the fused
// forward and the streaming pass.
TEST_CASE("attention forward: automatic placement takes the depth part after at large groups") {
  using P = DepthForwardPlacement;
  CHECK(attention_depth_forward_after({1, 4096, 64, 8, 64, 64, 0}, P::automatic));
  CHECK(attention_depth_forward_after({1, 16384, 32, 8, 64, 64, 0}, P::automatic));
  CHECK(attention_depth_forward_after({64, 1024, 6, 2, 64, 47, 0}, P::automatic));
  CHECK_FALSE(attention_depth_forward_after({4, 4096, 16, 8, 64, 72, 0}, P::automatic));
  CHECK_FALSE(attention_depth_forward_after({4, 4096, 16, 8, 64, 1, 0}, P::automatic));
  CHECK(attention_depth_forward_after({1, 4096, 64, 8, 128, 64, 0}, P::automatic));
  CHECK(attention_depth_forward_after({2, 4096, 32, 8, 128, 32, 0}, P::automatic));
  CHECK_FALSE(attention_depth_forward_after({2, 4096, 24, 8, 128, 32, 0}, P::automatic));
  CHECK_FALSE(attention_depth_forward_after({2, 4096, 16, 8, 128, 30, 0}, P::automatic));
  // Other head sizes, more than 8 heads per KV head and S = 0 have no such kernel.
  CHECK_FALSE(attention_depth_forward_after({2, 4096, 32, 8, 96, 32, 0}, P::automatic));
  CHECK_FALSE(attention_depth_forward_after({1, 4096, 128, 8, 64, 64, 0}, P::automatic));
  CHECK_FALSE(attention_depth_forward_after({1, 4096, 64, 8, 64, 0, 0}, P::automatic));
}

// Beside the sequence kernel (attention_depth_forward_beside): where the per-token forward runs
// at head size 64 and T >= 4096 (the paper's shapes, measured faster); Table 6's T = 1024 model
// measured slower with it and keeps after; at 128 it stays after.
TEST_CASE("attention forward: automatic placement takes the per-token depth part beside at 64") {
  using P = DepthForwardPlacement;
  CHECK(attention_depth_forward_beside({1, 4096, 64, 8, 64, 64, 0}, P::automatic));
  CHECK(attention_depth_forward_beside({1, 16384, 64, 8, 64, 64, 0}, P::automatic));
  CHECK(attention_depth_forward_beside({1, 16384, 32, 8, 64, 64, 0}, P::automatic));
  CHECK_FALSE(attention_depth_forward_beside({64, 1024, 6, 2, 64, 47, 0}, P::automatic));
  CHECK_FALSE(attention_depth_forward_beside({64, 1024, 6, 2, 64, 94, 0}, P::automatic));
  CHECK(attention_depth_forward_beside({64, 1024, 6, 2, 64, 47, 0}, P::beside));
  CHECK_FALSE(attention_depth_forward_beside({4, 4096, 16, 8, 64, 72, 0}, P::automatic));
  CHECK_FALSE(attention_depth_forward_beside({1, 4096, 64, 8, 128, 64, 0}, P::automatic));
  CHECK_FALSE(attention_depth_forward_beside({1, 4096, 64, 8, 64, 64, 0}, P::after));
  CHECK_FALSE(attention_depth_forward_beside({1, 4096, 64, 8, 64, 64, 0}, P::inside));
  CHECK(attention_depth_forward_beside({4, 4096, 16, 8, 64, 36, 0}, P::beside));
  CHECK_FALSE(attention_depth_forward_beside({2, 4096, 16, 8, 128, 32, 0}, P::beside));
  CHECK_FALSE(attention_depth_forward_beside({1, 4096, 64, 8, 64, 0, 0}, P::beside));
  // Beside is a form of the per-token kernel: asking for it asks for that kernel.
  CHECK(attention_depth_forward_after({4, 4096, 16, 8, 64, 36, 0}, P::beside));
  CHECK(attention_depth_forward_after({2, 4096, 16, 8, 128, 32, 0}, P::beside));
}

TEST_CASE("attention forward: a placement asked for is kept where the kernels take it") {
  using P = DepthForwardPlacement;
  CHECK_FALSE(attention_depth_forward_after({1, 4096, 64, 8, 64, 64, 0}, P::inside));
  CHECK(attention_depth_forward_after({4, 4096, 16, 8, 64, 36, 0}, P::after));
  CHECK(attention_depth_forward_after({2, 33, 6, 2, 64, 1, 0}, P::after));
  CHECK(attention_depth_forward_after({2, 4096, 16, 8, 128, 32, 0}, P::after));
  CHECK_FALSE(attention_depth_forward_after({2, 4096, 16, 8, 128, 32, 0}, P::inside));
  CHECK_FALSE(attention_depth_forward_after({1, 4096, 128, 8, 64, 64, 0}, P::after));
  CHECK_FALSE(attention_depth_forward_after({2, 4096, 16, 8, 96, 32, 0}, P::after));
  CHECK_FALSE(attention_depth_forward_after({4, 4096, 16, 8, 64, 0, 0}, P::after));
}
