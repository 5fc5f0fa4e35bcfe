// `moda tokenize`: text or JSONL (optionally gzipped) to train/val token shards and a manifest,
// in parallel (docs/data.md).
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cli/commands.hpp"
#include "data/shards.hpp"
#include "moda/tokenizer.hpp"

namespace moda::cli {

namespace {

struct TokenizeArgs {
  std::string tokenizer;
  std::string tokenizer_cache;
  std::string format = "npy";
  std::string dtype = "auto";
  TokenizeOptions options;
};

void run_tokenize(TokenizeArgs& args) {
  if (args.options.val_fraction >= 1) {
    throw CLI::ValidationError("--val-fraction", "must be < 1: 1 leaves no training documents");
  }
  const std::string cache =
      args.tokenizer_cache.empty() ? default_tokenizer_cache() : args.tokenizer_cache;
  const std::unique_ptr<Tokenizer> tokenizer = make_tokenizer(args.tokenizer, cache);
  args.options.format = parse_format(args.format);
  if (args.dtype != "auto") args.options.dtype = parse_dtype(args.dtype);
  const std::string& out = args.options.output_dir;
  const TokenizeSummary s =
      writing_to("--output", out, [&] { return tokenize_to_shards(*tokenizer, args.options); });
  const int64_t train_documents = s.documents - s.empty_documents - s.val_documents;
  if (train_documents == 0) {
    // Shards without training data would only fail later, in `moda train`; removing them leaves
    // the directory reusable for the next attempt.
    for (const ShardFileInfo& f : s.manifest.files) {
      std::filesystem::remove(std::filesystem::path(out) / f.name);
    }
    std::filesystem::remove(std::filesystem::path(out) / kManifestName);
    throw std::runtime_error(fmt::format(
        "no training documents: {} documents read ({} empty, {} held out for validation); "
        "no shards kept in {}",
        s.documents, s.empty_documents, s.val_documents, out));
  }
  fmt::print(
      "tokenized {} documents ({} empty, skipped) into {} tokens: train {} documents / {} tokens, "
      "val {} documents / {} tokens\n",
      s.documents, s.empty_documents, s.tokens, train_documents, s.tokens - s.val_tokens,
      s.val_documents, s.val_tokens);
  fmt::print("{} files ({} {}, tokenizer {}, eos {}) and {} in {}\n", s.manifest.files.size(),
             to_string(s.manifest.format), to_string(s.manifest.dtype), s.manifest.tokenizer,
             s.manifest.eos, kManifestName, args.options.output_dir);
  fmt::print("{:.1f} MB of text in {:.1f} s: {:.1f} MB/s, {:.2f}M tokens/s with {} threads\n",
             static_cast<double>(s.bytes) / 1e6, s.seconds,
             static_cast<double>(s.bytes) / 1e6 / s.seconds,
             static_cast<double>(s.tokens) / 1e6 / s.seconds, args.options.threads);
}

}  // namespace

void register_tokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "tokenize", "Tokenize text / JSONL files (optionally .gz) into token shards and a manifest");
  auto args = std::make_shared<TokenizeArgs>();
  args->options.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  cmd->add_option("--tokenizer", args->tokenizer, "Tokenizer: byte, gpt2 or dolma2")
      ->required()
      ->check(CLI::IsMember({"byte", "gpt2", "dolma2"}));
  cmd->add_option("--input", args->options.inputs,
                  "Files or directories: .txt/.md (one file = one document), .jsonl/.json.gz (the "
                  "\"text\" of each line = one document), .gz of them")
      ->required();
  cmd->add_option("--output", args->options.output_dir,
                  "Output directory (created; must not hold shards yet)")
      ->required();
  cmd->add_option("--format", args->format, "Shard format: npy (OLMo-core) or bin (llm.c)")
      ->capture_default_str()
      ->check(CLI::IsMember({"npy", "bin"}));
  cmd->add_option(
         "--dtype", args->dtype,
         "Token dtype: auto (uint16 when the vocabulary fits, else uint32), uint16, uint32")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "uint16", "uint32"}));
  cmd->add_option("--val-fraction", args->options.val_fraction,
                  "Fraction of the documents held out for validation, in [0, 1)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--seed", args->options.seed, "Seed of the validation split")
      ->capture_default_str();
  cmd->add_option("--threads", args->options.threads, "Tokenizing threads")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--shard-tokens", args->options.shard_tokens,
                  "Tokens per shard file (documents are not split, so a file may exceed it by one "
                  "document)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, std::numeric_limits<int64_t>::max()));
  cmd->add_option("--tokenizer-cache", args->tokenizer_cache,
                  "Directory of the rank files (default: $MODA_TOKENIZER_CACHE or "
                  "<repo>/.cache/tokenizers)");
  cmd->callback([args] { run_tokenize(*args); });
}

}  // namespace moda::cli
