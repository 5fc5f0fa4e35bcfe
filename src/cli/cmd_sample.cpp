// `moda sample`: text from a checkpoint, greedy or with temperature / top-k sampling. Each token
// recomputes the whole window (no KV cache): simple, and fast enough for a qualitative look.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <cstdio>
#include <limits>

#include "cli/commands.hpp"
#include "export/evaluate.hpp"
#include "moda/tokenizer.hpp"

namespace moda::cli {

void register_sample(CLI::App& app) {
  struct Options {
    std::string checkpoint, prompt, device = "auto";
    double temperature = 0.0;
    int64_t max_tokens = 200, top_k = 0, threads = 0;
    uint64_t seed = 0;
  };
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("sample", "Generate text from a checkpoint");
  cmd->add_option("--checkpoint", o->checkpoint, "Checkpoint directory")->required();
  cmd->add_option("--prompt,-p", o->prompt, "Prompt text");
  cmd->add_option("--temperature,-t", o->temperature,
                  "Finite and >= 0; 0 = greedy, the most likely token (default)");
  cmd->add_option("--top-k", o->top_k, "Sample among the k most likely tokens (0 = all)")
      ->check(CLI::Range(int64_t{0}, std::numeric_limits<int64_t>::max()));
  cmd->add_option("--max-tokens,-n", o->max_tokens, "Tokens to generate, >= 0")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, std::numeric_limits<int64_t>::max()));
  cmd->add_option("--seed", o->seed, "Sampling seed");
  cmd->add_option("--device", o->device, "auto | cpu | cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd->add_option("--threads", o->threads, "CPU threads (0 = all)")
      ->check(CLI::Range(int64_t{0}, int64_t{4096}));
  cmd->callback([o] {
    // CLI11's range checks let NaN through, and std::discrete_distribution needs finite weights.
    if (!std::isfinite(o->temperature) || o->temperature < 0) {
      throw CLI::ValidationError("--temperature",
                                 fmt::format("must be finite and >= 0, got {}", o->temperature));
    }
    const InferenceWeights w = load_inference_weights(o->checkpoint);
    auto tokenizer = make_tokenizer(w.config.data.tokenizer, default_tokenizer_cache());
    auto backend = make_backend(resolve_device_name(o->device), static_cast<int>(o->threads));
    std::vector<int32_t> tokens = tokenizer->encode(o->prompt);
    if (tokens.empty()) tokens.push_back(tokenizer->eos());
    const int64_t T = w.config.model.max_seq_len;
    auto model = make_inference_model(w.config, w.params, *backend, 1, T);
    const int64_t V = model->shape().padded_vocab;
    std::mt19937_64 rng(o->seed);
    std::vector<int32_t> window(static_cast<size_t>(T + 1));
    fmt::print("{}", o->prompt);
    std::fflush(stdout);
    for (int64_t i = 0; i < o->max_tokens; ++i) {
      const int64_t n = std::min<int64_t>(static_cast<int64_t>(tokens.size()), T);
      std::fill(window.begin(), window.end(), tokenizer->eos());
      std::copy(tokens.end() - n, tokens.end(), window.begin());
      const std::vector<double> logits = model->logits(window);
      const std::span<const double> last(logits.data() + (n - 1) * V, static_cast<size_t>(V));
      const int32_t next =
          sample_token(last, tokenizer->vocab_size(), o->temperature, o->top_k, rng);
      if (next == tokenizer->eos()) break;
      tokens.push_back(next);
      fmt::print("{}", tokenizer->decode(std::span<const int32_t>(&next, 1)));
      std::fflush(stdout);
    }
    fmt::print("\n");
  });
}

}  // namespace moda::cli
