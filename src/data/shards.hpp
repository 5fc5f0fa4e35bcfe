// Pre-tokenized shards: memory-mapped readers and the writers of `moda tokenize`.
//
// Two file formats (docs/data.md):
//   npy  OLMo-core's token files: a flat little-endian uint16 or uint32 array, no header despite
//        the name. The dtype comes from the caller or from manifest.json beside the file.
//   bin  llm.c's: 256 int32 header (magic 20240520, version, token count), then the tokens;
//        version 1 holds uint16 tokens, version 2 (a moda extension, for vocabularies above
//        65536) uint32.
// `moda tokenize` also writes manifest.json into its output directory: tokenizer, dtype, and
// per file its split, token and document counts and CRC-32.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "moda/data.hpp"

namespace moda {

enum class TokenDtype { uint16, uint32 };
TokenDtype parse_dtype(const std::string& s);  // "uint16" | "uint32"; std::invalid_argument
const char* to_string(TokenDtype d);
// The narrowest dtype that holds every id of a vocabulary of this size.
TokenDtype dtype_for_vocab(int64_t vocab_size);

enum class ShardFormat { npy, bin };
ShardFormat parse_format(const std::string& s);  // "npy" | "bin"; std::invalid_argument
const char* to_string(ShardFormat f);

inline constexpr int32_t kLlmcMagic = 20240520;
inline constexpr int kLlmcHeaderInts = 256;

// A data path as given (it must exist and not be a directory) or a glob's matches, sorted (at
// least one). Text sources and token shards alike.
std::vector<std::string> expand_data_paths(const std::string& path_or_glob);

// Opens token shards as one store, the files concatenated in the order given (a glob's matches
// sorted). format: auto (by extension) | npy | bin; dtype: auto | uint16 | uint32 (auto: a .bin
// header's, else the dtype of the manifest.json next to a .npy file). Every token is checked
// against vocab_size here, once. Throws std::runtime_error naming the file for: a missing file,
// a glob matching nothing, a size that is not a whole number of tokens, a bad .bin magic,
// version or token count, a token id >= vocab_size, a store of fewer than min_tokens tokens.
std::shared_ptr<TokenStore> open_shards(const std::vector<std::string>& paths_or_globs,
                                        const std::string& format, const std::string& dtype,
                                        int64_t vocab_size, int64_t min_tokens);

struct ShardFileInfo {
  std::string name;   // file name inside the output directory
  std::string split;  // "train" | "val"
  int64_t tokens = 0;
  int64_t documents = 0;
  uint32_t crc32 = 0;  // zlib CRC-32 of the whole file
};

struct ShardManifest {
  ShardFormat format = ShardFormat::npy;
  TokenDtype dtype = TokenDtype::uint16;
  std::string tokenizer;
  int64_t vocab_size = 0;
  int32_t eos = 0;
  std::vector<ShardFileInfo> files;
};

inline constexpr const char* kManifestName = "manifest.json";
void write_manifest(const std::string& dir, const ShardManifest& manifest);
// nullopt when dir has no manifest.json; throws std::runtime_error naming it when malformed.
std::optional<ShardManifest> read_manifest(const std::string& dir);

// Writes the documents of one split as <split>-00000.<ext>, <split>-00001.<ext>, ... in `dir`.
// Documents are not split across files: a file is closed once it holds at least shard_tokens
// tokens. Each file is written under a temporary name and renamed when complete.
class ShardWriter {
 public:
  ShardWriter(std::string dir, std::string split, ShardFormat format, TokenDtype dtype,
              int64_t shard_tokens);
  ~ShardWriter();  // removes an unfinished temporary file
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // One document's ids, its eos included. Throws for an id the dtype cannot hold.
  void add_document(std::span<const int32_t> ids);
  // Completes the last file; returns every file written.
  std::vector<ShardFileInfo> finish();

 private:
  void open_file();
  void close_file();

  std::string dir_, split_;
  ShardFormat format_;
  TokenDtype dtype_;
  int64_t shard_tokens_;
  std::FILE* file_ = nullptr;
  std::string tmp_path_;
  ShardFileInfo current_;
  uint32_t crc_ = 0;  // of what is written after the header
  std::vector<unsigned char> buffer_;
  std::vector<ShardFileInfo> done_;
};

class Tokenizer;

struct TokenizeOptions {
  std::vector<std::string> inputs;  // files and directories (see list_input_files)
  std::string output_dir;
  ShardFormat format = ShardFormat::npy;
  std::optional<TokenDtype> dtype;  // default: the narrowest for the tokenizer's vocabulary
  double val_fraction = 0.01;       // of the documents, chosen by a hash of (seed, index)
  uint64_t seed = 0;
  int threads = 1;
  int64_t shard_tokens = int64_t{1} << 28;
  bool progress = true;  // a line on stderr every few seconds
};

struct TokenizeSummary {
  int64_t documents = 0, val_documents = 0, empty_documents = 0;
  int64_t tokens = 0, val_tokens = 0;
  int64_t bytes = 0;  // of text (uncompressed, before JSON decoding)
  double seconds = 0;
  ShardManifest manifest;
};

// Whether document `index` goes to validation: splitmix64 of (seed, index) against the
// fraction, the same on every run, machine and thread count.
bool is_val_document(uint64_t seed, int64_t index, double val_fraction);

// Tokenizes the documents of options.inputs into train-*/val-* shards and manifest.json in
// options.output_dir (created; it may not already hold shards). Each document is followed by
// eos; empty documents are skipped. Threads tokenize batches of documents in parallel and the
// files come out the same for any thread count.
TokenizeSummary tokenize_to_shards(const Tokenizer& tokenizer, const TokenizeOptions& options);

}  // namespace moda
