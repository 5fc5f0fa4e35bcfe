// Hugging Face export (safetensors read back by a parser of its own here, names, shapes, values),
// tokenizer files, and the evaluation helpers (log-likelihoods, multiple-choice files).
#include <fmt/format.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "export/evaluate.hpp"
#include "export/hf_export.hpp"
#include "moda/checkpoint.hpp"
#include "moda/model.hpp"
#include "test_util.hpp"
#include "tokenizer/json_scan.hpp"

using namespace moda;
namespace fs = std::filesystem;

namespace {

std::string temp_out(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / fmt::format("moda_export_{}_{}", name, ::getpid());
  fs::remove_all(p);
  return p.string();
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct ReadTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

// A safetensors reader written from the format description, independent of the writer.
std::map<std::string, ReadTensor> read_safetensors(const std::string& path) {
  const std::string file = slurp(path);
  REQUIRE(file.size() >= 8);
  uint64_t n = 0;
  std::memcpy(&n, file.data(), 8);
  REQUIRE(n % 8 == 0);
  REQUIRE(8 + n <= file.size());
  const std::string header = file.substr(8, n);
  const size_t data_start = 8 + n;
  std::map<std::string, ReadTensor> out;
  // Top-level members: walk the object by scanning for "name": {...} pairs with json_scan.
  size_t pos = 1;
  uint64_t expected_offset = 0;
  std::vector<std::pair<uint64_t, std::string>> by_offset;
  const std::string object = header.substr(0, header.find_last_of('}') + 1);
  while (true) {
    const size_t q = header.find('"', pos);
    if (q == std::string::npos) break;
    const size_t q2 = header.find('"', q + 1);
    const std::string name = header.substr(q + 1, q2 - q - 1);
    const auto value = json::find_member(object, name);
    REQUIRE(value.has_value());
    pos = header.find(std::string(*value), q2) + value->size();
    if (name == "__metadata__") continue;
    ReadTensor t;
    t.dtype = *json::string_member(*value, "dtype");
    for (std::string_view d : json::array_elements(*json::find_member(*value, "shape"))) {
      t.shape.push_back(std::stoll(std::string(d)));
    }
    const auto offs = json::array_elements(*json::find_member(*value, "data_offsets"));
    REQUIRE(offs.size() == 2);
    const uint64_t b = std::stoull(std::string(offs[0])), e = std::stoull(std::string(offs[1]));
    REQUIRE(data_start + e <= file.size());
    t.bytes = file.substr(data_start + b, e - b);
    by_offset.emplace_back(b, name);
    expected_offset = std::max(expected_offset, e);
    out[name] = std::move(t);
  }
  CHECK(data_start + expected_offset == file.size());  // no trailing bytes, no holes at the end
  return out;
}

std::vector<float> as_floats(const ReadTensor& t) {
  std::vector<float> v(t.bytes.size() / 4);
  std::memcpy(v.data(), t.bytes.data(), v.size() * 4);
  return v;
}

// Rows [row0, row0 + rows) of a [*, cols] parameter, as float.
std::vector<float> rows_of(const std::vector<double>& params, const ParamInfo& p, int64_t row0,
                           int64_t rows, int64_t cols) {
  const auto begin = params.begin() + p.offset + row0 * cols;
  return std::vector<float>(begin, begin + rows * cols);
}

}  // namespace

TEST_CASE("HF names cover every parameter exactly once in every variant", "[export]") {
  for (const auto placement : {NormPlacement::reordered, NormPlacement::pre, NormPlacement::post}) {
    for (int flags = 0; flags < 8; ++flags) {
      test::Variant v{placement, (flags & 1) != 0, (flags & 2) != 0, (flags & 4) != 0, 2};
      if (!v.moda && (v.ffn_kv || v.attn_kv_proj)) continue;
      Config c = test::tiny_variant_config(v);
      c.model.tie_embeddings = flags == 0;
      const ParamLayout layout{ModelShape(c)};
      std::vector<int> covered(static_cast<size_t>(layout.total()), 0);
      std::set<std::string> names;
      for (const HfTensor& t : hf_tensors(c)) {
        CHECK(names.insert(t.name).second);
        for (int64_t i = t.offset; i < t.offset + t.numel; ++i) ++covered[static_cast<size_t>(i)];
      }
      CHECK(std::all_of(covered.begin(), covered.end(), [](int n) { return n == 1; }));
      CHECK(names.count("model.norm.weight") == (placement != NormPlacement::post));
      CHECK(names.count("lm_head.weight") == !c.model.tie_embeddings);
      CHECK(names.count("model.layers.0.mlp.depth_k_proj.weight") == v.ffn_kv);
      CHECK(names.count("model.layers.1.self_attn.depth_v_proj.weight") == v.attn_kv_proj);
      CHECK(names.count("model.layers.2.mlp.depth_k_proj.weight") == 0);  // last layer
      CHECK(olmo2_compatible(c) == (!v.moda && placement == NormPlacement::reordered));
    }
  }
}

TEST_CASE("export of a tiny OLMo2 model: safetensors names, shapes and values", "[export]") {
  Config c = test::tiny_variant_config({NormPlacement::reordered, false, false, false, 2});
  c.data.tokenizer = "byte";
  auto backend = make_backend("cpu", 1);
  Model model(c, *backend, 1, 8);
  model.init_parameters(17);
  std::vector<double> params = model.parameters();
  // Norm weights are 1 after init; make them distinct so a mix-up shows.
  for (size_t i = 0; i < params.size(); ++i) params[i] += 1e-3 * static_cast<double>(i % 97);
  model.set_parameters(params);
  const std::vector<float> flat(params.begin(), params.end());
  const std::string out = temp_out("olmo2");
  ExportOptions options;
  options.log = false;
  export_hf(c, flat, out, options);

  const auto tensors = read_safetensors(out + "/model.safetensors");
  const ModelShape s(c);
  const ParamLayout layout(s);
  const int64_t D = s.d_model, qw = s.q_width(), kw = s.kv_width(), F = s.mlp_hidden;
  std::set<std::string> expected = {"model.embed_tokens.weight", "model.norm.weight",
                                    "lm_head.weight"};
  for (int l = 0; l < 3; ++l) {
    for (const char* n :
         {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
          "self_attn.q_norm", "self_attn.k_norm", "post_attention_layernorm",
          "post_feedforward_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}) {
      expected.insert(fmt::format("model.layers.{}.{}.weight", l, n));
    }
  }
  std::set<std::string> got;
  for (const auto& [name, t] : tensors) {
    got.insert(name);
    CHECK(t.dtype == "F32");
  }
  CHECK(got == expected);

  auto check = [&](const std::string& name, std::vector<int64_t> shape, std::vector<float> want) {
    INFO(name);
    REQUIRE(tensors.count(name) == 1);
    CHECK(tensors.at(name).shape == shape);
    CHECK(as_floats(tensors.at(name)) == want);
  };
  for (int l = 0; l < 3; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    const std::string q = fmt::format("layers.{}.", l);
    const ParamInfo& qkv = layout.find(q + "attn.qkv");
    const ParamInfo& in = layout.find(q + "mlp.in");
    check(p + "self_attn.q_proj.weight", {qw, D}, rows_of(params, qkv, 0, qw, D));
    check(p + "self_attn.k_proj.weight", {kw, D}, rows_of(params, qkv, qw, kw, D));
    check(p + "self_attn.v_proj.weight", {kw, D}, rows_of(params, qkv, qw + kw, kw, D));
    check(p + "self_attn.o_proj.weight", {D, qw},
          rows_of(params, layout.find(q + "attn.out"), 0, D, qw));
    check(p + "mlp.gate_proj.weight", {F, D}, rows_of(params, in, 0, F, D));
    check(p + "mlp.up_proj.weight", {F, D}, rows_of(params, in, F, F, D));
    check(p + "mlp.down_proj.weight", {D, F},
          rows_of(params, layout.find(q + "mlp.down"), 0, D, F));
    check(p + "self_attn.q_norm.weight", {qw},
          rows_of(params, layout.find(q + "attn.q_norm"), 0, 1, qw));
    check(p + "self_attn.k_norm.weight", {kw},
          rows_of(params, layout.find(q + "attn.k_norm"), 0, 1, kw));
    check(p + "post_attention_layernorm.weight", {D},
          rows_of(params, layout.find(q + "attn_norm"), 0, 1, D));
    check(p + "post_feedforward_layernorm.weight", {D},
          rows_of(params, layout.find(q + "mlp_norm"), 0, 1, D));
  }
  check("model.embed_tokens.weight", {s.padded_vocab, D},
        rows_of(params, layout.find("embed"), 0, s.padded_vocab, D));
  check("lm_head.weight", {s.padded_vocab, D},
        rows_of(params, layout.find("lm_head"), 0, s.padded_vocab, D));
  check("model.norm.weight", {D}, rows_of(params, layout.find("final_norm"), 0, 1, D));

  const std::string config = slurp(out + "/config.json");
  CHECK(json::find_member(config, "architectures").value() == "[\"Olmo2ForCausalLM\"]");
  CHECK(json::string_member(config, "model_type").value() == "olmo2");
  CHECK(json::find_member(config, "vocab_size").value() == std::to_string(s.padded_vocab));
  CHECK(json::find_member(config, "num_key_value_heads").value() == "2");
  CHECK(json::find_member(config, "intermediate_size").value() == "12");
  CHECK(json::find_member(config, "tie_word_embeddings").value() == "false");
  CHECK(json::find_member(config, "rope_theta").value() == "100");
  CHECK(json::find_member(config, "eos_token_id").value() == "256");
  CHECK_FALSE(fs::exists(out + "/modeling_moda.py"));

  // The byte tokenizer: ids 0..255 are the bytes in GPT-2's byte-to-unicode spelling.
  const std::string tok = slurp(out + "/tokenizer.json");
  const auto model_json = json::find_member(tok, "model");
  REQUIRE(model_json.has_value());
  const auto vocab = json::find_member(*model_json, "vocab");
  CHECK(json::find_member(*vocab, "A").value() == "65");
  CHECK(json::find_member(*vocab, "\xC4\xA0").value() == "32");  // "Ġ" is the space
  CHECK(json::find_member(*vocab, "\xC4\x80").value() == "0");   // "Ā" is byte 0
  CHECK(json::array_elements(*json::find_member(*model_json, "merges")).empty());
  CHECK(json::string_member(slurp(out + "/tokenizer_config.json"), "eos_token").value() ==
        "<|endoftext|>");

  // bf16: the same tensors rounded to nearest even.
  options.dtype = SafeDType::bf16;
  const std::string out16 = temp_out("olmo2_bf16");
  export_hf(c, flat, out16, options);
  const auto t16 = read_safetensors(out16 + "/model.safetensors");
  const ReadTensor& emb = t16.at("model.embed_tokens.weight");
  CHECK(emb.dtype == "BF16");
  REQUIRE(emb.bytes.size() == static_cast<size_t>(s.padded_vocab * D * 2));
  const int64_t e0 = layout.find("embed").offset;
  for (int64_t i = 0; i < 50; ++i) {
    uint16_t bits = 0;
    std::memcpy(&bits, emb.bytes.data() + 2 * i, 2);
    CHECK(bits == float_to_bf16(flat[static_cast<size_t>(e0 + i)]));
    const uint32_t widened = static_cast<uint32_t>(bits) << 16;
    float back = 0;
    std::memcpy(&back, &widened, 4);
    CHECK(std::abs(back - flat[static_cast<size_t>(e0 + i)]) <=
          std::abs(flat[static_cast<size_t>(e0 + i)]) * (1.0 / 256));
  }
  fs::remove_all(out);
  fs::remove_all(out16);
}

TEST_CASE("bf16 conversion rounds to nearest even", "[export]") {
  CHECK(float_to_bf16(1.0f) == 0x3F80);
  CHECK(float_to_bf16(-2.0f) == 0xC000);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even mantissa (1.0).
  CHECK(float_to_bf16(1.0f + 1.0f / 256) == 0x3F80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6).
  CHECK(float_to_bf16(1.0f + 3.0f / 256) == 0x3F82);
  CHECK(float_to_bf16(1.0f + 1.0f / 256 + 1.0f / 4096) == 0x3F81);
  CHECK((float_to_bf16(std::nanf("")) & 0x7FFF) > 0x7F80);
}

TEST_CASE("export of a MoDA checkpoint: model_type moda, depth tensors, modeling files",
          "[export]") {
  Config c = test::tiny_variant_config({NormPlacement::post, true, true, true, 1});
  c.model.vocab_size = 258;  // the checkpoint's config is validated on load (byte tokenizer)
  c.batch.seq_len = 16;
  const ParamLayout layout{ModelShape(c)};
  const std::vector<double> d = test::random_normal(static_cast<size_t>(layout.total()), 3);
  CheckpointState state;
  state.meta.step = 5;
  state.meta.total_params = layout.total();
  state.meta.config_yaml = to_yaml(c);
  state.shard.range = {0, layout.total()};
  state.shard.master.assign(d.begin(), d.end());
  state.shard.adam_m.assign(d.size(), 0.0f);
  state.shard.adam_v.assign(d.size(), 0.0f);
  const std::string root = temp_out("moda_ckpt");
  const std::string dir = save_checkpoint(root, state, 1, 0);
  const std::string out = temp_out("moda");
  ExportOptions options;
  options.log = false;
  options.tools_dir = std::string(MODA_SOURCE_DIR) + "/tools/hf";
  export_checkpoint_hf(dir, out, options);

  const auto tensors = read_safetensors(out + "/model.safetensors");
  CHECK(tensors.count("model.norm.weight") == 0);  // post-norm: no final norm
  const ModelShape s(c);
  const int64_t D = s.d_model, qw = s.q_width(), kw = s.kv_width(), F = s.mlp_hidden;
  const ParamInfo& qkv = layout.find("layers.1.attn.qkv");
  const ParamInfo& in = layout.find("layers.0.mlp.in");
  const std::vector<double> params(d.begin(), d.end());
  std::vector<float> want = rows_of(params, qkv, qw + 2 * kw, kw, D);
  CHECK(as_floats(tensors.at("model.layers.1.self_attn.depth_k_proj.weight")) == want);
  want = rows_of(params, qkv, qw + 3 * kw, kw, D);
  CHECK(as_floats(tensors.at("model.layers.1.self_attn.depth_v_proj.weight")) == want);
  want = rows_of(params, in, 2 * F + kw, kw, D);
  CHECK(as_floats(tensors.at("model.layers.0.mlp.depth_v_proj.weight")) == want);
  want = rows_of(params, layout.find("layers.0.mlp.slot_k_norm"), 0, 1, kw);
  CHECK(as_floats(tensors.at("model.layers.0.mlp.depth_k_norm.weight")) == want);
  CHECK(tensors.count("model.layers.2.self_attn.depth_k_proj.weight") == 0);
  CHECK(tensors.count("model.layers.2.mlp.depth_k_norm.weight") == 0);
  CHECK(tensors.at("model.layers.2.mlp.gate_proj.weight").shape == std::vector<int64_t>{F, D});

  const std::string config = slurp(out + "/config.json");
  CHECK(json::string_member(config, "model_type").value() == "moda");
  CHECK(json::string_member(config, "norm_placement").value() == "post");
  CHECK(json::find_member(config, "moda_ffn_kv").value() == "true");
  CHECK(json::find_member(config, "moda_attn_kv_proj").value() == "true");
  CHECK(
      json::string_member(*json::find_member(config, "auto_map"), "AutoModelForCausalLM").value() ==
      "modeling_moda.ModaForCausalLM");
  CHECK(slurp(out + "/modeling_moda.py") == slurp(options.tools_dir + "/modeling_moda.py"));
  CHECK(fs::exists(out + "/configuration_moda.py"));

  // Without the modeling files a MoDA export is refused with a message saying why.
  options.tools_dir = temp_out("no_tools");
  CHECK_THROWS_WITH(export_checkpoint_hf(dir, out, options), Catch::Contains("tools/hf"));
  fs::remove_all(root);
  fs::remove_all(out);
}

TEST_CASE("gpt2 tokenizer.json: merges derived from the tiktoken ranks", "[export]") {
  const std::string cache = default_tokenizer_cache();
  MODA_SKIP_UNLESS(fs::exists(cache + "/gpt2.json"),
                   "no gpt2.json in " << cache << " (scripts/fetch_tokenizers.sh)");
  const std::string out = temp_out("gpt2_tok");
  fs::create_directories(out);
  write_hf_tokenizer("gpt2", cache, 1024, out);
  const std::string tok = slurp(out + "/tokenizer.json");
  const std::string_view model = *json::find_member(tok, "model");
  const auto merges = json::array_elements(*json::find_member(model, "merges"));
  // GPT-2's merges.txt: 50000 merges, the first "Ġ t", and 50000 + 256 byte tokens.
  CHECK(merges.size() == 50000);
  CHECK(json::unescape_string(merges[0]) == "\xC4\xA0 t");
  CHECK(json::unescape_string(merges[1]) == "\xC4\xA0 a");
  CHECK(json::find_member(*json::find_member(model, "vocab"), "\xC4\xA0the").value() == "262");
  fs::remove_all(out);
}

TEST_CASE("log-likelihoods: batching and padding do not change them", "[export]") {
  Config c = test::tiny_variant_config({NormPlacement::pre, true, true, false, 2});
  const ParamLayout layout{ModelShape(c)};
  const std::vector<double> d = test::random_normal(static_cast<size_t>(layout.total()), 9, 0.3);
  const std::vector<float> params(d.begin(), d.end());
  auto backend = make_backend("cpu", 1);
  std::vector<LoglikRequest> reqs;
  for (int i = 0; i < 5; ++i) {
    const auto t = test::random_tokens(static_cast<size_t>(3 + 2 * i), 20, 100 + i);
    reqs.push_back({std::vector<int32_t>(t.begin(), t.begin() + 2 + i),
                    std::vector<int32_t>(t.begin() + 2 + i, t.end())});
  }
  const auto one = loglikelihoods(c, params, *backend, reqs, 1, 0);
  const auto three = loglikelihoods(c, params, *backend, reqs, 3, 7);
  REQUIRE(one.size() == 5);
  for (size_t i = 0; i < one.size(); ++i) {
    CHECK(one[i].logprob == Approx(three[i].logprob).epsilon(1e-5));
    CHECK(one[i].logprob < 0);
  }
  // Against the log-softmax of the logits of the whole sequence, computed here.
  const LoglikRequest& r = reqs[4];
  std::vector<int32_t> seq = r.context;
  seq.insert(seq.end(), r.continuation.begin(), r.continuation.end());
  const int64_t T = static_cast<int64_t>(seq.size()) - 1;
  auto model = make_inference_model(c, params, *backend, 1, T);
  const std::vector<double> logits = model->logits(seq);
  const int64_t V = model->shape().padded_vocab;
  double want = 0;
  for (int64_t p = static_cast<int64_t>(r.context.size()) - 1; p < T; ++p) {
    double z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(logits[static_cast<size_t>(p * V + v)]);
    want += logits[static_cast<size_t>(p * V + seq[static_cast<size_t>(p + 1)])] - std::log(z);
  }
  CHECK(one[4].logprob == Approx(want).epsilon(1e-6));
}

TEST_CASE("multiple-choice files: parsing, encode_pair, acc and acc_norm", "[export]") {
  const std::string path = temp_out("choices") + ".jsonl";
  {
    std::ofstream f(path);
    f << "{\"context\": \"The cat sat on the \", \"choices\": [\"mat\", \"m\\u00e4t\"], "
         "\"answer\": 0}\n\n"
      << "{\"context\": \"\", \"choices\": [\"a\", \"bb\", \"ccc\"], \"answer\": 2}\n";
  }
  const auto items = read_choices_jsonl(path);
  REQUIRE(items.size() == 2);
  CHECK(items[0].choices[1] == "m\xC3\xA4t");
  CHECK(utf8_length(items[0].choices[1]) == 3);
  CHECK(items[1].answer == 2);
  {
    std::ofstream f(path, std::ios::app);
    f << "{\"context\": \"x\", \"choices\": [\"a\"], \"answer\": 3}\n";
  }
  CHECK_THROWS_WITH(read_choices_jsonl(path), Catch::Contains(":4:") && Catch::Contains("answer"));
  // An answer given as a string, as some converted datasets write it.
  std::ofstream(path) << "{\"context\": \"x\", \"choices\": [\"a\", \"b\"], \"answer\": \"0\"}\n";
  CHECK_THROWS_WITH(read_choices_jsonl(path),
                    Catch::Contains(":1: answer \"0\" is not an integer index of the choices"));
  fs::remove(path);

  auto tokenizer = make_tokenizer("byte", "");
  const LoglikRequest r = encode_pair(*tokenizer, "ab ", "cd");
  CHECK(r.context == std::vector<int32_t>{'a', 'b'});
  CHECK(r.continuation == std::vector<int32_t>{' ', 'c', 'd'});
  CHECK(encode_pair(*tokenizer, "", "z").context == std::vector<int32_t>{tokenizer->eos()});

  // Scoring against the model's own log-likelihoods: acc picks the highest sum, acc_norm the
  // highest per character.
  Config c = test::tiny_variant_config({NormPlacement::reordered, false, false, false, 1});
  c.model.vocab_size = 258;
  c.model.vocab_multiple = 128;
  const ParamLayout layout{ModelShape(c)};
  const std::vector<double> d = test::random_normal(static_cast<size_t>(layout.total()), 4, 0.5);
  const std::vector<float> params(d.begin(), d.end());
  auto backend = make_backend("cpu", 1);
  ChoiceItem item{"hello", {"a", "bcdefg", "hij"}, 1};
  std::vector<LoglikRequest> reqs;
  for (const auto& ch : item.choices) reqs.push_back(encode_pair(*tokenizer, item.context, ch));
  const auto ll = loglikelihoods(c, params, *backend, reqs, 2, tokenizer->eos());
  int64_t best = 0, best_norm = 0;
  for (int64_t i = 1; i < 3; ++i) {
    if (ll[i].logprob > ll[best].logprob) best = i;
    if (ll[i].logprob / static_cast<double>(item.choices[i].size()) >
        ll[best_norm].logprob / static_cast<double>(item.choices[best_norm].size()))
      best_norm = i;
  }
  REQUIRE(best != best_norm);  // the fixture separates the two metrics
  item.answer = best_norm;
  const ChoiceScores s = score_choices(c, params, *backend, *tokenizer, {item, item}, 4);
  CHECK(s.items == 2);
  CHECK(s.acc == 0.0);
  CHECK(s.acc_norm == 1.0);
  CHECK(s.predicted[0] == best);
}

TEST_CASE("sampling: greedy is the argmax, top-1 equals greedy, padded ids never come out",
          "[export]") {
  std::vector<double> logits = {0.1, 2.0, -1.0, 0.5, 9.0};  // id 4 is padding (vocab 4)
  std::mt19937_64 rng(1);
  CHECK(sample_token(logits, 4, 0.0, 0, rng) == 1);
  for (int i = 0; i < 20; ++i) CHECK(sample_token(logits, 4, 1.0, 1, rng) == 1);
  std::set<int32_t> seen;
  for (int i = 0; i < 400; ++i) seen.insert(sample_token(logits, 4, 5.0, 0, rng));
  CHECK(seen == std::set<int32_t>{0, 1, 2, 3});
}
