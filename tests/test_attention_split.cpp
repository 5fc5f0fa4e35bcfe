// Where attention's backward places its depth part at head size 64 (attention_depth_split_sms,
// moda/cuda_backend.hpp): the choices the H200 measurements of docs/kernels/moda_attention.md
// ("The backward's depth part on SMs of its own") set, checked on the CPU.
#include <catch2/catch.hpp>

#include "moda/cuda_backend.hpp"

using namespace moda;

namespace {

constexpr int64_t kSms = 132;  // the H200 of the calibration

AttentionShape shape_700m(int64_t slots) { return {4, 4096, 16, 8, 64, slots, 0}; }

}  // namespace

TEST_CASE("attention backward: the depth part is split off where it measured faster") {
  using P = DepthBackwardPlacement;
  // At the 700M shapes the split measured faster from S 4 to 60 and slower at S 2 and S 64.
  CHECK(attention_depth_split_sms(shape_700m(2), P::automatic, kSms) == 0);
  CHECK(attention_depth_split_sms(shape_700m(4), P::automatic, kSms) == 16);
  CHECK(attention_depth_split_sms(shape_700m(36), P::automatic, kSms) == 40);
  CHECK(attention_depth_split_sms(shape_700m(60), P::automatic, kSms) == 54);
  CHECK(attention_depth_split_sms(shape_700m(64), P::automatic, kSms) == 0);
  CHECK(attention_depth_split_sms(shape_700m(72), P::automatic, kSms) == 0);
  // More slots, more SMs for the depth part.
  int64_t previous = 0;
  for (int64_t slots = 4; slots <= 60; slots += 2) {
    const int64_t sms = attention_depth_split_sms(shape_700m(slots), P::automatic, kSms);
    INFO("S = " << slots);
    CHECK(sms >= previous);
    previous = sms;
  }
  // The paper's G = 8 shape splits (21 SMs: 16 and 24 measured faster than the tail); Table 6's
  // (T = 1024, the depth part most of the work) keeps the tail.
  CHECK(attention_depth_split_sms({1, 4096, 64, 8, 64, 64, 0}, P::automatic, kSms) == 21);
  CHECK(attention_depth_split_sms({64, 1024, 6, 2, 64, 47, 0}, P::automatic, kSms) == 0);
}

TEST_CASE("attention backward: a placement asked for is kept") {
  using P = DepthBackwardPlacement;
  CHECK(attention_depth_split_sms(shape_700m(36), P::tail, kSms) == 0);
  CHECK(attention_depth_split_sms(shape_700m(64), P::split, kSms) == 56);
  CHECK(attention_depth_split_sms(shape_700m(2), P::split, kSms) == 14);
  // Tiny shapes forced to split still leave the sequence kernel an SM; without slots or with a
  // single SM there is nothing to split.
  CHECK(attention_depth_split_sms({2, 33, 4, 2, 64, 3, 0}, P::split, kSms) == kSms - 1);
  CHECK(attention_depth_split_sms(shape_700m(0), P::split, kSms) == 0);
  CHECK(attention_depth_split_sms(shape_700m(36), P::split, 1) == 0);
}
