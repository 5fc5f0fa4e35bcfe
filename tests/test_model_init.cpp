// Model::init_parameters: the values depend on the seed only (not on the thread count that draws
// them in parallel blocks), matrices are normal(0, init_std) truncated at 3 std, norms are 1.
#include <omp.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "moda/model.hpp"
#include "test_util.hpp"

namespace moda {

TEST_CASE("parameter init: the same values for any thread count, truncated normal, norms at 1",
          "[model]") {
  Config c = test::tiny_variant_config({NormPlacement::reordered, true, true, false, 2});
  c.model.vocab_size = 100000;  // embedding and head of several init blocks (2^20 values each)
  c.model.init_std = 0.02;
  auto backend = make_backend("cpu64", 1);
  Model model(c, *backend, 1, 8);
  const int64_t total = model.layout().total();
  REQUIRE(total > (int64_t{2} << 20));
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  model.init_parameters(5);
  const std::vector<double> one_thread = model.parameters();
  omp_set_num_threads(3);
  model.init_parameters(5);
  const std::vector<double> three_threads = model.parameters();
  model.init_parameters(6);
  const std::vector<double> other_seed = model.parameters();
  omp_set_num_threads(threads);
  CHECK(one_thread == three_threads);
  CHECK(one_thread != other_seed);
  // Blocks have generators of their own: the second block does not repeat the first.
  const size_t block = size_t{1} << 20;
  int64_t repeated = 0;
  for (size_t i = 0; i < 64; ++i) repeated += one_thread[i] == one_thread[block + i];
  CHECK(repeated == 0);

  // A normal truncated at 3 std has 0.9866 of its std.
  const double std_dev = c.model.init_std, truncated = 0.98658 * std_dev;
  for (const ParamInfo& p : model.layout().params()) {
    INFO(p.name);
    const auto first = one_thread.begin() + p.offset;
    const std::vector<double> v(first, first + p.numel);
    if (p.shape.size() == 1) {
      CHECK(std::all_of(v.begin(), v.end(), [](double x) { return x == 1.0; }));
      continue;
    }
    double sum = 0, squares = 0, widest = 0;
    for (double x : v) {
      sum += x;
      squares += x * x;
      widest = std::max(widest, std::abs(x));
    }
    const auto n = static_cast<double>(p.numel);
    CHECK(widest <= 3.0 * std_dev);
    // Loose enough for the smallest matrices (a few dozen values), tight for the large ones.
    const double spread = 5.0 / std::sqrt(n);
    CHECK(std::abs(sum / n) <= spread * truncated);
    CHECK(std::abs(std::sqrt(squares / n) / truncated - 1.0) <= spread);
  }
}

}  // namespace moda
