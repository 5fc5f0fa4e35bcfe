// The per-phase table of runtime.profile_step: op records grouped by layer family.
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <utility>

#include "moda/profiling.hpp"

namespace moda {

namespace {

// Layer names of each GEMM shape (n, k) of the model; layers of equal shape share a key.
std::map<std::pair<int64_t, int64_t>, std::string> gemm_names(const ModelShape& s) {
  std::map<std::pair<int64_t, int64_t>, std::string> names;
  const auto add = [&](int64_t n, int64_t k, const std::string& name) {
    std::string& joined = names[{n, k}];
    if (joined.empty()) {
      joined = name;
    } else if (("/" + joined + "/").find("/" + name + "/") == std::string::npos) {
      joined += "/" + name;
    }
  };
  for (int64_t l = 0; l < s.n_layers; ++l) {
    add(s.qkv_rows(l), s.d_model, "attn.qkv");
    add(s.d_model, s.q_width(), "attn.out");
    add(s.mlp_in_rows(l), s.d_model, "mlp.in");
    add(s.d_model, s.mlp_hidden, "mlp.down");
  }
  return names;
}

std::string family_of(const OpRecord& r,
                      const std::map<std::pair<int64_t, int64_t>, std::string>& gemms) {
  if (r.op == "matmul" || r.op == "matmul_backward") {
    const auto it = gemms.find({r.n, r.k});
    const std::string layer = it != gemms.end() ? it->second : fmt::format("{}x{}", r.n, r.k);
    return fmt::format("gemm {} {}", layer, r.op == "matmul" ? "fwd" : "bwd");
  }
  static const std::map<std::string, std::string> kFamilies = {
      {"embedding_forward", "embedding"},
      {"embedding_backward", "embedding"},
      {"attention_forward", "attention fwd"},
      {"attention_backward", "attention bwd"},
      {"depth_slot_backward", "depth slot grads"},
      {"rmsnorm_forward", "norms"},
      {"rmsnorm_backward", "norms"},
      {"residual_norm_forward", "norms"},
      {"residual_norm_backward", "norms"},
      {"qkv_norm_rope_forward", "qkv_norm_rope"},
      {"qkv_norm_rope_backward", "qkv_norm_rope"},
      {"swiglu_forward", "swiglu"},
      {"swiglu_backward", "swiglu"},
      {"lm_head_cross_entropy", "lm_head+CE"},
      {"lm_head_logits", "lm_head+CE"},
      {"adamw", "adamw"},
      {"segment_sum_squares", "grad norm"},
      {"communication", "communication"},
  };
  const auto it = kFamilies.find(r.op);
  return it != kFamilies.end() ? it->second : "other";
}

}  // namespace

std::vector<ProfileRow> group_profile(std::span<const OpRecord> records, const ModelShape& shape) {
  const auto gemms = gemm_names(shape);
  std::map<std::string, ProfileRow> by_family;
  for (const OpRecord& r : records) {
    const std::string family = family_of(r, gemms);
    ProfileRow& row = by_family[family];
    row.family = family;
    ++row.calls;
    row.ms += r.ms;
  }
  std::vector<ProfileRow> rows;
  for (auto& [family, row] : by_family) rows.push_back(std::move(row));
  std::stable_sort(rows.begin(), rows.end(),
                   [](const ProfileRow& a, const ProfileRow& b) { return a.ms > b.ms; });
  return rows;
}

std::string format_profile(std::span<const ProfileRow> rows, int64_t step, double step_ms,
                           const std::string& timing) {
  size_t width = 32;
  for (const ProfileRow& r : rows) width = std::max(width, r.family.size());
  const auto share = [&](double ms) { return fmt::format("{:.1f}%", 100.0 * ms / step_ms); };
  std::string out = fmt::format("profile of step {}: {:.3f} ms wall; {} around each backend op\n",
                                step, step_ms, timing);
  out +=
      fmt::format("    {:<{}} {:>6} {:>10} {:>7}\n", "family", width, "calls", "total ms", "share");
  double inside = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const ProfileRow& r = rows[i];
    out += fmt::format("  {} {:<{}} {:>6} {:>10.3f} {:>7}\n", i < 5 ? '*' : ' ', r.family, width,
                       r.calls, r.ms, share(r.ms));
    inside += r.ms;
  }
  out += fmt::format("    {:<{}} {:>6} {:>10.3f} {:>7}\n", "(outside ops: host, launch gaps)",
                     width, "", step_ms - inside, share(step_ms - inside));
  out += "  (* = the five largest)";
  return out;
}

}  // namespace moda
