// Checkpoint directories: atomic writes, verification, re-sharding loads, retention.
#include "moda/checkpoint.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <set>

#include "checkpoint/file_io.hpp"
#include "moda/build_info.hpp"
#include "tokenizer/json_scan.hpp"

namespace moda {

static_assert(std::endian::native == std::endian::little,
              "checkpoint files are little-endian float32; a big-endian host needs byte swaps");

namespace fs = std::filesystem;

namespace {

constexpr char kMetaFile[] = "meta.yaml";
constexpr char kConfigFile[] = "config.yaml";
constexpr char kMetricsFile[] = "metrics.jsonl";
constexpr char kFormat[] = "moda-checkpoint";
constexpr std::string_view kSetAsidePrefix = "set-aside-";
constexpr int kVersion = 1;

// Shard file header (64 bytes, little-endian), followed by master, m, v (count float32 each).
constexpr std::array<char, 8> kShardMagic = {'M', 'O', 'D', 'A', 'S', 'H', 'R', 'D'};
constexpr uint32_t kShardVersion = 1;
struct ShardHeader {
  std::array<char, 8> magic = kShardMagic;
  uint32_t version = kShardVersion;
  uint32_t arrays = 3;  // master, adam_m, adam_v
  int64_t offset = 0;
  int64_t count = 0;
  int64_t total = 0;
  int32_t rank = 0;
  int32_t shards = 1;
  std::array<char, 16> reserved{};
};
static_assert(sizeof(ShardHeader) == 64);

std::string shard_file_name(int rank, int shards) {
  return fmt::format("shard-{:05d}-of-{:05d}.bin", rank, shards);
}

uint64_t shard_file_bytes(int64_t count) { return sizeof(ShardHeader) + shard_state_bytes(count); }

// Parses "step-00000123" (exactly; staging names have a suffix) into 123.
std::optional<int64_t> parse_step_dir(const std::string& name) {
  constexpr std::string_view prefix = "step-";
  if (name.size() < prefix.size() + 8 || name.compare(0, prefix.size(), prefix) != 0) return {};
  int64_t step = 0;
  const char* first = name.data() + prefix.size();
  const char* last = name.data() + name.size();
  const auto [ptr, ec] = std::from_chars(first, last, step);
  if (ec != std::errc() || ptr != last) return {};
  return step;
}

bool is_staging_name(const std::string& name) {
  return name.starts_with("step-") &&
         (name.find(".tmp-") != std::string::npos || name.find(".old-") != std::string::npos ||
          name.find(".del-") != std::string::npos);
}

struct FileEntry {
  std::string file;
  uint64_t bytes = 0;
  uint32_t crc32 = 0;
};

struct ShardEntry {
  FileEntry file;
  int rank = 0;
  int shards = 1;
  ShardRange range;
};

struct MetaFile {
  CheckpointMeta meta;  // config_yaml and metrics_jsonl left empty
  std::vector<ShardEntry> shards;
  std::vector<FileEntry> files;
};

template <typename T>
T get(const YAML::Node& node, const char* key, const std::string& path) {
  const YAML::Node value = node[key];
  if (!value) throw CheckpointError(fmt::format("{}: missing key '{}'", path, key));
  try {
    return value.as<T>();
  } catch (const YAML::Exception& e) {
    throw CheckpointError(fmt::format("{}: bad value of '{}': {}", path, key, e.msg));
  }
}

FileEntry parse_file_entry(const YAML::Node& node, const std::string& path) {
  return {get<std::string>(node, "file", path), get<uint64_t>(node, "bytes", path),
          get<uint32_t>(node, "crc32", path)};
}

MetaFile read_meta(const std::string& dir) {
  const std::string path = (fs::path(dir) / kMetaFile).string();
  if (!fs::exists(path)) {
    std::error_code ec;
    if (!fs::exists(dir, ec)) throw CheckpointError(fmt::format("{} does not exist", dir));
    if (!fs::is_directory(dir, ec)) {
      throw CheckpointError(fmt::format("{} is not a checkpoint directory", dir));
    }
    // A run's checkpoint root passed for one of its checkpoints: name the newest.
    if (const std::vector<CheckpointDir> steps = list_checkpoints(dir); !steps.empty()) {
      throw CheckpointError(
          fmt::format("{} is a folder of {} checkpoints, not a checkpoint: pass one of its step-* "
                      "directories, e.g. the newest, {}",
                      dir, steps.size(), steps.front().path));
    }
    throw CheckpointError(fmt::format("{} is missing", path));
  }
  YAML::Node root;
  try {
    root = YAML::Load(fileio::read_file(path));
  } catch (const YAML::Exception& e) {
    throw CheckpointError(fmt::format("{}: unreadable metadata: {}", path, e.msg));
  } catch (const std::runtime_error& e) {
    throw CheckpointError(e.what());
  }
  if (!root.IsMap()) throw CheckpointError(fmt::format("{}: not a mapping", path));
  if (get<std::string>(root, "format", path) != kFormat) {
    throw CheckpointError(fmt::format("{}: not a moda checkpoint", path));
  }
  if (const int v = get<int>(root, "version", path); v != kVersion) {
    throw CheckpointError(
        fmt::format("{}: format version {}, this build reads {}", path, v, kVersion));
  }
  if (!get<bool>(root, "complete", path)) {
    throw CheckpointError(fmt::format("{}: not marked complete", path));
  }
  MetaFile m;
  m.meta.step = get<int64_t>(root, "step", path);
  m.meta.world = get<int>(root, "world", path);
  m.meta.total_params = get<int64_t>(root, "total_params", path);
  m.meta.rng_seed = get<uint64_t>(root, "rng_seed", path);
  m.meta.skipped_steps = get<int64_t>(root, "skipped_steps", path);
  if (const YAML::Node by = root["written_by"]; by && by.IsScalar()) {
    m.meta.written_by = by.as<std::string>();
  }
  const YAML::Node loader = root["loader"];
  if (!loader.IsMap()) throw CheckpointError(fmt::format("{}: missing key 'loader'", path));
  m.meta.loader.seed = get<uint64_t>(loader, "seed", path);
  m.meta.loader.epoch = get<int64_t>(loader, "epoch", path);
  m.meta.loader.cursor = get<int64_t>(loader, "cursor", path);
  const YAML::Node shards = root["shards"];
  if (!shards.IsSequence() || shards.size() == 0) {
    throw CheckpointError(fmt::format("{}: missing key 'shards'", path));
  }
  for (const YAML::Node& s : shards) {
    ShardEntry e;
    e.file = parse_file_entry(s, path);
    e.rank = get<int>(s, "rank", path);
    e.shards = static_cast<int>(shards.size());
    e.range = {get<int64_t>(s, "offset", path), get<int64_t>(s, "count", path)};
    m.shards.push_back(e);
  }
  const YAML::Node files = root["files"];
  if (!files.IsSequence()) throw CheckpointError(fmt::format("{}: missing key 'files'", path));
  for (const YAML::Node& f : files) m.files.push_back(parse_file_entry(f, path));
  return m;
}

// Shards sorted by offset must tile [0, total).
void check_coverage(std::vector<ShardEntry> shards, int64_t total, const std::string& where) {
  std::sort(shards.begin(), shards.end(),
            [](const ShardEntry& a, const ShardEntry& b) { return a.rank < b.rank; });
  int64_t next = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    const ShardEntry& s = shards[i];
    if (s.rank != static_cast<int>(i) || s.range.offset != next || s.range.count < 0) {
      throw CheckpointError(fmt::format(
          "{}: shards do not tile the parameter vector (rank {} covers [{}, {}), expected to "
          "start at {})",
          where, s.rank, s.range.offset, s.range.offset + s.range.count, next));
    }
    next += s.range.count;
  }
  if (next != total) {
    throw CheckpointError(fmt::format("{}: shards cover {} of {} parameters", where, next, total));
  }
}

void verify_plain_file(const std::string& dir, const FileEntry& e) {
  const std::string path = (fs::path(dir) / e.file).string();
  if (!fs::exists(path)) throw CheckpointError(fmt::format("{} is missing", path));
  const fileio::FileDigest d = fileio::digest_file(path);
  if (d.size != e.bytes) {
    throw CheckpointError(
        fmt::format("{}: size {} bytes, metadata says {} (truncated?)", path, d.size, e.bytes));
  }
  if (d.crc32 != e.crc32) {
    throw CheckpointError(
        fmt::format("{}: crc32 {:08x}, metadata says {:08x} (corrupted)", path, d.crc32, e.crc32));
  }
}

// Streams one shard file: checks header, size and crc32, and copies the part of the master
// weights that falls into `weights` and of the Adam moments that falls into `moments` into out
// (whose vectors are sized to those ranges; an empty range copies nothing).
void read_shard(const std::string& dir, const ShardEntry& e, int64_t total, ShardRange weights,
                ShardRange moments, CheckpointState* out) {
  const std::string path = (fs::path(dir) / e.file.file).string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw CheckpointError(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  fileio::Crc32 crc;
  uint64_t read_bytes = 0;
  auto read_exact = [&](void* dst, size_t bytes) -> bool {
    char* p = static_cast<char*>(dst);
    size_t left = bytes;
    while (left > 0) {
      const ssize_t n = ::read(fd, p, left);
      if (n < 0) {
        if (errno == EINTR) continue;
        throw CheckpointError(fmt::format("cannot read {}: {}", path, std::strerror(errno)));
      }
      if (n == 0) return false;
      p += n;
      left -= static_cast<size_t>(n);
    }
    crc.update(dst, bytes);
    read_bytes += bytes;
    return true;
  };
  const uint64_t expected_bytes = shard_file_bytes(e.range.count);
  const uint64_t actual_bytes = fs::file_size(path);
  if (actual_bytes != e.file.bytes || actual_bytes != expected_bytes) {
    throw CheckpointError(fmt::format("{}: size {} bytes, metadata says {} (truncated?)", path,
                                      actual_bytes, e.file.bytes));
  }
  ShardHeader h;
  if (!read_exact(&h, sizeof h)) throw CheckpointError(fmt::format("{}: truncated header", path));
  if (h.magic != kShardMagic || h.version != kShardVersion || h.arrays != 3 ||
      h.offset != e.range.offset || h.count != e.range.count || h.total != total ||
      h.rank != e.rank) {
    throw CheckpointError(fmt::format("{}: header does not match the metadata", path));
  }
  struct Target {
    std::vector<float>* values;
    ShardRange want;
  };
  const Target targets[3] = {
      {&out->shard.master, weights}, {&out->shard.adam_m, moments}, {&out->shard.adam_v, moments}};
  constexpr int64_t kChunk = int64_t{1} << 20;  // floats
  std::vector<float> buf(
      static_cast<size_t>(std::min(kChunk, std::max<int64_t>(e.range.count, 1))));
  for (const Target& t : targets) {
    // Overlap of this shard with the wanted range.
    const int64_t lo = std::max(t.want.offset, e.range.offset);
    const int64_t hi = std::min(t.want.offset + t.want.count, e.range.offset + e.range.count);
    for (int64_t i = 0; i < e.range.count; i += kChunk) {
      const int64_t n = std::min(kChunk, e.range.count - i);
      if (!read_exact(buf.data(), static_cast<size_t>(n) * sizeof(float))) {
        throw CheckpointError(fmt::format("{}: truncated", path));
      }
      // Elements [e.offset + i, e.offset + i + n) of the flat vector.
      const int64_t a = std::max(lo, e.range.offset + i);
      const int64_t b = std::min(hi, e.range.offset + i + n);
      if (a < b) {
        std::copy(buf.begin() + (a - e.range.offset - i), buf.begin() + (b - e.range.offset - i),
                  t.values->begin() + (a - t.want.offset));
      }
    }
  }
  char extra;
  if (::read(fd, &extra, 1) > 0) throw CheckpointError(fmt::format("{}: trailing bytes", path));
  if (crc.value() != e.file.crc32) {
    throw CheckpointError(fmt::format("{}: crc32 {:08x}, metadata says {:08x} (corrupted)", path,
                                      crc.value(), e.file.crc32));
  }
  (void)read_bytes;
}

void emit_file_entry(YAML::Emitter& out, const FileEntry& e) {
  out << YAML::Key << "file" << YAML::Value << e.file;
  out << YAML::Key << "bytes" << YAML::Value << e.bytes;
  out << YAML::Key << "crc32" << YAML::Value << e.crc32;
}

std::string json_field(std::string_view line, std::string_view key) {
  const auto v = json::find_member(line, key);
  return v ? std::string(*v) : std::string();
}

double json_double(std::string_view line, std::string_view key) {
  const std::string v = json_field(line, key);
  if (v.empty() || v == "null") return NAN;
  return std::strtod(v.c_str(), nullptr);
}

}  // namespace

ShardRange shard_range(int64_t total, int rank, int world) {
  if (world < 1 || rank < 0 || rank >= world) {
    throw std::invalid_argument(fmt::format("shard_range: rank {} of world {}", rank, world));
  }
  const int64_t chunk = (total + world - 1) / world;
  const int64_t begin = std::min(total, chunk * rank);
  const int64_t end = std::min(total, begin + chunk);
  return {begin, end - begin};
}

std::string checkpoint_name(int64_t step) { return fmt::format("step-{:08d}", step); }

std::string checkpoint_staging_dir(const std::string& root, int64_t step, const std::string& tag) {
  return (fs::path(root) / fmt::format("{}.tmp-{}", checkpoint_name(step), tag)).string();
}

void write_shard(const std::string& staging, int rank, int world, int64_t total_params,
                 const ShardState& shard) {
  const int64_t n = shard.range.count;
  if (shard.moments_range) {
    throw std::invalid_argument(
        fmt::format("write_shard: rank {} has its Adam moments over another range than its "
                    "weights",
                    rank));
  }
  for (const auto* v : {&shard.master, &shard.adam_m, &shard.adam_v}) {
    if (static_cast<int64_t>(v->size()) != n) {
      throw std::invalid_argument(
          fmt::format("write_shard: rank {} has {} values for a range of {}", rank, v->size(), n));
    }
  }
  fs::create_directories(staging);
  const std::string name = shard_file_name(rank, world);
  ShardHeader h;
  h.offset = shard.range.offset;
  h.count = n;
  h.total = total_params;
  h.rank = rank;
  h.shards = world;
  fileio::DurableFile f((fs::path(staging) / name).string());
  f.write(&h, sizeof h);
  f.write(shard.master.data(), shard.master.size() * sizeof(float));
  f.write(shard.adam_m.data(), shard.adam_m.size() * sizeof(float));
  f.write(shard.adam_v.data(), shard.adam_v.size() * sizeof(float));
  f.close();
  YAML::Emitter rec;
  rec << YAML::BeginMap;
  emit_file_entry(rec, {name, f.size(), f.crc32()});
  rec << YAML::Key << "rank" << YAML::Value << rank;
  rec << YAML::Key << "offset" << YAML::Value << shard.range.offset;
  rec << YAML::Key << "count" << YAML::Value << n;
  rec << YAML::EndMap;
  fileio::write_file((fs::path(staging) / (name + ".crc32")).string(), rec.c_str());
  fileio::fsync_dir(staging);
}

std::string finalize_checkpoint(const std::string& root, const std::string& staging,
                                const CheckpointMeta& meta) {
  // Collect the shard records the ranks left.
  std::vector<ShardEntry> shards;
  std::set<int> counts;
  for (const fs::directory_entry& entry : fs::directory_iterator(staging)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with("shard-") || !name.ends_with(".bin.crc32")) continue;
    const YAML::Node rec = YAML::Load(fileio::read_file(entry.path().string()));
    const std::string where = entry.path().string();
    ShardEntry e;
    e.file = parse_file_entry(rec, where);
    e.rank = get<int>(rec, "rank", where);
    e.range = {get<int64_t>(rec, "offset", where), get<int64_t>(rec, "count", where)};
    int r = 0, w = 0;
    if (std::sscanf(name.c_str(), "shard-%d-of-%d.bin.crc32", &r, &w) != 2 || r != e.rank) {
      throw CheckpointError(fmt::format("{}: unexpected shard record name", where));
    }
    e.shards = w;
    counts.insert(w);
    shards.push_back(e);
  }
  if (shards.empty()) throw CheckpointError(fmt::format("{}: no shard was written", staging));
  if (counts.size() != 1 || *counts.begin() != static_cast<int>(shards.size())) {
    throw CheckpointError(
        fmt::format("{}: {} shard files of differing or incomplete sets", staging, shards.size()));
  }
  check_coverage(shards, meta.total_params, staging);
  std::sort(shards.begin(), shards.end(),
            [](const ShardEntry& a, const ShardEntry& b) { return a.rank < b.rank; });

  const fileio::FileDigest cfg =
      fileio::write_file((fs::path(staging) / kConfigFile).string(), meta.config_yaml);
  const fileio::FileDigest met =
      fileio::write_file((fs::path(staging) / kMetricsFile).string(), meta.metrics_jsonl);

  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "format" << YAML::Value << kFormat;
  out << YAML::Key << "version" << YAML::Value << kVersion;
  out << YAML::Key << "step" << YAML::Value << meta.step;
  out << YAML::Key << "world" << YAML::Value << meta.world;
  out << YAML::Key << "total_params" << YAML::Value << meta.total_params;
  out << YAML::Key << "rng_seed" << YAML::Value << meta.rng_seed;
  out << YAML::Key << "skipped_steps" << YAML::Value << meta.skipped_steps;
  out << YAML::Key << "written_by" << YAML::Value << build_description();
  out << YAML::Key << "loader" << YAML::Value << YAML::Flow << YAML::BeginMap;
  out << YAML::Key << "seed" << YAML::Value << meta.loader.seed;
  out << YAML::Key << "epoch" << YAML::Value << meta.loader.epoch;
  out << YAML::Key << "cursor" << YAML::Value << meta.loader.cursor;
  out << YAML::EndMap;
  out << YAML::Key << "shards" << YAML::Value << YAML::BeginSeq;
  for (const ShardEntry& s : shards) {
    out << YAML::Flow << YAML::BeginMap;
    emit_file_entry(out, s.file);
    out << YAML::Key << "rank" << YAML::Value << s.rank;
    out << YAML::Key << "offset" << YAML::Value << s.range.offset;
    out << YAML::Key << "count" << YAML::Value << s.range.count;
    out << YAML::EndMap;
  }
  out << YAML::EndSeq;
  out << YAML::Key << "files" << YAML::Value << YAML::BeginSeq;
  out << YAML::Flow << YAML::BeginMap;
  emit_file_entry(out, {kConfigFile, cfg.size, cfg.crc32});
  out << YAML::EndMap;
  out << YAML::Flow << YAML::BeginMap;
  emit_file_entry(out, {kMetricsFile, met.size, met.crc32});
  out << YAML::EndMap;
  out << YAML::EndSeq;
  out << YAML::Key << "complete" << YAML::Value << true;
  out << YAML::EndMap;
  fileio::write_file((fs::path(staging) / kMetaFile).string(), std::string(out.c_str()) + "\n");
  fileio::fsync_dir(staging);

  const fs::path final_dir = fs::path(root) / checkpoint_name(meta.step);
  const fs::path aside =
      fs::path(root) / fmt::format("{}.old-{}", checkpoint_name(meta.step), ::getpid());
  const bool replace = fs::exists(final_dir);
  if (replace) fs::rename(final_dir, aside);
  fs::rename(staging, final_dir);
  fileio::fsync_dir(root);
  if (replace) fs::remove_all(aside);
  return final_dir.string();
}

std::string save_checkpoint(const std::string& root, const CheckpointState& state,
                            int64_t keep_last, int64_t keep_every) {
  if (state.shard.range.offset != 0 || state.shard.range.count != state.meta.total_params) {
    throw std::invalid_argument("save_checkpoint: a single process saves the full range");
  }
  fs::create_directories(root);
  const std::string staging =
      checkpoint_staging_dir(root, state.meta.step, std::to_string(::getpid()));
  fs::remove_all(staging);
  const std::string dir = removing_staging_on_failure(staging, [&] {
    write_shard(staging, 0, 1, state.meta.total_params, state.shard);
    return finalize_checkpoint(root, staging, state.meta);
  });
  if (keep_last >= 1) prune_checkpoints(root, keep_last, keep_every, dir);
  return dir;
}

namespace {

// Removes the staging (.tmp-*), replaced (.old-*) and pruned (.del-*) directories under root:
// leftovers of saves or prunes that were killed. A replaced one whose checkpoint name is free is
// renamed back instead when it verifies: a save that replaced its step (finalize_checkpoint) was
// killed between its two renames, and that copy is the only one. Returns the names removed.
std::vector<std::string> remove_staging_leftovers(const std::string& root) {
  std::vector<fs::path> leftovers;
  for (const fs::directory_entry& entry : fs::directory_iterator(root)) {
    if (entry.is_directory() && is_staging_name(entry.path().filename().string())) {
      leftovers.push_back(entry.path());
    }
  }
  std::vector<std::string> removed;
  for (const fs::path& dir : leftovers) {
    const std::string name = dir.filename().string();
    const size_t old_at = name.find(".old-");
    const fs::path own_name = dir.parent_path() / name.substr(0, old_at);
    if (old_at != std::string::npos && !fs::exists(own_name) && !verify_checkpoint(dir.string())) {
      fs::rename(dir, own_name);
      fileio::fsync_dir(root);
      continue;
    }
    fs::remove_all(dir);
    removed.push_back(name);
  }
  return removed;
}

}  // namespace

std::vector<std::string> prune_checkpoints(const std::string& root, int64_t keep_last,
                                           int64_t keep_every, const std::string& just_saved) {
  if (keep_last < 1) {
    throw std::invalid_argument(
        fmt::format("prune_checkpoints: keep_last must be >= 1, got {}", keep_last));
  }
  if (!fs::exists(root)) return {};
  // Ours are renamed away before prune runs: these are leftovers of crashed saves.
  std::vector<std::string> deleted = remove_staging_leftovers(root);
  std::vector<CheckpointDir> complete;
  for (const CheckpointDir& d : list_checkpoints(root)) {
    // Only directories that claim completion count towards keep_last; others are left alone.
    if (fs::exists(fs::path(d.path) / kMetaFile)) complete.push_back(d);
  }
  for (size_t i = 0; i < complete.size(); ++i) {
    const fs::path dir = complete[i].path;
    const bool recent = static_cast<int64_t>(i) < keep_last;
    const bool milestone = keep_every > 0 && complete[i].step % keep_every == 0;
    // Whatever the ranking says (newer checkpoints of another run beside it), the checkpoint this
    // save wrote stays.
    std::error_code ec;
    if (recent || milestone || fs::equivalent(dir, just_saved, ec)) continue;
    // Renamed away first: a kill during remove_all must not leave a damaged final name.
    const fs::path aside = dir.string() + fmt::format(".del-{}", ::getpid());
    fs::rename(dir, aside);
    fs::remove_all(aside);
    deleted.push_back(dir.filename().string());
  }
  if (!deleted.empty()) fileio::fsync_dir(root);
  return deleted;
}

std::vector<std::string> prepare_checkpoint_root(const std::string& root) {
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) {
    throw CheckpointError(fmt::format("cannot create checkpoint.dir {}: {}", root, ec.message()));
  }
  // Found now rather than at the first save, which may come hours later or at preemption.
  const std::string probe = (fs::path(root) / fmt::format(".write-probe-{}", ::getpid())).string();
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || ::close(fd) != 0 || ::unlink(probe.c_str()) != 0) {
    throw CheckpointError(
        fmt::format("cannot write in checkpoint.dir {}: {}", root, std::strerror(errno)));
  }
  return remove_staging_leftovers(root);
}

std::vector<CheckpointDir> list_checkpoints(const std::string& root) {
  std::vector<CheckpointDir> dirs;
  if (!fs::exists(root)) return dirs;
  for (const fs::directory_entry& entry : fs::directory_iterator(root)) {
    if (!entry.is_directory()) continue;
    if (const auto step = parse_step_dir(entry.path().filename().string())) {
      dirs.push_back({*step, entry.path().string()});
    }
  }
  std::sort(dirs.begin(), dirs.end(),
            [](const CheckpointDir& a, const CheckpointDir& b) { return a.step > b.step; });
  return dirs;
}

SetAside set_aside_checkpoints(const std::string& root, int64_t after_step) {
  SetAside out;
  for (const CheckpointDir& d : list_checkpoints(root)) {
    if (d.step > after_step) out.moved.push_back(d);
  }
  if (out.moved.empty()) return out;
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  ::gmtime_r(&now, &utc);
  std::array<char, 32> stamp{};
  std::strftime(stamp.data(), stamp.size(), "%Y%m%dT%H%M%S", &utc);
  const std::string base = fmt::format("{}{}-{}", kSetAsidePrefix, stamp.data(), ::getpid());
  fs::path folder = fs::path(root) / base;
  // One process starting twice within a second (tests) would reuse the name.
  for (int n = 2; fs::exists(folder); ++n) folder = fs::path(root) / fmt::format("{}-{}", base, n);
  fs::create_directory(folder);
  for (CheckpointDir& d : out.moved) {
    const fs::path to = folder / fs::path(d.path).filename();
    fs::rename(d.path, to);
    d.path = to.string();
  }
  fileio::fsync_dir(folder.string());
  fileio::fsync_dir(root);
  out.folder = folder.string();
  return out;
}

std::vector<std::string> list_set_aside_folders(const std::string& root) {
  std::vector<std::string> folders;
  if (!fs::exists(root)) return folders;
  for (const fs::directory_entry& entry : fs::directory_iterator(root)) {
    if (entry.is_directory() && entry.path().filename().string().starts_with(kSetAsidePrefix)) {
      folders.push_back(entry.path().string());
    }
  }
  std::sort(folders.begin(), folders.end());
  return folders;
}

std::optional<std::string> verify_checkpoint(const std::string& dir) {
  try {
    const MetaFile m = read_meta(dir);
    // A step-N folder holds step N: retention, resume and setting aside go by the name.
    const fs::path normal = fs::path(dir).lexically_normal();
    const std::string name = (normal.has_filename() ? normal : normal.parent_path()).filename();
    if (const auto named = parse_step_dir(name); named && *named != m.meta.step) {
      throw CheckpointError(fmt::format(
          "its folder is named for step {}, its {} says step {} (copied or renamed?): rename the "
          "folder to {}",
          *named, kMetaFile, m.meta.step, checkpoint_name(m.meta.step)));
    }
    for (const FileEntry& f : m.files) verify_plain_file(dir, f);
    check_coverage(m.shards, m.meta.total_params, (fs::path(dir) / kMetaFile).string());
    CheckpointState scratch;
    for (const ShardEntry& s : m.shards) {
      read_shard(dir, s, m.meta.total_params, ShardRange{0, 0}, ShardRange{0, 0}, &scratch);
    }
  } catch (const std::exception& e) {
    return std::string(e.what());
  }
  return std::nullopt;
}

namespace {

// The newest checkpoint under root that verifies; each damaged one newer than it is named in a
// warning and in a line of `problems`.
std::optional<std::string> newest_verified(const std::string& root, std::string& problems) {
  for (const CheckpointDir& d : list_checkpoints(root)) {
    const auto problem = verify_checkpoint(d.path);
    if (!problem) return d.path;
    spdlog::warn("skipping damaged checkpoint {}: {}", d.path, *problem);
    problems += fmt::format("\n  {}: {}", d.path, *problem);
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> find_latest_checkpoint(const std::string& root) {
  std::string problems;
  return newest_verified(root, problems);
}

std::optional<std::string> resolve_resume(const std::string& resume, const std::string& root) {
  if (resume.empty() || resume == "none") return std::nullopt;
  if (resume == "auto") {
    std::string problems;
    if (auto found = newest_verified(root, problems)) return found;
    if (problems.empty()) return std::nullopt;
    // Starting over from step 0 here would throw the run's progress away unasked.
    throw CheckpointError(fmt::format(
        "--resume auto: no checkpoint in {} verifies:{}\nrepair one, pass --resume with a good "
        "checkpoint, or start from step 0 without --resume (that moves these aside)",
        root, problems));
  }
  if (const auto problem = verify_checkpoint(resume)) {
    throw CheckpointError(fmt::format("cannot resume from {}: {}", resume, *problem));
  }
  return resume;
}

namespace {

// The meta file's metadata once its plain files are verified, with the config and metrics files.
CheckpointMeta complete_meta(const std::string& dir, MetaFile& m) {
  for (const FileEntry& f : m.files) verify_plain_file(dir, f);
  m.meta.config_yaml = fileio::read_file((fs::path(dir) / kConfigFile).string());
  m.meta.metrics_jsonl = fileio::read_file((fs::path(dir) / kMetricsFile).string());
  return m.meta;
}

// The shards of a checkpoint whose meta file is read already (once per load).
CheckpointState load_shards(const std::string& dir, MetaFile m, ShardRange weights,
                            ShardRange moments) {
  check_coverage(m.shards, m.meta.total_params, (fs::path(dir) / kMetaFile).string());
  for (const ShardRange& r : {weights, moments}) {
    if (r.offset < 0 || r.count < 0 || r.offset + r.count > m.meta.total_params) {
      throw CheckpointError(fmt::format("{}: range [{}, {}) outside its {} parameters", dir,
                                        r.offset, r.offset + r.count, m.meta.total_params));
    }
  }
  CheckpointState state;
  state.meta = complete_meta(dir, m);
  state.shard.range = weights;
  if (moments.count > 0 && moments != weights) state.shard.moments_range = moments;
  state.shard.master.resize(static_cast<size_t>(weights.count));
  state.shard.adam_m.resize(static_cast<size_t>(moments.count));
  state.shard.adam_v.resize(static_cast<size_t>(moments.count));
  const auto overlaps = [](ShardRange a, ShardRange b) {
    return a.offset < b.offset + b.count && b.offset < a.offset + a.count;
  };
  for (const ShardEntry& s : m.shards) {
    if (!overlaps(s.range, weights) && !overlaps(s.range, moments)) continue;
    read_shard(dir, s, m.meta.total_params, weights, moments, &state);
  }
  return state;
}

}  // namespace

CheckpointMeta load_checkpoint_meta(const std::string& dir) {
  MetaFile m = read_meta(dir);
  return complete_meta(dir, m);
}

CheckpointState load_checkpoint(const std::string& dir, ShardRange weights, ShardRange moments) {
  return load_shards(dir, read_meta(dir), weights, moments);
}

CheckpointState load_checkpoint(const std::string& dir, ShardRange range, bool with_optimizer) {
  return load_checkpoint(dir, range, with_optimizer ? range : ShardRange{range.offset, 0});
}

CheckpointState load_checkpoint(const std::string& dir, int rank, int world) {
  MetaFile m = read_meta(dir);
  const ShardRange range = shard_range(m.meta.total_params, rank, world);
  return load_shards(dir, std::move(m), range, range);
}

LoaderState reshard_loader_state(const LoaderState& state, int old_world, int new_world) {
  if (old_world == new_world) return state;
  const int64_t position = state.cursor * old_world;
  if (position % new_world != 0) {
    throw CheckpointError(fmt::format(
        "cannot resume the data loader of {} ranks on {}: {} windows consumed this epoch do not "
        "divide evenly",
        old_world, new_world, position));
  }
  LoaderState out = state;
  out.cursor = position / new_world;
  return out;
}

namespace {

// Where `range` starts in the model's optimizer state (all parameters, or one ZeRO-1 shard).
int64_t state_index(const Model& model, ShardRange range, const char* what) {
  const int64_t begin = model.state_offset(), end = begin + model.master().numel;
  if (range.offset < begin || range.offset + range.count > end) {
    throw std::invalid_argument(
        fmt::format("{}: [{}, {}) is outside the optimizer state [{}, {}) this model holds", what,
                    range.offset, range.offset + range.count, begin, end));
  }
  return range.offset - begin;
}

}  // namespace

uint64_t shard_state_bytes(int64_t params) {
  return 3 * static_cast<uint64_t>(params) * sizeof(float);
}

ShardState capture_shard(Model& model, ShardRange range) {
  ShardState s;
  capture_shard(model, range, s);
  return s;
}

void capture_shard(Model& model, ShardRange range, ShardState& into) {
  into.range = range;
  into.moments_range.reset();
  const int64_t at = state_index(model, range, "capture_shard");
  Backend& backend = model.backend();
  backend.synchronize();
  std::vector<float>* outs[3] = {&into.master, &into.adam_m, &into.adam_v};
  const Tensor* srcs[3] = {&model.master(), &model.adam_m(), &model.adam_v()};
  for (int i = 0; i < 3; ++i) {
    outs[i]->resize(static_cast<size_t>(range.count));
    backend.download_f32(srcs[i]->slice(at, range.count), *outs[i]);
  }
}

void restore_model(Model& model, const ShardState& shard) {
  const ShardRange r = shard.range;
  const int64_t total = model.layout().total();
  if (r.offset < 0 || r.count < 0 || r.offset + r.count > total ||
      static_cast<int64_t>(shard.master.size()) != r.count) {
    throw std::invalid_argument(
        fmt::format("restore_model: shard [{}, {}) with {} values does not fit {} parameters",
                    r.offset, r.offset + r.count, shard.master.size(), total));
  }
  Backend& backend = model.backend();
  model.set_parameters(std::vector<double>(shard.master.begin(), shard.master.end()), r.offset);
  if (!shard.adam_m.empty()) {
    const ShardRange moments = shard.moments_range.value_or(r);
    if (static_cast<int64_t>(shard.adam_m.size()) != moments.count ||
        static_cast<int64_t>(shard.adam_v.size()) != moments.count) {
      throw std::invalid_argument(
          fmt::format("restore_model: Adam moments of {} and {} values for the range [{}, {})",
                      shard.adam_m.size(), shard.adam_v.size(), moments.offset,
                      moments.offset + moments.count));
    }
    const int64_t at = state_index(model, moments, "restore_model");
    backend.upload(model.adam_m().slice(at, moments.count),
                   std::vector<double>(shard.adam_m.begin(), shard.adam_m.end()));
    backend.upload(model.adam_v().slice(at, moments.count),
                   std::vector<double>(shard.adam_v.begin(), shard.adam_v.end()));
  }
  backend.synchronize();
}

ConfigDiff compare_configs(const std::string& saved_yaml, const Config& current) {
  const YAML::Node before = YAML::Load(saved_yaml);
  const YAML::Node after = YAML::Load(to_yaml(current));
  // section.key -> flow text of the value, for both sides.
  auto flatten = [](const YAML::Node& root) {
    std::map<std::string, std::string> out;
    if (!root.IsMap()) return out;
    for (const auto& section : root) {
      if (!section.second.IsMap()) continue;
      for (const auto& key : section.second) {
        YAML::Emitter e;
        e << YAML::Flow << key.second;
        out[section.first.Scalar() + "." + key.first.Scalar()] = e.c_str();
      }
    }
    return out;
  };
  const auto a = flatten(before), b = flatten(after);
  std::set<std::string> keys;
  for (const auto& [k, v] : a) keys.insert(k);
  for (const auto& [k, v] : b) keys.insert(k);
  static const std::set<std::string> not_shape = {"model.init_std", "model.max_seq_len"};
  ConfigDiff diff;
  for (const std::string& k : keys) {
    const auto ia = a.find(k), ib = b.find(k);
    const std::string va = ia == a.end() ? "(absent)" : ia->second;
    const std::string vb = ib == b.end() ? "(absent)" : ib->second;
    if (va == vb) continue;
    const bool shape = (k.starts_with("model.") || k.starts_with("moda.")) && !not_shape.count(k);
    (shape ? diff.shape : diff.other).push_back({k, va, vb});
  }
  return diff;
}

std::vector<ConfigChange> check_resume_config(const std::string& saved_yaml,
                                              const Config& current) {
  ConfigDiff diff = compare_configs(saved_yaml, current);
  if (!diff.shape.empty()) {
    std::string list;
    for (const ConfigChange& c : diff.shape) {
      list += fmt::format("\n  {}: {} in the checkpoint, {} now", c.key, c.before, c.after);
    }
    throw ConfigError(
        fmt::format("{}: cannot resume: model-defining keys differ from the checkpoint's:{}",
                    current.source.empty() ? "config" : current.source, list));
  }
  return std::move(diff.other);
}

std::vector<StepRecord> parse_metrics_jsonl(const std::string& text, int64_t max_step) {
  std::vector<StepRecord> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    StepRecord r;
    try {
      r.step = static_cast<int64_t>(json_double(line, "step"));
      r.loss = json_double(line, "loss");
      r.val_loss = json_double(line, "val_loss");
      r.lr = json_double(line, "lr");
      r.grad_norm = json_double(line, "grad_norm");
      r.tokens_per_s = json_double(line, "tokens_per_s");
      r.mfu = json_double(line, "mfu");
      r.seconds = json_double(line, "step_seconds");
    } catch (const std::exception&) {
      continue;  // a torn last line of a crashed run
    }
    if (max_step >= 0 && r.step > max_step) continue;
    out.push_back(r);
  }
  return out;
}

std::string truncate_metrics_jsonl(const std::string& text, int64_t max_step) {
  std::string out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    try {
      const std::string step = json_field(line, "step");
      if (step.empty() || std::strtoll(step.c_str(), nullptr, 10) > max_step) continue;
    } catch (const std::exception&) {
      continue;
    }
    out.append(line);
    out += '\n';
  }
  return out;
}

}  // namespace moda
