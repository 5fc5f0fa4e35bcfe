// `moda bench attention`: times the CUDA MoDA attention kernels (forward, backward) at given
// shapes on synthetic operands. scripts/bench_attention.py runs it beside torch SDPA and prints
// the ratios.
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "moda/backend.hpp"
#include "moda/cuda_backend.hpp"

namespace moda::cli {

namespace {

// The shapes of the attention table in shared/docs/targets.md: (B, T, Hq, Hk, d, S).
const std::vector<std::string> kDefaultShapes = {
    "4,4096,16,8,64,0",   "4,4096,16,8,64,36", "4,4096,16,8,64,72",  "1,4096,64,8,64,0",
    "1,4096,64,8,64,64",  "1,8192,64,8,64,0",  "1,8192,64,8,64,64",  "1,16384,64,8,64,0",
    "1,16384,64,8,64,64", "1,16384,16,8,64,0", "1,16384,16,8,64,64", "1,16384,64,8,64,128"};

// The values of --depth-backward and --depth-forward.
template <class Placement, size_t N>
std::map<std::string, Placement> by_name(const NamedPlacement<Placement> (&table)[N]) {
  std::map<std::string, Placement> named;
  for (const auto& [name, placement] : table) named.emplace(name, placement);
  return named;
}
const std::map<std::string, DepthBackwardPlacement> kPlacements = by_name(kDepthBackwardPlacements);
const std::map<std::string, DepthForwardPlacement> kForwardPlacements =
    by_name(kDepthForwardPlacements);
const std::map<std::string, SlotGradientTiming> kSlotGradientModes = by_name(kSlotGradientTimings);

AttentionShape parse_shape(const std::string& text) {
  std::vector<int64_t> v;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      size_t used = 0;
      v.push_back(std::stoll(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw std::invalid_argument(fmt::format("--shape {}: '{}' is not an integer", text, item));
    }
  }
  if (v.size() != 6) {
    throw std::invalid_argument(
        fmt::format("--shape {}: expected six integers B,T,Hq,Hk,d,S", text));
  }
  for (size_t i = 0; i < 5; ++i) {
    if (v[i] <= 0)
      throw std::invalid_argument(
          fmt::format("--shape {}: B, T, Hq, Hk, d must be positive", text));
  }
  if (v[5] < 0) throw std::invalid_argument(fmt::format("--shape {}: S must be >= 0", text));
  if (v[2] % v[3] != 0) {
    throw std::invalid_argument(fmt::format("--shape {}: Hq must be a multiple of Hk", text));
  }
  return {v[0], v[1], v[2], v[3], v[4], v[5], 0};
}

#ifdef MODA_HAVE_CUDA
template <class Placement>
std::string placement_name(const std::map<std::string, Placement>& names, Placement p) {
  const auto it = std::find_if(names.begin(), names.end(),
                               [p](const auto& named) { return named.second == p; });
  return it->first;
}

void bench_attention(const std::vector<std::string>& shapes, int reps, bool json,
                     DepthBackwardPlacement placement, DepthForwardPlacement forward,
                     SlotGradientTiming slot_gradients) {
  for (const std::string& text : shapes) parse_shape(text);  // every shape is checked up front
  if (cuda_device_count() == 0) {
    throw std::runtime_error("moda bench attention needs a CUDA GPU, and none is visible");
  }
  if (!json) {
    fmt::print("{:>2} {:>6} {:>3} {:>3} {:>4} {:>4} {:>10} {:>10} {:>14} {:>10} {:>12}\n", "B", "T",
               "Hq", "Hk", "d", "S", "fwd ms", "bwd ms", "of it slots ms", "total ms",
               "depth K+V GB");
  }
  for (const std::string& text : shapes) {
    const AttentionShape s = parse_shape(text);
    const AttentionTiming t = cuda_time_attention(s, reps, placement, forward, slot_gradients);
    const double depth_gb = 2.0 * s.slots * s.batch * s.seq_len * s.kv_heads * s.head_dim * 2e-9;
    if (json) {
      fmt::print(
          "{{\"B\": {}, \"T\": {}, \"Hq\": {}, \"Hk\": {}, \"d\": {}, \"S\": {}, \"fwd_ms\": "
          "{:.4f}, "
          "\"bwd_ms\": {:.4f}, \"slot_gradients_ms\": {:.4f}, \"total_ms\": {:.4f}, \"reps\": "
          "{}, \"depth_backward\": \"{}\", \"depth_forward\": \"{}\", \"slot_gradients\": "
          "\"{}\"}}\n",
          s.batch, s.seq_len, s.q_heads, s.kv_heads, s.head_dim, s.slots, t.forward_ms,
          t.backward_ms, t.slot_gradients_ms, t.total_ms, reps,
          placement_name(kPlacements, placement), placement_name(kForwardPlacements, forward),
          placement_name(kSlotGradientModes, slot_gradients));
    } else {
      fmt::print(
          "{:>2} {:>6} {:>3} {:>3} {:>4} {:>4} {:>10.3f} {:>10.3f} {:>14.3f} {:>10.3f} {:>12.2f}\n",
          s.batch, s.seq_len, s.q_heads, s.kv_heads, s.head_dim, s.slots, t.forward_ms,
          t.backward_ms, t.slot_gradients_ms, t.total_ms, depth_gb);
    }
    std::fflush(stdout);
  }
}
#else
void bench_attention(const std::vector<std::string>& shapes, int, bool, DepthBackwardPlacement,
                     DepthForwardPlacement, SlotGradientTiming) {
  for (const std::string& text : shapes) parse_shape(text);
  throw std::runtime_error(
      "moda bench attention needs the CUDA backend, and this moda was built without CUDA");
}
#endif

}  // namespace

void register_bench(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Kernel timings on the GPU");
  bench->require_subcommand(1);
  auto* attn = bench->add_subcommand(
      "attention",
      "Times MoDA attention forward and backward (CUDA events, medians) at B,T,Hq,Hk,d,S shapes");
  struct Options {
    std::vector<std::string> shapes = kDefaultShapes;
    int reps = 20;
    bool json = false;
    DepthBackwardPlacement depth_backward = DepthBackwardPlacement::automatic;
    DepthForwardPlacement depth_forward = DepthForwardPlacement::automatic;
    SlotGradientTiming slot_gradients = SlotGradientTiming::sole_reader;
  };
  auto opts = std::make_shared<Options>();
  attn->add_option(
      "--shape", opts->shapes,
      "B,T,Hq,Hk,d,S (repeatable; default: the shapes of docs/kernels/moda_attention.md)");
  attn->add_option("--reps", opts->reps, "timed repetitions per shape (median reported)")
      ->check(CLI::Range(1, 100000));
  attn->add_flag("--json", opts->json, "one JSON object per shape instead of a table");
  attn->add_option(
          "--depth-backward", opts->depth_backward,
          "where the backward forms the depth part at head size 64: automatic (default), "
          "tail (in the sequence kernel's blocks) or beside (a block of its own on every SM, "
          "next to the sequence kernel's); "
          "docs/kernels/moda_attention.md")
      ->transform(CLI::CheckedTransformer(kPlacements, CLI::ignore_case));
  attn->add_option(
          "--depth-forward", opts->depth_forward,
          "where the forward adds the depth slots: automatic (default), inside (at head size 64 "
          "in the sequence kernel's steps, at 128 a streaming pass after it) or after (head sizes "
          "64 and 128: a kernel of its own after the sequence kernel, per token with the group's "
          "heads as the MMA's N, G <= 8) or beside (head size 64: that kernel beside the sequence "
          "kernel, following its tiles); docs/kernels/moda_attention.md")
      ->transform(CLI::CheckedTransformer(kForwardPlacements, CLI::ignore_case));
  attn->add_option(
          "--slot-gradients", opts->slot_gradients,
          "how the backward forms the gradients of the S slots, with the timed layer as their "
          "only reader: sole-reader (default: in the backward's depth part) or pulled (after it, "
          "by the op the model uses for slots that many layers read, from the probabilities and "
          "score gradients the backward leaves; its time is the column 'of it slots')")
      ->transform(CLI::CheckedTransformer(kSlotGradientModes, CLI::ignore_case));
  attn->callback([opts] {
    bench_attention(opts->shapes, opts->reps, opts->json, opts->depth_backward, opts->depth_forward,
                    opts->slot_gradients);
  });
}

}  // namespace moda::cli
