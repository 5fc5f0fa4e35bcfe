#include "export/hf_export.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <stdexcept>

#include "checkpoint/file_io.hpp"
#include "moda/checkpoint.hpp"
#include "moda/model.hpp"
#include "moda/tokenizer.hpp"

namespace moda {

namespace fs = std::filesystem;

namespace {

struct TokenIds {
  int64_t eos = 0, pad = 0;
};

TokenIds token_ids(const std::string& tokenizer) {
  if (tokenizer == "byte") return {256, 257};
  if (tokenizer == "gpt2") return {50256, 50256};
  if (tokenizer == "dolma2") return {100257, 100277};
  throw std::invalid_argument(fmt::format("unknown tokenizer \"{}\"", tokenizer));
}

std::string json_double(double x) { return fmt::format("{}", x); }

// Names of the two per-layer norms under each placement (model_type "moda" only uses the
// pre-norm names; the others are Olmo2ForCausalLM's).
std::pair<std::string, std::string> norm_names(NormPlacement p) {
  if (p == NormPlacement::pre) return {"input_layernorm", "pre_feedforward_layernorm"};
  return {"post_attention_layernorm", "post_feedforward_layernorm"};
}

fs::path find_repo_with(const fs::path& start, const fs::path& relative) {
  for (fs::path p = start; !p.empty(); p = p.parent_path()) {
    std::error_code ec;
    if (fs::exists(p / relative, ec)) return p;
    if (p == p.parent_path()) break;
  }
  return {};
}

}  // namespace

bool olmo2_compatible(const Config& config) {
  return !config.moda.enabled && config.model.norm_placement == NormPlacement::reordered;
}

std::vector<HfTensor> hf_tensors(const Config& config) {
  const ModelShape s(config);
  const ParamLayout layout(s);
  const int64_t D = s.d_model, qw = s.q_width(), kw = s.kv_width(), F = s.mlp_hidden;
  const auto [attn_norm_name, mlp_norm_name] = norm_names(s.placement);
  std::vector<HfTensor> out;
  auto add = [&](std::string name, std::vector<int64_t> shape, int64_t offset) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    out.push_back({std::move(name), std::move(shape), offset, numel});
  };
  for (const ParamInfo& p : layout.params()) {
    // Split "layers.<l>.<rest>".
    if (p.name.starts_with("layers.")) {
      const size_t dot = p.name.find('.', 7);
      const int64_t l = std::stoll(p.name.substr(7, dot - 7));
      const std::string rest = p.name.substr(dot + 1);
      const std::string pre = fmt::format("model.layers.{}.", l);
      const int64_t o = p.offset;
      if (rest == "attn.qkv") {
        add(pre + "self_attn.q_proj.weight", {qw, D}, o);
        add(pre + "self_attn.k_proj.weight", {kw, D}, o + qw * D);
        add(pre + "self_attn.v_proj.weight", {kw, D}, o + (qw + kw) * D);
        if (s.has_attn_slot_proj(l)) {
          add(pre + "self_attn.depth_k_proj.weight", {kw, D}, o + (qw + 2 * kw) * D);
          add(pre + "self_attn.depth_v_proj.weight", {kw, D}, o + (qw + 3 * kw) * D);
        }
      } else if (rest == "attn.out") {
        add(pre + "self_attn.o_proj.weight", {D, qw}, o);
      } else if (rest == "mlp.in") {
        add(pre + "mlp.gate_proj.weight", {F, D}, o);
        add(pre + "mlp.up_proj.weight", {F, D}, o + F * D);
        if (s.has_ffn_slot(l)) {
          add(pre + "mlp.depth_k_proj.weight", {kw, D}, o + 2 * F * D);
          add(pre + "mlp.depth_v_proj.weight", {kw, D}, o + (2 * F + kw) * D);
        }
      } else if (rest == "mlp.down") {
        add(pre + "mlp.down_proj.weight", {D, F}, o);
      } else if (rest == "attn.q_norm") {
        add(pre + "self_attn.q_norm.weight", {qw}, o);
      } else if (rest == "attn.k_norm") {
        add(pre + "self_attn.k_norm.weight", {kw}, o);
      } else if (rest == "attn.slot_k_norm") {
        add(pre + "self_attn.depth_k_norm.weight", {kw}, o);
      } else if (rest == "mlp.slot_k_norm") {
        add(pre + "mlp.depth_k_norm.weight", {kw}, o);
      } else if (rest == "attn_norm") {
        add(pre + attn_norm_name + ".weight", {D}, o);
      } else if (rest == "mlp_norm") {
        add(pre + mlp_norm_name + ".weight", {D}, o);
      } else {
        throw std::logic_error("export: no HF name for parameter " + p.name);
      }
    } else if (p.name == "embed") {
      add("model.embed_tokens.weight", p.shape, p.offset);
    } else if (p.name == "lm_head") {
      add("lm_head.weight", p.shape, p.offset);
    } else if (p.name == "final_norm") {
      add("model.norm.weight", p.shape, p.offset);
    } else {
      throw std::logic_error("export: no HF name for parameter " + p.name);
    }
  }
  return out;
}

std::string hf_config_json(const Config& c, SafeDType dtype) {
  const ModelShape s(c);
  const TokenIds ids = token_ids(c.data.tokenizer);
  const bool olmo2 = olmo2_compatible(c);
  const std::string torch_dtype = dtype == SafeDType::bf16 ? "bfloat16" : "float32";
  std::string j = "{\n";
  auto field = [&](std::string_view key, const std::string& value) {
    j += fmt::format("  \"{}\": {},\n", key, value);
  };
  auto str = [](std::string_view v) { return fmt::format("\"{}\"", v); };
  auto boolean = [](bool b) { return std::string(b ? "true" : "false"); };
  if (olmo2) {
    field("architectures", "[\"Olmo2ForCausalLM\"]");
    field("model_type", str("olmo2"));
  } else {
    field("architectures", "[\"ModaForCausalLM\"]");
    field("model_type", str("moda"));
    field("auto_map",
          "{\"AutoConfig\": \"configuration_moda.ModaConfig\", \"AutoModelForCausalLM\": "
          "\"modeling_moda.ModaForCausalLM\"}");
    field("norm_placement", str(to_string(s.placement)));
    field("moda", boolean(s.moda));
    field("moda_ffn_kv", boolean(s.ffn_kv));
    field("moda_attn_kv_proj", boolean(s.attn_kv_proj));
    field("head_dim", std::to_string(s.head_dim));
  }
  field("attention_bias", "false");
  field("attention_dropout", "0.0");
  field("hidden_act", str("silu"));
  field("hidden_size", std::to_string(s.d_model));
  field("intermediate_size", std::to_string(s.mlp_hidden));
  field("initializer_range", json_double(c.model.init_std));
  field("max_position_embeddings", std::to_string(c.model.max_seq_len));
  field("num_attention_heads", std::to_string(s.q_heads));
  field("num_hidden_layers", std::to_string(s.n_layers));
  field("num_key_value_heads", std::to_string(s.kv_heads));
  field("rms_norm_eps", json_double(c.model.norm_eps));
  field("rope_theta", json_double(c.model.rope_theta));
  field("rope_parameters", fmt::format("{{\"rope_type\": \"default\", \"rope_theta\": {}}}",
                                       json_double(c.model.rope_theta)));
  field("tie_word_embeddings", boolean(s.tied));
  field("torch_dtype", str(torch_dtype));
  field("use_cache", "true");
  field("vocab_size", std::to_string(s.padded_vocab));
  field("bos_token_id", "null");
  field("eos_token_id", std::to_string(ids.eos));
  field("pad_token_id", std::to_string(ids.pad));
  j += fmt::format("  \"moda_tokenizer\": \"{}\"\n}}\n", c.data.tokenizer);
  return j;
}

std::string find_hf_tools() {
  if (const char* env = std::getenv("MODA_HF_TOOLS"); env != nullptr && *env != '\0') return env;
  const fs::path rel = fs::path("tools") / "hf" / "modeling_moda.py";
  std::error_code ec;
  fs::path repo = find_repo_with(fs::current_path(ec), rel);
  if (repo.empty()) {
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) repo = find_repo_with(exe.parent_path(), rel);
  }
  return repo.empty() ? std::string() : (repo / "tools" / "hf").string();
}

void export_hf(const Config& config, std::span<const float> params, const std::string& out_dir,
               const ExportOptions& options) {
  const ModelShape shape(config);
  const ParamLayout layout(shape);
  if (static_cast<int64_t>(params.size()) != layout.total()) {
    throw std::invalid_argument(fmt::format("export: {} values for a model of {} parameters",
                                            params.size(), layout.total()));
  }
  const bool olmo2 = olmo2_compatible(config);
  std::string tools;
  if (!olmo2) {
    tools = options.tools_dir.empty() ? find_hf_tools() : options.tools_dir;
    if (tools.empty() || !fs::exists(fs::path(tools) / "modeling_moda.py")) {
      throw std::runtime_error(fmt::format(
          "export: this model (moda.enabled {}, norm_placement {}) needs the modeling files of "
          "tools/hf/, which were not found{}; run from the repository, pass --hf-tools or set "
          "MODA_HF_TOOLS",
          config.moda.enabled, to_string(config.model.norm_placement),
          tools.empty() ? "" : " in " + tools));
    }
  }
  fs::create_directories(out_dir);
  std::vector<SafeTensor> tensors;
  for (const HfTensor& t : hf_tensors(config)) {
    SafeTensor st;
    st.name = t.name;
    st.shape = t.shape;
    st.f32 = params.subspan(static_cast<size_t>(t.offset), static_cast<size_t>(t.numel));
    st.dtype = options.dtype;
    tensors.push_back(std::move(st));
  }
  const fs::path out(out_dir);
  write_safetensors((out / "model.safetensors").string(), tensors, {{"format", "pt"}});
  fileio::write_file((out / "config.json").string(), hf_config_json(config, options.dtype));
  const TokenIds ids = token_ids(config.data.tokenizer);
  fileio::write_file(
      (out / "generation_config.json").string(),
      fmt::format("{{\n  \"eos_token_id\": {},\n  \"pad_token_id\": {}\n}}\n", ids.eos, ids.pad));
  if (!olmo2) {
    for (const char* file : {"modeling_moda.py", "configuration_moda.py"}) {
      fs::copy_file(fs::path(tools) / file, out / file, fs::copy_options::overwrite_existing);
    }
  }
  const std::string cache =
      options.tokenizer_cache.empty() ? default_tokenizer_cache() : options.tokenizer_cache;
  write_hf_tokenizer(config.data.tokenizer, cache, config.model.max_seq_len, out_dir);
  if (options.log) {
    spdlog::info("exported {} tensors ({} parameters, {}) as {} to {}", tensors.size(),
                 layout.total(), to_string(options.dtype),
                 olmo2 ? "Olmo2ForCausalLM" : "ModaForCausalLM (trust_remote_code)", out_dir);
  }
}

void export_checkpoint_hf(const std::string& checkpoint_dir, const std::string& out_dir,
                          const ExportOptions& options) {
  const CheckpointMeta meta = load_checkpoint_meta(checkpoint_dir);
  const Config config =
      parse_config(meta.config_yaml, (fs::path(checkpoint_dir) / "config.yaml").string());
  const CheckpointState state =
      load_checkpoint(checkpoint_dir, ShardRange{0, meta.total_params}, false);
  const ParamLayout layout{ModelShape(config)};
  if (layout.total() != meta.total_params) {
    throw CheckpointError(fmt::format("{}: {} parameters, but its config describes {}",
                                      checkpoint_dir, meta.total_params, layout.total()));
  }
  export_hf(config, state.shard.master, out_dir, options);
}

}  // namespace moda
