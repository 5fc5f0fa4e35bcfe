// Whole-model gradient checks on the float64 CPU backend: for every variant (norm placement x
// MoDA off/on x ffn_kv x attn_kv_proj x G in {1, 2, 3}, MoDA at 3 and 4 layers, untied and tied
// embeddings) the backward pass must agree with central finite differences of the forward loss,
// tensor by tensor, along random directions.
#include <fmt/format.h>

#include <catch2/catch.hpp>

#include "moda/model.hpp"
#include "test_util.hpp"

using namespace moda;

namespace {

// Loss the backward differentiates: scale * sum(ce + z * lse^2).
double loss_of(Model& model, std::span<const int32_t> tokens, double scale, double z) {
  const LossSums s = model.forward(tokens);
  return scale * (s.ce + z * s.lse_sq);
}

void check_variant(const test::Variant& v) {
  const Config config = test::tiny_variant_config(v);
  auto backend = make_backend("cpu64", 1);
  const int64_t B = 2, T = 7;
  Model model(config, *backend, B, T);
  const ParamLayout& layout = model.layout();
  // Random weights away from the init regime (norm weights around 1) so every path carries
  // gradient of a similar size.
  std::vector<double> theta = test::random_normal(static_cast<size_t>(layout.total()), 11, 0.4);
  for (const ParamInfo& p : layout.params()) {
    if (p.shape.size() == 1) {
      for (int64_t i = 0; i < p.numel; ++i) theta[static_cast<size_t>(p.offset + i)] += 1.0;
    }
  }
  model.set_parameters(theta);
  const auto tokens =
      test::random_tokens(static_cast<size_t>(B * (T + 1)), config.model.vocab_size, 5);
  const double scale = 1.0 / static_cast<double>(B * T), z = config.optimizer.z_loss;
  model.zero_gradients();
  model.forward_backward(tokens, scale);
  const std::vector<double> grad = model.gradients();

  // The random weights (std 0.4) give large third derivatives: the central difference's error was
  // measured to scale as h^2 (1.7e-1, 1.7e-3, 1.7e-5 at h = 1e-3, 1e-4, 1e-5 on one tensor; at 4
  // layers the embedding of pre-norm, G = 3, MoDA with attention KV projections 1.6e-4, 1.4e-5,
  // 1.6e-6 relative at h = 1e-5, 3e-6, 1e-6), while below h = 1e-6 rounding (~1e-16 / h) exceeds
  // the 1e-6 relative bound on the smallest gradients. The five-point stencil cancels the h^2 term
  // and leaves h^4: at h = 1e-4 four of 2,767 checks still failed, at 5e-5, 3e-5 and 1e-5 none.
  const double h = 3e-5;
  for (const ParamInfo& p : layout.params()) {
    const auto dir = test::random_normal(static_cast<size_t>(p.numel), 100 + p.offset);
    double analytic = 0;
    for (int64_t i = 0; i < p.numel; ++i)
      analytic += grad[static_cast<size_t>(p.offset + i)] * dir[static_cast<size_t>(i)];
    auto shifted = [&](double step) {
      std::vector<double> t = theta;
      for (int64_t i = 0; i < p.numel; ++i)
        t[static_cast<size_t>(p.offset + i)] += step * dir[static_cast<size_t>(i)];
      model.set_parameters(t);
      return loss_of(model, tokens, scale, z);
    };
    const double numeric =
        (8 * (shifted(h) - shifted(-h)) - (shifted(2 * h) - shifted(-2 * h))) / (12 * h);
    INFO(fmt::format("tensor {}: analytic {:.10g} numeric {:.10g}", p.name, analytic, numeric));
    CHECK(std::abs(analytic - numeric) <= 1e-6 * std::max(std::abs(numeric), 1e-3));
  }
}

}  // namespace

TEST_CASE("model gradients match finite differences in every variant", "[grad][model]") {
  for (NormPlacement placement :
       {NormPlacement::reordered, NormPlacement::pre, NormPlacement::post}) {
    for (int64_t group : {1, 2, 3}) {
      for (int mode = 0; mode < 5; ++mode) {
        test::Variant v;
        v.placement = placement;
        v.group = group;
        v.moda = mode > 0;
        v.ffn_kv = mode == 2 || mode == 4;
        v.attn_kv_proj = mode >= 3;
        // MoDA also at 4 layers: the slots' gradients are formed per pair of producing layers
        // from the top below the last one, (1, 0) at 3 layers, (2, 1) and layer 0 alone at 4.
        for (int64_t layers : {int64_t{3}, int64_t{4}}) {
          if (layers == 4 && !v.moda) continue;
          v.n_layers = layers;
          // Tied embeddings: the LM head's weight gradient and the embedding's scatter add into
          // one buffer in the same backward.
          for (bool tied : {false, true}) {
            v.tied = tied;
            SECTION(fmt::format("{} G={} moda={} ffn_kv={} attn_kv_proj={} layers={} tied={}",
                                to_string(placement), group, v.moda, v.ffn_kv, v.attn_kv_proj,
                                layers, tied)) {
              check_variant(v);
            }
          }
        }
      }
    }
  }
}
