// Checkpoints: bitwise round trips, damage detection, staging leftovers, retention, re-sharding,
// model state capture, config changes on resume, metrics.
#include <fmt/format.h>
#include <poll.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "moda/checkpoint.hpp"
#include "test_util.hpp"

using namespace moda;
using moda::test::flip_byte;
using moda::test::LogCapture;
namespace fs = std::filesystem;

namespace {

// Temporary directories of this process, removed when the test binary exits.
struct TempRoots {
  std::vector<fs::path> paths;
  ~TempRoots() {
    std::error_code ec;
    for (const fs::path& p : paths) fs::remove_all(p, ec);
  }
};
TempRoots temp_roots;

std::string temp_root(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / fmt::format("moda_ckpt_{}_{}", name, ::getpid());
  fs::remove_all(p);
  fs::create_directories(p);
  temp_roots.paths.push_back(p);
  return p.string();
}

std::vector<float> random_floats(int64_t n, uint64_t seed) {
  const std::vector<double> d = test::random_normal(static_cast<size_t>(n), seed);
  return {d.begin(), d.end()};
}

CheckpointState make_state(int64_t step, int64_t total, uint64_t seed) {
  CheckpointState s;
  s.meta.step = step;
  s.meta.world = 1;
  s.meta.total_params = total;
  s.meta.loader = {1234, 2, 17 + step};
  s.meta.rng_seed = 0xfedcba9876543210ull;
  s.meta.skipped_steps = 1;
  s.meta.config_yaml = to_yaml(Config{});
  s.meta.metrics_jsonl = fmt::format("{{\"step\": {}, \"loss\": 2.5, \"val_loss\": null}}\n", step);
  s.shard.range = {0, total};
  s.shard.master = random_floats(total, seed);
  s.shard.adam_m = random_floats(total, seed + 1);
  s.shard.adam_v = random_floats(total, seed + 2);
  return s;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::string shard_path(const std::string& dir) {
  return (fs::path(dir) / "shard-00000-of-00001.bin").string();
}

}  // namespace

TEST_CASE("checkpoint save/load round trip is bitwise", "[checkpoint]") {
  const std::string root = temp_root("roundtrip");
  const CheckpointState s = make_state(123, 1001, 7);
  const std::string dir = save_checkpoint(root, s, 3, 0);
  CHECK(fs::path(dir).filename() == "step-00000123");
  CHECK(fs::exists(fs::path(dir) / "meta.yaml"));
  CHECK_FALSE(verify_checkpoint(dir).has_value());
  REQUIRE(find_latest_checkpoint(root) == dir);

  const CheckpointState l = load_checkpoint(dir, 0, 1);
  CHECK(l.meta.step == 123);
  CHECK(l.meta.world == 1);
  CHECK(l.meta.total_params == 1001);
  CHECK(l.meta.loader.seed == 1234);
  CHECK(l.meta.loader.epoch == 2);
  CHECK(l.meta.loader.cursor == 140);
  CHECK(l.meta.rng_seed == 0xfedcba9876543210ull);
  CHECK(l.meta.skipped_steps == 1);
  CHECK(l.meta.config_yaml == s.meta.config_yaml);
  CHECK(l.meta.metrics_jsonl == s.meta.metrics_jsonl);
  CHECK(l.shard.range == s.shard.range);
  CHECK(bitwise_equal(l.shard.master, s.shard.master));
  CHECK(bitwise_equal(l.shard.adam_m, s.shard.adam_m));
  CHECK(bitwise_equal(l.shard.adam_v, s.shard.adam_v));
  // Nothing but the final directory is left behind.
  int entries = 0;
  for (const auto& e : fs::directory_iterator(root)) entries += e.is_directory();
  CHECK(entries == 1);
  // Saving the same step again replaces it.
  CheckpointState again = make_state(123, 1001, 99);
  save_checkpoint(root, again, 3, 0);
  CHECK(bitwise_equal(load_checkpoint(dir, 0, 1).shard.master, again.shard.master));
}

TEST_CASE("truncated and corrupted checkpoints are named in a warning and skipped",
          "[checkpoint]") {
  const std::string root = temp_root("damaged");
  const std::string d1 = save_checkpoint(root, make_state(1, 500, 1), 0, 0);
  const std::string d2 = save_checkpoint(root, make_state(2, 500, 2), 0, 0);
  const std::string d3 = save_checkpoint(root, make_state(3, 500, 3), 0, 0);
  REQUIRE(find_latest_checkpoint(root) == d3);

  SECTION("a truncated shard") {
    fs::resize_file(shard_path(d3), fs::file_size(shard_path(d3)) - 4);
    LogCapture log;
    CHECK(find_latest_checkpoint(root) == d2);
    CHECK(log.text().find("step-00000003") != std::string::npos);
    CHECK(log.text().find("shard-00000-of-00001.bin") != std::string::npos);
    CHECK(log.text().find("truncated") != std::string::npos);
    CHECK_THROWS_WITH(load_checkpoint(d3, 0, 1),
                      Catch::Contains("shard-00000-of-00001.bin") && Catch::Contains("size"));
  }
  SECTION("a flipped byte in the data, and in config.yaml of the one before") {
    flip_byte(shard_path(d3), 64 + 4 * 250);
    flip_byte((fs::path(d2) / "config.yaml").string(), 10);
    LogCapture log;
    CHECK(find_latest_checkpoint(root) == d1);
    CHECK(log.text().find("step-00000003") != std::string::npos);
    CHECK(log.text().find("crc32") != std::string::npos);
    CHECK(log.text().find("config.yaml") != std::string::npos);
    CHECK_THROWS_AS(load_checkpoint(d3, 0, 1), CheckpointError);
    CHECK_THROWS_WITH(load_checkpoint(d3, 0, 1), Catch::Contains("shard-00000-of-00001.bin"));
    CHECK_THROWS_WITH(load_checkpoint_meta(d2), Catch::Contains("config.yaml"));
    CHECK_THROWS_WITH(resolve_resume(d3, root), Catch::Contains("shard-00000-of-00001.bin"));
  }
  SECTION("missing or truncated metadata") {
    fs::remove(fs::path(d3) / "meta.yaml");
    const std::string meta2 = (fs::path(d2) / "meta.yaml").string();
    fs::resize_file(meta2, fs::file_size(meta2) / 2);
    LogCapture log;
    CHECK(find_latest_checkpoint(root) == d1);
    CHECK(log.text().find("step-00000003") != std::string::npos);
    CHECK(log.text().find("step-00000002") != std::string::npos);
  }
  SECTION("nothing intact: --resume auto stops, naming each checkpoint and its problem") {
    for (const std::string& d : {d1, d2, d3}) flip_byte(shard_path(d), 70);
    LogCapture log;
    CHECK_FALSE(find_latest_checkpoint(root).has_value());
    try {
      resolve_resume("auto", root);
      FAIL("resolve_resume(\"auto\") accepted three damaged checkpoints");
    } catch (const CheckpointError& e) {
      const std::string what = e.what();
      for (const std::string& d : {d1, d2, d3}) {
        CHECK(what.find(d + ": " + shard_path(d)) != std::string::npos);
      }
      CHECK(what.find("crc32") != std::string::npos);
    }
  }
  SECTION("no step directory at all: --resume auto starts afresh") {
    for (const std::string& d : {d1, d2, d3}) fs::remove_all(d);
    CHECK_FALSE(resolve_resume("auto", root).has_value());
  }
}

TEST_CASE("a leftover staging directory is ignored and pruned", "[checkpoint]") {
  const std::string root = temp_root("staging");
  const std::string d1 = save_checkpoint(root, make_state(4, 100, 4), 3, 0);
  // A crash mid-save of step 5: files written, never renamed; its shard is even complete.
  const std::string staging = checkpoint_staging_dir(root, 5, "424242");
  const CheckpointState s5 = make_state(5, 100, 5);
  write_shard(staging, 0, 1, 100, s5.shard);
  CHECK(find_latest_checkpoint(root) == d1);
  CHECK(resolve_resume("auto", root) == d1);
  const auto deleted = prune_checkpoints(root, 3, 0, d1);
  REQUIRE(deleted.size() == 1);
  CHECK(deleted[0] == "step-00000005.tmp-424242");
  CHECK_FALSE(fs::exists(staging));
  CHECK(fs::exists(d1));
}

TEST_CASE("retention keeps the last N and every K-th step", "[checkpoint]") {
  const std::string root = temp_root("retention");
  for (int64_t step = 1; step <= 10; ++step)
    save_checkpoint(root, make_state(step, 16, step), 3, 4);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(root)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  CHECK(names == std::vector<std::string>{"step-00000004", "step-00000008", "step-00000009",
                                          "step-00000010"});
  // save_checkpoint with keep_last 0 prunes nothing; prune itself needs keep_last >= 1.
  save_checkpoint(root, make_state(11, 16, 11), 0, 0);
  CHECK(std::distance(fs::directory_iterator(root), fs::directory_iterator()) == 5);
  CHECK_THROWS_AS(prune_checkpoints(root, 0, 0, root + "/step-00000011"), std::invalid_argument);
}

TEST_CASE("retention never deletes the checkpoint the save just wrote", "[checkpoint]") {
  const std::string root = temp_root("just_saved");
  std::mt19937 rng(std::random_device{}());
  // Checkpoints of another run, all newer than the one this run is about to save.
  const int64_t mine = std::uniform_int_distribution<int64_t>(1, 50)(rng);
  std::set<int64_t> newer;
  while (newer.size() < 3) newer.insert(std::uniform_int_distribution<int64_t>(51, 999)(rng));
  for (const int64_t step : newer) save_checkpoint(root, make_state(step, 40, step), 3, 0);
  const CheckpointState s = make_state(mine, 40, rng());
  const std::string dir = save_checkpoint(root, s, 2, 0);
  INFO("steps " << mine << " then " << *newer.begin() << ".." << *newer.rbegin());
  REQUIRE(fs::exists(dir));
  CHECK(bitwise_equal(load_checkpoint(dir, 0, 1).shard.master, s.shard.master));
  // The two newest stay, the third newest (ranked before ours) goes.
  CHECK_FALSE(fs::exists(fs::path(root) / checkpoint_name(*newer.begin())));
  CHECK(list_checkpoints(root).size() == 3);
}

TEST_CASE("set-aside folders take newer checkpoints out of every scan", "[checkpoint]") {
  const std::string root = temp_root("set_aside");
  std::mt19937 rng(std::random_device{}());
  std::set<int64_t> steps;
  while (steps.size() < 6) steps.insert(std::uniform_int_distribution<int64_t>(1, 500)(rng));
  std::map<int64_t, std::vector<float>> masters;
  for (const int64_t step : steps) {
    const CheckpointState st = make_state(step, 30, rng());
    save_checkpoint(root, st, 10, 0);
    masters[step] = st.shard.master;
  }
  const int64_t resume = *std::next(steps.begin(), 2);  // three older or equal, three newer
  const SetAside aside = set_aside_checkpoints(root, resume);
  INFO("steps " << fmt::format("{}", fmt::join(steps, " ")) << ", resume " << resume);
  const std::string folder = fs::path(aside.folder).filename().string();
  CHECK(folder.starts_with("set-aside-"));
  CHECK(folder.ends_with(fmt::format("-{}", ::getpid())));
  CHECK(folder.size() ==
        std::string("set-aside-yyyymmddTHHMMSS-").size() + std::to_string(::getpid()).size());
  REQUIRE(aside.moved.size() == 3);
  for (const CheckpointDir& d : aside.moved) {
    CHECK(d.step > resume);
    CHECK(fs::path(d.path).parent_path() == fs::path(aside.folder));
    CHECK_FALSE(verify_checkpoint(d.path).has_value());
    CHECK(bitwise_equal(load_checkpoint(d.path, 0, 1).shard.master, masters[d.step]));
  }
  CHECK(aside.moved.front().step == *steps.rbegin());
  const std::vector<CheckpointDir> left = list_checkpoints(root);
  REQUIRE(left.size() == 3);
  CHECK(left.front().step == resume);
  CHECK(find_latest_checkpoint(root) == left.front().path);
  // Neither retention nor the startup clean-up takes the folder for a checkpoint or a leftover.
  prune_checkpoints(root, 1, 0, left.front().path);
  CHECK(prepare_checkpoint_root(root).empty());
  CHECK(fs::exists(aside.folder));
  CHECK(list_checkpoints(root).size() == 1);
  // A second set-aside within the same second gets a folder of its own.
  const SetAside all = set_aside_checkpoints(root, -1);
  REQUIRE(all.moved.size() == 1);
  CHECK(all.folder != aside.folder);
  CHECK(list_checkpoints(root).empty());
  CHECK_FALSE(resolve_resume("auto", root).has_value());
  CHECK(set_aside_checkpoints(root, -1).folder.empty());
}

TEST_CASE("startup: checkpoint.dir is created and probed, staging leftovers are removed",
          "[checkpoint]") {
  const std::string base = temp_root("prepare");
  const std::string root = base + "/a/b/checkpoints";
  CHECK(prepare_checkpoint_root(root).empty());
  CHECK(fs::is_directory(root));
  const std::string kept = save_checkpoint(root, make_state(7, 20, 7), 3, 0);
  fs::create_directories(checkpoint_staging_dir(root, 8, "31337") + "/sub");
  fs::create_directories(root + "/step-00000007.old-31337");
  std::vector<std::string> removed = prepare_checkpoint_root(root);
  std::sort(removed.begin(), removed.end());
  CHECK(removed == std::vector<std::string>{"step-00000007.old-31337", "step-00000008.tmp-31337"});
  CHECK_FALSE(verify_checkpoint(kept).has_value());
  CHECK(std::distance(fs::directory_iterator(root), fs::directory_iterator()) == 1);
  // A save replacing step 7 killed between its two renames: the aside copy is the only one, and
  // startup puts it back.
  fs::rename(kept, root + "/step-00000007.old-4242");
  CHECK(prepare_checkpoint_root(root).empty());
  CHECK_FALSE(verify_checkpoint(kept).has_value());
  CHECK_FALSE(fs::exists(root + "/step-00000007.old-4242"));
  // A prune or a replacing save killed while deleting: what is left does not verify and goes,
  // even with its step's name free.
  fs::create_directories(root + "/step-00000009.old-4242/partial");
  fs::create_directories(root + "/step-00000010.del-4242/partial");
  removed = prepare_checkpoint_root(root);
  std::sort(removed.begin(), removed.end());
  CHECK(removed == std::vector<std::string>{"step-00000009.old-4242", "step-00000010.del-4242"});
  CHECK(list_checkpoints(root).size() == 1);
  // A path through a regular file cannot be created: the error names it and the reason.
  std::ofstream(base + "/file") << "x";
  CHECK_THROWS_WITH(
      prepare_checkpoint_root(base + "/file/checkpoints"),
      Catch::Contains(base + "/file/checkpoints") && Catch::Contains("Not a directory"));
}

TEST_CASE("a checkpoint of 2 shards loads on 1 and 3 ranks, and 1 on 3", "[checkpoint]") {
  const std::string root = temp_root("reshard");
  const int64_t total = 1003;
  const CheckpointState full = make_state(7, total, 11);
  auto slice = [](const std::vector<float>& v, ShardRange r) {
    return std::vector<float>(v.begin() + r.offset, v.begin() + r.offset + r.count);
  };
  // Two ranks with an uneven partition (as a padded ZeRO layout clipped to the total gives).
  const ShardRange r0{0, 640}, r1{640, total - 640};
  const std::string staging = checkpoint_staging_dir(root, 7, "run");
  for (const auto& [rank, range] : {std::pair{0, r0}, std::pair{1, r1}}) {
    ShardState shard;
    shard.range = range;
    shard.master = slice(full.shard.master, range);
    shard.adam_m = slice(full.shard.adam_m, range);
    shard.adam_v = slice(full.shard.adam_v, range);
    write_shard(staging, rank, 2, total, shard);
  }
  CheckpointMeta meta = full.meta;
  meta.world = 2;
  const std::string dir = finalize_checkpoint(root, staging, meta);
  CHECK_FALSE(verify_checkpoint(dir).has_value());
  CHECK(fs::exists(fs::path(dir) / "shard-00001-of-00002.bin"));

  const CheckpointState one = load_checkpoint(dir, 0, 1);
  CHECK(one.meta.world == 2);
  CHECK(bitwise_equal(one.shard.master, full.shard.master));
  CHECK(bitwise_equal(one.shard.adam_m, full.shard.adam_m));
  CHECK(bitwise_equal(one.shard.adam_v, full.shard.adam_v));
  std::vector<float> joined;
  for (int rank = 0; rank < 3; ++rank) {
    const CheckpointState part = load_checkpoint(dir, rank, 3);
    CHECK(part.shard.range == shard_range(total, rank, 3));
    CHECK(bitwise_equal(part.shard.adam_v, slice(full.shard.adam_v, part.shard.range)));
    joined.insert(joined.end(), part.shard.master.begin(), part.shard.master.end());
  }
  CHECK(bitwise_equal(joined, full.shard.master));
  // Master weights only (export, eval).
  const CheckpointState weights = load_checkpoint(dir, ShardRange{600, 100}, false);
  CHECK(weights.shard.adam_m.empty());
  CHECK_FALSE(weights.shard.moments_range.has_value());
  CHECK(bitwise_equal(weights.shard.master, slice(full.shard.master, {600, 100})));
  // A ZeRO-1 rank's resume: every weight and the moments of its own range, across both shards,
  // in one pass; such a state cannot be written back as a shard.
  const ShardRange own{600, 100};
  const CheckpointState zero1 = load_checkpoint(dir, ShardRange{0, total}, own);
  CHECK(zero1.shard.range == ShardRange{0, total});
  REQUIRE(zero1.shard.moments_range.has_value());
  CHECK(*zero1.shard.moments_range == own);
  CHECK(bitwise_equal(zero1.shard.master, full.shard.master));
  CHECK(bitwise_equal(zero1.shard.adam_m, slice(full.shard.adam_m, own)));
  CHECK(bitwise_equal(zero1.shard.adam_v, slice(full.shard.adam_v, own)));
  CHECK_THROWS_WITH(write_shard(checkpoint_staging_dir(root, 9, "run"), 0, 1, total, zero1.shard),
                    Catch::Contains("another range than its weights"));
  CHECK_THROWS_AS(load_checkpoint(dir, ShardRange{0, total}, ShardRange{total - 10, 20}),
                  CheckpointError);

  // 1 -> 3.
  const std::string root1 = temp_root("reshard1");
  const std::string dir1 = save_checkpoint(root1, full, 1, 0);
  std::vector<float> m_joined;
  for (int rank = 0; rank < 3; ++rank) {
    const CheckpointState part = load_checkpoint(dir1, rank, 3);
    m_joined.insert(m_joined.end(), part.shard.adam_m.begin(), part.shard.adam_m.end());
  }
  CHECK(bitwise_equal(m_joined, full.shard.adam_m));

  // Shards that do not tile the vector are refused before anything is renamed.
  const std::string bad = checkpoint_staging_dir(root, 8, "run");
  ShardState half;
  half.range = r0;
  half.master = half.adam_m = half.adam_v = slice(full.shard.master, r0);
  write_shard(bad, 0, 2, total, half);
  CheckpointMeta meta8 = meta;
  meta8.step = 8;
  CHECK_THROWS_AS(finalize_checkpoint(root, bad, meta8), CheckpointError);
  CHECK_FALSE(fs::exists(fs::path(root) / "step-00000008"));

  // Loader positions: 2 ranks at cursor 6 consumed 12 windows = 3 ranks at cursor 4.
  const LoaderState ls = reshard_loader_state({5, 1, 6}, 2, 3);
  CHECK(ls.cursor == 4);
  CHECK(ls.epoch == 1);
  CHECK_THROWS_AS(reshard_loader_state({5, 1, 5}, 2, 3), CheckpointError);
}

TEST_CASE("model state capture and restore are exact", "[checkpoint]") {
  Config c = test::tiny_variant_config({NormPlacement::post, true, true, false, 2});
  auto backend = make_backend("cpu", 1);
  Model a(c, *backend, 1, 8);
  a.init_parameters(3);
  const int64_t total = a.layout().total();
  backend->upload(a.adam_m(), test::random_normal(static_cast<size_t>(total), 5));
  backend->upload(a.adam_v(), test::random_normal(static_cast<size_t>(total), 6, 1.0, 3.0));
  const ShardState s = capture_shard(a, {0, total});
  const std::string root = temp_root("model");
  CheckpointState state;
  state.meta.step = 1;
  state.meta.total_params = total;
  state.meta.config_yaml = to_yaml(c);
  state.shard = s;
  const std::string dir = save_checkpoint(root, state, 1, 0);

  Model b(c, *backend, 1, 8);
  b.init_parameters(4);
  restore_model(b, load_checkpoint(dir, 0, 1).shard);
  CHECK(a.parameters() == b.parameters());
  std::vector<double> ma(static_cast<size_t>(total)), mb(ma.size());
  backend->download(a.adam_m(), ma);
  backend->download(b.adam_m(), mb);
  CHECK(ma == mb);
  backend->download(a.adam_v(), ma);
  backend->download(b.adam_v(), mb);
  CHECK(ma == mb);
  // Same logits from the restored compute copy.
  const auto tokens = test::random_tokens(9, 20, 8);
  CHECK(a.logits(tokens) == b.logits(tokens));
  // A partial range touches only that range.
  Model p(c, *backend, 1, 8);
  p.init_parameters(4);
  const std::vector<double> before = p.parameters();
  restore_model(p, capture_shard(a, {10, 20}));
  const std::vector<double> after = p.parameters();
  const std::vector<double> want = a.parameters();
  CHECK(after[9] == before[9]);
  CHECK(after[10] == want[10]);
  CHECK(after[29] == want[29]);
  CHECK(after[30] == before[30]);
}

TEST_CASE("float32 downloads equal the float64 one, in chunks or as a plain copy", "[checkpoint]") {
  // capture_shard's path: the CPU backend copies, the default (the CUDA backend's) goes through
  // download() a chunk at a time. A slice at an odd offset, over two chunks and a part.
  auto backend = make_backend("cpu", 1);
  const int64_t n = 2 * Backend::kDownloadChunk + 12345;
  Tensor t = backend->alloc(Role::master, n);
  backend->upload(t, test::random_normal(static_cast<size_t>(n), 11, 3.0));
  std::vector<double> wide(static_cast<size_t>(n));
  backend->download(t, wide);
  const Tensor part = t.slice(7, n - 9);
  std::vector<float> copied(static_cast<size_t>(part.numel), -1.0f), chunked(copied);
  backend->download_f32(part, copied);
  backend->Backend::download_f32(part, chunked);
  const std::vector<float> want(wide.begin() + 7, wide.end() - 2);
  // The index of the first wrong value (part.numel: none); a failure prints it, not 2M values.
  const auto first_wrong = [&](const std::vector<float>& got) {
    return std::mismatch(got.begin(), got.end(), want.begin()).first - got.begin();
  };
  CHECK(first_wrong(copied) == part.numel);
  CHECK(first_wrong(chunked) == part.numel);
  backend->release(t);
}

TEST_CASE("resume refuses model-defining config changes and lists the others", "[checkpoint]") {
  Config saved;
  saved.source = "run.yaml";
  const std::string yaml = to_yaml(saved);
  Config same = saved;
  CHECK(compare_configs(yaml, same).shape.empty());
  CHECK(compare_configs(yaml, same).other.empty());

  Config schedule = saved;
  schedule.schedule.total_steps = 500;
  schedule.optimizer.lr = 1e-3;
  schedule.model.init_std = 0.01;
  const std::vector<ConfigChange> other = check_resume_config(yaml, schedule);
  REQUIRE(other.size() == 3);
  std::vector<std::string> keys;
  for (const ConfigChange& ch : other) keys.push_back(ch.key);
  std::sort(keys.begin(), keys.end());
  CHECK(keys == std::vector<std::string>{"model.init_std", "optimizer.lr", "schedule.total_steps"});

  Config shape = saved;
  shape.model.n_layers = 6;
  shape.moda.enabled = true;
  shape.optimizer.lr = 1e-3;
  const ConfigDiff diff = compare_configs(yaml, shape);
  REQUIRE(diff.shape.size() == 2);
  CHECK(diff.shape[0].key == "moda.enabled");
  CHECK(diff.shape[1].key == "model.n_layers");
  CHECK(diff.shape[1].before == "4");
  CHECK(diff.shape[1].after == "6");
  CHECK(diff.other.size() == 1);
  CHECK_THROWS_AS(check_resume_config(yaml, shape), ConfigError);
  CHECK_THROWS_WITH(check_resume_config(yaml, shape),
                    Catch::Contains("model.n_layers") && Catch::Contains("moda.enabled"));
}

TEST_CASE("metrics.jsonl is parsed back and truncated at a step", "[checkpoint]") {
  const std::string text =
      "{\"step\": 1, \"loss\": 5.5, \"val_loss\": null, \"lr\": 0.001, \"grad_norm\": 2}\n"
      "{\"step\": 2, \"loss\": 5.25, \"val_loss\": 5.4, \"lr\": 0.002, \"grad_norm\": 1.5}\n"
      "{\"step\": 3, \"loss\": 5.0, \"val_loss\": null, \"lr\": 0.003, \"grad_norm\": 1}\n"
      "{\"step\": 4, \"loss\": 4.";  // torn by a crash
  const std::vector<StepRecord> all = parse_metrics_jsonl(text);
  REQUIRE(all.size() == 3);
  CHECK(all[1].step == 2);
  CHECK(all[1].loss == 5.25);
  CHECK(all[1].val_loss == 5.4);
  CHECK(std::isnan(all[0].val_loss));
  CHECK(parse_metrics_jsonl(text, 2).size() == 2);
  const std::string cut = truncate_metrics_jsonl(text, 2);
  CHECK(cut == text.substr(0, text.find("{\"step\": 3")));
}

TEST_CASE("kill -9 during saves never leaves a damaged checkpoint under a final name",
          "[checkpoint]") {
  const std::string root = temp_root("crash");
  const int64_t total = 200000;  // 2.4 MB per checkpoint: a save takes a few milliseconds
  save_checkpoint(root, make_state(0, total, 0), 2, 0);
  const float step0 = make_state(0, total, 0).shard.master[0];
  std::mt19937 rng(5);
  int killed_mid_save = 0, saved_any = 0;
  CheckpointState s = make_state(1, total, 1);
  for (int round = 0; round < 6; ++round) {
    int saved[2];
    REQUIRE(::pipe(saved) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      // Saves forever (until killed), continuing from the newest step; says when the first save
      // is complete.
      ::close(saved[0]);
      spdlog::set_level(spdlog::level::off);
      int64_t step = 1000 * (round + 1);
      for (;;) {
        s.meta.step = ++step;
        s.shard.master[0] = static_cast<float>(step);
        save_checkpoint(root, s, 2, 0);
        if (saved[1] >= 0) {
          const char one = 1;
          if (::write(saved[1], &one, 1) != 1) ::_exit(3);
          ::close(saved[1]);
          saved[1] = -1;
        }
      }
    }
    // Killed at a random moment after the first save: on a slow disk a fixed delay may never see
    // a save complete, and then the checks below would compare nothing the child wrote.
    ::close(saved[1]);
    pollfd first{saved[0], POLLIN, 0};
    ::poll(&first, 1, 60000);
    ::close(saved[0]);
    ::usleep(std::uniform_int_distribution<useconds_t>(0, 30000)(rng));
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);
    REQUIRE(WIFSIGNALED(status));
    REQUIRE(WTERMSIG(status) == SIGKILL);  // not a crash of its own
    bool staging_left = false;
    for (const auto& e : fs::directory_iterator(root)) {
      const std::string name = e.path().filename().string();
      if (name.find(".tmp-") != std::string::npos || name.find(".old-") != std::string::npos ||
          name.find(".del-") != std::string::npos) {
        staging_left = true;
        continue;
      }
      INFO(name);
      CHECK_FALSE(verify_checkpoint(e.path().string()).has_value());  // every final name is whole
    }
    const auto latest = find_latest_checkpoint(root);
    REQUIRE(latest.has_value());
    const CheckpointState l = load_checkpoint(*latest, 0, 1);
    CHECK(l.shard.master[0] == (l.meta.step == 0 ? step0 : static_cast<float>(l.meta.step)));
    saved_any += l.meta.step > 0;
    killed_mid_save += staging_left;
  }
  CHECK(saved_any > 0);  // else nothing above compared anything the children wrote
  // Leftover staging directories of killed saves are what prune removes.
  prune_checkpoints(root, 2, 0, *find_latest_checkpoint(root));
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string name = e.path().filename().string();
    CHECK(name.find(".tmp-") == std::string::npos);
    CHECK(name.find(".old-") == std::string::npos);
    CHECK(name.find(".del-") == std::string::npos);
  }
  WARN(killed_mid_save << " of 6 rounds ended with a staging directory present");
}
