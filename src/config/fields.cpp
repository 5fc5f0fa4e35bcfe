// The table of configuration keys and the conversions between YAML values and field types.
#include <absl/strings/numbers.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <span>
#include <type_traits>
#include <utility>

#include "config/detail.hpp"

namespace moda {
namespace {

template <typename E>
using EnumNames = std::span<const std::pair<E, std::string_view>>;

constexpr std::pair<NormPlacement, std::string_view> kNormPlacements[] = {
    {NormPlacement::reordered, "reordered"},
    {NormPlacement::pre, "pre"},
    {NormPlacement::post, "post"}};
constexpr std::pair<LrDecay, std::string_view> kLrDecays[] = {
    {LrDecay::cosine, "cosine"}, {LrDecay::linear, "linear"}, {LrDecay::constant, "constant"}};
constexpr std::pair<DeviceKind, std::string_view> kDeviceKinds[] = {
    {DeviceKind::auto_detect, "auto"}, {DeviceKind::cpu, "cpu"}, {DeviceKind::cuda, "cuda"}};
constexpr std::pair<NanPolicy, std::string_view> kNanPolicies[] = {{NanPolicy::stop, "stop"},
                                                                   {NanPolicy::skip, "skip"}};
constexpr std::pair<CommKind, std::string_view> kCommKinds[] = {{CommKind::auto_detect, "auto"},
                                                                {CommKind::single, "single"},
                                                                {CommKind::mpi, "mpi"},
                                                                {CommKind::nccl, "nccl"}};

// Overloaded on the enum so that the templates below find the names of any enum field.
EnumNames<NormPlacement> names(NormPlacement) { return kNormPlacements; }
EnumNames<LrDecay> names(LrDecay) { return kLrDecays; }
EnumNames<DeviceKind> names(DeviceKind) { return kDeviceKinds; }
EnumNames<NanPolicy> names(NanPolicy) { return kNanPolicies; }
EnumNames<CommKind> names(CommKind) { return kCommKinds; }

template <typename E>
std::string enum_name(E value) {
  for (const auto& [e, name] : names(value)) {
    if (e == value) return std::string(name);
  }
  // Only a value cast from an out-of-range integer gets here.
  return fmt::format("<invalid {}>", static_cast<int>(value));
}

// Decoders assign `out` only on success and otherwise throw naming the key.

void decode(const YAML::Node& node, const config_detail::Place& place, int64_t& out) {
  int64_t value = 0;
  if (!node.IsScalar() || !absl::SimpleAtoi(node.Scalar(), &value)) {
    place.fail(fmt::format("expected an integer, got {}", config_detail::describe(node)));
  }
  out = value;
}

void decode(const YAML::Node& node, const config_detail::Place& place, uint64_t& out) {
  uint64_t value = 0;
  if (!node.IsScalar() || !absl::SimpleAtoi(node.Scalar(), &value)) {
    place.fail(
        fmt::format("expected a non-negative integer, got {}", config_detail::describe(node)));
  }
  out = value;
}

void decode(const YAML::Node& node, const config_detail::Place& place, double& out) {
  double value = 0;
  if (!node.IsScalar() || !absl::SimpleAtod(node.Scalar(), &value) || !std::isfinite(value)) {
    place.fail(fmt::format("expected a finite number, got {}", config_detail::describe(node)));
  }
  out = value;
}

void decode(const YAML::Node& node, const config_detail::Place& place, bool& out) {
  bool value = false;
  // yaml-cpp's own conversion, so every YAML spelling (true, yes, on, ...) is accepted.
  if (!YAML::convert<bool>::decode(node, value)) {
    place.fail(fmt::format("expected true or false, got {}", config_detail::describe(node)));
  }
  out = value;
}

// An empty value (`dir:` or `dir: ~`) is the empty string, which is what the fields default to.
void decode(const YAML::Node& node, const config_detail::Place& place, std::string& out) {
  if (node.IsNull()) {
    out.clear();
  } else if (node.IsScalar()) {
    out = node.Scalar();
  } else {
    place.fail(fmt::format("expected a string, got {}", config_detail::describe(node)));
  }
}

// A single string stands for a list of one, so `train: a.bin` and `train: [a.bin]` agree.
void decode(const YAML::Node& node, const config_detail::Place& place,
            std::vector<std::string>& out) {
  if (node.IsNull()) {
    out.clear();
  } else if (node.IsScalar()) {
    out = {node.Scalar()};
  } else if (node.IsSequence()) {
    std::vector<std::string> values;
    for (size_t i = 0; i < node.size(); ++i) {
      if (!node[i].IsScalar()) {
        config_detail::Place item{place.origin, fmt::format("{}[{}]", place.path, i), place.mark};
        item.fail(fmt::format("expected a string, got {}", config_detail::describe(node[i])));
      }
      values.push_back(node[i].Scalar());
    }
    out = std::move(values);
  } else {
    place.fail(fmt::format("expected a string or a list of strings, got {}",
                           config_detail::describe(node)));
  }
}

template <typename E>
requires std::is_enum_v<E>
void decode(const YAML::Node& node, const config_detail::Place& place, E& out) {
  if (node.IsScalar()) {
    for (const auto& [e, name] : names(out)) {
      if (node.Scalar() == name) {
        out = e;
        return;
      }
    }
  }
  place.fail(
      fmt::format("expected one of {}, got {}",
                  config_detail::join_names(names(out), &std::pair<E, std::string_view>::second),
                  config_detail::describe(node)));
}

void encode(YAML::Emitter& out, int64_t value) { out << value; }
void encode(YAML::Emitter& out, uint64_t value) { out << value; }
// The shortest text that reads back to the same double (the emitter's own prints 17 digits, e.g.
// 0.00029999999999999997), always with a '.' so that YAML 1.1 readers such as PyYAML see a float
// too: 1 -> 1.0, 1e-06 -> 1.0e-06.
void encode(YAML::Emitter& out, double value) {
  std::string text = fmt::format("{}", value);
  if (text.find_first_of(".n") == std::string::npos) {  // 'n': inf and nan stay as they are
    text.insert(std::min(text.find('e'), text.size()), ".0");
  }
  out << text;
}
void encode(YAML::Emitter& out, bool value) { out << value; }
void encode(YAML::Emitter& out, const std::string& value) { out << value; }
void encode(YAML::Emitter& out, const std::vector<std::string>& values) {
  out << YAML::Flow << YAML::BeginSeq;
  for (const std::string& value : values) out << value;
  out << YAML::EndSeq;
}
template <typename E>
requires std::is_enum_v<E>
void encode(YAML::Emitter& out, E value) { out << enum_name(value); }

// Returns a function that adds fields of one section: add("d_model", &ModelConfig::d_model).
template <typename S>
auto section_adder(std::vector<config_detail::Field>& table, std::string_view section,
                   S Config::*member) {
  return [&table, section, member]<typename T>(std::string_view key, T S::*field) {
    table.push_back(
        {section, key,
         [member, field](Config& c, const YAML::Node& node, const config_detail::Place& place) {
           decode(node, place, (c.*member).*field);
         },
         [member, field](const Config& c, YAML::Emitter& out) {
           encode(out, (c.*member).*field);
         }});
  };
}

std::vector<config_detail::Field> make_fields() {
  std::vector<config_detail::Field> table;

  auto model = section_adder(table, "model", &Config::model);
  model("d_model", &ModelConfig::d_model);
  model("n_layers", &ModelConfig::n_layers);
  model("n_heads", &ModelConfig::n_heads);
  model("n_kv_heads", &ModelConfig::n_kv_heads);
  model("mlp_hidden", &ModelConfig::mlp_hidden);
  model("vocab_size", &ModelConfig::vocab_size);
  model("vocab_multiple", &ModelConfig::vocab_multiple);
  model("max_seq_len", &ModelConfig::max_seq_len);
  model("rope_theta", &ModelConfig::rope_theta);
  model("norm_eps", &ModelConfig::norm_eps);
  model("norm_placement", &ModelConfig::norm_placement);
  model("tie_embeddings", &ModelConfig::tie_embeddings);
  model("init_std", &ModelConfig::init_std);

  auto moda = section_adder(table, "moda", &Config::moda);
  moda("enabled", &ModaConfig::enabled);
  moda("ffn_kv", &ModaConfig::ffn_kv);
  moda("attn_kv_proj", &ModaConfig::attn_kv_proj);

  auto optimizer = section_adder(table, "optimizer", &Config::optimizer);
  optimizer("lr", &OptimizerConfig::lr);
  optimizer("beta1", &OptimizerConfig::beta1);
  optimizer("beta2", &OptimizerConfig::beta2);
  optimizer("eps", &OptimizerConfig::eps);
  optimizer("weight_decay", &OptimizerConfig::weight_decay);
  optimizer("grad_clip", &OptimizerConfig::grad_clip);
  optimizer("z_loss", &OptimizerConfig::z_loss);

  auto schedule = section_adder(table, "schedule", &Config::schedule);
  schedule("total_steps", &ScheduleConfig::total_steps);
  schedule("warmup_steps", &ScheduleConfig::warmup_steps);
  schedule("decay", &ScheduleConfig::decay);
  schedule("min_lr", &ScheduleConfig::min_lr);

  auto data = section_adder(table, "data", &Config::data);
  data("tokenizer", &DataConfig::tokenizer);
  data("train", &DataConfig::train);
  data("val", &DataConfig::val);
  data("val_fraction", &DataConfig::val_fraction);
  data("format", &DataConfig::format);
  data("dtype", &DataConfig::dtype);
  data("seed", &DataConfig::seed);

  auto batch = section_adder(table, "batch", &Config::batch);
  batch("seq_len", &BatchConfig::seq_len);
  batch("micro_batch", &BatchConfig::micro_batch);
  batch("global_batch", &BatchConfig::global_batch);

  auto checkpoint = section_adder(table, "checkpoint", &Config::checkpoint);
  checkpoint("dir", &CheckpointConfig::dir);
  checkpoint("interval", &CheckpointConfig::interval);
  checkpoint("keep_last", &CheckpointConfig::keep_last);
  checkpoint("keep_every", &CheckpointConfig::keep_every);
  checkpoint("at_end", &CheckpointConfig::at_end);
  checkpoint("background", &CheckpointConfig::background);

  auto logging = section_adder(table, "logging", &Config::logging);
  logging("dir", &LoggingConfig::dir);
  logging("interval", &LoggingConfig::interval);
  logging("val_interval", &LoggingConfig::val_interval);
  logging("val_batches", &LoggingConfig::val_batches);
  logging("plot", &LoggingConfig::plot);

  auto runtime = section_adder(table, "runtime", &Config::runtime);
  runtime("device", &RuntimeConfig::device);
  runtime("seed", &RuntimeConfig::seed);
  runtime("threads", &RuntimeConfig::threads);
  runtime("nan_policy", &RuntimeConfig::nan_policy);
  runtime("max_skipped_steps", &RuntimeConfig::max_skipped_steps);
  runtime("profile_step", &RuntimeConfig::profile_step);
  runtime("zero1", &RuntimeConfig::zero1);
  runtime("comm", &RuntimeConfig::comm);
  runtime("comm_timeout_s", &RuntimeConfig::comm_timeout_s);
  runtime("grad_bucket_mb", &RuntimeConfig::grad_bucket_mb);

  return table;
}

}  // namespace

namespace config_detail {

void fail(std::string_view origin, const YAML::Mark& mark, std::string_view message) {
  if (mark.is_null()) throw ConfigError(fmt::format("{}: {}", origin, message));
  throw ConfigError(fmt::format("{}:{}: {}", origin, mark.line + 1, message));
}

void Place::fail(std::string_view message) const {
  config_detail::fail(origin, mark, fmt::format("{}: {}", path, message));
}

const std::vector<Field>& fields() {
  static const std::vector<Field> table = make_fields();
  return table;
}

const std::vector<std::string_view>& sections() {
  static const std::vector<std::string_view> names = [] {
    std::vector<std::string_view> out;
    for (const Field& field : fields()) {
      if (out.empty() || out.back() != field.section) out.push_back(field.section);
    }
    return out;
  }();
  return names;
}

std::string describe(const YAML::Node& node) {
  if (node.IsScalar()) return fmt::format("'{}'", node.Scalar());
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a mapping";
  return "an empty value";
}

}  // namespace config_detail

std::string to_string(NormPlacement p) { return enum_name(p); }
std::string to_string(LrDecay d) { return enum_name(d); }
std::string to_string(DeviceKind d) { return enum_name(d); }
std::string to_string(NanPolicy p) { return enum_name(p); }
std::string to_string(CommKind c) { return enum_name(c); }

}  // namespace moda
