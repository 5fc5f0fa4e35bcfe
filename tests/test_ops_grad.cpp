// Finite-difference gradient checks of every op of the CPU backend, run in float64: for a scalar
// L = sum_outputs <output, cotangent> with random cotangents, the op's backward must give the
// directional derivative of L along a random direction of each input. Every output starts from
// random values: an overwritten one must not keep them, and of an accumulating one (dweight,
// dtable, dk, dv: +=) only what the op added is the gradient, so that an op that overwrites where
// it should add fails the check (from zero the two give the same values).
#include <fmt/format.h>

#include <catch2/catch.hpp>
#include <functional>
#include <span>
#include <tuple>
#include <vector>

#include "moda/backend.hpp"
#include "test_util.hpp"

using namespace moda;

namespace {

using Inputs = std::vector<std::vector<double>>;

struct Harness {
  std::unique_ptr<Backend> be = make_backend("cpu64", 1);

  Tensor put(const std::vector<double>& host) {
    Tensor t = be->alloc(Role::activation, static_cast<int64_t>(host.size()));
    be->upload(t, host);
    return t;
  }
  Tensor zeros(int64_t n) { return be->alloc(Role::activation, n); }
  std::vector<double> get(const Tensor& t) {
    std::vector<double> host(static_cast<size_t>(t.numel));
    be->download(t, host);
    return host;
  }
  // An output's random start; `seed` names it again for added().
  Tensor start(int64_t n, uint64_t seed) {
    return put(test::random_normal(static_cast<size_t>(n), seed));
  }
  // What an accumulating op added to `t`, which began as start(t.numel, seed).
  std::vector<double> added(const Tensor& t, uint64_t seed) {
    std::vector<double> v = get(t);
    const auto base = test::random_normal(v.size(), seed);
    for (size_t i = 0; i < v.size(); ++i) v[i] -= base[i];
    return v;
  }
};

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Slot gradients read from `t`, which began as start(t.numel, seed) and holds `slots` slots of `kn`
// values at `stride`: the gap after each slot and anything past the last are no slot's values, must
// keep their start (an op that clears them would overwrite the padding of the model's slot
// buffers), and are zero in the gradient returned.
std::vector<double> slot_gradients(Harness& hs, const Tensor& t, uint64_t seed, int64_t slots,
                                   int64_t kn, int64_t stride) {
  std::vector<double> got = hs.get(t);
  const auto start = test::random_normal(got.size(), seed);
  for (size_t i = 0; i < got.size(); ++i) {
    const auto at = static_cast<int64_t>(i);
    if (at / stride < slots && at % stride < kn) continue;
    REQUIRE(got[i] == start[i]);
    got[i] = 0;
  }
  return got;
}

// loss(inputs) -> L; grads(inputs) -> dL/dinput for each input (empty vector: not checked).
void check_gradients(const Inputs& x, const std::function<double(const Inputs&)>& loss,
                     const std::function<Inputs(const Inputs&)>& grads, const char* what) {
  const Inputs g = grads(x);
  const double h = 1e-6;
  for (size_t i = 0; i < x.size(); ++i) {
    if (g[i].empty()) continue;
    const auto dir = test::random_normal(x[i].size(), 77 + i);
    Inputs plus = x, minus = x;
    for (size_t j = 0; j < dir.size(); ++j) {
      plus[i][j] += h * dir[j];
      minus[i][j] -= h * dir[j];
    }
    const double numeric = (loss(plus) - loss(minus)) / (2 * h);
    const double analytic = dot(g[i], dir);
    INFO(fmt::format("{}: input {} analytic {:.12g} numeric {:.12g}", what, i, analytic, numeric));
    // Central differences in float64 with h = 1e-6: ~1e-9 truncation + rounding error.
    CHECK(std::abs(analytic - numeric) <= 1e-6 * std::max(std::abs(numeric), 1e-2));
  }
}

}  // namespace

TEST_CASE("matmul gradients", "[grad][ops]") {
  Harness hs;
  const int64_t m = 5, n = 7, k = 6;
  const Inputs x = {test::random_normal(m * k, 1), test::random_normal(n * k, 2)};
  const auto cot = test::random_normal(m * n, 3);
  auto loss = [&](const Inputs& in) {
    Tensor out = hs.zeros(m * n);
    hs.be->matmul(out, hs.put(in[0]), hs.put(in[1]), m, n, k, false);
    return dot(hs.get(out), cot);
  };
  auto grads = [&](const Inputs& in) {
    Tensor din = hs.start(m * k, 500), dw = hs.start(n * k, 501);
    hs.be->matmul_backward(hs.put(cot), hs.put(in[0]), hs.put(in[1]), din, dw, m, n, k, false);
    return Inputs{hs.get(din), hs.added(dw, 501)};
  };
  check_gradients(x, loss, grads, "matmul");
}

TEST_CASE("rmsnorm and fused residual norms gradients", "[grad][ops]") {
  Harness hs;
  const int64_t rows = 4, cols = 9;
  const double eps = 1e-6;
  const auto cot = test::random_normal(rows * cols, 3);
  const Inputs x = {test::random_normal(rows * cols, 1), test::random_normal(rows * cols, 4),
                    test::random_normal(cols, 2, 0.3, 1.0)};
  SECTION("rmsnorm") {
    auto loss = [&](const Inputs& in) {
      Tensor out = hs.zeros(rows * cols), rstd = hs.zeros(rows);
      hs.be->rmsnorm_forward(hs.put(in[0]), hs.put(in[2]), out, rstd, rows, cols, eps);
      return dot(hs.get(out), cot);
    };
    auto grads = [&](const Inputs& in) {
      Tensor out = hs.zeros(rows * cols), rstd = hs.zeros(rows), din = hs.start(rows * cols, 500),
             dw = hs.start(cols, 501);
      const Tensor xin = hs.put(in[0]), w = hs.put(in[2]);
      hs.be->rmsnorm_forward(xin, w, out, rstd, rows, cols, eps);
      hs.be->rmsnorm_backward(hs.put(cot), xin, w, rstd, din, dw, rows, cols, false);
      return Inputs{hs.get(din), {}, hs.added(dw, 501)};
    };
    check_gradients(x, loss, grads, "rmsnorm");
  }
  for (ResidualNorm kind : {ResidualNorm::add_then_norm, ResidualNorm::norm_then_add}) {
    SECTION(kind == ResidualNorm::add_then_norm ? "add_then_norm" : "norm_then_add") {
      // For add_then_norm the loss also reads `sum` (as pre-norm's residual does).
      const auto cot_sum = test::random_normal(rows * cols, 9);
      auto run = [&](const Inputs& in, Tensor& sum, Tensor& out, Tensor& rstd) {
        sum = hs.zeros(rows * cols);
        out = hs.zeros(rows * cols);
        rstd = hs.zeros(rows);
        hs.be->residual_norm_forward(kind, hs.put(in[0]), hs.put(in[1]), hs.put(in[2]), sum, out,
                                     rstd, rows, cols, eps);
      };
      auto loss = [&](const Inputs& in) {
        Tensor sum, out, rstd;
        run(in, sum, out, rstd);
        double l = dot(hs.get(out), cot);
        if (kind == ResidualNorm::add_then_norm) l += dot(hs.get(sum), cot_sum);
        return l;
      };
      auto grads = [&](const Inputs& in) {
        Tensor sum, out, rstd;
        run(in, sum, out, rstd);
        Tensor dw = hs.start(cols, 501);
        if (kind == ResidualNorm::add_then_norm) {
          Tensor dsum = hs.put(cot_sum);  // the residual's own gradient, accumulated into
          hs.be->residual_norm_backward(kind, hs.put(cot), sum, hs.put(in[2]), rstd, dsum, dw, rows,
                                        cols, true);
          const auto d = hs.get(dsum);
          return Inputs{d, d, hs.added(dw, 501)};
        }
        Tensor dbranch = hs.start(rows * cols, 500);
        hs.be->residual_norm_backward(kind, hs.put(cot), hs.put(in[1]), hs.put(in[2]), rstd,
                                      dbranch, dw, rows, cols, false);
        return Inputs{cot, hs.get(dbranch), hs.added(dw, 501)};
      };
      check_gradients(x, loss, grads, "residual_norm");
    }
  }
}

TEST_CASE("qkv norm + rope gradients", "[grad][ops]") {
  Harness hs;
  const int64_t rows = 6, seq = 3, d = 6;
  for (int64_t nq : {3, 0}) {
    SECTION(fmt::format("q heads {}", nq)) {
      const int64_t nk = 1, col0 = 5, ld = col0 + (nq + 2 * nk) * d + 2;
      hs.be->init_rope(8, d, 10.0);
      const Backend::QkvLayout lay{rows, seq, ld, col0, nq, nk, d, 1e-6};
      const Inputs x = {test::random_normal(rows * ld, 1), test::random_normal(nq * d, 2, 0.3, 1.0),
                        test::random_normal(nk * d, 3, 0.3, 1.0)};
      const auto cq = test::random_normal(rows * nq * d, 4),
                 ck = test::random_normal(rows * nk * d, 5),
                 cv = test::random_normal(rows * nk * d, 6);
      auto fwd = [&](const Inputs& in, Tensor& q, Tensor& k, Tensor& v, Tensor& qr, Tensor& kr) {
        q = hs.zeros(std::max<int64_t>(rows * nq * d, 1));
        k = hs.zeros(rows * nk * d);
        v = hs.zeros(rows * nk * d);
        qr = hs.zeros(rows);
        kr = hs.zeros(rows);
        hs.be->qkv_norm_rope_forward(lay, hs.put(in[0]), nq > 0 ? hs.put(in[1]) : Tensor{},
                                     hs.put(in[2]), nq > 0 ? q : Tensor{}, k, v,
                                     nq > 0 ? qr : Tensor{}, kr);
      };
      auto loss = [&](const Inputs& in) {
        Tensor q, k, v, qr, kr;
        fwd(in, q, k, v, qr, kr);
        double l = dot(hs.get(k), ck) + dot(hs.get(v), cv);
        if (nq > 0) l += dot(hs.get(q), cq);
        return l;
      };
      auto grads = [&](const Inputs& in) {
        Tensor q, k, v, qr, kr;
        fwd(in, q, k, v, qr, kr);
        const auto raw_before =
            test::random_normal(rows * ld, 99);  // poison: untouched columns keep it
        Tensor draw = hs.put(raw_before), dqw = hs.start(std::max<int64_t>(nq * d, 1), 501),
               dkw = hs.start(nk * d, 502);
        hs.be->qkv_norm_rope_backward(lay, hs.put(in[0]), nq > 0 ? hs.put(in[1]) : Tensor{},
                                      hs.put(in[2]), nq > 0 ? qr : Tensor{}, kr,
                                      nq > 0 ? hs.put(cq) : Tensor{}, hs.put(ck), hs.put(cv), draw,
                                      nq > 0 ? dqw : Tensor{}, dkw);
        auto dr = hs.get(draw);
        // Columns outside [col0, col0 + width) must be left alone; they are zero gradient here.
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t c = 0; c < ld; ++c) {
            if (c < col0 || c >= col0 + (nq + 2 * nk) * d) {
              REQUIRE(dr[r * ld + c] == raw_before[r * ld + c]);
              dr[r * ld + c] = 0;
            }
          }
        }
        return Inputs{dr, nq > 0 ? hs.added(dqw, 501) : std::vector<double>{}, hs.added(dkw, 502)};
      };
      check_gradients(x, loss, grads, "qkv_norm_rope");
    }
  }
}

// Two attention layers over the same keys and depth slots, the second reading one slot more:
// the slots' gradients are formed by depth_slot_backward from both readers (the first `slots`
// slots) and from the second alone (the last), as the model does for the layers above a slot.
TEST_CASE("MoDA attention gradients (sequence + depth, GQA)", "[grad][ops][attention]") {
  Harness hs;
  for (int64_t slots : {0, 1, 3}) {
    for (int64_t group : {1, 3}) {
      SECTION(fmt::format("S={} G={}", slots, group)) {
        AttentionShape first{2, 5, 2 * group, 2, 4, slots, 0};
        const int64_t R = first.batch * first.seq_len, qn = R * first.q_heads * first.head_dim,
                      kn = R * first.kv_heads * first.head_dim;
        first.slot_stride = kn + 4;  // padded stride: the kernels must honour it
        AttentionShape second = first;
        second.slots = slots + 1;
        const int64_t sn = second.slots * first.slot_stride;
        const Inputs x = {test::random_normal(qn, 1), test::random_normal(qn, 2),
                          test::random_normal(kn, 3), test::random_normal(kn, 4),
                          test::random_normal(sn, 5), test::random_normal(sn, 6)};
        const auto cot_first = test::random_normal(qn, 7), cot_second = test::random_normal(qn, 8);
        struct Forward {
          Tensor out, lse;
        };
        auto fwd = [&](const AttentionShape& s, const Inputs& in, size_t q) {
          Forward f{hs.zeros(qn), hs.zeros(R * s.q_heads)};
          hs.be->attention_forward(s, hs.put(in[q]), hs.put(in[2]), hs.put(in[3]), hs.put(in[4]),
                                   hs.put(in[5]), f.out, f.lse);
          return f;
        };
        auto loss = [&](const Inputs& in) {
          return dot(hs.get(fwd(first, in, 0).out), cot_first) +
                 dot(hs.get(fwd(second, in, 1).out), cot_second);
        };
        auto grads = [&](const Inputs& in) {
          Tensor dk = hs.start(kn, 502), dv = hs.start(kn, 503), dsk = hs.start(sn, 504),
                 dsv = hs.start(sn, 505);
          std::vector<Backend::DepthReader> readers;
          std::vector<Tensor> dq;
          for (const auto& [s, q, cot] : {std::tuple{first, size_t{0}, &cot_first},
                                          std::tuple{second, size_t{1}, &cot_second}}) {
            const Forward f = fwd(s, in, q);
            const int64_t pn = std::max<int64_t>(s.slots * R * s.q_heads, 1);
            Backend::DepthReader reader{hs.put(in[q]), hs.put(*cot), hs.start(pn, 506 + q),
                                        hs.start(pn, 508 + q), s.slots};
            dq.push_back(hs.start(qn, 500 + q));
            hs.be->attention_backward(s, reader.dout, reader.q, hs.put(in[2]), hs.put(in[3]),
                                      hs.put(in[4]), hs.put(in[5]), f.out, f.lse, dq.back(), dk, dv,
                                      reader.probs, reader.dscores);
            readers.push_back(reader);
          }
          // The shared slots as the model forms them for a pair of producing layers: the later
          // reader first, then the earlier one added.
          hs.be->depth_slot_backward(first, 0, slots, std::span(readers).subspan(1), dsk, dsv,
                                     false, {});
          hs.be->depth_slot_backward(first, 0, slots, std::span(readers).first(1), dsk, dsv, true,
                                     {});
          hs.be->depth_slot_backward(first, slots, 1, std::span(readers).subspan(1),
                                     dsk.slice(slots * first.slot_stride, kn),
                                     dsv.slice(slots * first.slot_stride, kn), false, {});
          return Inputs{hs.get(dq[0]),
                        hs.get(dq[1]),
                        hs.added(dk, 502),
                        hs.added(dv, 503),
                        slot_gradients(hs, dsk, 504, slots + 1, kn, first.slot_stride),
                        slot_gradients(hs, dsv, 505, slots + 1, kn, first.slot_stride)};
        };
        check_gradients(x, loss, grads, "attention");
      }
    }
  }
}

// One attention layer as its slots' only reader: attention_backward_sole_reader's gradients of
// q, k, v and of every slot against finite differences of the forward.
TEST_CASE("MoDA attention gradients of a layer that is its slots' only reader",
          "[grad][ops][attention]") {
  Harness hs;
  for (int64_t slots : {0, 1, 3}) {
    for (int64_t group : {1, 3}) {
      SECTION(fmt::format("S={} G={}", slots, group)) {
        AttentionShape s{2, 5, 2 * group, 2, 4, slots, 0};
        const int64_t R = s.batch * s.seq_len, qn = R * s.q_heads * s.head_dim,
                      kn = R * s.kv_heads * s.head_dim;
        s.slot_stride = kn + 4;  // padded stride: the gap must keep its values
        const int64_t sn = std::max<int64_t>(slots * s.slot_stride, 1);
        const Inputs x = {test::random_normal(qn, 1), test::random_normal(kn, 2),
                          test::random_normal(kn, 3), test::random_normal(sn, 4),
                          test::random_normal(sn, 5)};
        const auto cot = test::random_normal(qn, 6);
        auto fwd = [&](const Inputs& in, Tensor& out, Tensor& lse) {
          hs.be->attention_forward(s, hs.put(in[0]), hs.put(in[1]), hs.put(in[2]), hs.put(in[3]),
                                   hs.put(in[4]), out, lse);
        };
        auto loss = [&](const Inputs& in) {
          Tensor out = hs.zeros(qn), lse = hs.zeros(R * s.q_heads);
          fwd(in, out, lse);
          return dot(hs.get(out), cot);
        };
        auto grads = [&](const Inputs& in) {
          Tensor out = hs.zeros(qn), lse = hs.zeros(R * s.q_heads);
          fwd(in, out, lse);
          Tensor dq = hs.start(qn, 500), dk = hs.start(kn, 502), dv = hs.start(kn, 503),
                 dsk = hs.start(sn, 504), dsv = hs.start(sn, 505);
          hs.be->attention_backward_sole_reader(s, hs.put(cot), hs.put(in[0]), hs.put(in[1]),
                                                hs.put(in[2]), hs.put(in[3]), hs.put(in[4]), out,
                                                lse, dq, dk, dv, dsk, dsv);
          return Inputs{hs.get(dq), hs.added(dk, 502), hs.added(dv, 503),
                        slot_gradients(hs, dsk, 504, slots, kn, s.slot_stride),
                        slot_gradients(hs, dsv, 505, slots, kn, s.slot_stride)};
        };
        check_gradients(x, loss, grads, "attention, sole reader");
      }
    }
  }
}

TEST_CASE("swiglu gradients", "[grad][ops]") {
  Harness hs;
  const int64_t rows = 4, hidden = 5, ld = 2 * hidden + 3;
  const Inputs x = {test::random_normal(rows * ld, 1, 2.0)};
  const auto cot = test::random_normal(rows * hidden, 2);
  auto loss = [&](const Inputs& in) {
    Tensor out = hs.zeros(rows * hidden);
    hs.be->swiglu_forward(hs.put(in[0]), out, rows, hidden, ld);
    return dot(hs.get(out), cot);
  };
  auto grads = [&](const Inputs& in) {
    Tensor din = hs.start(rows * ld, 500);
    hs.be->swiglu_backward(hs.put(cot), hs.put(in[0]), din, rows, hidden, ld);
    auto got = hs.get(din);
    const auto start = test::random_normal(got.size(), 500);
    // Columns past 2F are not the op's: they keep their start and carry no gradient.
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 2 * hidden; c < ld; ++c) {
        REQUIRE(got[r * ld + c] == start[r * ld + c]);
        got[r * ld + c] = 0;
      }
    }
    return Inputs{got};
  };
  check_gradients(x, loss, grads, "swiglu");
}

TEST_CASE("LM head cross-entropy with z-loss gradients", "[grad][ops]") {
  Harness hs;
  const int64_t rows = 5, dim = 6, vocab = 11;
  const double z = 0.05, scale = 0.3;
  const Inputs x = {test::random_normal(rows * dim, 1), test::random_normal(vocab * dim, 2)};
  const auto targets = test::random_tokens(rows, vocab, 3);
  Tensor tgt = hs.be->alloc(Role::index, rows);
  hs.be->upload_tokens(tgt, targets);
  auto loss = [&](const Inputs& in) {
    Tensor ce = hs.zeros(rows), lse = hs.zeros(rows);
    hs.be->lm_head_cross_entropy(hs.put(in[0]), hs.put(in[1]), tgt, ce, lse, Tensor{}, Tensor{},
                                 rows, dim, vocab, z, scale);
    double l = 0;
    const auto c = hs.get(ce), s = hs.get(lse);
    for (int64_t r = 0; r < rows; ++r) l += scale * (c[r] + z * s[r] * s[r]);
    return l;
  };
  auto grads = [&](const Inputs& in) {
    Tensor ce = hs.zeros(rows), lse = hs.zeros(rows), dx = hs.start(rows * dim, 500),
           dw = hs.start(vocab * dim, 501);
    hs.be->lm_head_cross_entropy(hs.put(in[0]), hs.put(in[1]), tgt, ce, lse, dx, dw, rows, dim,
                                 vocab, z, scale);
    return Inputs{hs.get(dx), hs.added(dw, 501)};
  };
  check_gradients(x, loss, grads, "lm_head_cross_entropy");
}

TEST_CASE("embedding gradient accumulates repeated tokens", "[grad][ops]") {
  Harness hs;
  const int64_t rows = 6, dim = 3, vocab = 4;
  const std::vector<int32_t> tokens = {1, 3, 1, 0, 3, 1};
  Tensor tok = hs.be->alloc(Role::index, rows);
  hs.be->upload_tokens(tok, tokens);
  const Inputs x = {test::random_normal(vocab * dim, 1)};
  const auto cot = test::random_normal(rows * dim, 2);
  auto loss = [&](const Inputs& in) {
    Tensor out = hs.zeros(rows * dim);
    hs.be->embedding_forward(tok, hs.put(in[0]), out, rows, dim);
    return dot(hs.get(out), cot);
  };
  auto grads = [&](const Inputs&) {
    Tensor dt = hs.start(vocab * dim, 501);
    hs.be->embedding_backward(tok, hs.put(cot), dt, rows, dim);
    return Inputs{hs.added(dt, 501)};
  };
  check_gradients(x, loss, grads, "embedding");
}
