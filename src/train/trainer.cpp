// The training loop of `moda train`.
#include <fmt/format.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <stdexcept>

#include "checkpoint/file_io.hpp"
#include "dist/gradient_buckets.hpp"
#include "format/byte_size.hpp"
#include "moda/backend.hpp"
#include "moda/build_info.hpp"
#include "moda/checkpoint.hpp"
#include "moda/data.hpp"
#include "moda/device_memory.hpp"
#include "moda/dist.hpp"
#include "moda/profiling.hpp"
#include "moda/train.hpp"
#include "train/checkpoint_shard_writer.hpp"

namespace moda {

namespace {

using Clock = std::chrono::steady_clock;

// SIGTERM / SIGINT / SIGHUP / SIGUSR1 (preemption, Ctrl-C, a closed terminal, a launcher's
// forwarded stop: Open MPI's mpirun forwards SIGUSR1 to every rank, while on SIGTERM it kills
// them a second later): the loop finishes its step, saves and returns. A step and a save of a large
// model take tens of seconds, so the first signal is acknowledged at once, and a second SIGINT ends
// the process without the save (the checkpoints on disk stay whole: a save is renamed into place
// only when complete). A SIGHUP the process inherited as ignored (nohup) stays ignored.
std::atomic<int> g_stop_signal{0};
std::atomic<bool> g_announce_stop{false};

// Only async-signal-safe calls: write(2), signal(2), raise(3).
extern "C" void on_stop_signal(int sig) {
  const auto say = [](const char* text) {
    if (g_announce_stop.load()) {
      const ssize_t written = ::write(STDERR_FILENO, text, std::strlen(text));
      static_cast<void>(written);  // nothing to do if stderr is gone
    }
  };
  // The hangup may also have ended the reader of a pipe the log goes to (`| tee`): a write to it
  // must not kill the process before its save (it stays ignored: the output is gone for good).
  if (sig == SIGHUP) ::signal(SIGPIPE, SIG_IGN);
  if (g_stop_signal.exchange(sig) == 0) {
    say(sig == SIGINT    ? "moda: interrupted: stopping after this step with a checkpoint; "
                           "interrupt again to stop now, without one\n"
        : sig == SIGHUP  ? "moda: hangup (terminal closed): stopping after this step with a "
                           "checkpoint\n"
        : sig == SIGUSR1 ? "moda: SIGUSR1: stopping after this step with a checkpoint\n"
                         : "moda: terminated: stopping after this step with a checkpoint\n");
  } else if (sig == SIGINT) {
    say("moda: interrupted again: stopping now, without a checkpoint\n");
    ::signal(SIGINT, SIG_DFL);
    ::raise(SIGINT);
  }
}

class StopSignals {
 public:
  // announce: this process writes the signal's acknowledgement (rank 0 with a console).
  explicit StopSignals(bool announce) {
    g_stop_signal.store(0);
    g_announce_stop.store(announce);
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, &old_term_);
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGUSR1, &sa, &old_usr1_);
    sigaction(SIGHUP, nullptr, &old_hup_);
    if (old_hup_.sa_handler != SIG_IGN) sigaction(SIGHUP, &sa, nullptr);
  }
  ~StopSignals() {
    sigaction(SIGTERM, &old_term_, nullptr);
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGUSR1, &old_usr1_, nullptr);
    sigaction(SIGHUP, &old_hup_, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct sigaction old_term_ {};
  struct sigaction old_int_ {};
  struct sigaction old_hup_ {};
  struct sigaction old_usr1_ {};
};

std::string resolve_device(DeviceKind kind) {
  switch (kind) {
    case DeviceKind::cpu:
      return "cpu";
    case DeviceKind::cuda:
      return "cuda";
    case DeviceKind::auto_detect:
      return cuda_available() ? "cuda" : "cpu";
  }
  return "cpu";
}

// Mean cross-entropy over up to `batches` micro-batches of the validation store, always the same
// windows (unshuffled, from the start) so that values are comparable across steps.
double validation_loss(Model& model, const std::shared_ptr<const TokenStore>& store,
                       int64_t batches) {
  BatchLoader loader(store, model.seq_len(), model.micro_batch(), 0, 0, 1, false);
  const int64_t available = std::max<int64_t>(loader.windows_per_epoch() / model.micro_batch(), 1);
  const int64_t n = std::min(batches, available);
  std::vector<int32_t> tokens(static_cast<size_t>(model.micro_batch() * (model.seq_len() + 1)));
  double ce = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    loader.next(tokens.data());
    const LossSums s = model.forward(tokens);
    ce += s.ce;
    count += s.tokens;
  }
  return ce / static_cast<double>(count);
}

std::string json_number(double x) { return std::isfinite(x) ? fmt::format("{:.6g}", x) : "null"; }

// Mean of the last steps' times of this process, for the time left; its first step (autotuning,
// first touches) is left out once there are others.
class StepPace {
 public:
  void add(double seconds) {
    if (++seen_ == 2) recent_.clear();
    recent_.push_back(seconds);
    if (recent_.size() > kSteps) recent_.pop_front();
  }
  double mean() const {
    double sum = 0;
    for (const double s : recent_) sum += s;
    return recent_.empty() ? 0.0 : sum / static_cast<double>(recent_.size());
  }

 private:
  static constexpr size_t kSteps = 20;
  std::deque<double> recent_;
  int64_t seen_ = 0;
};

// What rank 0 found at startup: the checkpoint to resume from ("" for step 0) and the keys of the
// config that differ from the checkpoint's.
struct ResumePoint {
  std::string checkpoint;
  std::vector<ConfigChange> changes;
};

// Rank 0 at startup: makes checkpoint.dir ready for this run's saves and finds the checkpoint to
// resume from. Checkpoints that are not this run's history are moved aside:
// retention would rank them above this run's saves and delete those, and a later --resume auto
// would continue them. On a fresh start that is all of them (an earlier run: scripts/run.sh
// reruns into one folder); on a resume from step s those past s (an abandoned branch, or damaged
// ones that --resume auto skipped).
// check_data throws when the checkpoint's loader state does not fit this run's data.
ResumePoint prepare_checkpoints(const std::string& root, const std::string& resume,
                                const Config& config, bool console,
                                const std::function<void(const CheckpointMeta&)>& check_data) {
  for (const std::string& name : prepare_checkpoint_root(root)) {
    if (console) spdlog::info("removed {}, left by an interrupted save", name);
  }
  const std::optional<std::string> found = resolve_resume(resume, root);
  int64_t step = -1;
  ResumePoint point;
  if (found) {
    const CheckpointMeta meta = load_checkpoint_meta(*found);
    // Model-defining keys and the data position first (a changed shape is a ConfigError naming
    // the keys), so that a refused resume moves nothing.
    point.changes = check_resume_config(meta.config_yaml, config);
    try {
      check_data(meta);
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(fmt::format("cannot resume from {}: {}", *found, e.what()));
    }
    point.checkpoint = *found;
    step = meta.step;
  }
  const SetAside aside = set_aside_checkpoints(root, step);
  if (!aside.moved.empty()) {
    const int64_t newest = aside.moved.front().step;
    if (found) {
      spdlog::warn(
          "moved {} checkpoint(s) past the resume point (step {}), the newest step {}, to {}: "
          "an abandoned branch, or damaged ones",
          aside.moved.size(), step, newest, aside.folder);
    } else {
      spdlog::warn(
          "moved {} checkpoint(s) of an earlier run, the newest step {}, to {}; to continue that "
          "run, pass --resume auto",
          aside.moved.size(), newest, aside.folder);
    }
  }
  // Moved, never deleted: so that they are not forgotten, every start counts them.
  if (const std::vector<std::string> kept = list_set_aside_folders(root); !kept.empty()) {
    uint64_t bytes = 0;
    for (const std::string& folder : kept) bytes += fileio::tree_bytes(folder);
    spdlog::info(
        "{} holds {} set-aside folder(s) of earlier runs or branches, {} in all, the oldest {}; "
        "moda never deletes them",
        root, kept.size(), format_bytes(bytes), kept.front());
  }
  if (!found && !resume.empty() && console) {
    spdlog::info("--resume {}: no checkpoint in {}; starting from step 0", resume, root);
  }
  return point;
}

// metrics.jsonl of the run directory (rank 0). A failed write (disk full) is reported once, with
// the reason, and the run goes on: every checkpoint keeps its own copy of the metrics.
class MetricsFile {
 public:
  MetricsFile(const std::filesystem::path& path, const std::string& text) : path_(path.string()) {
    out_.open(path, std::ios::trunc);
    if (!out_) {
      throw std::runtime_error(fmt::format("cannot write {}: {}", path_, std::strerror(errno)));
    }
    append(text);
  }
  void append(const std::string& text) {
    if (failed_) return;
    errno = 0;
    out_ << text;
    out_.flush();
    if (out_) return;
    failed_ = true;
    spdlog::error("cannot write {}: {}; training goes on, the checkpoints keep the metrics", path_,
                  errno != 0 ? std::strerror(errno) : "stream error");
  }

 private:
  std::string path_;
  std::ofstream out_;
  bool failed_ = false;
};

}  // namespace

std::string format_duration(double seconds) {
  const auto total = static_cast<int64_t>(std::llround(std::max(seconds, 0.0)));
  const int64_t days = total / 86400, hours = total / 3600 % 24, minutes = total / 60 % 60,
                secs = total % 60;
  if (days > 0) return fmt::format("{}d{:02d}h", days, hours);
  if (hours > 0) return fmt::format("{}h{:02d}m", hours, minutes);
  if (minutes > 0) return fmt::format("{}m{:02d}s", minutes, secs);
  return fmt::format("{}s", secs);
}

TrainSummary train(const Config& config, const TrainOptions& options) {
  const int64_t T = config.batch.seq_len, B = config.batch.micro_batch;
  const std::string device = resolve_device(config.runtime.device);
  std::unique_ptr<Communicator> comm = make_communicator(device, config.runtime);
  const int rank = comm->rank(), world = comm->world();
  const bool lead = rank == 0;
  if (config.batch.global_batch % (B * world) != 0) {
    throw std::runtime_error(fmt::format(
        "{}: batch.global_batch ({}) is not a multiple of batch.micro_batch ({}) x ranks ({})",
        config.source, config.batch.global_batch, B, world));
  }
  // Every rank must run the same configuration: compare with rank 0's resolved YAML.
  const std::string resolved = to_yaml(config);
  if (const std::string lead_yaml = comm->broadcast(resolved); lead_yaml != resolved) {
    const ConfigDiff diff = compare_configs(lead_yaml, config);
    std::string keys;
    for (const auto* changes : {&diff.shape, &diff.other}) {
      for (const ConfigChange& c : *changes) {
        keys += fmt::format("\n  {}: {} on rank 0, {} here", c.key, c.before, c.after);
      }
    }
    throw std::runtime_error(
        fmt::format("rank {}: the resolved config differs from rank 0's (same file and --set on "
                    "every rank?):{}",
                    rank, keys));
  }
  const int64_t accum = config.batch.global_batch / (B * world);
  auto backend = make_backend(device, static_cast<int>(config.runtime.threads));
  comm->set_device_stream(backend->device_stream());
  // Before the large allocations: a run that cannot fit the GPU stops here, with the numbers.
  const std::optional<CudaMemoryPrediction> memory = check_memory_fit(config, *backend, world);

  Dataset data = open_dataset(config.data, T);
  if (data.vocab_size > config.model.vocab_size) {
    throw std::runtime_error(fmt::format(
        "{}: model.vocab_size ({}) is smaller than the {} tokenizer's vocabulary ({})",
        config.source, config.model.vocab_size, config.data.tokenizer, data.vocab_size));
  }
  // With one rank ZeRO-1 has one shard: the same update, through the same collectives.
  const bool zero1 = config.runtime.zero1;
  // runtime.profile_step: only then do the model's op calls pass through a ProfilingBackend.
  std::unique_ptr<ProfilingBackend> profiler;
  if (config.runtime.profile_step > 0) profiler = std::make_unique<ProfilingBackend>(*backend);
  Model model(config, profiler ? *profiler : *backend, B, T, world, zero1 ? rank : -1);
  model.init_parameters(config.runtime.seed);
  PrefetchLoader loader(BatchLoader(data.train, T, B, config.data.seed, rank, world, true));
  // The range of the flat buffers this rank updates: its shard under ZeRO-1, else everything.
  const int64_t shard = model.shard_size();
  const int64_t own_begin = zero1 ? rank * shard : 0;
  const int64_t own_end = zero1 ? (rank + 1) * shard : model.padded_size();
  const int64_t total_params = model.layout().total();
  // The parameters in that range (the last shards hold padding only, or some of it).
  const ShardRange own_params{std::min(own_begin, total_params),
                              std::min(own_end, total_params) - std::min(own_begin, total_params)};
  const std::string ckpt_root =
      config.checkpoint.dir.empty()
          ? (std::filesystem::path(config.logging.dir) / "checkpoints").string()
          : config.checkpoint.dir;
  TrainSummary summary;
  summary.rank = rank;
  std::string metrics_text;  // rank 0: metrics.jsonl so far, stored in every checkpoint
  // Rank 0 creates logging.dir, prepares checkpoint.dir and finds (and verifies) the checkpoint;
  // an error there stops every rank, before the first step.
  ResumePoint resume_point;
  std::exception_ptr startup_error;
  if (lead) {
    try {
      std::error_code ec;
      std::filesystem::create_directories(config.logging.dir, ec);
      if (ec) {
        throw std::runtime_error(
            fmt::format("cannot create logging.dir {}: {}", config.logging.dir, ec.message()));
      }
      resume_point = prepare_checkpoints(
          ckpt_root, options.resume, config, options.log_to_console,
          [&](const CheckpointMeta& meta) {
            loader.check_restorable(reshard_loader_state(meta.loader, meta.world, world));
          });
    } catch (...) {
      startup_error = std::current_exception();
    }
  }
  if (!comm->broadcast(std::string(startup_error ? "failed" : "")).empty()) {
    if (startup_error) std::rethrow_exception(startup_error);
    throw std::runtime_error(
        "rank 0 stopped at startup (logging.dir, checkpoint.dir or the resume): its error says "
        "why");
  }
  const std::string found = comm->broadcast(resume_point.checkpoint);
  int64_t start = 0;
  if (!found.empty()) {
    // A ZeRO-1 rank needs every shard's weights but the optimizer state of its own only: one
    // pass over the shard files reads both.
    const CheckpointState ck = zero1
                                   ? load_checkpoint(found, ShardRange{0, total_params}, own_params)
                                   : load_checkpoint(found, own_params);
    restore_model(model, ck.shard);
    start = ck.meta.step;
    if (options.log_to_console && lead) {
      // Checkpoints of builds before the written_by key do not say.
      spdlog::info("resuming from {} (step {}){}", found, start,
                   ck.meta.written_by.empty() ? "" : ", saved by " + ck.meta.written_by);
      for (const ConfigChange& c : resume_point.changes) {
        spdlog::info("resume: {} changed from {} to {}", c.key, c.before, c.after);
      }
    }
    loader.restore(reshard_loader_state(ck.meta.loader, ck.meta.world, world));
    summary.start_step = start;
    summary.skipped_steps = ck.meta.skipped_steps;
    metrics_text = truncate_metrics_jsonl(ck.meta.metrics_jsonl, start);
    summary.history = parse_metrics_jsonl(metrics_text);
  }
  summary.steps = start;  // the final step, also when there is nothing left to train
  // A checkpoint of the state after `step`: its shards go into `staging`, then rank 0 writes the
  // metadata and renames it into place.
  struct Save {
    int64_t step = 0;
    std::string staging;
    CheckpointMeta meta;  // rank 0
    Clock::time_point began;
    double paid_seconds = 0;  // of the steps' time, when written in the background
  };
  const auto seconds_since = [](Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  };
  CheckpointShardWriter shard_writer;
  // A background save not finalized yet: set and cleared on every rank alike.
  std::optional<Save> pending;
  // Once every shard of `s` is on disk: rank 0 finalizes it and applies retention.
  const auto finalize = [&](const Save& s, bool background) {
    if (!lead) return;
    const auto finalizing = Clock::now();
    const std::string saved = removing_staging_on_failure(
        s.staging, [&] { return finalize_checkpoint(ckpt_root, s.staging, s.meta); });
    prune_checkpoints(ckpt_root, config.checkpoint.keep_last, config.checkpoint.keep_every, saved);
    if (!options.log_to_console) return;
    // A save's time is paid by the run, so it is shown.
    const std::string size = format_bytes(fileio::tree_bytes(saved));
    if (background) {
      spdlog::info(
          "saved checkpoint {} ({}, written in {:.2f} s beside training; the run paid {:.2f} s)",
          saved, size, shard_writer.write_seconds(), s.paid_seconds + seconds_since(finalizing));
    } else {
      spdlog::info("saved checkpoint {} ({} in {:.2f} s)", saved, size, seconds_since(s.began));
    }
  };
  // Collective: waits for the pending background save's shard writes and finalizes it. A write
  // that failed (its staging directory is removed) stops every rank.
  const auto complete_pending = [&] {
    if (!pending) return;
    const std::exception_ptr error = shard_writer.wait();
    double failed = error ? 1.0 : 0.0;
    comm->all_reduce_host(std::span<double>(&failed, 1));
    Save s = std::move(*pending);
    pending.reset();
    if (error) std::rethrow_exception(error);
    if (failed > 0) {
      throw std::runtime_error(fmt::format(
          "checkpoint of step {}: another rank could not write its shard (its log says why)",
          s.step));
    }
    finalize(s, true);
  };
  // Writes a checkpoint of the state after `step_done` steps (collective: every rank calls it).
  // In the background the shard is copied now and written by a thread while training goes on;
  // the copy is what the step loop pays.
  const auto save = [&](int64_t step_done, bool background) {
    complete_pending();
    Save s;
    s.began = Clock::now();
    s.step = step_done;
    const std::string tag = comm->broadcast(std::to_string(::getpid()));
    s.staging = checkpoint_staging_dir(ckpt_root, step_done, tag);
    if (lead) {
      s.meta.step = step_done;
      s.meta.world = world;
      s.meta.total_params = total_params;
      s.meta.loader = loader.state();
      s.meta.rng_seed = config.runtime.seed;
      s.meta.skipped_steps = summary.skipped_steps;
      s.meta.config_yaml = to_yaml(config);
      s.meta.metrics_jsonl = metrics_text;
    }
    // Under ZeRO-1 every rank writes its range; otherwise rank 0 writes everything.
    const bool writes = zero1 || lead;
    const int shard_rank = zero1 ? rank : 0, shard_count = zero1 ? world : 1;
    const ShardRange range = zero1 ? own_params : ShardRange{0, total_params};
    // The copy goes into the buffers of the last background save, when there was one: no second
    // copy of the state in host memory at the last save.
    ShardState shard;
    if (writes) {
      shard = shard_writer.take_buffers();
      capture_shard(model, range, shard);
    }
    if (background) {
      if (writes) {
        shard_writer.start(s.staging, shard_rank, shard_count, total_params, std::move(shard));
      }
      s.paid_seconds = seconds_since(s.began);
      pending = std::move(s);
      return;
    }
    if (writes) {
      removing_staging_on_failure(
          s.staging, [&] { write_shard(s.staging, shard_rank, shard_count, total_params, shard); });
    }
    comm->barrier();
    finalize(s, false);
    comm->barrier();
  };
  StopSignals stop_signals(options.log_to_console && lead);
  // After each step (taken or skipped): save on the interval, at the end and on a signal that
  // reached any rank. Returns true when the run must stop.
  auto end_of_step = [&](int64_t step_done) {
    // [0]: a signal reached some rank; [1]: ranks still writing a background save's shard.
    double flags[2] = {g_stop_signal.load() != 0 ? 1.0 : 0.0, shard_writer.busy() ? 1.0 : 0.0};
    comm->all_reduce_host(flags);
    const bool stop = flags[0] > 0;
    // A background save is finalized at the first step boundary after its shards are written.
    if (pending && flags[1] == 0) complete_pending();
    const int64_t iv = config.checkpoint.interval;
    const bool last = step_done == config.schedule.total_steps && config.checkpoint.at_end;
    // The run ends after a signal's save and the last one: those are written in the step.
    if (stop || last || (iv > 0 && step_done % iv == 0)) {
      save(step_done, config.checkpoint.background && !stop && !last);
    }
    if (stop) {
      summary.interrupted = true;
      if (options.log_to_console && lead)
        spdlog::warn("stopping after step {} on a signal; resume with --resume auto", step_done);
    }
    return stop;
  };

  // Only rank 0 writes shared files and logs.
  const std::filesystem::path dir(config.logging.dir);
  std::optional<MetricsFile> metrics;
  if (lead) {
    fileio::write_file((dir / "config.yaml").string(), resolved);
    metrics.emplace(dir / "metrics.jsonl", metrics_text);  // a resumed run continues its metrics
  }
  const bool console = options.log_to_console && lead;
  if (lead && start >= config.schedule.total_steps) {
    spdlog::warn("the checkpoint's step {} is at or past schedule.total_steps {}: nothing trained",
                 start, config.schedule.total_steps);
  }

  const ParamCounts counts = count_params(model.shape());
  const double flops_token = flops_per_token(config, T);
  const int64_t tokens_per_step = config.batch.global_batch * T;
  if (console) {
    spdlog::info("{}", build_description());
    spdlog::info("resolved config ({}):\n{}", config.source, resolved);
    spdlog::info("backend: {}; {}", backend->name(), comm->name());
    if (zero1) {
      spdlog::info(
          "ZeRO-1: each rank holds the master weights and Adam moments of {} of {} elements",
          model.master().numel, model.padded_size());
    } else if (world > 1) {
      spdlog::info("gradients: all-reduce in buckets of {} MiB during the backward",
                   config.runtime.grad_bucket_mb);
    }
    spdlog::info("model: {} parameters ({} non-embedding), {:.3g} GFLOP/token", counts.total,
                 counts.non_embedding, flops_token / 1e9);
    spdlog::info("data: train {} tokens ({}), val {}", data.train->size(), data.train->describe(),
                 data.val ? fmt::format("{} tokens", data.val->size()) : "none");
    if (config.logging.val_interval > 0 && !data.val) {
      spdlog::warn(
          "no validation data: data.val is not set and data.val_fraction ({}) held out nothing "
          "usable (it holds out whole documents of text sources, the tail of token shards; less "
          "than a window does not count): val_loss stays null; set data.val",
          config.data.val_fraction);
    } else if (config.logging.val_interval > 0) {
      const int64_t windows = BatchLoader(data.val, T, B, 0, 0, 1, false).windows_per_epoch();
      if (windows < B) {
        spdlog::warn(
            "the validation data holds {} windows of {} tokens, fewer than one micro-batch of {}: "
            "each validation repeats them to fill one",
            windows, T + 1, B);
      } else if (windows / B < config.logging.val_batches) {
        spdlog::info(
            "validation: {} micro-batches, all the validation data holds "
            "(logging.val_batches is {})",
            windows / B, config.logging.val_batches);
      }
    }
    spdlog::info(
        "batch: {} x {} tokens per micro-batch, {} micro-batches per step, {} tokens per step", B,
        T, accum, tokens_per_step);
  }

  std::vector<int32_t> tokens(static_cast<size_t>(B * (T + 1)));
  const double loss_scale = 1.0 / static_cast<double>(tokens_per_step);
  // Without ZeRO-1 the last micro-batch's backward hands each finished range of the gradients to
  // the all-reduce.
  GradientBuckets buckets(
      *comm, model.grads(),
      static_cast<int64_t>(config.runtime.grad_bucket_mb * (1 << 20) /
                           static_cast<double>(dtype_size(model.grads().dtype))));
  const GradientsReady hand_over = [&buckets](int64_t begin, int64_t end) {
    buckets.ready(begin, end);
  };
  const int64_t total = config.schedule.total_steps;
  StepPace pace;
  for (int64_t step = start; step < total; ++step) {
    const bool profiling = profiler && step + 1 == config.runtime.profile_step;
    if (profiling) profiler->start();
    const auto t0 = Clock::now();
    model.zero_gradients();
    LossSums sums;
    for (int64_t m = 0; m < accum; ++m) {
      loader.next(tokens.data());
      const bool overlap = !zero1 && m + 1 == accum;
      const LossSums s =
          model.forward_backward(tokens, loss_scale, overlap ? hand_over : GradientsReady{});
      sums.ce += s.ce;
      sums.lse_sq += s.lse_sq;
      sums.tokens += s.tokens;
    }
    // Sum the gradients over ranks: everywhere (the buckets' all-reduce) or into each rank's
    // shard.
    if (profiling) profiler->begin_region("communication");
    if (zero1) {
      comm->reduce_scatter_sum(model.grads(), shard);
    } else {
      buckets.finish();
    }
    if (profiling) profiler->end_region();
    double loss_sums[2] = {sums.ce, static_cast<double>(sums.tokens)};
    comm->all_reduce_host(loss_sums);
    std::vector<double> squares = gradient_square_sums(model, own_begin, own_end);
    if (zero1) comm->all_reduce_host(squares);
    StepRecord rec;
    rec.step = step + 1;
    rec.loss = loss_sums[0] / loss_sums[1];
    const GradientStats grad = gradient_stats(model, squares);
    rec.grad_norm = grad.norm;
    rec.lr = learning_rate(config.schedule, config.optimizer.lr, step);
    if (!std::isfinite(rec.loss) || !grad.finite) {
      const std::string what =
          !std::isfinite(rec.loss)
              ? fmt::format("loss is {}", rec.loss)
              : fmt::format("gradient of tensor '{}' holds NaN or inf", grad.first_bad);
      if (config.runtime.nan_policy == NanPolicy::stop) {
        throw std::runtime_error(
            fmt::format("step {}: {}; stopping (runtime.nan_policy: stop)", rec.step, what));
      }
      ++summary.skipped_steps;
      if (lead)
        spdlog::warn("step {}: {}; step skipped ({} of at most {})", rec.step, what,
                     summary.skipped_steps, config.runtime.max_skipped_steps);
      if (summary.skipped_steps > config.runtime.max_skipped_steps) {
        throw std::runtime_error(
            fmt::format("step {}: {} non-finite steps skipped, more than "
                        "runtime.max_skipped_steps ({}); stopping",
                        rec.step, summary.skipped_steps, config.runtime.max_skipped_steps));
      }
      if (profiling) profiler->stop();  // a skipped step has no profile
      if (end_of_step(rec.step)) break;
      continue;
    }
    const double clip = config.optimizer.grad_clip;
    const double scale = clip > 0 && grad.norm > clip ? clip / grad.norm : 1.0;
    adamw_step(model, config.optimizer, rec.lr, step + 1, scale, own_begin, own_end);
    // Each rank updated the compute copy of its shard's weights; every rank needs them all.
    if (zero1) {
      if (profiling) profiler->begin_region("communication");
      comm->all_gather(model.weights(), shard);
      if (profiling) profiler->end_region();
    }
    backend->synchronize();
    rec.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    rec.tokens_per_s = static_cast<double>(tokens_per_step) / rec.seconds;
    rec.mfu = model_flops_utilization(rec.tokens_per_s, flops_token, backend->peak_flops(), world);
    if (profiling) {
      summary.profile =
          format_profile(group_profile(profiler->stop(), model.shape()), rec.step,
                         1e3 * rec.seconds, device == "cuda" ? "CUDA events" : "wall clock");
      if (console) spdlog::info("{}", summary.profile);
    }
    if (console && memory && step == start) {
      spdlog::info("{}", memory_report(*memory, backend->device_memory()));
    }

    const bool last = step + 1 == total;
    const int64_t vi = config.logging.val_interval;
    if (lead && data.val && (last || (vi > 0 && rec.step % vi == 0))) {
      rec.val_loss = validation_loss(model, data.val, config.logging.val_batches);
      summary.final_val_loss = rec.val_loss;
    }
    if (lead) {
      const std::string line = fmt::format(
          "{{\"step\": {}, \"loss\": {}, \"val_loss\": {}, \"lr\": {}, \"grad_norm\": {}, "
          "\"tokens\": {}, \"tokens_per_s\": {}, \"mfu\": {}, \"step_seconds\": {}}}\n",
          rec.step, json_number(rec.loss), json_number(rec.val_loss), json_number(rec.lr),
          json_number(rec.grad_norm), rec.step * tokens_per_step, json_number(rec.tokens_per_s),
          json_number(rec.mfu), json_number(rec.seconds));
      metrics->append(line);
      metrics_text += line;
    }
    pace.add(rec.seconds);
    // The first step of every start is shown: after a resume it shows the loss carried on.
    if (console && (rec.step % config.logging.interval == 0 || step == start || last ||
                    std::isfinite(rec.val_loss))) {
      // Time left at the recent pace (validation and checkpoints not counted).
      const std::string eta =
          last ? ""
               : " | eta " + format_duration(pace.mean() * static_cast<double>(total - rec.step));
      spdlog::info(
          "step {:>6}/{} | loss {:.4f}{} | lr {:.3e} | grad norm {:.3f} | {:.0f} tok/s | MFU {} | "
          "{:.3f} s{}",
          rec.step, total, rec.loss,
          std::isfinite(rec.val_loss) ? fmt::format(" | val {:.4f}", rec.val_loss) : "", rec.lr,
          rec.grad_norm, rec.tokens_per_s,
          std::isfinite(rec.mfu) ? fmt::format("{:.1f}%", 100 * rec.mfu) : "n/a", rec.seconds, eta);
    }
    summary.history.push_back(rec);
    summary.steps = rec.step;
    if (end_of_step(rec.step)) break;
  }
  // An interval save still being written when the run ends without a final save.
  complete_pending();
  if (lead && config.logging.plot && !summary.history.empty()) {
    // The picture is optional: failing to draw it must not fail a completed run.
    try {
      errno = 0;
      write_loss_plot((dir / "loss.png").string(), summary.history);
      if (console)
        spdlog::info("wrote {} and {}", (dir / "metrics.jsonl").string(),
                     (dir / "loss.png").string());
    } catch (const std::exception& e) {
      const int error = errno;
      spdlog::warn("{}{}; the run itself completed", e.what(),
                   error != 0 ? fmt::format(": {}", std::strerror(error)) : "");
    }
  }
  return summary;
}

}  // namespace moda
