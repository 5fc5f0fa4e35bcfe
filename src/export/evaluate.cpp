#include "export/evaluate.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <stdexcept>

#include "moda/checkpoint.hpp"
#include "tokenizer/json_scan.hpp"

namespace moda {

namespace fs = std::filesystem;

InferenceWeights load_inference_weights(const std::string& checkpoint_dir) {
  const CheckpointMeta meta = load_checkpoint_meta(checkpoint_dir);
  InferenceWeights w;
  w.config = parse_config(meta.config_yaml, (fs::path(checkpoint_dir) / "config.yaml").string());
  w.step = meta.step;
  const ParamLayout layout{ModelShape(w.config)};
  if (layout.total() != meta.total_params) {
    throw CheckpointError(fmt::format("{}: {} parameters, but its config describes {}",
                                      checkpoint_dir, meta.total_params, layout.total()));
  }
  CheckpointState state = load_checkpoint(checkpoint_dir, ShardRange{0, meta.total_params}, false);
  w.params = std::move(state.shard.master);
  return w;
}

std::string resolve_device_name(const std::string& device) {
  if (device == "auto") return cuda_available() ? "cuda" : "cpu";
  return device;
}

std::unique_ptr<Model> make_inference_model(const Config& config, std::span<const float> params,
                                            Backend& backend, int64_t micro_batch,
                                            int64_t seq_len) {
  auto model = std::make_unique<Model>(config, backend, micro_batch, seq_len);
  ShardState shard;
  shard.range = {0, static_cast<int64_t>(params.size())};
  shard.master.assign(params.begin(), params.end());
  restore_model(*model, shard);
  return model;
}

HeldOutResult held_out_loss(Model& model, const std::shared_ptr<const TokenStore>& store,
                            int64_t max_batches) {
  const int64_t B = model.micro_batch(), T = model.seq_len();
  BatchLoader loader(store, T, B, 0, 0, 1, false);
  int64_t batches = loader.windows_per_epoch() / B;
  if (max_batches > 0) batches = std::min(batches, max_batches);
  if (batches == 0) {
    throw std::runtime_error(fmt::format(
        "{}: {} windows of {} tokens, fewer than one micro-batch of {} (use --micro-batch 1)",
        store->describe(), loader.windows_per_epoch(), T + 1, B));
  }
  std::vector<int32_t> tokens(static_cast<size_t>(B * (T + 1)));
  HeldOutResult r;
  double ce = 0;
  for (int64_t i = 0; i < batches; ++i) {
    loader.next(tokens.data());
    const LossSums s = model.forward(tokens);
    ce += s.ce;
    r.tokens += s.tokens;
  }
  r.windows = batches * B;
  r.loss = ce / static_cast<double>(r.tokens);
  r.perplexity = std::exp(r.loss);
  return r;
}

std::vector<LoglikResult> loglikelihoods(const Config& config, std::span<const float> params,
                                         Backend& backend, const std::vector<LoglikRequest>& reqs,
                                         int64_t micro_batch, int32_t pad) {
  std::vector<LoglikResult> out(reqs.size());
  if (reqs.empty()) return out;
  const int64_t max_len = config.model.max_seq_len;
  // Each request becomes one row: the last (max_len + 1) tokens of context ++ continuation.
  struct Row {
    std::vector<int32_t> tokens;
    int64_t cont = 0;  // continuation tokens at the end of `tokens`
  };
  std::vector<Row> rows(reqs.size());
  int64_t longest = 1;
  for (size_t i = 0; i < reqs.size(); ++i) {
    const LoglikRequest& q = reqs[i];
    if (q.context.empty()) throw std::invalid_argument("loglikelihood request without context");
    if (q.continuation.empty()) continue;
    Row& r = rows[i];
    r.tokens = q.context;
    r.tokens.insert(r.tokens.end(), q.continuation.begin(), q.continuation.end());
    if (static_cast<int64_t>(r.tokens.size()) > max_len + 1) {
      r.tokens.erase(r.tokens.begin(), r.tokens.end() - (max_len + 1));
    }
    r.cont = std::min<int64_t>(static_cast<int64_t>(q.continuation.size()),
                               static_cast<int64_t>(r.tokens.size()) - 1);
    longest = std::max<int64_t>(longest, static_cast<int64_t>(r.tokens.size()) - 1);
  }
  // Window: the longest input, rounded up to a multiple of 8 within max_seq_len.
  const int64_t T = std::min(max_len, (longest + 7) / 8 * 8);
  const int64_t B =
      std::max<int64_t>(1, std::min<int64_t>(micro_batch, static_cast<int64_t>(reqs.size())));
  auto model = make_inference_model(config, params, backend, B, T);
  const int64_t V = model->shape().padded_vocab;
  std::vector<int32_t> batch(static_cast<size_t>(B * (T + 1)));
  for (size_t first = 0; first < reqs.size(); first += static_cast<size_t>(B)) {
    const size_t n = std::min(reqs.size() - first, static_cast<size_t>(B));
    std::fill(batch.begin(), batch.end(), pad);
    for (size_t b = 0; b < n; ++b) {
      const Row& r = rows[first + b];
      std::copy(r.tokens.begin(), r.tokens.end(),
                batch.begin() + static_cast<int64_t>(b) * (T + 1));
    }
    const std::vector<double> logits = model->logits(batch);
    for (size_t b = 0; b < n; ++b) {
      const Row& r = rows[first + b];
      LoglikResult res;
      res.greedy = true;
      const int64_t L = static_cast<int64_t>(r.tokens.size());
      // Position p predicts token p + 1; the continuation is tokens [L - cont, L).
      for (int64_t p = L - 1 - r.cont; p < L - 1; ++p) {
        const double* row = logits.data() + (static_cast<int64_t>(b) * T + p) * V;
        const double mx = *std::max_element(row, row + V);
        double sum = 0;
        for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - mx);
        const int32_t target = r.tokens[static_cast<size_t>(p + 1)];
        res.logprob += row[target] - mx - std::log(sum);
        if (row[target] < mx) res.greedy = false;
      }
      out[first + b] = res;
    }
  }
  return out;
}

LoglikRequest encode_pair(const Tokenizer& tokenizer, const std::string& context,
                          const std::string& continuation) {
  std::string ctx = context, cont = continuation;
  const size_t keep = ctx.find_last_not_of(" \t\n\r\f\v");
  const size_t stripped = keep == std::string::npos ? 0 : keep + 1;
  if (stripped < ctx.size()) {
    cont = ctx.substr(stripped) + cont;
    ctx.resize(stripped);
  }
  LoglikRequest r;
  if (ctx.empty()) {
    r.context = {tokenizer.eos()};
    r.continuation = tokenizer.encode(cont);
    return r;
  }
  const std::vector<int32_t> whole = tokenizer.encode(ctx + cont);
  r.context = tokenizer.encode(ctx);
  const size_t n = std::min(r.context.size(), whole.size());
  r.continuation.assign(whole.begin() + static_cast<int64_t>(n), whole.end());
  return r;
}

std::vector<ChoiceItem> read_choices_jsonl(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot read '{}'", path));
  std::vector<ChoiceItem> items;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto fail = [&](const std::string& what) {
      throw std::runtime_error(fmt::format("{}:{}: {}", path, number, what));
    };
    try {
      ChoiceItem item;
      const auto context = json::string_member(line, "context");
      const auto choices = json::find_member(line, "choices");
      const auto answer = json::find_member(line, "answer");
      if (!context || !choices || !answer) fail("expected \"context\", \"choices\" and \"answer\"");
      item.context = *context;
      for (std::string_view c : json::array_elements(*choices)) {
        item.choices.push_back(json::unescape_string(c));
      }
      const auto [end, ec] =
          std::from_chars(answer->data(), answer->data() + answer->size(), item.answer);
      if (ec != std::errc() || end != answer->data() + answer->size()) {
        fail(fmt::format("answer {} is not an integer index of the choices", *answer));
      }
      if (item.choices.empty()) fail("no choices");
      if (item.answer < 0 || item.answer >= static_cast<int64_t>(item.choices.size())) {
        fail(fmt::format("answer {} is not an index of the {} choices", item.answer,
                         item.choices.size()));
      }
      items.push_back(std::move(item));
    } catch (const std::runtime_error& e) {
      if (std::string_view(e.what()).starts_with(path)) throw;
      fail(e.what());
    }
  }
  // Scoring nothing would print an accuracy of 0 as if it had been measured.
  if (items.empty()) throw std::runtime_error(fmt::format("{}: no items", path));
  return items;
}

int64_t utf8_length(std::string_view text) {
  int64_t n = 0;
  for (const char c : text) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

ChoiceScores score_choices(const Config& config, std::span<const float> params, Backend& backend,
                           const Tokenizer& tokenizer, const std::vector<ChoiceItem>& items,
                           int64_t micro_batch) {
  std::vector<LoglikRequest> reqs;
  for (const ChoiceItem& item : items) {
    for (const std::string& choice : item.choices) {
      reqs.push_back(encode_pair(tokenizer, item.context, choice));
    }
  }
  const std::vector<LoglikResult> res =
      loglikelihoods(config, params, backend, reqs, micro_batch, tokenizer.eos());
  ChoiceScores s;
  s.items = static_cast<int64_t>(items.size());
  size_t k = 0;
  int64_t correct = 0, correct_norm = 0;
  for (const ChoiceItem& item : items) {
    int64_t best = 0, best_norm = 0;
    double best_ll = -INFINITY, best_ll_norm = -INFINITY;
    for (size_t c = 0; c < item.choices.size(); ++c, ++k) {
      const double ll = res[k].logprob;
      const double norm =
          ll / static_cast<double>(std::max<int64_t>(1, utf8_length(item.choices[c])));
      if (ll > best_ll) best_ll = ll, best = static_cast<int64_t>(c);
      if (norm > best_ll_norm) best_ll_norm = norm, best_norm = static_cast<int64_t>(c);
    }
    s.predicted.push_back(best);
    s.predicted_norm.push_back(best_norm);
    correct += best == item.answer;
    correct_norm += best_norm == item.answer;
  }
  if (s.items > 0) {
    s.acc = static_cast<double>(correct) / static_cast<double>(s.items);
    s.acc_norm = static_cast<double>(correct_norm) / static_cast<double>(s.items);
  }
  return s;
}

int32_t sample_token(std::span<const double> logits, int64_t vocab, double temperature,
                     int64_t top_k, std::mt19937_64& rng) {
  const auto V = static_cast<size_t>(std::min<int64_t>(vocab, static_cast<int64_t>(logits.size())));
  if (temperature <= 0) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.begin() + V) -
                                logits.begin());
  }
  std::vector<int32_t> ids(V);
  std::iota(ids.begin(), ids.end(), 0);
  size_t keep = V;
  if (top_k > 0 && static_cast<size_t>(top_k) < V) {
    keep = static_cast<size_t>(top_k);
    std::partial_sort(ids.begin(), ids.begin() + static_cast<int64_t>(keep), ids.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  }
  double mx = -INFINITY;
  for (size_t i = 0; i < keep; ++i) mx = std::max(mx, logits[static_cast<size_t>(ids[i])]);
  std::vector<double> w(keep);
  for (size_t i = 0; i < keep; ++i) {
    w[i] = std::exp((logits[static_cast<size_t>(ids[i])] - mx) / temperature);
  }
  std::discrete_distribution<size_t> pick(w.begin(), w.end());
  return ids[pick(rng)];
}

}  // namespace moda
