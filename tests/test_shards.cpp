// Token shards: both formats written and read back, every rejected input with its file named, the
// manifest, and the `moda tokenize` pipeline (text, JSONL, gzip, split, thread independence).
#include <fmt/format.h>
#include <unistd.h>
#include <zlib.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "data/shards.hpp"
#include "moda/tokenizer.hpp"
#include "tokenizer/corpus.hpp"

namespace fs = std::filesystem;

namespace {

// A fresh directory, removed with everything in it at the end of the test.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() / fmt::format("moda_{}_{}", name, ::getpid())) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& rel) const { return (path / rel).string(); }
};

void write_bytes(const std::string& path, const void* data, size_t n) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<int32_t> read_all(const moda::TokenStore& store) {
  std::vector<int32_t> out(static_cast<size_t>(store.size()));
  store.read(0, store.size(), out.data());
  return out;
}

// Documents of random length (ids below vocab), each ending in eos.
std::vector<std::vector<int32_t>> make_documents(int n, int32_t vocab, int32_t eos) {
  std::mt19937 rng(5);
  std::vector<std::vector<int32_t>> docs(n);
  for (auto& d : docs) {
    d.resize(1 + rng() % 50);
    for (auto& id : d) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
    d.push_back(eos);
  }
  return docs;
}

void write_llmc(const std::string& path, int32_t magic, int32_t version, int32_t count,
                const std::vector<uint16_t>& tokens) {
  std::vector<int32_t> header(256, 0);
  header[0] = magic;
  header[1] = version;
  header[2] = count;
  std::string bytes(reinterpret_cast<const char*>(header.data()), 1024);
  bytes.append(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
  write_bytes(path, bytes.data(), bytes.size());
}

}  // namespace

TEST_CASE("shards of both formats and dtypes read back what was written", "[shards]") {
  for (const auto format : {moda::ShardFormat::npy, moda::ShardFormat::bin}) {
    for (const auto dtype : {moda::TokenDtype::uint16, moda::TokenDtype::uint32}) {
      INFO(moda::to_string(format) << " " << moda::to_string(dtype));
      TempDir dir("shards_rt");
      const int32_t vocab = dtype == moda::TokenDtype::uint16 ? 50257 : 100278;
      const auto docs = make_documents(40, vocab - 1, vocab - 1);
      moda::ShardWriter writer(dir.path.string(), "train", format, dtype, 200);
      std::vector<int32_t> expected;
      for (const auto& d : docs) {
        writer.add_document(d);
        expected.insert(expected.end(), d.begin(), d.end());
      }
      const std::vector<moda::ShardFileInfo> files = writer.finish();
      REQUIRE(files.size() > 2);  // several files, concatenated by the reader
      int64_t documents = 0;
      for (const auto& f : files) {
        // Closed once full, never mid-document; the last holds the rest.
        if (&f != &files.back()) CHECK(f.tokens >= 200);
        documents += f.documents;
        const std::string bytes = read_bytes(dir / f.name);
        CHECK(f.crc32 == crc32(0, reinterpret_cast<const Bytef*>(bytes.data()),
                               static_cast<uInt>(bytes.size())));
        const auto file =
            moda::open_shards({dir / f.name}, "auto", moda::to_string(dtype), vocab, 1);
        std::vector<int32_t> last(1);
        file->read(file->size() - 1, 1, last.data());
        CHECK(last[0] == vocab - 1);  // every file ends a document
      }
      CHECK(documents == 40);
      CHECK_FALSE(fs::exists(dir / (files.back().name + ".tmp")));

      const std::string glob = dir / fmt::format("train-*.{}", moda::to_string(format));
      const auto store = moda::open_shards({glob}, "auto", moda::to_string(dtype), vocab, 1);
      REQUIRE(store->size() == static_cast<int64_t>(expected.size()));
      CHECK(read_all(*store) == expected);
      // A read across the boundary of the first two files.
      const int64_t at = files[0].tokens - 3;
      std::vector<int32_t> window(10);
      store->read(at, 10, window.data());
      CHECK(std::equal(window.begin(), window.end(), expected.begin() + at));
      CHECK_THROWS_AS(store->read(store->size() - 2, 3, window.data()), std::out_of_range);
      CHECK_THAT(store->describe(), Catch::Contains(std::to_string(expected.size()) + " tokens"));
    }
  }
}

TEST_CASE("the manifest round-trips and gives .npy files their dtype", "[shards]") {
  TempDir dir("shards_manifest");
  moda::ShardWriter writer(dir.path.string(), "val", moda::ShardFormat::npy,
                           moda::TokenDtype::uint32, 1000);
  const std::vector<int32_t> doc = {70000, 5, 100257};
  writer.add_document(doc);
  moda::ShardManifest m;
  m.format = moda::ShardFormat::npy;
  m.dtype = moda::TokenDtype::uint32;
  m.tokenizer = "dolma2";
  m.vocab_size = 100278;
  m.eos = 100257;
  m.files = writer.finish();
  moda::write_manifest(dir.path.string(), m);

  const auto back = moda::read_manifest(dir.path.string());
  REQUIRE(back.has_value());
  CHECK(back->dtype == moda::TokenDtype::uint32);
  CHECK(back->tokenizer == "dolma2");
  CHECK(back->eos == 100257);
  REQUIRE(back->files.size() == 1);
  CHECK(back->files[0].name == "val-00000.npy");
  CHECK(back->files[0].tokens == 3);
  CHECK(back->files[0].crc32 == m.files[0].crc32);
  CHECK_FALSE(moda::read_manifest((dir.path / "nowhere").string()).has_value());

  // dtype auto: taken from the manifest (as uint16 these 12 bytes would be 6 other tokens).
  const auto store = moda::open_shards({dir / "val-00000.npy"}, "npy", "auto", 100278, 3);
  CHECK(read_all(*store) == doc);

  // The manifest disagreeing with the file is an error naming the file.
  write_bytes(dir / "val-00000.npy", doc.data(), 8);
  CHECK_THROWS_WITH(moda::open_shards({dir / "val-00000.npy"}, "npy", "auto", 100278, 1),
                    Catch::Contains("val-00000.npy") && Catch::Contains("says 3 tokens"));
  write_bytes(dir / "manifest.json", "{\"format\": \"npy\"", 16);
  CHECK_THROWS_WITH(moda::read_manifest(dir.path.string()), Catch::Contains("manifest.json"));
}

TEST_CASE("bad shards are rejected with the file named", "[shards]") {
  TempDir dir("shards_bad");
  const std::vector<uint16_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8};
  auto rejects = [&](const std::vector<std::string>& paths, const std::string& dtype,
                     const std::string& named, const std::string& what, int64_t min_tokens = 1) {
    INFO(what);
    CHECK_THROWS_WITH(moda::open_shards(paths, "auto", dtype, 100, min_tokens),
                      Catch::Contains(named) && Catch::Contains(what));
  };

  rejects({dir / "missing.npy"}, "uint16", "missing.npy", "does not exist");
  rejects({dir / "none-*.npy"}, "uint16", "none-*.npy", "no file matches");
  rejects({dir.path.string()}, "uint16", dir.path.string(), "is a directory");

  write_bytes(dir / "odd.npy", tokens.data(), 7);
  rejects({dir / "odd.npy"}, "uint16", "odd.npy", "not a multiple of 2 bytes");
  write_bytes(dir / "six.npy", tokens.data(), 6);
  rejects({dir / "six.npy"}, "uint32", "six.npy", "not a multiple of 4 bytes");
  rejects({dir / "six.npy"}, "auto", "six.npy", "dtype unknown");
  write_bytes(dir / "numpy.npy", "\x93NUMPY\x01\x00", 8);
  rejects({dir / "numpy.npy"}, "uint16", "numpy.npy", "NumPy header");
  write_bytes(dir / "tokens.txt", tokens.data(), 16);
  rejects({dir / "tokens.txt"}, "uint16", "tokens.txt", "is a text file among token shards");
  write_bytes(dir / "tokens.dat", tokens.data(), 16);
  rejects({dir / "tokens.dat"}, "uint16", "tokens.dat", "cannot tell the format");

  const std::vector<uint16_t> big = {1, 2, 100, 3};
  write_bytes(dir / "vocab.npy", big.data(), 8);
  rejects({dir / "vocab.npy"}, "uint16", "vocab.npy", "token 100 at index 2");
  std::vector<uint32_t> late(10000, 7);
  late[9000] = 1u << 31;  // past the first vectorized block
  write_bytes(dir / "late.npy", late.data(), late.size() * 4);
  rejects({dir / "late.npy"}, "uint32", "late.npy", "at index 9000");

  write_llmc(dir / "magic.bin", 20240521, 1, 8, tokens);
  rejects({dir / "magic.bin"}, "auto", "magic.bin", "bad magic 20240521");
  write_llmc(dir / "version.bin", moda::kLlmcMagic, 3, 8, tokens);
  rejects({dir / "version.bin"}, "auto", "version.bin", "unsupported version 3");
  write_llmc(dir / "count.bin", moda::kLlmcMagic, 1, 9, tokens);
  rejects({dir / "count.bin"}, "auto", "count.bin", "header says 9 tokens");
  write_llmc(dir / "v1.bin", moda::kLlmcMagic, 1, 8, tokens);
  rejects({dir / "v1.bin"}, "uint32", "v1.bin", "holds uint16 tokens");
  write_bytes(dir / "short.bin", tokens.data(), 16);
  rejects({dir / "short.bin"}, "auto", "short.bin", "too short for an llm.c header");

  // Fewer tokens than one window: the message names what was asked for.
  CHECK(moda::open_shards({dir / "v1.bin"}, "auto", "auto", 100, 8)->size() == 8);
  rejects({dir / "v1.bin"}, "auto", "v1.bin", "fewer than one window of 9", 9);
}

TEST_CASE("writers refuse ids their dtype cannot hold", "[shards]") {
  TempDir dir("shards_writer");
  moda::ShardWriter writer(dir.path.string(), "train", moda::ShardFormat::bin,
                           moda::TokenDtype::uint16, 100);
  const std::vector<int32_t> too_big = {65536};
  CHECK_THROWS_WITH(writer.add_document(too_big), Catch::Contains("does not fit uint16"));
  const std::vector<int32_t> negative = {-1};
  CHECK_THROWS(writer.add_document(negative));
}

TEST_CASE("the validation split is a deterministic hash of the document index", "[shards]") {
  int held = 0;
  for (int64_t i = 0; i < 100000; ++i) held += moda::is_val_document(42, i, 0.1);
  CHECK(held > 9500);
  CHECK(held < 10500);
  CHECK(moda::is_val_document(42, 7, 0.1) == moda::is_val_document(42, 7, 0.1));
  int differ = 0;
  for (int64_t i = 0; i < 1000; ++i) {
    differ += moda::is_val_document(1, i, 0.5) != moda::is_val_document(2, i, 0.5);
  }
  CHECK(differ > 300);  // the seed matters
  CHECK_FALSE(moda::is_val_document(42, 3, 0.0));
  CHECK(moda::is_val_document(42, 3, 1.0));
}

TEST_CASE("corpus reader: text files whole, JSONL by line, gzip transparently", "[shards]") {
  TempDir dir("corpus");
  write_bytes(dir / "b.txt", "para one\n\npara two\n", 19);
  const std::string jsonl =
      "{\"text\": \"first\\nline\", \"id\": 1}\n\n  \r\n{\"id\": 2, \"text\": \"\\u00e9\"}";
  write_bytes(dir / "a.jsonl", jsonl.data(), jsonl.size());
  gzFile gz = gzopen((dir / "c.json.gz").c_str(), "wb");
  gzputs(gz, "{\"text\": \"zipped\"}\n");
  gzclose(gz);
  write_bytes(dir / "ignored.csv", "x", 1);

  const std::vector<std::string> files = moda::list_input_files({dir.path.string()});
  REQUIRE(files.size() == 3);
  CHECK(files[0].ends_with("a.jsonl"));  // sorted
  moda::CorpusReader reader(files);
  std::vector<std::string> texts;
  std::vector<int64_t> lines;
  for (moda::RawDocument doc; reader.next(doc);) {
    texts.push_back(moda::document_text(doc, files));
    lines.push_back(doc.line);
  }
  CHECK(texts ==
        std::vector<std::string>{"first\nline", "\u00e9", "para one\n\npara two\n", "zipped"});
  CHECK(lines == std::vector<int64_t>{1, 4, 0, 1});

  const std::string bad = "{\"text\": \"ok\"}\n{\"id\": 3}\n";
  write_bytes(dir / "bad.jsonl", bad.data(), bad.size());
  const std::vector<std::string> bad_files = {dir / "bad.jsonl"};
  moda::CorpusReader bad_reader(bad_files);
  moda::RawDocument doc;
  REQUIRE(bad_reader.next(doc));
  REQUIRE(bad_reader.next(doc));
  CHECK_THROWS_WITH(moda::document_text(doc, bad_files),
                    Catch::Contains("bad.jsonl:2") && Catch::Contains("no \"text\""));
  CHECK_THROWS_WITH(moda::list_input_files({dir / "nope"}), Catch::Contains("nope"));
  // A file reached twice: named twice, or named beside its directory.
  const std::string b = dir / "b.txt";
  CHECK_THROWS_WITH(moda::list_input_files({b, b}),
                    Catch::Contains("input file " + b + " is given twice: its documents"));
  CHECK_THROWS_WITH(moda::list_input_files({dir.path.string(), dir.path.string() + "/./b.txt"}),
                    Catch::Contains("is given twice (also as " + b + ")"));
}

TEST_CASE("corpus reader: a gzip file cut short is an error naming it, not a shorter text",
          "[shards]") {
  TempDir dir("gz_cut");
  std::string text;
  for (int i = 0; i < 200; ++i) text += fmt::format("line {} of a text that zlib compresses\n", i);
  const std::string whole_path = dir / "whole.txt.gz";
  gzFile gz = gzopen(whole_path.c_str(), "wb");
  gzwrite(gz, text.data(), static_cast<unsigned>(text.size()));
  gzclose(gz);
  const std::string whole = read_bytes(whole_path);
  REQUIRE(whole.size() > 300);
  auto read_text = [](const std::string& path) {
    moda::CorpusReader reader({path});
    moda::RawDocument doc;
    reader.next(doc);  // a text file is one document
    return doc.data;
  };
  CHECK(read_text(whole_path) == text);
  // Cut inside the deflate data, and with only the 8-byte trailer (CRC-32, length) missing.
  for (const size_t keep : {size_t{300}, whole.size() - 8}) {
    INFO("kept " << keep << " of " << whole.size() << " bytes");
    const std::string cut_path = dir / fmt::format("cut{}.txt.gz", keep);
    write_bytes(cut_path, whole.data(), keep);
    CHECK_THROWS_WITH(read_text(cut_path),
                      Catch::Contains(cut_path) && Catch::Contains("unexpected end of file"));
  }
}

TEST_CASE("tokenize_to_shards: eos-terminated documents, split, same files for any thread count",
          "[shards]") {
  TempDir dir("tokenize");
  const auto tok = moda::make_tokenizer("byte", "");
  std::string jsonl;
  std::vector<std::string> texts;
  for (int i = 0; i < 300; ++i) {
    texts.push_back(fmt::format("document {} {}", i, std::string(i % 17, 'x')));
    jsonl += fmt::format("{{\"text\": \"{}\"}}\n", texts.back());
  }
  jsonl += "{\"text\": \"\"}\n";  // an empty document is skipped
  write_bytes(dir / "in.jsonl", jsonl.data(), jsonl.size());

  std::vector<std::string> crcs;
  for (const int threads : {1, 3}) {
    moda::TokenizeOptions o;
    o.inputs = {dir / "in.jsonl"};
    o.output_dir = dir / fmt::format("out{}", threads);
    o.val_fraction = 0.2;
    o.threads = threads;
    o.shard_tokens = 2000;
    o.progress = false;
    const moda::TokenizeSummary s = moda::tokenize_to_shards(*tok, o);
    CHECK(s.documents == 301);
    CHECK(s.empty_documents == 1);
    CHECK(s.val_documents > 30);
    CHECK(s.val_documents < 90);
    std::string all;
    for (const auto& f : s.manifest.files) all += fmt::format("{}:{:08x} ", f.name, f.crc32);
    crcs.push_back(all);

    const auto train = moda::open_shards({o.output_dir + "/train-*.npy"}, "npy", "auto", 258, 1);
    const auto val = moda::open_shards({o.output_dir + "/val-*.npy"}, "npy", "auto", 258, 1);
    CHECK(train->size() + val->size() == s.tokens);
    // The train store is the train documents in order, each followed by eos.
    std::vector<int32_t> expected;
    for (int i = 0; i < 300; ++i) {
      if (moda::is_val_document(0, i, 0.2)) continue;
      for (const char c : texts[i]) expected.push_back(static_cast<unsigned char>(c));
      expected.push_back(tok->eos());
    }
    CHECK(read_all(*train) == expected);
    CHECK_THROWS_WITH(moda::tokenize_to_shards(*tok, o), Catch::Contains("already holds shards"));
  }
  CHECK(crcs[0] == crcs[1]);
}
