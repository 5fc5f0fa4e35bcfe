// Configuration: parsing, error messages, --set overrides, validation and the YAML round trip.
#include <absl/strings/str_split.h>
#include <fmt/format.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "moda/config.hpp"
#include "moda/device_memory.hpp"
#include "moda/model.hpp"

namespace {

using Catch::Matchers::Contains;
using moda::Config;
using moda::ConfigError;

const char* const kOrigin = "configs/x.yaml";

Config parse(const std::string& yaml) { return moda::parse_config(yaml, kOrigin); }

// The message of the ConfigError that `f` throws; "" when it throws none.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

std::string parse_error(const std::string& yaml) {
  return error_of([&] { parse(yaml); });
}

std::string override_error(const std::vector<std::string>& overrides) {
  Config config = moda::default_config();
  return error_of([&] { moda::apply_overrides(config, overrides); });
}

std::string source_path(const std::string& relative) {
  return std::string(MODA_SOURCE_DIR) + "/" + relative;
}

// A config in which every field differs from its default; the strings need YAML quoting.
Config every_field_changed() {
  Config c;
  c.model.d_model = 96;
  c.model.n_layers = 7;
  c.model.n_heads = 6;
  c.model.n_kv_heads = 3;
  c.model.mlp_hidden = 257;
  c.model.vocab_size = 50257;
  c.model.vocab_multiple = 64;
  c.model.max_seq_len = 1024;
  c.model.rope_theta = 1e6 + 0.123456789;
  c.model.norm_eps = 1e-5;
  c.model.norm_placement = moda::NormPlacement::pre;
  c.model.tie_embeddings = true;
  c.model.init_std = 1.0 / 3.0;
  c.moda.enabled = true;
  c.moda.ffn_kv = true;
  c.moda.attn_kv_proj = true;
  c.optimizer.lr = 0.1 + 0.2;  // 0.30000000000000004: needs all 17 digits
  c.optimizer.beta1 = 0.8;
  c.optimizer.beta2 = 0.999999999999;
  c.optimizer.eps = 1e-300;
  c.optimizer.weight_decay = 0.0;
  c.optimizer.grad_clip = 0.5;
  c.optimizer.z_loss = 1e-4;
  c.schedule.total_steps = 1000;
  c.schedule.warmup_steps = 0;
  c.schedule.decay = moda::LrDecay::linear;
  c.schedule.min_lr = 1e-5 / 3.0;
  c.data.tokenizer = "gpt2";
  c.data.train = {"a.bin", " leading space", "x, y", "true"};
  c.data.val = {"null", "#hash", "123"};
  c.data.val_fraction = 0.0;
  c.data.format = "bin";
  c.data.dtype = "uint32";
  c.data.seed = std::numeric_limits<uint64_t>::max();
  c.batch.seq_len = 512;
  c.batch.micro_batch = 3;
  c.batch.global_batch = 12;
  c.checkpoint.dir = "null";
  c.checkpoint.interval = 100;
  c.checkpoint.keep_last = 1;
  c.checkpoint.keep_every = 500;
  c.checkpoint.at_end = false;
  c.checkpoint.background = false;
  c.logging.dir = "runs/a: b #c";
  c.logging.interval = 1;
  c.logging.val_interval = 0;
  c.logging.val_batches = 2;
  c.logging.plot = false;
  c.runtime.device = moda::DeviceKind::cuda;
  c.runtime.seed = 0;
  c.runtime.threads = 2;
  c.runtime.nan_policy = moda::NanPolicy::skip;
  c.runtime.max_skipped_steps = 0;
  c.runtime.profile_step = 3;
  c.runtime.zero1 = true;
  c.runtime.comm = moda::CommKind::nccl;
  c.runtime.comm_timeout_s = 30.5;
  c.runtime.grad_bucket_mb = 0.0;
  return c;
}

}  // namespace

TEST_CASE("the default config parses and carries the values of configs/tiny.yaml") {
  const Config c = moda::default_config();
  CHECK(c.source == "embedded default (configs/tiny.yaml)");
  CHECK(c.model.d_model == 128);
  CHECK(c.model.n_layers == 4);
  CHECK(c.model.n_heads == 4);
  CHECK(c.model.n_kv_heads == 2);
  CHECK(c.model.mlp_hidden == 384);
  CHECK(c.model.vocab_size == 258);
  CHECK(c.model.vocab_multiple == 128);
  CHECK(c.model.max_seq_len == 256);
  CHECK(c.model.rope_theta == 10000.0);
  CHECK(c.model.norm_placement == moda::NormPlacement::post);
  CHECK_FALSE(c.model.tie_embeddings);
  CHECK(c.model.init_std == 0.02);
  CHECK(c.moda.enabled);
  CHECK(c.moda.ffn_kv);
  CHECK_FALSE(c.moda.attn_kv_proj);
  CHECK(c.optimizer.lr == 3.0e-3);
  CHECK(c.optimizer.weight_decay == 0.1);
  CHECK(c.optimizer.grad_clip == 1.0);
  CHECK(c.schedule.total_steps == 150);
  CHECK(c.schedule.warmup_steps == 15);
  CHECK(c.schedule.decay == moda::LrDecay::cosine);
  CHECK(c.schedule.min_lr == 3.0e-4);
  CHECK(c.data.tokenizer == "byte");
  CHECK(c.data.train == std::vector<std::string>{"embedded"});
  CHECK(c.data.val_fraction == 0.05);
  CHECK(c.data.seed == 1234);
  CHECK(c.batch.seq_len == 128);
  CHECK(c.batch.micro_batch == 8);
  CHECK(c.batch.global_batch == 16);
  CHECK(c.logging.dir == "runs/tiny");
  CHECK(c.logging.interval == 10);
  CHECK(c.logging.val_interval == 50);
  CHECK(c.logging.val_batches == 4);
  CHECK(c.logging.plot);
  CHECK(c.runtime.device == moda::DeviceKind::auto_detect);
  CHECK(c.runtime.seed == 42);
  // Keys tiny.yaml leaves out keep the struct defaults.
  CHECK(c.model.norm_eps == 1e-6);
  CHECK(c.optimizer.beta1 == 0.9);
  CHECK(c.optimizer.beta2 == 0.95);
  CHECK(c.checkpoint.keep_last == 3);
  CHECK(c.runtime.nan_policy == moda::NanPolicy::stop);
}

TEST_CASE("load_config reads configs/tiny.yaml from disk like the embedded copy") {
  const std::string path = source_path("configs/tiny.yaml");
  const Config c = moda::load_config(path);
  CHECK(c.source == path);
  CHECK(moda::to_yaml(c) == moda::to_yaml(moda::default_config()));
}

TEST_CASE("an empty document gives the struct defaults") {
  CHECK(moda::to_yaml(parse("")) == moda::to_yaml(Config{}));
  CHECK(moda::to_yaml(parse("model:\nmoda:\n")) == moda::to_yaml(Config{}));
}

TEST_CASE("to_yaml round-trips a config with every field changed") {
  const Config original = every_field_changed();
  const std::string yaml = moda::to_yaml(original);

  // Guards the test itself: a field added later and left at its default here shows up as a line
  // equal to the default's.
  const std::vector<std::string> changed = absl::StrSplit(yaml, '\n');
  const std::vector<std::string> defaults = absl::StrSplit(moda::to_yaml(Config{}), '\n');
  REQUIRE(changed.size() == defaults.size());
  for (size_t i = 0; i < changed.size(); ++i) {
    if (changed[i].empty() || changed[i].back() == ':') continue;  // section headers
    CAPTURE(changed[i]);
    CHECK(changed[i] != defaults[i]);
  }

  const Config parsed = moda::parse_config(yaml, "round trip");
  CHECK(parsed.source == "round trip");
  CHECK(moda::to_yaml(parsed) == yaml);
  CHECK(parsed.model.rope_theta == original.model.rope_theta);
  CHECK(parsed.model.init_std == original.model.init_std);
  CHECK(parsed.model.norm_placement == original.model.norm_placement);
  CHECK(parsed.optimizer.lr == original.optimizer.lr);
  CHECK(parsed.optimizer.beta2 == original.optimizer.beta2);
  CHECK(parsed.optimizer.eps == original.optimizer.eps);
  CHECK(parsed.schedule.min_lr == original.schedule.min_lr);
  CHECK(parsed.schedule.decay == original.schedule.decay);
  CHECK(parsed.data.train == original.data.train);
  CHECK(parsed.data.val == original.data.val);
  CHECK(parsed.data.seed == original.data.seed);
  CHECK(parsed.checkpoint.dir == "null");
  CHECK(parsed.logging.dir == "runs/a: b #c");
  CHECK(parsed.logging.plot == false);
  CHECK(parsed.runtime.device == moda::DeviceKind::cuda);
  CHECK(parsed.runtime.nan_policy == moda::NanPolicy::skip);
  CHECK(parsed.runtime.profile_step == 3);
  CHECK(parsed.runtime.zero1);
  CHECK(parsed.runtime.comm == moda::CommKind::nccl);
  CHECK(parsed.runtime.comm_timeout_s == original.runtime.comm_timeout_s);
  CHECK(parsed.runtime.grad_bucket_mb == 0.0);
}

TEST_CASE("to_yaml writes doubles as floats, sections in struct order") {
  const std::string yaml = moda::to_yaml(moda::default_config());
  CHECK_THAT(yaml, Contains("rope_theta: 10000.0\n"));
  CHECK_THAT(yaml, Contains("norm_eps: 1.0e-06\n"));
  CHECK_THAT(yaml, Contains("lr: 0.003\n"));
  CHECK_THAT(yaml, Contains("train: [embedded]\n"));
  CHECK_THAT(yaml, Contains("val: []\n"));
  CHECK_THAT(yaml, Contains("dir: \"\"\n"));
  const std::string text = "\n" + yaml;
  size_t previous = 0;
  for (const char* section : {"model", "moda", "optimizer", "schedule", "data", "batch",
                              "checkpoint", "logging", "runtime"}) {
    CAPTURE(section);
    const size_t at = text.find(fmt::format("\n{}:\n", section));
    REQUIRE(at != std::string::npos);
    CHECK(at >= previous);
    previous = at;
  }
  CHECK(yaml.find("source") == std::string::npos);
}

TEST_CASE("enums convert to their YAML names") {
  CHECK(moda::to_string(moda::NormPlacement::reordered) == "reordered");
  CHECK(moda::to_string(moda::NormPlacement::pre) == "pre");
  CHECK(moda::to_string(moda::NormPlacement::post) == "post");
  CHECK(moda::to_string(moda::LrDecay::cosine) == "cosine");
  CHECK(moda::to_string(moda::LrDecay::linear) == "linear");
  CHECK(moda::to_string(moda::LrDecay::constant) == "constant");
  CHECK(moda::to_string(moda::DeviceKind::auto_detect) == "auto");
  CHECK(moda::to_string(moda::DeviceKind::cpu) == "cpu");
  CHECK(moda::to_string(moda::DeviceKind::cuda) == "cuda");
  CHECK(moda::to_string(moda::NanPolicy::stop) == "stop");
  CHECK(moda::to_string(moda::NanPolicy::skip) == "skip");
  CHECK(moda::to_string(moda::CommKind::auto_detect) == "auto");
  CHECK(moda::to_string(moda::CommKind::single) == "single");
  CHECK(moda::to_string(moda::CommKind::mpi) == "mpi");
  CHECK(moda::to_string(moda::CommKind::nccl) == "nccl");
}

TEST_CASE("values in their YAML spellings") {
  const Config c = parse(
      "model:\n  tie_embeddings: yes\n  rope_theta: 1e4\n  norm_placement: reordered\n"
      "data:\n  train: corpus.txt\n  val: [v1.bin, v2.bin]\n"
      "checkpoint:\n  dir:\n"
      "runtime:\n  device: cpu\n");
  CHECK(c.model.tie_embeddings);
  CHECK(c.model.rope_theta == 1e4);
  CHECK(c.data.train == std::vector<std::string>{"corpus.txt"});
  CHECK(c.data.val == std::vector<std::string>{"v1.bin", "v2.bin"});
  CHECK(c.checkpoint.dir.empty());
  CHECK(c.runtime.device == moda::DeviceKind::cpu);
}

TEST_CASE("unknown sections and keys are named, with a suggestion when one is close") {
  CHECK_THAT(parse_error("model:\n  n_layer: 3\n"),
             Contains("configs/x.yaml:2: unknown key 'model.n_layer' "
                      "(did you mean 'model.n_layers'?)"));
  CHECK_THAT(parse_error("modle:\n  n_layers: 3\n"),
             Contains("configs/x.yaml:1: unknown section 'modle' (did you mean 'model'?)"));
  CHECK_THAT(parse_error("optimizer:\n  lr: 0.01\n  betta1: 0.9\n"),
             Contains("configs/x.yaml:3: unknown key 'optimizer.betta1' "
                      "(did you mean 'optimizer.beta1'?)"));
  // A key under the wrong section, or at the top level, is pointed to its section.
  CHECK_THAT(parse_error("model:\n  seq_len: 64\n"),
             Contains("unknown key 'model.seq_len' (did you mean 'batch.seq_len'?)"));
  CHECK_THAT(parse_error("d_model: 64\n"),
             Contains("unknown section 'd_model' (did you mean 'model.d_model'?)"));
  // Nothing close: no suggestion.
  const std::string far = parse_error("model:\n  colour: red\n");
  CHECK_THAT(far, Contains("configs/x.yaml:2: unknown key 'model.colour'"));
  CHECK_THAT(far, !Contains("did you mean"));
  CHECK_THAT(parse_error("training:\n  steps: 3\n"), !Contains("did you mean"));
}

TEST_CASE("wrong types name the file, line, key and the value found") {
  CHECK_THAT(parse_error("model:\n  d_model: abc\n"),
             Contains("configs/x.yaml:2: model.d_model: expected an integer, got 'abc'"));
  CHECK_THAT(parse_error("model:\n  n_layers: 4\n  d_model: 12.5\n"),
             Contains("configs/x.yaml:3: model.d_model: expected an integer, got '12.5'"));
  CHECK_THAT(parse_error("model:\n  d_model:\n"),
             Contains("model.d_model: expected an integer, got an empty value"));
  CHECK_THAT(parse_error("optimizer:\n  lr: fast\n"),
             Contains("optimizer.lr: expected a finite number, got 'fast'"));
  CHECK_THAT(parse_error("optimizer:\n  lr: .inf\n"),
             Contains("optimizer.lr: expected a finite number, got '.inf'"));
  CHECK_THAT(parse_error("moda:\n  enabled: maybe\n"),
             Contains("moda.enabled: expected true or false, got 'maybe'"));
  CHECK_THAT(parse_error("runtime:\n  seed: -1\n"),
             Contains("runtime.seed: expected a non-negative integer, got '-1'"));
  CHECK_THAT(parse_error("data:\n  tokenizer: [byte]\n"),
             Contains("data.tokenizer: expected a string, got a list"));
  CHECK_THAT(parse_error("data:\n  train: {a: 1}\n"),
             Contains("data.train: expected a string or a list of strings, got a mapping"));
  CHECK_THAT(parse_error("data:\n  train: [a.bin, [b.bin]]\n"),
             Contains("configs/x.yaml:2: data.train[1]: expected a string, got a list"));
  CHECK_THAT(parse_error("model: 3\n"),
             Contains("configs/x.yaml:1: model: expected a mapping of keys, got '3'"));
  CHECK_THAT(parse_error("- model\n- batch\n"), Contains("expected a mapping of sections"));
}

TEST_CASE("bad enum values list the allowed values") {
  CHECK_THAT(parse_error("model:\n  norm_placement: middle\n"),
             Contains("configs/x.yaml:2: model.norm_placement: expected one of reordered, pre, "
                      "post, got 'middle'"));
  CHECK_THAT(parse_error("schedule:\n  decay: step\n"),
             Contains("schedule.decay: expected one of cosine, linear, constant, got 'step'"));
  CHECK_THAT(parse_error("runtime:\n  device: gpu\n"),
             Contains("runtime.device: expected one of auto, cpu, cuda, got 'gpu'"));
  CHECK_THAT(parse_error("runtime:\n  nan_policy: ignore\n"),
             Contains("runtime.nan_policy: expected one of stop, skip, got 'ignore'"));
  CHECK_THAT(parse_error("runtime:\n  comm: gloo\n"),
             Contains("runtime.comm: expected one of auto, single, mpi, nccl, got 'gloo'"));
}

TEST_CASE("repeated keys and sections are errors, not a silent last-one-wins") {
  CHECK_THAT(parse_error("model:\n  d_model: 64\n  d_model: 128\n"),
             Contains("configs/x.yaml:3: duplicate key 'model.d_model'"));
  CHECK_THAT(parse_error("model:\n  d_model: 64\nbatch:\n  seq_len: 8\nmodel:\n  n_layers: 2\n"),
             Contains("configs/x.yaml:5: duplicate section 'model'"));
}

TEST_CASE("YAML syntax errors name the file and line") {
  const std::string message = parse_error("model:\n  d_model: 64\n  n_heads: [4, 2\nbatch: 3\n");
  CHECK_THAT(message, Contains("configs/x.yaml:4: invalid YAML") && !Contains("tab"));
  CHECK_THAT(parse_error("model:\n  d_model: 64\n\tn_heads: 4\n"),
             Contains("invalid YAML") &&
                 Contains("(line 3 is indented with a tab; YAML indents with spaces only)"));
}

TEST_CASE("load_config names the path it cannot read or parse") {
  CHECK_THAT(error_of([] { moda::load_config("/nonexistent/moda.yaml"); }),
             Contains("cannot read config file '/nonexistent/moda.yaml': No such file or "
                      "directory"));
  const std::filesystem::path dir = std::filesystem::temp_directory_path();
  CHECK_THAT(error_of([&] { moda::load_config(dir.string()); }),
             Contains("cannot read config file '" + dir.string() + "': it is a directory"));

  const std::filesystem::path file = dir / "moda_test_config_bad.yaml";
  std::ofstream(file) << "model:\n  d_model: 64\n  n_layer: 2\n";
  CHECK_THAT(error_of([&] { moda::load_config(file.string()); }),
             Contains(file.string() + ":3: unknown key 'model.n_layer'"));
  std::filesystem::remove(file);
}

TEST_CASE("overrides assign every kind of value") {
  Config c = moda::default_config();
  moda::apply_overrides(
      c, {"model.n_layers=6", "optimizer.lr=1e-3", "model.tie_embeddings=true",
          "schedule.decay=linear", "data.train=[a.bin, b.bin]", "data.val=held_out.bin",
          "logging.dir=runs/x", "checkpoint.dir=", " runtime.device = cpu", "runtime.seed=7",
          "batch.micro_batch=4", "batch.micro_batch=2"});
  CHECK(c.model.n_layers == 6);
  CHECK(c.optimizer.lr == 1e-3);
  CHECK(c.model.tie_embeddings);
  CHECK(c.schedule.decay == moda::LrDecay::linear);
  CHECK(c.data.train == std::vector<std::string>{"a.bin", "b.bin"});
  CHECK(c.data.val == std::vector<std::string>{"held_out.bin"});
  CHECK(c.logging.dir == "runs/x");
  CHECK(c.checkpoint.dir.empty());
  CHECK(c.runtime.device == moda::DeviceKind::cpu);
  CHECK(c.runtime.seed == 7);
  CHECK(c.batch.micro_batch == 2);  // the later override wins
  CHECK(c.source == "embedded default (configs/tiny.yaml)");
  // Untouched keys keep their values.
  CHECK(c.model.d_model == 128);
}

TEST_CASE("bad overrides fail with their message and leave the config unchanged") {
  CHECK_THAT(override_error({"model.n_layers"}),
             Contains("--set model.n_layers: expected section.key=value"));
  CHECK_THAT(override_error({"n_layers=6"}),
             Contains("--set n_layers=6: 'n_layers' has no section; expected section.key=value "
                      "(did you mean 'model.n_layers'?)"));
  CHECK_THAT(override_error({"model.n_layers.x=6"}),
             Contains("--set model.n_layers.x=6: expected section.key=value"));
  CHECK_THAT(override_error({"model.n_layer=6"}),
             Contains("--set model.n_layer=6: unknown key 'model.n_layer' "
                      "(did you mean 'model.n_layers'?)"));
  CHECK_THAT(override_error({"modle.n_layers=6"}),
             Contains("--set modle.n_layers=6: unknown section 'modle' (did you mean 'model'?)"));
  CHECK_THAT(override_error({"model.n_layers=abc"}),
             Contains("--set model.n_layers=abc: model.n_layers: expected an integer, got 'abc'"));
  CHECK_THAT(override_error({"schedule.decay=step"}),
             Contains("expected one of cosine, linear, constant, got 'step'"));
  CHECK_THAT(override_error({"data.train=[a.bin, b.bin"}),
             Contains("--set data.train=[a.bin, b.bin: data.train: invalid YAML value"));
  // Values that parse but break a range are reported after all overrides, naming them.
  CHECK_THAT(override_error({"model.n_layers=6", "batch.seq_len=512"}),
             Contains("embedded default (configs/tiny.yaml) with --set model.n_layers=6 --set "
                      "batch.seq_len=512: batch.seq_len (512) exceeds model.max_seq_len (256), "
                      "the length of the RoPE table"));
  CHECK_THAT(override_error({"data.train="}), Contains("data.train is empty"));

  Config c = moda::default_config();
  CHECK_THROWS_AS(moda::apply_overrides(c, {"model.n_layers=6", "model.d_model=x"}), ConfigError);
  CHECK_THROWS_AS(moda::apply_overrides(c, {"model.n_layers=6", "model.d_model=100"}), ConfigError);
  CHECK(c.model.n_layers == 4);
  CHECK(c.model.d_model == 128);
}

TEST_CASE("validation rejects out-of-range values and inconsistent shapes") {
  struct Case {
    std::function<void(Config&)> change;
    std::string message;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const int64_t max = std::numeric_limits<int64_t>::max();
  // Each case changes the valid default config in one way.
  const std::vector<Case> cases = {
      {[](Config& c) { c.model.d_model = 0; }, "model.d_model must be > 0, got 0"},
      {[](Config& c) { c.model.n_layers = -1; }, "model.n_layers must be > 0, got -1"},
      {[](Config& c) { c.model.n_heads = 0; }, "model.n_heads must be > 0, got 0"},
      {[](Config& c) { c.model.n_kv_heads = 0; }, "model.n_kv_heads must be > 0, got 0"},
      {[](Config& c) { c.model.mlp_hidden = 0; }, "model.mlp_hidden must be > 0, got 0"},
      {[](Config& c) { c.model.vocab_size = 0; }, "model.vocab_size must be > 0, got 0"},
      {[](Config& c) { c.model.vocab_multiple = 0; }, "model.vocab_multiple must be > 0, got 0"},
      {[](Config& c) { c.model.max_seq_len = 0; }, "model.max_seq_len must be > 0, got 0"},
      {[](Config& c) {
         c.model.d_model = 100;
         c.model.n_heads = 3;
         c.model.n_kv_heads = 1;
       },
       "model.d_model (100) is not divisible by model.n_heads (3)"},
      {[](Config& c) { c.model.n_kv_heads = 3; },
       "model.n_heads (4) is not divisible by model.n_kv_heads (3)"},
      {[](Config& c) { c.model.d_model = 12; },
       "model.d_model / model.n_heads (12 / 4 = 3) must be even"},
      {[](Config& c) { c.model.rope_theta = 0; }, "model.rope_theta must be > 0, got 0"},
      {[](Config& c) { c.model.norm_eps = -1e-6; }, "model.norm_eps must be > 0, got -1e-06"},
      {[](Config& c) { c.model.init_std = 0; }, "model.init_std must be > 0, got 0"},
      {[](Config& c) { c.model.d_model = 2097152; },
       "model.d_model must be <= 1048576, got 2097152"},
      {[](Config& c) { c.model.n_layers = 4097; }, "model.n_layers must be <= 4096, got 4097"},
      {[max](Config& c) { c.model.mlp_hidden = max; },
       "model.mlp_hidden must be <= 1048576, got 9223372036854775807"},
      {[max](Config& c) { c.model.vocab_size = max; },
       "model.vocab_size must be <= 2147483648, got 9223372036854775807"},
      {[max](Config& c) { c.model.vocab_multiple = max; },
       "model.vocab_multiple must be <= 2147483648, got 9223372036854775807"},
      {[max](Config& c) { c.model.max_seq_len = max; },
       "model.max_seq_len must be <= 16777216, got 9223372036854775807"},
      {[](Config& c) { c.moda.enabled = false; }, "moda.ffn_kv requires moda.enabled"},
      {[](Config& c) { c.moda = {.enabled = false, .ffn_kv = false, .attn_kv_proj = true}; },
       "moda.attn_kv_proj requires moda.enabled"},
      {[](Config& c) { c.optimizer.lr = 0; }, "optimizer.lr must be > 0, got 0"},
      {[nan](Config& c) { c.optimizer.lr = nan; }, "optimizer.lr must be > 0, got nan"},
      {[](Config& c) { c.optimizer.beta1 = 1.0; }, "optimizer.beta1 must be in [0, 1), got 1"},
      {[](Config& c) { c.optimizer.beta2 = -0.1; }, "optimizer.beta2 must be in [0, 1), got -0.1"},
      {[](Config& c) { c.optimizer.eps = 0; }, "optimizer.eps must be > 0, got 0"},
      {[](Config& c) { c.optimizer.weight_decay = -0.1; },
       "optimizer.weight_decay must be >= 0, got -0.1"},
      {[](Config& c) { c.optimizer.grad_clip = -1; }, "optimizer.grad_clip must be >= 0, got -1"},
      {[](Config& c) { c.optimizer.z_loss = -1e-4; }, "optimizer.z_loss must be >= 0, got -0.0001"},
      {[](Config& c) { c.schedule.total_steps = 0; }, "schedule.total_steps must be > 0, got 0"},
      {[](Config& c) { c.schedule.total_steps = (int64_t{1} << 30) + 1; },
       "schedule.total_steps must be <= 1073741824, got 1073741825"},
      {[](Config& c) { c.schedule.warmup_steps = -1; },
       "schedule.warmup_steps must be >= 0, got -1"},
      {[](Config& c) { c.schedule.warmup_steps = 200; },
       "schedule.warmup_steps (200) exceeds schedule.total_steps (150)"},
      {[](Config& c) { c.schedule.min_lr = -1e-5; }, "schedule.min_lr must be >= 0, got -1e-05"},
      {[](Config& c) { c.schedule.min_lr = 0.01; },
       "schedule.min_lr (0.01) exceeds optimizer.lr (0.003)"},
      {[](Config& c) { c.data.tokenizer = "bpe"; },
       "data.tokenizer must be one of byte, gpt2, dolma2, got 'bpe'"},
      {[](Config& c) { c.model.vocab_size = 100; },
       "model.vocab_size (100) is smaller than the byte tokenizer's 258 ids"},
      {[](Config& c) { c.data.tokenizer = "gpt2"; },
       "model.vocab_size (258) is smaller than the gpt2 tokenizer's 50257 ids"},
      {[](Config& c) {
         c.data.tokenizer = "dolma2";
         c.model.vocab_size = 50304;
       },
       "model.vocab_size (50304) is smaller than the dolma2 tokenizer's 100278 ids"},
      {[](Config& c) { c.data.train.clear(); }, "data.train is empty"},
      {[](Config& c) {
         c.data.train = {"a.bin", ""};
       },
       "data.train[1] is an empty path"},
      {[](Config& c) { c.data.val = {""}; }, "data.val[0] is an empty path"},
      {[](Config& c) { c.data.val_fraction = 1.0; }, "data.val_fraction must be in [0, 1), got 1"},
      {[](Config& c) { c.data.format = "csv"; },
       "data.format must be one of auto, text, npy, bin, got 'csv'"},
      {[](Config& c) { c.data.dtype = "int8"; },
       "data.dtype must be one of auto, uint16, uint32, got 'int8'"},
      {[](Config& c) { c.batch.seq_len = 0; }, "batch.seq_len must be > 0, got 0"},
      {[](Config& c) { c.batch.micro_batch = 0; }, "batch.micro_batch must be > 0, got 0"},
      {[](Config& c) { c.batch.global_batch = -8; }, "batch.global_batch must be > 0, got -8"},
      {[](Config& c) { c.batch.seq_len = 512; },
       "batch.seq_len (512) exceeds model.max_seq_len (256), the length of the RoPE table"},
      {[](Config& c) { c.batch.global_batch = 12; },
       "batch.global_batch (12) is not a multiple of batch.micro_batch (8)"},
      {[](Config& c) { c.batch.micro_batch = int64_t{1} << 62; },
       "batch.micro_batch (4611686018427387904) x batch.seq_len (128) exceeds 16777216 tokens, "
       "the maximum of a micro-batch"},
      {[](Config& c) { c.batch.global_batch = int64_t{1} << 26; },
       "batch.global_batch (67108864) x batch.seq_len (128) exceeds 4294967296 tokens, the "
       "maximum of an optimizer step"},
      {[](Config& c) {
         c.model.d_model = c.model.mlp_hidden = 1 << 20;
         c.model.n_layers = 4096;
         c.model.max_seq_len = c.batch.seq_len = 1 << 17;
       },
       "batch.micro_batch x batch.seq_len x model.n_layers x (model.d_model + model.mlp_hidden) = "
       "9007199254740992 exceeds 1125899906842624, the maximum of one micro-batch's activations"},
      {[](Config& c) { c.checkpoint.interval = -1; }, "checkpoint.interval must be >= 0, got -1"},
      {[](Config& c) { c.checkpoint.keep_last = 0; }, "checkpoint.keep_last must be >= 1, got 0"},
      {[](Config& c) { c.checkpoint.keep_every = -5; },
       "checkpoint.keep_every must be >= 0, got -5"},
      {[](Config& c) { c.logging.dir = ""; }, "logging.dir is empty"},
      {[](Config& c) { c.logging.dir = "~/runs/x"; },
       "logging.dir ~/runs/x: moda does not expand ~ (no shell reads the config or --set "
       "key=~/...); write the full path"},
      {[](Config& c) { c.checkpoint.dir = "~/ckpt"; }, "checkpoint.dir ~/ckpt: moda does not"},
      {[](Config& c) {
         c.data.train = {"a.bin", "~/b.bin"};
       },
       "data.train[1] ~/b.bin: moda"},
      {[](Config& c) { c.data.val = {"~user/v.txt"}; }, "data.val[0] ~user/v.txt: moda"},
      {[](Config& c) { c.logging.interval = 0; }, "logging.interval must be > 0, got 0"},
      {[](Config& c) { c.logging.val_interval = -1; }, "logging.val_interval must be >= 0, got -1"},
      {[](Config& c) { c.logging.val_batches = 0; }, "logging.val_batches must be > 0, got 0"},
      {[](Config& c) { c.runtime.threads = -2; }, "runtime.threads must be >= 0, got -2"},
      {[](Config& c) { c.runtime.threads = 4097; }, "runtime.threads must be <= 4096, got 4097"},
      {[](Config& c) { c.runtime.max_skipped_steps = -1; },
       "runtime.max_skipped_steps must be >= 0, got -1"},
      {[](Config& c) { c.runtime.profile_step = -1; }, "runtime.profile_step must be >= 0, got -1"},
      {[](Config& c) { c.runtime.profile_step = 151; },
       "runtime.profile_step (151) exceeds schedule.total_steps (150)"},
      {[](Config& c) { c.runtime.comm_timeout_s = 0; },
       "runtime.comm_timeout_s must be > 0, got 0"},
      {[](Config& c) { c.runtime.grad_bucket_mb = -1; },
       "runtime.grad_bucket_mb must be >= 0, got -1"},
      {[](Config& c) {
         c.runtime.device = moda::DeviceKind::cpu;
         c.runtime.comm = moda::CommKind::nccl;
       },
       "runtime.comm nccl needs the CUDA backend, but runtime.device is cpu (use mpi)"},
      {[](Config& c) {
         c.runtime.device = moda::DeviceKind::cuda;
         c.runtime.comm = moda::CommKind::mpi;
       },
       "runtime.comm mpi carries host memory, but runtime.device is cuda (use nccl)"},
  };
  REQUIRE_NOTHROW(moda::validate(moda::default_config()));
  for (const Case& test : cases) {
    Config c = moda::default_config();
    test.change(c);
    CAPTURE(test.message);
    CHECK_THAT(error_of([&] { moda::validate(c); }),
               Contains("embedded default (configs/tiny.yaml): " + test.message));
  }
}

TEST_CASE("the largest accepted values overflow no count or byte size or FLOP estimate") {
  struct Corner {
    const char* name;
    std::function<void(Config&)> change;
  };
  // Each corner takes some keys to their bounds; the activation bound limits the rest.
  const auto widest = [](Config& c) {
    c.model.d_model = c.model.mlp_hidden = 1 << 20;
    c.model.n_heads = 2;
    c.model.n_kv_heads = 1;
    c.model.vocab_size = int64_t{1} << 31;
    c.model.vocab_multiple = (int64_t{1} << 31) - 1;  // pads to the most rows: 2^32 - 2
    c.moda = {.enabled = true, .ffn_kv = true, .attn_kv_proj = true};
  };
  const std::vector<Corner> corners = {{"deepest and widest",
                                        [&](Config& c) {
                                          widest(c);
                                          c.model.n_layers = 4096;
                                          c.model.max_seq_len = c.batch.seq_len = 1 << 17;
                                          c.batch.micro_batch = 1;
                                          c.batch.global_batch = 1 << 15;
                                        }},
                                       {"widest at 2^24 tokens per micro-batch",
                                        [&](Config& c) {
                                          widest(c);
                                          c.model.n_layers = 32;
                                          c.model.max_seq_len = c.batch.seq_len = 1 << 12;
                                          c.batch.micro_batch = 1 << 12;
                                          c.batch.global_batch = 1 << 20;
                                        }},
                                       {"longest sequence", [](Config& c) {
                                          c.model.max_seq_len = c.batch.seq_len = 1 << 24;
                                          c.batch.micro_batch = 1;
                                          c.batch.global_batch = 256;
                                          c.schedule.total_steps = int64_t{1} << 30;
                                        }}};
  for (const Corner& corner : corners) {
    CAPTURE(corner.name);
    Config c = moda::default_config();
    corner.change(c);
    REQUIRE_NOTHROW(moda::validate(c));
    const moda::ModelShape s(c);
    const moda::ParamCounts n = moda::count_params(s);
    const int64_t B = c.batch.micro_batch, T = c.batch.seq_len;
    // Lower bounds computed in double: a wrapped int64 would fall below them or go negative.
    const double embedding = static_cast<double>(s.padded_vocab) * static_cast<double>(s.d_model);
    const double mlp = 3.0 * static_cast<double>(s.d_model) * static_cast<double>(s.mlp_hidden) *
                       static_cast<double>(s.n_layers);
    CHECK(static_cast<double>(n.total) >= 2 * embedding + mlp);
    CHECK(static_cast<double>(n.paper) >= mlp);
    CHECK(n.non_embedding > 0);
    const moda::MemoryPlan cpu =
        moda::plan_memory(c, B, T, moda::DType::f32, moda::DType::f32, moda::DType::f32,
                          moda::DType::f32, moda::DType::f32);
    CHECK(cpu.activations > 0);
    CHECK(static_cast<double>(cpu.total()) >= 20 * static_cast<double>(n.total));
    for (const int64_t shards : {1, 8}) {
      const moda::CudaMemoryPrediction gpu = moda::predict_cuda_memory(c, B, T, shards);
      CHECK(gpu.activations > 0);
      CHECK(static_cast<double>(gpu.total()) >= 6 * static_cast<double>(n.total));
    }
    const double flops = moda::flops_per_token(c, T);
    CHECK((std::isfinite(flops) && flops >= 6 * mlp));
  }
}

TEST_CASE("a config is one YAML document and an empty path names no file") {
  CHECK_THAT(parse_error("model:\n  d_model: 128\n---\nmodel:\n  d_model: 64\n"),
             Contains("configs/x.yaml:4: more than one YAML document"));
  // A leading document marker and a trailing end marker still make one document.
  CHECK(parse("---\nmodel:\n  d_model: 64\n...\n").model.d_model == 64);
  CHECK_THAT(error_of([] { moda::load_config(""); }),
             Contains("cannot read config file '': the path is empty"));
}

TEST_CASE("parse_config validates and names the file") {
  CHECK_THAT(parse_error("model:\n  d_model: 100\n  n_heads: 3\n  n_kv_heads: 1\n"),
             Contains("configs/x.yaml: model.d_model (100) is not divisible by model.n_heads (3)"));
  Config nameless;
  nameless.batch.micro_batch = 0;
  CHECK_THAT(error_of([&] { moda::validate(nameless); }),
             Contains("config: batch.micro_batch must be > 0, got 0"));
}

TEST_CASE("docs/config.md documents every key, in the order of the resolved config") {
  std::ifstream in(source_path("docs/config.md"));
  REQUIRE(in);
  const std::string docs((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string section;
  int keys = 0;
  size_t last_row = 0;  // the previous key's row: the log prints the config in the page's order
  const std::vector<std::string> lines = absl::StrSplit(moda::to_yaml(Config{}), '\n');
  for (const std::string& line : lines) {
    if (line.empty()) continue;
    if (line[0] != ' ') {
      section = line.substr(0, line.find(':'));
      continue;
    }
    const std::string key = section + "." + line.substr(2, line.find(':') - 2);
    CAPTURE(key);
    CHECK_THAT(docs, Contains("`" + key + "`"));
    const size_t row = docs.find("\n| `" + key + "` |");
    REQUIRE(row != std::string::npos);
    CHECK(row > last_row);
    last_row = row;
    ++keys;
  }
  CHECK(keys == 58);  // every key of the field table; a new key must be documented too
}
