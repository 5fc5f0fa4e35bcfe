// Typed run configuration. YAML is parsed into these structs by src/config/; every field here has a
// key of the same name under its section (docs/config.md lists them with defaults and ranges).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace moda {

enum class NormPlacement { reordered, pre, post };
enum class LrDecay { cosine, linear, constant };
enum class DeviceKind { auto_detect, cpu, cuda };
enum class NanPolicy { stop, skip };
enum class CommKind { auto_detect, single, mpi, nccl };

struct ModelConfig {
  int64_t d_model = 128;         // D
  int64_t n_layers = 4;          // N
  int64_t n_heads = 4;           // Hq
  int64_t n_kv_heads = 2;        // Hk; the GQA group is Hq / Hk
  int64_t mlp_hidden = 384;      // F of the SwiGLU MLP
  int64_t vocab_size = 258;      // real vocabulary of the tokenizer (ids >= this never occur)
  int64_t vocab_multiple = 128;  // embedding rows are vocab_size rounded up to this
  int64_t max_seq_len = 256;     // length of the RoPE table; batch.seq_len may not exceed it
  double rope_theta = 500000.0;
  double norm_eps = 1e-6;
  NormPlacement norm_placement = NormPlacement::reordered;
  bool tie_embeddings = false;
  double init_std = 0.02;

  int64_t head_dim() const { return d_model / n_heads; }
  int64_t group_size() const { return n_heads / n_kv_heads; }
  int64_t padded_vocab() const {
    return (vocab_size + vocab_multiple - 1) / vocab_multiple * vocab_multiple;
  }
};

struct ModaConfig {
  bool enabled = false;       // depth stream on: every layer reads the slots of earlier layers
  bool ffn_kv = false;        // the MLP input writes a slot too (paper's "Extra FFN KV Proj.")
  bool attn_kv_proj = false;  // the attention slot has its own K/V projections (Table 3 row 5)
};

struct OptimizerConfig {
  double lr = 3e-4;  // peak learning rate
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;  // decoupled; never applied to embeddings or norm weights
  double grad_clip = 1.0;     // global L2 norm; 0 disables clipping
  double z_loss = 0.0;        // weight of the z-loss term mean(logsumexp^2)
};

struct ScheduleConfig {
  int64_t total_steps = 100;  // optimizer steps of the run; the decay ends here
  int64_t warmup_steps = 10;
  LrDecay decay = LrDecay::cosine;
  double min_lr = 3e-5;  // floor the decay ends at
};

struct DataConfig {
  std::string tokenizer = "byte";  // byte | gpt2 | dolma2
  // Training text or shards. "embedded" is the KJV excerpt compiled into the binary.
  std::vector<std::string> train = {"embedded"};
  std::vector<std::string> val;  // empty: hold out val_fraction of the train documents
  double val_fraction = 0.05;
  std::string format = "auto";  // auto | text | npy | bin
  std::string dtype = "auto";   // auto | uint16 | uint32 (for .npy shards without a manifest)
  uint64_t seed = 1234;         // shuffle seed of the window order
};

struct BatchConfig {
  int64_t seq_len = 128;     // T
  int64_t micro_batch = 4;   // sequences per forward/backward on one rank
  int64_t global_batch = 8;  // sequences per optimizer step over all ranks
};

struct CheckpointConfig {
  std::string dir;       // empty: <logging.dir>/checkpoints
  int64_t interval = 0;  // steps between checkpoints; 0 = only at the end and on signals
  int64_t keep_last = 3;
  int64_t keep_every = 0;  // also keep every K-th step forever; 0 = off
  bool at_end = true;      // save when the run completes (false: throughput benchmarks)
  bool background = true;  // write interval checkpoints in a thread while training goes on
};

struct LoggingConfig {
  std::string dir = "runs/tiny";  // metrics.jsonl, loss.png, resolved config, checkpoints
  int64_t interval = 10;          // steps between console lines
  int64_t val_interval = 50;      // steps between validation losses; 0 = only at the end
  int64_t val_batches = 4;        // micro-batches per validation
  bool plot = true;               // write loss.png at the end
};

struct RuntimeConfig {
  DeviceKind device = DeviceKind::auto_detect;
  uint64_t seed = 42;   // weight init and anything else random
  int64_t threads = 0;  // OpenMP threads for the CPU backend; 0 = all cores
  NanPolicy nan_policy = NanPolicy::stop;
  int64_t max_skipped_steps = 10;  // with nan_policy skip: stop once more steps were skipped
  // Optimizer step (1-based) whose backend op calls are timed and logged as a per-phase table;
  // 0 = off.
  int64_t profile_step = 0;
  // Data parallelism: shard the optimizer update over ranks (reduce-scatter the gradients,
  // update one shard per rank, all-gather the parameters) instead of all-reducing.
  bool zero1 = false;
  // Communicator: auto (one process without mpirun/srun, else MPI for the CPU backend and NCCL
  // for CUDA), or forced: single, mpi, nccl (also with one rank, e.g. `mpirun -np 1`).
  CommKind comm = CommKind::auto_detect;
  // A collective or host wait between ranks that takes longer stops the whole job (a rank died
  // or hangs); it must exceed the longest pause of one rank (rank 0 writing a checkpoint).
  double comm_timeout_s = 600.0;
  // Gradient all-reduce in buckets of this many MiB (fp32 gradients), each started as soon as
  // the backward has finished its layers; 0: one all-reduce after the backward.
  double grad_bucket_mb = 25.0;
};

struct Config {
  ModelConfig model;
  ModaConfig moda;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  DataConfig data;
  BatchConfig batch;
  CheckpointConfig checkpoint;
  LoggingConfig logging;
  RuntimeConfig runtime;
  std::string source;  // where it came from (file path or "embedded default"), for messages
};

// Thrown for every bad configuration; the message names the file and the key.
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Parses YAML text. `origin` names the file in error messages.
Config parse_config(const std::string& yaml_text, const std::string& origin);
// Reads and parses a file; throws ConfigError naming the path when it cannot be read.
Config load_config(const std::string& path);
// The embedded default configuration (configs/tiny.yaml compiled in).
Config default_config();
// Applies "section.key=value" overrides (the value is YAML), then re-validates.
void apply_overrides(Config& config, const std::vector<std::string>& overrides);
// Throws ConfigError for out-of-range values and inconsistent shapes.
void validate(const Config& config);
// The fully resolved configuration as YAML (printed at start, stored in checkpoints).
std::string to_yaml(const Config& config);

std::string to_string(NormPlacement p);
std::string to_string(LrDecay d);
std::string to_string(DeviceKind d);
std::string to_string(NanPolicy p);
std::string to_string(CommKind c);

}  // namespace moda
