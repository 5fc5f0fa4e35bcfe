// Range and consistency checks. The first failing check throws; checks run in an order where a
// later one may rely on the earlier ones (no division by a zero head count).
#include <fmt/format.h>

#include <algorithm>
#include <functional>

#include "config/detail.hpp"

namespace moda {
namespace {

struct TokenizerVocab {
  std::string_view name;
  int64_t ids;  // ids the tokenizer emits, specials included
};
constexpr TokenizerVocab kTokenizers[] = {{"byte", 258}, {"gpt2", 50257}, {"dolma2", 100278}};
constexpr std::string_view kFormats[] = {"auto", "text", "npy", "bin"};
constexpr std::string_view kDtypes[] = {"auto", "uint16", "uint32"};

// Upper bounds, each far above any published model (D 16384, F 53248, 126 layers, 256k
// vocabulary, 10M-token context), chosen so that no sum or product the code forms from accepted
// values (parameter counts, byte sizes of the memory plan, B x T rows, tokens seen) overflows
// int64; docs/config.md lists them.
constexpr int64_t kMaxWidth = int64_t{1} << 20;        // d_model, mlp_hidden
constexpr int64_t kMaxLayers = 4096;                   // n_layers
constexpr int64_t kMaxVocab = int64_t{1} << 31;        // vocab_size (ids are int32), vocab_multiple
constexpr int64_t kMaxSeqLen = int64_t{1} << 24;       // max_seq_len
constexpr int64_t kMaxMicroTokens = int64_t{1} << 24;  // micro_batch x seq_len
constexpr int64_t kMaxStepTokens = int64_t{1} << 32;   // global_batch x seq_len
constexpr int64_t kMaxSteps = int64_t{1} << 30;        // total_steps
// micro_batch x seq_len x n_layers x (d_model + mlp_hidden): about the activation values one
// micro-batch keeps; 2^50 is 4096 times the largest model above at 32k tokens per micro-batch.
constexpr int64_t kMaxActivations = int64_t{1} << 50;
constexpr int64_t kMaxThreads = 4096;  // runtime.threads; the backend takes an int

class Checker {
 public:
  explicit Checker(std::string_view origin) : origin_(origin) {}

  template <typename... Args>
  void require(bool ok, fmt::format_string<Args...> format, Args&&... args) const {
    if (!ok) {
      throw ConfigError(
          fmt::format("{}: {}", origin_, fmt::format(format, std::forward<Args>(args)...)));
    }
  }

  // A path that starts with ~ would become a folder named "~" in the working directory: neither
  // YAML nor `--set key=~/x` (bash expands ~ after = only where the left side is a variable name)
  // passes through a shell's expansion.
  void path(std::string_view key, const std::string& value) const {
    require(!value.starts_with('~'),
            "{} {}: moda does not expand ~ (no shell reads the config or --set key=~/...); write "
            "the full path",
            key, value);
  }

  // The double overloads are written so that NaN fails them.
  void positive(std::string_view key, int64_t v) const {
    require(v > 0, "{} must be > 0, got {}", key, v);
  }
  void positive(std::string_view key, double v) const {
    require(v > 0, "{} must be > 0, got {}", key, v);
  }
  void at_most(std::string_view key, int64_t v, int64_t max) const {
    require(v <= max, "{} must be <= {}, got {}", key, max, v);
  }
  void non_negative(std::string_view key, int64_t v) const {
    require(v >= 0, "{} must be >= 0, got {}", key, v);
  }
  void non_negative(std::string_view key, double v) const {
    require(v >= 0, "{} must be >= 0, got {}", key, v);
  }
  void fraction(std::string_view key, double v) const {
    require(v >= 0 && v < 1, "{} must be in [0, 1), got {}", key, v);
  }
  // Returns the allowed item named `v`.
  template <typename Items, typename NameOf = std::identity>
  const auto& one_of(std::string_view key, const std::string& v, const Items& allowed,
                     NameOf name_of = {}) const {
    const auto found = std::find_if(std::begin(allowed), std::end(allowed), [&](const auto& item) {
      return std::invoke(name_of, item) == v;
    });
    require(found != std::end(allowed), "{} must be one of {}, got '{}'", key,
            config_detail::join_names(allowed, name_of), v);
    return *found;
  }

 private:
  std::string_view origin_;
};

void check_model(const Checker& check, const ModelConfig& m) {
  check.positive("model.d_model", m.d_model);
  check.positive("model.n_layers", m.n_layers);
  check.positive("model.n_heads", m.n_heads);
  check.positive("model.n_kv_heads", m.n_kv_heads);
  check.positive("model.mlp_hidden", m.mlp_hidden);
  check.positive("model.vocab_size", m.vocab_size);
  check.positive("model.vocab_multiple", m.vocab_multiple);
  check.positive("model.max_seq_len", m.max_seq_len);
  check.at_most("model.d_model", m.d_model, kMaxWidth);
  check.at_most("model.n_layers", m.n_layers, kMaxLayers);
  check.at_most("model.mlp_hidden", m.mlp_hidden, kMaxWidth);
  check.at_most("model.vocab_size", m.vocab_size, kMaxVocab);
  check.at_most("model.vocab_multiple", m.vocab_multiple, kMaxVocab);
  check.at_most("model.max_seq_len", m.max_seq_len, kMaxSeqLen);
  check.require(m.d_model % m.n_heads == 0,
                "model.d_model ({}) is not divisible by model.n_heads ({})", m.d_model, m.n_heads);
  check.require(m.n_heads % m.n_kv_heads == 0,
                "model.n_heads ({}) is not divisible by model.n_kv_heads ({})", m.n_heads,
                m.n_kv_heads);
  check.require(m.head_dim() % 2 == 0,
                "model.d_model / model.n_heads ({} / {} = {}) must be even: RoPE rotates pairs of "
                "dimensions",
                m.d_model, m.n_heads, m.head_dim());
  check.positive("model.rope_theta", m.rope_theta);
  check.positive("model.norm_eps", m.norm_eps);
  check.positive("model.init_std", m.init_std);
}

void check_moda(const Checker& check, const ModaConfig& m) {
  check.require(m.enabled || !m.ffn_kv, "moda.ffn_kv requires moda.enabled");
  check.require(m.enabled || !m.attn_kv_proj, "moda.attn_kv_proj requires moda.enabled");
}

void check_optimizer(const Checker& check, const OptimizerConfig& o) {
  check.positive("optimizer.lr", o.lr);
  check.fraction("optimizer.beta1", o.beta1);
  check.fraction("optimizer.beta2", o.beta2);
  check.positive("optimizer.eps", o.eps);
  check.non_negative("optimizer.weight_decay", o.weight_decay);
  check.non_negative("optimizer.grad_clip", o.grad_clip);
  check.non_negative("optimizer.z_loss", o.z_loss);
}

void check_schedule(const Checker& check, const ScheduleConfig& s, double lr) {
  check.positive("schedule.total_steps", s.total_steps);
  check.at_most("schedule.total_steps", s.total_steps, kMaxSteps);
  check.non_negative("schedule.warmup_steps", s.warmup_steps);
  check.require(s.warmup_steps <= s.total_steps,
                "schedule.warmup_steps ({}) exceeds schedule.total_steps ({})", s.warmup_steps,
                s.total_steps);
  check.non_negative("schedule.min_lr", s.min_lr);
  check.require(s.min_lr <= lr, "schedule.min_lr ({}) exceeds optimizer.lr ({})", s.min_lr, lr);
}

void check_data(const Checker& check, const DataConfig& d, int64_t vocab_size) {
  const TokenizerVocab& tokenizer =
      check.one_of("data.tokenizer", d.tokenizer, kTokenizers, &TokenizerVocab::name);
  check.require(vocab_size >= tokenizer.ids,
                "model.vocab_size ({}) is smaller than the {} tokenizer's {} ids", vocab_size,
                tokenizer.name, tokenizer.ids);
  check.require(!d.train.empty(), "data.train is empty");
  for (size_t i = 0; i < d.train.size(); ++i) {
    check.require(!d.train[i].empty(), "data.train[{}] is an empty path", i);
    check.path(fmt::format("data.train[{}]", i), d.train[i]);
  }
  for (size_t i = 0; i < d.val.size(); ++i) {
    check.require(!d.val[i].empty(), "data.val[{}] is an empty path", i);
    check.path(fmt::format("data.val[{}]", i), d.val[i]);
  }
  check.fraction("data.val_fraction", d.val_fraction);
  check.one_of("data.format", d.format, kFormats);
  check.one_of("data.dtype", d.dtype, kDtypes);
}

void check_batch(const Checker& check, const BatchConfig& b, const ModelConfig& m) {
  check.positive("batch.seq_len", b.seq_len);
  check.positive("batch.micro_batch", b.micro_batch);
  check.positive("batch.global_batch", b.global_batch);
  check.require(b.seq_len <= m.max_seq_len,
                "batch.seq_len ({}) exceeds model.max_seq_len ({}), the length of the RoPE table",
                b.seq_len, m.max_seq_len);
  // Divisions, so that the check itself cannot overflow.
  check.require(b.micro_batch <= kMaxMicroTokens / b.seq_len,
                "batch.micro_batch ({}) x batch.seq_len ({}) exceeds {} tokens, the maximum of a "
                "micro-batch",
                b.micro_batch, b.seq_len, kMaxMicroTokens);
  check.require(b.global_batch <= kMaxStepTokens / b.seq_len,
                "batch.global_batch ({}) x batch.seq_len ({}) exceeds {} tokens, the maximum of "
                "an optimizer step",
                b.global_batch, b.seq_len, kMaxStepTokens);
  // At most 2^24 x 2^12 x 2^21 = 2^57 after the bounds above.
  const int64_t activations = b.micro_batch * b.seq_len * m.n_layers * (m.d_model + m.mlp_hidden);
  check.require(activations <= kMaxActivations,
                "batch.micro_batch x batch.seq_len x model.n_layers x (model.d_model + "
                "model.mlp_hidden) = {} exceeds {}, the maximum of one micro-batch's activations",
                activations, kMaxActivations);
  check.require(b.global_batch % b.micro_batch == 0,
                "batch.global_batch ({}) is not a multiple of batch.micro_batch ({})",
                b.global_batch, b.micro_batch);
}

void check_checkpoint(const Checker& check, const CheckpointConfig& c) {
  check.non_negative("checkpoint.interval", c.interval);
  check.require(c.keep_last >= 1, "checkpoint.keep_last must be >= 1, got {}", c.keep_last);
  check.non_negative("checkpoint.keep_every", c.keep_every);
  check.path("checkpoint.dir", c.dir);
}

void check_logging(const Checker& check, const LoggingConfig& l) {
  check.require(!l.dir.empty(), "logging.dir is empty");
  check.path("logging.dir", l.dir);
  check.positive("logging.interval", l.interval);
  check.non_negative("logging.val_interval", l.val_interval);
  check.positive("logging.val_batches", l.val_batches);
}

void check_runtime(const Checker& check, const RuntimeConfig& r, int64_t total_steps) {
  check.non_negative("runtime.threads", r.threads);
  check.at_most("runtime.threads", r.threads, kMaxThreads);
  check.non_negative("runtime.max_skipped_steps", r.max_skipped_steps);
  check.non_negative("runtime.profile_step", r.profile_step);
  check.require(r.profile_step <= total_steps,
                "runtime.profile_step ({}) exceeds schedule.total_steps ({})", r.profile_step,
                total_steps);
  check.positive("runtime.comm_timeout_s", r.comm_timeout_s);
  check.non_negative("runtime.grad_bucket_mb", r.grad_bucket_mb);
  // NCCL moves device memory and MPI host memory; runtime.device auto is checked at start, once
  // the backend is known.
  check.require(!(r.comm == CommKind::nccl && r.device == DeviceKind::cpu),
                "runtime.comm nccl needs the CUDA backend, but runtime.device is cpu (use mpi)");
  check.require(!(r.comm == CommKind::mpi && r.device == DeviceKind::cuda),
                "runtime.comm mpi carries host memory, but runtime.device is cuda (use nccl)");
}

}  // namespace

namespace config_detail {

std::string origin_of(const Config& config) {
  return config.source.empty() ? "config" : config.source;
}

void validate_as(const Config& config, std::string_view origin) {
  const Checker check(origin);
  check_model(check, config.model);
  check_moda(check, config.moda);
  check_optimizer(check, config.optimizer);
  check_schedule(check, config.schedule, config.optimizer.lr);
  check_data(check, config.data, config.model.vocab_size);
  check_batch(check, config.batch, config.model);
  check_checkpoint(check, config.checkpoint);
  check_logging(check, config.logging);
  check_runtime(check, config.runtime, config.schedule.total_steps);
}

}  // namespace config_detail

void validate(const Config& config) {
  config_detail::validate_as(config, config_detail::origin_of(config));
}

}  // namespace moda
