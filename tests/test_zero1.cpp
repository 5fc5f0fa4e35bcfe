// ZeRO-1's memory saving: a model built for one shard allocates the master weights and Adam
// moments of that shard only, and its optimizer step and checkpoint state equal the unsharded
// model's on that shard. (tests/test_distributed.cpp runs ZeRO-1 across real MPI ranks.)
#include <catch2/catch.hpp>

#include "moda/checkpoint.hpp"
#include "moda/model.hpp"
#include "moda/train.hpp"
#include "test_util.hpp"

using namespace moda;

namespace {

std::vector<double> download(Backend& backend, const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel));
  backend.download(t, out);
  return out;
}

}  // namespace

TEST_CASE("a ZeRO-1 shard holds the optimizer state of its shard only, updated as unsharded",
          "[zero1][train]") {
  const Config config = test::tiny_variant_config({NormPlacement::reordered, true, true, false, 2});
  auto backend = make_backend("cpu", 1);
  const int64_t B = 2, T = 7, shards = 3;
  const auto tokens =
      test::random_tokens(static_cast<size_t>(B * (T + 1)), config.model.vocab_size, 4);
  Model full(config, *backend, B, T, shards);
  full.init_parameters(7);
  full.zero_gradients();
  full.forward_backward(tokens, 0.05);
  adamw_step(full, config.optimizer, 1e-2, 1, 1.0, 0, full.padded_size());
  const int64_t shard = full.shard_size();
  const int64_t total = full.layout().total();
  CHECK(full.adam_m().numel == full.padded_size());
  CHECK_FALSE(full.state_sharded());
  // 3 shards of a padded buffer: the last holds the end of the parameters and the padding.
  REQUIRE(full.padded_size() == shards * shard);
  REQUIRE(total > 2 * shard);

  for (int64_t k = 0; k < shards; ++k) {
    CAPTURE(k);
    Model part(config, *backend, B, T, shards, k);
    CHECK(part.state_sharded());
    CHECK(part.shard_size() == shard);
    CHECK(part.state_offset() == k * shard);
    CHECK(part.master().numel == shard);
    CHECK(part.adam_m().numel == shard);
    CHECK(part.adam_v().numel == shard);
    // Gradients and the compute copy stay whole: the backward needs every weight.
    CHECK(part.grads().numel == full.padded_size());
    CHECK(part.weights().numel == full.padded_size());
    CHECK_THROWS_AS(part.parameters(), std::logic_error);
    CHECK_THROWS_AS(adamw_step(part, config.optimizer, 1e-2, 1, 1.0, 0, full.padded_size()),
                    std::logic_error);

    part.init_parameters(7);
    part.zero_gradients();
    part.forward_backward(tokens, 0.05);
    CHECK(download(*backend, part.grads()) == download(*backend, full.grads()));
    adamw_step(part, config.optimizer, 1e-2, 1, 1.0, k * shard, (k + 1) * shard);
    for (const auto& [mine, whole] :
         {std::pair{&part.master(), &full.master()}, std::pair{&part.adam_m(), &full.adam_m()},
          std::pair{&part.adam_v(), &full.adam_v()}}) {
      CHECK(download(*backend, *mine) == download(*backend, whole->slice(k * shard, shard)));
    }
    CHECK(download(*backend, part.weights().slice(k * shard, shard)) ==
          download(*backend, full.weights().slice(k * shard, shard)));

    // Checkpoint state of the shard, and a resume as the trainer does it: every shard's weights,
    // then this shard's optimizer state.
    const ShardRange own{k * shard, std::min((k + 1) * shard, total) - k * shard};
    const ShardState saved = capture_shard(part, own);
    const ShardState expected = capture_shard(full, own);
    CHECK(saved.master == expected.master);
    CHECK(saved.adam_v == expected.adam_v);
    CHECK_THROWS_AS(capture_shard(part, {0, total}), std::invalid_argument);
    Model resumed(config, *backend, B, T, shards, k);
    ShardState weights_only = capture_shard(full, {0, total});
    weights_only.adam_m.clear();
    weights_only.adam_v.clear();
    restore_model(resumed, weights_only);
    restore_model(resumed, saved);
    CHECK(download(*backend, resumed.weights()) == download(*backend, full.weights()));
    CHECK(download(*backend, resumed.adam_m()) == download(*backend, part.adam_m()));
    CHECK(download(*backend, resumed.master()) == download(*backend, part.master()));
  }
}
