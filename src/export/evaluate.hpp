// Evaluation of a trained model without Python: held-out loss / perplexity, log-likelihoods of
// continuations (the lm-evaluation-harness "loglikelihood" request), multiple-choice scoring
// (acc and acc_norm), logits dumps for the HF parity check, and sampling.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "moda/backend.hpp"
#include "moda/config.hpp"
#include "moda/data.hpp"
#include "moda/model.hpp"
#include "moda/tokenizer.hpp"

namespace moda {

// A checkpoint's config and master weights, ready for inference.
struct InferenceWeights {
  Config config;
  std::vector<float> params;
  int64_t step = 0;
};
InferenceWeights load_inference_weights(const std::string& checkpoint_dir);

// "auto" -> cuda when available, else cpu; "cpu", "cuda" as given.
std::string resolve_device_name(const std::string& device);

// A model of [micro_batch, seq_len] holding `params`.
std::unique_ptr<Model> make_inference_model(const Config& config, std::span<const float> params,
                                            Backend& backend, int64_t micro_batch, int64_t seq_len);

struct HeldOutResult {
  double loss = 0;  // mean cross-entropy per target token (nats)
  double perplexity = 0;
  int64_t tokens = 0;
  int64_t windows = 0;
};
// Mean cross-entropy over the store's windows of seq_len + 1 in order (unshuffled), at most
// max_batches micro-batches (0: all full micro-batches; a remainder of fewer than micro_batch
// windows is not scored).
HeldOutResult held_out_loss(Model& model, const std::shared_ptr<const TokenStore>& store,
                            int64_t max_batches);

// One loglikelihood request: the summed log-probability of `continuation` given `context`.
struct LoglikRequest {
  std::vector<int32_t> context;  // at least one token (an empty context is given [eos])
  std::vector<int32_t> continuation;
};
struct LoglikResult {
  double logprob = 0;   // sum over the continuation's tokens (nats)
  bool greedy = false;  // every continuation token is the argmax
};
// Batches requests into micro-batches of one model whose window fits the longest request (at
// most model.max_seq_len; longer requests keep their last max_seq_len + 1 tokens, as
// lm-evaluation-harness does), padding with `pad`; padded positions are ignored.
std::vector<LoglikResult> loglikelihoods(const Config& config, std::span<const float> params,
                                         Backend& backend, const std::vector<LoglikRequest>& reqs,
                                         int64_t micro_batch, int32_t pad);

// lm-evaluation-harness's _encode_pair: trailing spaces of the context move to the
// continuation, the continuation's tokens are those of encode(context + continuation) past
// encode(context).
LoglikRequest encode_pair(const Tokenizer& tokenizer, const std::string& context,
                          const std::string& continuation);

// One line of the multiple-choice JSONL: {"context": ..., "choices": [...], "answer": index}.
struct ChoiceItem {
  std::string context;
  std::vector<std::string> choices;
  int64_t answer = 0;
};
// Throws std::runtime_error naming the file and line for a malformed line, and naming the file
// when it holds no items.
std::vector<ChoiceItem> read_choices_jsonl(const std::string& path);

struct ChoiceScores {
  int64_t items = 0;
  double acc = 0;       // argmax of the summed log-likelihood
  double acc_norm = 0;  // argmax of log-likelihood / characters of the choice (lm-eval acc_norm)
  std::vector<int64_t> predicted, predicted_norm;
};
ChoiceScores score_choices(const Config& config, std::span<const float> params, Backend& backend,
                           const Tokenizer& tokenizer, const std::vector<ChoiceItem>& items,
                           int64_t micro_batch);

// Number of Unicode code points of UTF-8 text (Python's len() of the decoded string).
int64_t utf8_length(std::string_view text);

// Next token from logits over the real vocabulary (ids < vocab): argmax when temperature <= 0,
// else softmax(logits / temperature) sampled, restricted to the top_k largest when top_k > 0.
int32_t sample_token(std::span<const double> logits, int64_t vocab, double temperature,
                     int64_t top_k, std::mt19937_64& rng);

}  // namespace moda
