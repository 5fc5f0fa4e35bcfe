// MoDA attention of the CPU backend against a naive formula written here independently: for
// each query, concatenate the causal sequence scores and the depth scores of the same token and
// take one softmax. Depth slots are built token-major here ([b][t][slot][kv head][d], the
// paper's layout) and repacked into the backend's slot-major layout.
#include <fmt/format.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>

#include "moda/backend.hpp"
#include "moda/depth_stats_layout.hpp"
#include "test_util.hpp"

using namespace moda;

namespace {

struct Case {
  int64_t B, T, Hq, Hk, d, S;
};

struct Naive {
  std::vector<double> out, lse;
};

Naive naive_moda(const Case& c, const std::vector<double>& q, const std::vector<double>& k,
                 const std::vector<double>& v, const std::vector<double>& dk_tok,
                 const std::vector<double>& dv_tok) {
  Naive r;
  r.out.assign(static_cast<size_t>(c.B * c.T * c.Hq * c.d), 0.0);
  r.lse.assign(static_cast<size_t>(c.B * c.T * c.Hq), 0.0);
  const int64_t G = c.Hq / c.Hk;
  for (int64_t b = 0; b < c.B; ++b) {
    for (int64_t t = 0; t < c.T; ++t) {
      for (int64_t h = 0; h < c.Hq; ++h) {
        const int64_t kvh = h / G;
        const double* qv = &q[static_cast<size_t>(((b * c.T + t) * c.Hq + h) * c.d)];
        std::vector<const double*> keys, vals;
        for (int64_t s = 0; s <= t; ++s) {
          keys.push_back(&k[static_cast<size_t>(((b * c.T + s) * c.Hk + kvh) * c.d)]);
          vals.push_back(&v[static_cast<size_t>(((b * c.T + s) * c.Hk + kvh) * c.d)]);
        }
        for (int64_t j = 0; j < c.S; ++j) {
          const size_t off = static_cast<size_t>((((b * c.T + t) * c.S + j) * c.Hk + kvh) * c.d);
          keys.push_back(&dk_tok[off]);
          vals.push_back(&dv_tok[off]);
        }
        std::vector<double> scores;
        double mx = -INFINITY;
        for (const double* key : keys) {
          double sdot = 0;
          for (int64_t i = 0; i < c.d; ++i) sdot += qv[i] * key[i];
          scores.push_back(sdot / std::sqrt(static_cast<double>(c.d)));
          mx = std::max(mx, scores.back());
        }
        double denom = 0;
        for (double sc : scores) denom += std::exp(sc - mx);
        for (size_t j = 0; j < keys.size(); ++j) {
          const double p = std::exp(scores[j] - mx) / denom;
          for (int64_t i = 0; i < c.d; ++i) {
            r.out[static_cast<size_t>(((b * c.T + t) * c.Hq + h) * c.d + i)] += p * vals[j][i];
          }
        }
        r.lse[static_cast<size_t>((b * c.T + t) * c.Hq + h)] = mx + std::log(denom);
      }
    }
  }
  return r;
}

}  // namespace

TEST_CASE("MoDA attention equals the naive one-softmax formula", "[attention]") {
  const std::vector<Case> cases = {
      {2, 13, 4, 2, 8, 0},   // no depth: plain causal GQA
      {1, 13, 4, 2, 8, 1},   // one slot
      {2, 7, 6, 2, 4, 5},    // odd S, G = 3
      {1, 1, 3, 1, 6, 4},    // T = 1, G = 3
      {2, 17, 2, 2, 16, 3},  // G = 1, T prime
  };
  for (const Case& c : cases) {
    for (const char* kind : {"cpu", "cpu64"}) {
      SECTION(
          fmt::format("{} B={} T={} Hq={} Hk={} d={} S={}", kind, c.B, c.T, c.Hq, c.Hk, c.d, c.S)) {
        const int64_t R = c.B * c.T, kvw = c.Hk * c.d;
        const auto q = test::random_normal(static_cast<size_t>(R * c.Hq * c.d), 1);
        const auto k = test::random_normal(static_cast<size_t>(R * kvw), 2);
        const auto v = test::random_normal(static_cast<size_t>(R * kvw), 3);
        const auto dk_tok = test::random_normal(static_cast<size_t>(R * c.S * kvw), 4);
        const auto dv_tok = test::random_normal(static_cast<size_t>(R * c.S * kvw), 5);
        const Naive ref = naive_moda(c, q, k, v, dk_tok, dv_tok);

        // Repack token-major depth into slot-major [S][R][Hk d].
        std::vector<double> dk_slot(static_cast<size_t>(std::max<int64_t>(c.S * R * kvw, 1)), 0.0),
            dv_slot = dk_slot;
        for (int64_t r = 0; r < R; ++r) {
          for (int64_t j = 0; j < c.S; ++j) {
            for (int64_t e = 0; e < kvw; ++e) {
              dk_slot[static_cast<size_t>((j * R + r) * kvw + e)] =
                  dk_tok[static_cast<size_t>((r * c.S + j) * kvw + e)];
              dv_slot[static_cast<size_t>((j * R + r) * kvw + e)] =
                  dv_tok[static_cast<size_t>((r * c.S + j) * kvw + e)];
            }
          }
        }
        auto be = make_backend(kind, 2);
        auto put = [&](const std::vector<double>& h) {
          Tensor t = be->alloc(Role::activation, static_cast<int64_t>(h.size()));
          be->upload(t, h);
          return t;
        };
        Tensor out = be->alloc(Role::activation, R * c.Hq * c.d);
        Tensor lse = be->alloc(Role::stat, R * c.Hq);
        const AttentionShape shape{c.B, c.T, c.Hq, c.Hk, c.d, c.S, R * kvw};
        be->attention_forward(shape, put(q), put(k), put(v), put(dk_slot), put(dv_slot), out, lse);
        std::vector<double> got(ref.out.size()), got_lse(ref.lse.size());
        be->download(out, got);
        be->download(lse, got_lse);
        // float32 arithmetic over short dot products: well under 1e-5; float64: rounding only.
        const double tol = std::string(kind) == "cpu" ? 1e-5 : 1e-12;
        CHECK(test::rel_error(got, ref.out) < tol);
        CHECK(test::rel_error(got_lse, ref.lse) < tol);
      }
    }
  }
}

// The depth statistics layout puts every (slot, unit, head) at its own place in [0, S U G) and the
// slots of a unit's chunk (fewer in the last chunk) side by side, heads fastest.
TEST_CASE("depth statistics layout is a bijection with adjacent chunk slots", "[attention]") {
  for (int64_t S : {1, 5, 16, 17, 37, 72}) {
    for (int64_t G : {1, 2, 3}) {
      const int64_t units = 6;
      std::vector<int> hits(static_cast<size_t>(S * units * G), 0);
      int64_t outside = 0, apart = 0;
      for (int64_t j = 0; j < S; ++j) {
        for (int64_t u = 0; u < units; ++u) {
          for (int64_t g = 0; g < G; ++g) {
            const int64_t at = depth_stats_index(S, units, G, j, u, g);
            if (at < 0 || at >= S * units * G) {
              ++outside;
              continue;
            }
            ++hits[static_cast<size_t>(at)];
            if (j % kDepthStatsChunk > 0) {
              apart += at != depth_stats_index(S, units, G, j - 1, u, g) + G;
            }
          }
        }
      }
      INFO("S " << S << " G " << G);
      CHECK(outside == 0);
      CHECK(apart == 0);
      CHECK(std::count(hits.begin(), hits.end(), 1) == S * units * G);
    }
  }
}
