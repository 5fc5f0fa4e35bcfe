// Checkpoints: one directory per optimizer step, written atomically and verified on load.
//
//   <root>/step-00000123/
//     shard-00000-of-00002.bin   this rank's range of the flat fp32 master weights, Adam m and v
//     shard-00001-of-00002.bin   (64-byte header, then master | m | v as little-endian float32)
//     config.yaml                the resolved run configuration (moda::to_yaml)
//     metrics.jsonl              the metrics of the run up to this step
//     meta.yaml                  written last: step, world, loader state, seeds, and the size and
//                                zlib crc32 of every other file. Its presence marks completion.
//
// Files are written into <root>/step-00000123.tmp-<tag>/, fsynced, the directory fsynced, renamed
// to the final name and the parent fsynced: a crash at any moment leaves either the complete new
// checkpoint or none under the final name, and never touches the previous ones. Retention deletes
// old checkpoints only after the new one is complete. Checkpoints of another lineage (an earlier
// run, an abandoned branch) are moved into <root>/set-aside-*/ at startup by the trainer.
// docs/checkpoints.md has the details.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "moda/config.hpp"
#include "moda/data.hpp"
#include "moda/model.hpp"
#include "moda/train.hpp"

namespace moda {

// A checkpoint whose files do not match its metadata (size, checksum, header), or that cannot be
// read; the message names the file.
struct CheckpointError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A contiguous range [offset, offset + count) of the flat parameter vector.
struct ShardRange {
  int64_t offset = 0;
  int64_t count = 0;
  bool operator==(const ShardRange&) const = default;
};
// A default partition: ceil(total / world) elements per rank, the last ranks shorter (possibly
// empty). Trainers may use any other contiguous partition (the ZeRO-1 trainer's shards are
// Model::shard_size() long, clipped to the parameter count); checkpoints record theirs, and a
// load may ask for any range.
ShardRange shard_range(int64_t total, int rank, int world);

// Everything but the tensors.
struct CheckpointMeta {
  int64_t step = 0;          // optimizer steps completed (the next step to run is step + 1)
  int world = 1;             // data-parallel ranks of the run that saved it
  int64_t total_params = 0;  // length of the flat parameter vector
  LoaderState loader;        // of rank 0; every rank's loader is at the same cursor
  uint64_t rng_seed = 0;     // runtime.seed of the run
  int64_t skipped_steps = 0;
  std::string config_yaml;    // moda::to_yaml of the run's config
  std::string metrics_jsonl;  // metrics.jsonl up to and including `step`
  // build_description() of the binary that saved it; informative ("" in checkpoints older than
  // the key).
  std::string written_by;
};

// One rank's shard of the optimizer state.
struct ShardState {
  ShardRange range;
  std::vector<float> master, adam_m, adam_v;  // each range.count long (m, v may be empty on
                                              // load when the optimizer state was not asked for)
  // Set when adam_m, adam_v cover another range than the master weights: a ZeRO-1 rank loads
  // every weight but the moments of its own shard only.
  std::optional<ShardRange> moments_range;
};

struct CheckpointState {
  CheckpointMeta meta;
  ShardState shard;
};

// "step-00000123" (the final directory name of a step).
std::string checkpoint_name(int64_t step);
// <root>/step-00000123.tmp-<tag>: where the files of a checkpoint in progress go. All ranks of
// one save must use the same tag (e.g. rank 0's pid, broadcast); single-process: the pid.
std::string checkpoint_staging_dir(const std::string& root, int64_t step, const std::string& tag);
// Runs `save` (one save's write_shard and finalize_checkpoint into `staging`); when it throws,
// `staging` is removed before the error propagates: a partial save (disk full) must not keep
// holding the space, or the resumed run fails at the same save. A failure to remove is ignored,
// as the save's error is the one to report.
template <typename Save>
auto removing_staging_on_failure(const std::string& staging, Save&& save) {
  try {
    return save();
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove_all(staging, ignored);
    throw;
  }
}

// ---- saving ----
// Each rank: writes (and fsyncs) shard-<rank>-of-<world>.bin into the staging directory, creating
// it if needed, plus a small .crc32 sidecar that finalize_checkpoint reads.
void write_shard(const std::string& staging, int rank, int world, int64_t total_params,
                 const ShardState& shard);
// Rank 0, after every rank's write_shard has returned (the caller's barrier): writes config.yaml,
// metrics.jsonl and finally meta.yaml, fsyncs, renames the staging directory to its final name
// and fsyncs the parent. Checks that the shards cover [0, total_params) exactly. Returns the
// final directory. An existing checkpoint of the same step is replaced.
std::string finalize_checkpoint(const std::string& root, const std::string& staging,
                                const CheckpointMeta& meta);
// Single process (world 1) convenience: write_shard + finalize_checkpoint, then
// prune_checkpoints when keep_last >= 1 (0 keeps everything: `moda export --init-checkpoint`).
// A failed save removes its staging directory before the error propagates.
std::string save_checkpoint(const std::string& root, const CheckpointState& state,
                            int64_t keep_last, int64_t keep_every);

// Retention (rank 0, after a successful finalize): keeps the newest keep_last (>= 1, as the
// config requires) complete checkpoints, every step divisible by keep_every (0 = off) and always
// `just_saved` (the directory finalize_checkpoint returned); deletes the other step directories
// and leftover staging directories (.tmp-*, .old-*, .del-*). Returns the deleted directory names.
std::vector<std::string> prune_checkpoints(const std::string& root, int64_t keep_last,
                                           int64_t keep_every, const std::string& just_saved);

// ---- the run's checkpoint directory ----
// Startup (rank 0, before training): creates root, checks that a file can be created and removed
// in it (CheckpointError with the path and the reason otherwise) and removes the staging leftovers
// (.tmp-*, .old-*, .del-*) of earlier saves and prunes, except a replaced step (.old-*) that
// verifies while its own name is free, which is renamed back. Returns the names removed.
std::vector<std::string> prepare_checkpoint_root(const std::string& root);

// The step-* directories under root (by name, verified or not), newest first.
struct CheckpointDir {
  int64_t step = 0;
  std::string path;
};
std::vector<CheckpointDir> list_checkpoints(const std::string& root);

// Moves (renames, never deletes) the step-* directories under root with a step > after_step
// (-1: all of them) into a new <root>/set-aside-<UTC yyyymmddTHHMMSS>-<pid>/ folder, whose name
// is neither a checkpoint's nor a staging leftover's (a "-2" etc. is appended when that folder
// exists). Returns the folder and what was moved (at its new path), newest first; nothing
// moved: an empty folder name and no directory created.
struct SetAside {
  std::string folder;
  std::vector<CheckpointDir> moved;
};
SetAside set_aside_checkpoints(const std::string& root, int64_t after_step);
// The set-aside-* folders under root (sorted by name, so oldest first); none when root does not
// exist.
std::vector<std::string> list_set_aside_folders(const std::string& root);

// ---- finding and loading ----
// An empty optional when `dir` is a complete checkpoint whose files all match the metadata
// (size, crc32 and shard headers) and whose name, when it is step-N, matches its step; else what
// is wrong, naming the file. Every load names a missing directory, a file in its place and a
// run's checkpoint root passed for a checkpoint (with its newest checkpoint).
std::optional<std::string> verify_checkpoint(const std::string& dir);
// The newest complete, verified checkpoint under root (nullopt if none). A damaged one is skipped
// with a spdlog warning naming it and the file at fault; staging directories are ignored.
std::optional<std::string> find_latest_checkpoint(const std::string& root);
// Resolves --resume: "auto" -> find_latest_checkpoint(root) (nullopt when root holds no step-*
// directory; CheckpointError listing each and its problem when there are some but none
// verifies), a path to a checkpoint directory -> that path (verified; CheckpointError when
// damaged), "" -> nullopt.
std::optional<std::string> resolve_resume(const std::string& resume, const std::string& root);

// Reads the metadata, config and metrics (verifying their sizes and checksums).
CheckpointMeta load_checkpoint_meta(const std::string& dir);
// Reads `range` of the flat vectors from whichever shard files hold it, so the reader's world
// size may differ from the writer's. Every shard file read is verified (size, crc32, header);
// CheckpointError names the file on mismatch. with_optimizer false reads the master weights only.
CheckpointState load_checkpoint(const std::string& dir, ShardRange range,
                                bool with_optimizer = true);
// The master weights of `weights` and the Adam moments of `moments` in one pass over the shard
// files (a ZeRO-1 rank's resume: every weight, its own moments); the moments are then in
// shard.moments_range unless the two ranges are equal.
CheckpointState load_checkpoint(const std::string& dir, ShardRange weights, ShardRange moments);
// This rank's range under the default partition: shard_range(total_params, rank, world).
CheckpointState load_checkpoint(const std::string& dir, int rank, int world);

// Loader state for a run of `new_world` ranks resumed from one of `old_world` ranks: every rank
// consumes the same number of windows, so the permutation position is cursor * world. Throws
// CheckpointError when that position is not divisible by new_world.
LoaderState reshard_loader_state(const LoaderState& state, int old_world, int new_world);

// ---- model state <-> host vectors ----
// Host bytes of the state of `params` parameters (float32 master weights and both Adam moments):
// what a save copies, and a shard file's size less its 64-byte header.
uint64_t shard_state_bytes(int64_t params);
// Copies [range) of the model's master weights and Adam moments to the host (float32, exact for
// the fp32 master buffers). The range must lie inside the optimizer state the model holds (its
// ZeRO-1 shard, when sharded).
ShardState capture_shard(Model& model, ShardRange range);
// The same into `into`, whose vectors are reused: a copy into memory the process has touched
// before costs a fraction of one into fresh pages (background saves keep theirs).
void capture_shard(Model& model, ShardRange range, ShardState& into);
// The inverse: writes shard.range of the compute copy and of the master weights the model holds
// (any range inside the parameters: a ZeRO-1 rank loads every shard's weights this way) and,
// when the shard holds them, the Adam moments of shard.moments_range, or of shard.range when that
// is unset (inside the model's optimizer state).
void restore_model(Model& model, const ShardState& shard);

// ---- config changes on resume ----
struct ConfigChange {
  std::string key;  // "section.key"
  std::string before, after;
};
struct ConfigDiff {
  std::vector<ConfigChange> shape;  // model-defining keys (model.*, moda.*): resuming is an error
  std::vector<ConfigChange> other;  // everything else: allowed, to be logged
};
// Compares the config stored in a checkpoint with the current one, key by key. model.init_std and
// model.max_seq_len are not model-defining (init only; RoPE table length).
ConfigDiff compare_configs(const std::string& saved_yaml, const Config& current);
// Throws ConfigError naming every changed model-defining key; returns the other changes.
std::vector<ConfigChange> check_resume_config(const std::string& saved_yaml, const Config& current);

// ---- metrics ----
// Parses metrics.jsonl text (the trainer's format; null -> NaN) back into step records, e.g. to
// redraw the loss curve of a resumed run. Lines after `max_step` (when >= 0) are dropped.
std::vector<StepRecord> parse_metrics_jsonl(const std::string& text, int64_t max_step = -1);
// The lines of metrics.jsonl text whose "step" is <= max_step (a resumed run truncates its
// metrics file to the checkpoint's step with this).
std::string truncate_metrics_jsonl(const std::string& text, int64_t max_step);

}  // namespace moda
