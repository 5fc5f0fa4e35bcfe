// Bucketed gradient reduction: the model hands over each range of the gradients as soon as the
// backward is done with it, and GradientBuckets merges neighbours into buckets for the all-reduce.
// The model's claim that nothing later adds to a handed-over range is checked value by value, and
// that a second micro-batch adds to the first's gradients.
#include <fmt/format.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <utility>
#include <vector>

#include "dist/gradient_buckets.hpp"
#include "moda/model.hpp"
#include "test_util.hpp"

using namespace moda;

namespace {

using Range = std::pair<int64_t, int64_t>;

// Records the ranges of a flat buffer it is asked to reduce, and the waits.
class RecordingComm final : public Communicator {
 public:
  explicit RecordingComm(const Tensor& base) : base_(base) {}
  int rank() const override { return 0; }
  int world() const override { return 1; }
  int local_rank() const override { return 0; }
  std::string name() const override { return "recording"; }
  void all_reduce_sum(const Tensor& values) override {
    const int64_t begin =
        (static_cast<const char*>(values.data) - static_cast<const char*>(base_.data)) /
        static_cast<int64_t>(dtype_size(values.dtype));
    started.emplace_back(begin, begin + values.numel);
  }
  void wait() override { waited_after.push_back(started.size()); }
  void reduce_scatter_sum(const Tensor&, int64_t) override {}
  void all_gather(const Tensor&, int64_t) override {}
  void all_reduce_host(std::span<double>) override {}
  std::string broadcast(const std::string& value) override { return value; }
  void barrier() override {}

  std::vector<Range> started;
  std::vector<size_t> waited_after;  // number of buckets started at each wait()

 private:
  Tensor base_;
};

}  // namespace

TEST_CASE("gradient buckets merge neighbouring ranges and start once full", "[dist]") {
  auto backend = make_backend("cpu", 1);
  Tensor grads = backend->alloc(Role::master, 100);
  // What the model hands over: layers top-down, then the rest above them.
  const std::vector<Range> handed = {{30, 40}, {20, 30}, {10, 20}, {0, 10}, {40, 100}};
  SECTION("bucket size 0: one all-reduce at the end") {
    RecordingComm comm(grads);
    GradientBuckets buckets(comm, grads, 0);
    for (const auto& [b, e] : handed) buckets.ready(b, e);
    CHECK(comm.started.empty());
    buckets.finish();
    CHECK(comm.started == std::vector<Range>{{0, 100}});
    CHECK(comm.waited_after == std::vector<size_t>{1});
  }
  SECTION("bucket size 15: started during the backward, the rest at the end") {
    RecordingComm comm(grads);
    GradientBuckets buckets(comm, grads, 15);
    buckets.ready(30, 40);
    CHECK(comm.started.empty());
    buckets.ready(20, 30);
    CHECK(comm.started == std::vector<Range>{{20, 40}});
    buckets.ready(10, 20);
    buckets.ready(0, 10);
    buckets.ready(40, 45);
    CHECK(comm.started == std::vector<Range>{{20, 40}, {0, 20}});
    buckets.finish();
    CHECK(comm.started == std::vector<Range>{{20, 40}, {0, 20}, {40, 45}});
    CHECK(comm.waited_after == std::vector<size_t>{3});
  }
  SECTION("a range that does not touch the collected one starts it first") {
    RecordingComm comm(grads);
    GradientBuckets buckets(comm, grads, 0);
    buckets.ready(50, 60);
    buckets.ready(10, 20);
    CHECK(comm.started == std::vector<Range>{{50, 60}});
    buckets.ready(20, 20);  // empty ranges are ignored
    buckets.finish();
    CHECK(comm.started == std::vector<Range>{{50, 60}, {10, 20}});
  }
  backend->release(grads);
}

TEST_CASE("the backward hands over each gradient range once, after its last write", "[dist]") {
  for (NormPlacement placement :
       {NormPlacement::reordered, NormPlacement::pre, NormPlacement::post}) {
    for (int mode = 0; mode < 6; ++mode) {
      test::Variant v;
      v.placement = placement;
      v.group = 2;
      v.moda = mode > 0 && mode < 5;
      v.ffn_kv = mode == 2 || mode == 4;
      v.attn_kv_proj = mode >= 3 && mode < 5;
      Config config = test::tiny_variant_config(v);
      config.model.tie_embeddings = mode == 5;
      SECTION(fmt::format("{} moda={} ffn_kv={} attn_kv_proj={} tied={}", to_string(placement),
                          v.moda, v.ffn_kv, v.attn_kv_proj, config.model.tie_embeddings)) {
        auto backend = make_backend("cpu64", 1);
        const int64_t B = 2, T = 7;
        Model model(config, *backend, B, T);
        model.init_parameters(5);
        const auto tokens =
            test::random_tokens(static_cast<size_t>(2 * B * (T + 1)), config.model.vocab_size, 9);
        const std::span<const int32_t> all(tokens);
        const size_t half = tokens.size() / 2;
        model.zero_gradients();
        // A first micro-batch accumulates without handing anything over, like the trainer's.
        model.forward_backward(all.first(half), 0.1);
        std::vector<Range> ranges;
        std::vector<std::vector<double>> at_hand_over;
        model.forward_backward(all.last(half), 0.1, [&](int64_t begin, int64_t end) {
          ranges.emplace_back(begin, end);
          std::vector<double> values(static_cast<size_t>(end - begin));
          backend->download(model.grads().slice(begin, end - begin), values);
          at_hand_over.push_back(std::move(values));
        });
        const std::vector<double> final_grads = model.gradients();
        const int64_t layers = config.model.n_layers;
        const bool tied = config.model.tie_embeddings;
        // An untied LM head first, the layers, then the embedding and norm weights.
        REQUIRE(static_cast<int64_t>(ranges.size()) == layers + (tied ? 1 : 2));
        const int64_t first_layer = tied ? 0 : 1;
        if (!tied) CHECK(ranges[0].first == model.layout().lm_head());
        // Top layer first: the all-reduce of the upper layers runs while the lower ones compute.
        for (int64_t l = first_layer; l + 1 < first_layer + layers; ++l) {
          CHECK(ranges[l].first > ranges[l + 1].first);
        }
        CHECK(ranges.back() == Range{model.layout().embedding(), model.layout().total()});
        for (size_t i = 0; i < ranges.size(); ++i) {
          CAPTURE(ranges[i].first, ranges[i].second);
          const std::vector<double> now(final_grads.begin() + ranges[i].first,
                                        final_grads.begin() + ranges[i].second);
          CHECK(now == at_hand_over[i]);
        }
        std::sort(ranges.begin(), ranges.end());
        int64_t covered = 0;
        for (const auto& [begin, end] : ranges) {
          CHECK(begin == covered);
          CHECK(end > begin);
          covered = end;
        }
        CHECK(covered == model.layout().total());
        // The two micro-batches' gradients are the sum of each one's alone: every gradient
        // output adds to what the earlier micro-batch left (the tied LM head and embedding into
        // one buffer), and an op that overwrote instead would keep only the second's share.
        // float64 sums in another order differ by rounding (at most 1.7e-16 measured here); an op
        // that overwrote (the weight GEMM's or the embedding's gradient) gave 4e-3 or more.
        const auto alone = [&](std::span<const int32_t> micro_batch) {
          model.zero_gradients();
          model.forward_backward(micro_batch, 0.1);
          return model.gradients();
        };
        const std::vector<double> g1 = alone(all.first(half)), g2 = alone(all.last(half));
        std::vector<double> sum(g1.size());
        for (size_t i = 0; i < sum.size(); ++i) sum[i] = g1[i] + g2[i];
        const double err = test::rel_error(final_grads, sum);
        INFO("two micro-batches against the sum of each alone: relative error " << err);
        CHECK(err < 1e-12);
      }
    }
  }
}
