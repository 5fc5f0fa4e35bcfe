// `moda eval`: held-out loss and perplexity on named sets, multiple-choice accuracy (acc and
// lm-evaluation-harness's acc_norm) over JSONL files, and a logits dump for the HF parity check.
#include <absl/strings/str_split.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <limits>
#include <random>
#include <string_view>
#include <utility>

#include "checkpoint/file_io.hpp"
#include "cli/commands.hpp"
#include "export/evaluate.hpp"
#include "export/safetensors.hpp"
#include "moda/tokenizer.hpp"
#include "tokenizer/json_scan.hpp"

namespace moda::cli {

namespace {

// The config's bound on micro_batch x seq_len (docs/config.md), for --micro-batch x --seq-len and
// the dump's shape.
constexpr int64_t kMaxTokens = int64_t{1} << 24;
const CLI::Range kTokensRange(int64_t{1}, kMaxTokens);
const CLI::Range kCountRange(int64_t{0}, std::numeric_limits<int64_t>::max());

struct EvalOptions {
  std::string checkpoint, device = "auto", json_out, dump_logits, format;
  std::vector<std::string> data, choices;
  int64_t micro_batch = 0, seq_len = 0, max_batches = 0, threads = 0;
  int64_t dump_batch = 2, dump_seq = 0;
  uint64_t dump_seed = 0;
};

std::string number(double x) { return std::isfinite(x) ? fmt::format("{:.6g}", x) : "null"; }

// Fixed random tokens [B, T] below the real vocabulary, and the model's logits for them, written
// as safetensors ("tokens" I32 [B, T], "logits" F32 [B, T, padded_vocab]).
void dump_logits(const EvalOptions& o, const InferenceWeights& w, Backend& backend) {
  const int64_t B = o.dump_batch;
  const int64_t T = o.dump_seq > 0 ? o.dump_seq : std::min<int64_t>(32, w.config.model.max_seq_len);
  if (B > kMaxTokens / T) {
    throw std::runtime_error(
        fmt::format("--dump-batch {} x --dump-seq {} exceeds {} tokens", B, T, kMaxTokens));
  }
  std::mt19937_64 rng(o.dump_seed);
  std::uniform_int_distribution<int32_t> dist(0,
                                              static_cast<int32_t>(w.config.model.vocab_size - 1));
  std::vector<int32_t> window(static_cast<size_t>(B * (T + 1)));
  std::vector<int32_t> tokens(static_cast<size_t>(B * T));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      const int32_t id = dist(rng);
      tokens[static_cast<size_t>(b * T + t)] = id;
      window[static_cast<size_t>(b * (T + 1) + t)] = id;
    }
  }
  auto model = make_inference_model(w.config, w.params, backend, B, T);
  const std::vector<double> logits = model->logits(window);
  const std::vector<float> logits32(logits.begin(), logits.end());
  const int64_t V = model->shape().padded_vocab;
  SafeTensor t_tokens{"tokens", {B, T}, {}, tokens, SafeDType::i32};
  SafeTensor t_logits{"logits", {B, T, V}, logits32, {}, SafeDType::f32};
  write_safetensors(o.dump_logits, {t_tokens, t_logits},
                    {{"backend", backend.name()}, {"checkpoint", o.checkpoint}});
  spdlog::info("wrote logits [{}, {}, {}] of {} ({}) to {}", B, T, V, o.checkpoint, backend.name(),
               o.dump_logits);
}

// Fails before the evaluation when `path`'s folder is missing, instead of after it.
void check_output_folder(std::string_view option, const std::string& path) {
  if (path.empty()) return;
  const std::filesystem::path folder = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!folder.empty() && !std::filesystem::is_directory(folder, ec)) {
    throw std::runtime_error(
        fmt::format("{} {}: the folder {} does not exist", option, path, folder.string()));
  }
}

void run_eval(const EvalOptions& o) {
  check_output_folder("--json", o.json_out);
  check_output_folder("--dump-logits", o.dump_logits);
  const InferenceWeights w = load_inference_weights(o.checkpoint);
  const Config& c = w.config;
  auto backend = make_backend(resolve_device_name(o.device), static_cast<int>(o.threads));
  spdlog::info("checkpoint {} (step {}), backend {}", o.checkpoint, w.step, backend->name());
  if (!o.dump_logits.empty()) dump_logits(o, w, *backend);

  std::vector<std::string> json_sets, json_choices;
  const int64_t B = o.micro_batch > 0 ? o.micro_batch : c.batch.micro_batch;
  const int64_t T = o.seq_len > 0 ? o.seq_len : c.batch.seq_len;
  if (B > kMaxTokens / T) {
    throw std::runtime_error(
        fmt::format("--micro-batch {} x --seq-len {} exceeds {} tokens", B, T, kMaxTokens));
  }
  // Held-out sets: NAME=PATH[,PATH...], or the config's validation data when nothing is asked.
  std::vector<std::pair<std::string, std::shared_ptr<const TokenStore>>> sets;
  if (o.data.empty() && o.choices.empty() && o.dump_logits.empty()) {
    Dataset ds = open_dataset(c.data, T);
    if (!ds.val) throw std::runtime_error("the checkpoint's config has no validation data");
    sets.emplace_back("val", ds.val);
  }
  for (const std::string& spec : o.data) {
    const size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
      throw std::runtime_error(fmt::format("--data {}: expected NAME=PATH[,PATH...]", spec));
    }
    DataConfig d = c.data;
    d.train = absl::StrSplit(spec.substr(eq + 1), ',', absl::SkipEmpty());
    d.val.clear();
    d.val_fraction = 0;
    if (!o.format.empty()) d.format = o.format;
    const std::string name = spec.substr(0, eq);
    sets.emplace_back(name, open_dataset(d, T, {"--data " + name, "--seq-len"}).train);
  }
  if (!sets.empty()) {
    auto model = make_inference_model(c, w.params, *backend, B, T);
    bool header = false;  // printed with the first result: a refused set leaves no empty table
    for (const auto& [name, store] : sets) {
      const HeldOutResult r = held_out_loss(*model, store, o.max_batches);
      if (!std::exchange(header, true)) {
        fmt::print("{:<16} {:>12} {:>10} {:>12}\n", "set", "tokens", "loss", "perplexity");
      }
      fmt::print("{:<16} {:>12} {:>10.4f} {:>12.3f}\n", name, r.tokens, r.loss, r.perplexity);
      json_sets.push_back(
          fmt::format("{{\"name\": {}, \"tokens\": {}, \"loss\": {}, \"perplexity\": {}}}",
                      json::quote(name), r.tokens, number(r.loss), number(r.perplexity)));
    }
  }
  if (!o.choices.empty()) {
    auto tokenizer = make_tokenizer(c.data.tokenizer, default_tokenizer_cache());
    fmt::print("{:<24} {:>8} {:>8} {:>9}\n", "choices", "items", "acc", "acc_norm");
    for (const std::string& path : o.choices) {
      const std::vector<ChoiceItem> items = read_choices_jsonl(path);
      const ChoiceScores s = score_choices(c, w.params, *backend, *tokenizer, items, B);
      const std::string name = std::filesystem::path(path).stem().string();
      fmt::print("{:<24} {:>8} {:>8.4f} {:>9.4f}\n", name, s.items, s.acc, s.acc_norm);
      json_choices.push_back(fmt::format(
          "{{\"name\": {}, \"file\": {}, \"items\": {}, \"acc\": {}, \"acc_norm\": {}}}",
          json::quote(name), json::quote(path), s.items, number(s.acc), number(s.acc_norm)));
    }
  }
  if (!o.json_out.empty()) {
    auto join = [](const std::vector<std::string>& v) {
      std::string s;
      for (size_t i = 0; i < v.size(); ++i) s += (i ? ",\n    " : "\n    ") + v[i];
      return s + (v.empty() ? "]" : "\n  ]");
    };
    fileio::write_file(
        o.json_out,
        fmt::format("{{\n  \"checkpoint\": {},\n  \"step\": {},\n  \"held_out\": "
                    "[{},\n  \"choices\": [{}\n}}\n",
                    json::quote(o.checkpoint), w.step, join(json_sets), join(json_choices)));
  }
}

}  // namespace

void register_eval(CLI::App& app) {
  auto o = std::make_shared<EvalOptions>();
  auto* cmd = app.add_subcommand(
      "eval", "Held-out loss / perplexity and multiple-choice accuracy of a checkpoint");
  cmd->add_option("--checkpoint", o->checkpoint, "Checkpoint directory")->required();
  cmd->add_option("--data", o->data,
                  "Held-out set NAME=PATH[,PATH...] (text files or token shards; repeatable). "
                  "Default: the validation data of the checkpoint's config");
  cmd->add_option("--format", o->format, "Format of --data files: auto | text | npy | bin")
      ->check(CLI::IsMember({"auto", "text", "npy", "bin"}));
  cmd->add_option("--choices", o->choices,
                  "Multiple-choice JSONL ({\"context\", \"choices\", \"answer\"} per line; "
                  "repeatable)");
  cmd->add_option("--micro-batch", o->micro_batch,
                  "Sequences per forward, >= 1 (default: the checkpoint's batch.micro_batch)")
      ->check(kTokensRange);
  cmd->add_option("--seq-len", o->seq_len,
                  "Window of the held-out loss, >= 1 (default: the checkpoint's batch.seq_len)")
      ->check(kTokensRange);
  cmd->add_option("--max-batches", o->max_batches, "Micro-batches per held-out set (0 = all)")
      ->check(kCountRange);
  cmd->add_option("--device", o->device, "auto | cpu | cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd->add_option("--threads", o->threads, "CPU threads (0 = all)")
      ->check(CLI::Range(int64_t{0}, int64_t{4096}));
  cmd->add_option("--json", o->json_out,
                  "Also write the results to this JSON file (its folder must exist)");
  cmd->add_option("--dump-logits", o->dump_logits,
                  "Write fixed random tokens and their logits to this safetensors file "
                  "(scripts/hf_parity.sh)");
  cmd->add_option("--dump-batch", o->dump_batch, "Sequences of the logits dump, >= 1")
      ->capture_default_str()
      ->check(kTokensRange);
  cmd->add_option("--dump-seq", o->dump_seq,
                  "Tokens per sequence of the dump, >= 1 (default: 32, or model.max_seq_len if "
                  "shorter)")
      ->check(kTokensRange);
  cmd->add_option("--dump-seed", o->dump_seed, "Seed of the dump's tokens");
  cmd->callback([o] { run_eval(*o); });
}

}  // namespace moda::cli
