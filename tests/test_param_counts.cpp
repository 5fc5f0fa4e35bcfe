// Parameter counts of the paper's configs (design.md section 3, docs/parameter_counts.md).
#include <fmt/format.h>

#include <catch2/catch.hpp>
#include <cmath>

#include "moda/model.hpp"

using namespace moda;

namespace {

int64_t paper_count(const std::string& name) {
  const Config c = load_config(std::string(MODA_SOURCE_DIR) + "/configs/paper/" + name + ".yaml");
  return count_params(ModelShape(c)).paper;
}

}  // namespace

TEST_CASE("Table 3 parameter counts", "[config][params]") {
  // The paper prints millions with one decimal; our exact counts must fall in [value, value +
  // 0.1M) (the table truncates: see docs/parameter_counts.md).
  const std::vector<std::pair<std::string, double>> rows = {
      {"table3_row1_olmo2_36l", 669.0},         {"table3_row2_olmo2_38l", 700.5},
      {"table3_row3_moda_depth_kv", 669.0},     {"table3_row4_moda_ffn_kv", 705.7},
      {"table3_row5_moda_attn_kv_proj", 742.4},
  };
  for (const auto& [name, millions] : rows) {
    const int64_t n = paper_count(name);
    INFO(fmt::format("{}: {} parameters, paper {}M", name, n, millions));
    CHECK(static_cast<double>(n) >= millions * 1e6);
    CHECK(static_cast<double>(n) < (millions + 0.1) * 1e6);
  }
  // The exact values, so a layout change cannot hide inside the 0.1M window.
  CHECK(paper_count("table3_row1_olmo2_36l") == 669045760);
  CHECK(paper_count("table3_row4_moda_ffn_kv") == 705763840);
  CHECK(paper_count("table3_row5_moda_attn_kv_proj") == 742481920);
}

TEST_CASE("MoDA without extra projections adds no parameters", "[config][params]") {
  CHECK(paper_count("table3_row3_moda_depth_kv") == paper_count("table3_row1_olmo2_36l"));
  CHECK(paper_count("table6_moda_48l_post") == paper_count("table6_olmo2_48l_post"));
}

TEST_CASE("MFU counts the devices of every data-parallel rank", "[config][params]") {
  const double flops = 5.0e9, peak = 989e12;
  const double one = model_flops_utilization(70000, flops, peak, 1);
  CHECK(one == Approx(70000 * flops / peak).epsilon(1e-12));
  // Two ranks at the same speed per device log twice the tokens/s, and the same MFU.
  CHECK(model_flops_utilization(140000, flops, peak, 2) == Approx(one).epsilon(1e-12));
  CHECK(std::isnan(model_flops_utilization(70000, flops, 0, 1)));
}
